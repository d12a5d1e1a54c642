"""Loader nodes: MuseTalk UNet, whisper-tiny, face detector (S3FD + 2D-FAN), face parser (BiSeNet).

Each resolves its file names inside the registered model folders only (``_host``), downloads a
missing registered file when ``download`` is on, loads through ``musetalk_core.models`` on the
offload device, and attaches a host ``ModelPatcher`` so the host can move and evict the weights.

Caching: the host caches node outputs; on top, loaded models are kept in a *weak* dictionary keyed
by (path, size, mtime, dtype, device, ...), so a re-run whose inputs changed in a way that does
not matter (the ``download`` toggle) reuses the model the host still holds, a replaced file
reloads (new size/mtime), and nothing is kept alive after the host lets go.
"""

from __future__ import annotations

import contextlib
import logging
import os
import weakref
from collections.abc import Callable
from typing import Any

import torch

from ..musetalk_core.errors import WeightsError
from ..musetalk_core.weights import registry
from . import _host
from ._spec import (
    BOOLEAN,
    COMBO,
    INT,
    MUSETALK_FACE_DETECTOR,
    MUSETALK_FACE_PARSER,
    MUSETALK_MODEL,
    MUSETALK_WHISPER,
    In,
    NodeDef,
    Out,
)

log = logging.getLogger(__name__)

FOLDER = _host.MODEL_FOLDER
UNET_DEFAULT = "musetalkV15/unet.pth"
WHISPER_DEFAULT = "whisper"
S3FD_DEFAULT = "face_alignment/s3fd-619a316812.pth"
FAN_DEFAULT = "face_alignment/2DFAN4-11f355bf06.pth.tar"
PARSER_DEFAULT = "face-parse-bisent/79999_iter.pth"
WEIGHT_EXTS = (".bin", ".pth", ".pt", ".safetensors", ".sft", ".ckpt", ".tar", ".zip")
OTHER_SLOTS = ("whisper/", "face-parse-bisent/", "face_alignment/")

_CACHE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


# --------------------------------------------------------------------------- file lists


def _merge(found: list[str], defaults: list[str]) -> list[str]:
    """Files on disk plus the registry's default names (a shared workflow validates, M1)."""
    return defaults + sorted(f for f in set(found) if f not in defaults)


def unet_choices() -> list[str]:
    files = [f for f in _host.model_files(FOLDER)
             if f.lower().endswith(WEIGHT_EXTS) and not f.startswith(OTHER_SLOTS)]
    return _merge(files, [UNET_DEFAULT, "musetalk/pytorch_model.bin"])


def whisper_choices() -> list[str]:
    files = [f for f in _host.model_files(FOLDER) if f.lower().endswith(".pt")]
    dirs = [d for d in _host.model_dirs(FOLDER, marker="config.json") if "whisper" in d.lower()]
    return _merge(files + dirs, [WHISPER_DEFAULT, "whisper/tiny.pt"])


def _under(prefix: str, defaults: list[str]) -> Callable[[], list[str]]:
    def choices() -> list[str]:
        files = [f for f in _host.model_files(FOLDER)
                 if f.startswith(prefix) and f.lower().endswith(WEIGHT_EXTS)]
        return _merge(files, defaults)

    return choices


# --------------------------------------------------------------------------- resolution


def _stat_key(path: str) -> tuple:
    if os.path.isdir(path):
        return tuple(sorted((n, os.path.getsize(os.path.join(path, n)),
                             os.stat(os.path.join(path, n)).st_mtime_ns)
                            for n in os.listdir(path) if os.path.isfile(os.path.join(path, n))))
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns)


def _registered(name: str) -> list[registry.WeightFile]:
    """The registry files behind a dropdown name (a file, or the files of a folder)."""
    wf = registry.by_rel(FOLDER, name)
    if wf is not None:
        return [wf]
    return registry.in_subdir(FOLDER, name)


def resolve(name: str, input_name: str, download: bool, *, folder_ok: bool = False,
            companions: tuple[str, ...] = ()) -> str:
    """The absolute path of ``name`` in the model folders, downloading registered files if allowed.

    ``companions``: files that must sit beside it (``musetalk.json``), fetched along with it.
    """
    path = _host.resolve_model_path(name, FOLDER, input_name=input_name, allow_dir=folder_ok)
    wanted = _registered(name)
    if path is not None and os.path.isdir(path):
        present = set(os.listdir(path))
        wanted = [wf for wf in wanted if wf.filename not in present
                  and not (wf.key == "whisper_weights" and "pytorch_model.bin" in present)]
    elif path is not None:
        subdir = os.path.dirname(name.replace("\\", "/"))
        wanted = [wf for c in companions
                  if (wf := registry.by_rel(FOLDER, f"{subdir}/{c}" if subdir else c)) is not None
                  and not any(os.path.isfile(os.path.join(os.path.dirname(path), alt))
                              for alt in (c, f"musetalk_{c}"))]
    else:
        subdir = os.path.dirname(name.replace("\\", "/"))
        wanted += [wf for c in companions
                   if (wf := registry.by_rel(FOLDER, f"{subdir}/{c}" if subdir else c))]
    if path is not None and not wanted:
        return path
    roots = _host.model_folder_paths(FOLDER)
    if not wanted:
        searched = ", ".join(roots) or f"models/{FOLDER}"
        raise WeightsError(f"'{name}' not found in models/{FOLDER} (searched: {searched})",
                           input_name=input_name, fix="pick a file from the list (press R to "
                                                      "refresh it)")
    if not download:
        where = os.path.join(roots[0], wanted[0].subdir) if roots else f"models/{FOLDER}"
        files = ", ".join(wf.filename for wf in wanted)
        raise WeightsError(
            f"no {files} for '{name}' in {where} (searched: each registered '{FOLDER}' folder)",
            input_name=input_name,
            fix=f"turn 'download' on, or put {files} from {wanted[0].manual or wanted[0].source} "
                "there")
    if not roots:
        raise WeightsError(f"no '{FOLDER}' model folder is registered", input_name=input_name,
                           fix="run inside ComfyUI, or pass a models folder")
    from ..musetalk_core.weights.download import ensure

    for wf in wanted:
        ensure(wf, roots)
    found = _host.resolve_model_path(name, FOLDER, input_name=input_name, allow_dir=folder_ok)
    if found is None:  # pragma: no cover - the download wrote it under the first root
        raise WeightsError(f"'{name}' is still missing after the download",
                           input_name=input_name, fix="download it by hand")
    return found


def fingerprint_of(*names: str) -> Callable[..., Any]:
    """A ``fingerprint`` (the host's IS_CHANGED) over the files named by the given inputs."""

    def fingerprint(**inputs: Any) -> Any:
        parts = []
        for input_name in names:
            name = inputs.get(input_name)
            try:
                path = _host.resolve_model_path(str(name), FOLDER, input_name=input_name,
                                                allow_dir=True)
            except Exception:
                path = None
            parts.append((name, path, _stat_key(path) if path else "missing"))
        return repr(parts)

    return fingerprint


def _dtype(requested: str, device: torch.device) -> torch.dtype:
    dtype, warning = _host.choose_dtype(requested or "auto", device)
    if warning:
        log.warning(warning)
    return dtype


def _cached(key: tuple, load: Callable[[], Any]) -> Any:
    model = _CACHE.get(key)
    if model is None:
        model = load()
        with contextlib.suppress(TypeError):  # not weak-referenceable: the host's cache suffices
            _CACHE[key] = model
    return model


def _probe_unet(model: Any) -> bool:
    """One tiny forward in the model's dtype; False if the device cannot compute in it."""
    try:
        with torch.no_grad():
            sample = torch.zeros(1, model.in_channels, 8, 8, dtype=model.dtype)
            model(sample, torch.zeros(1, 50, model.pe.shape[-1], dtype=model.dtype))
        return True
    except (RuntimeError, NotImplementedError, TypeError) as err:
        log.debug("dtype probe failed: %s", err)
        return False


# --------------------------------------------------------------------------- nodes

DTYPE_IN = In("dtype", COMBO, "Weight and compute precision. auto: fp32 on CPU, the host's "
              "choice (fp16/bf16) on GPU. bf16 falls back to fp16 where unsupported.",
              default="auto", options=["auto", "fp16", "bf16", "fp32"])
DOWNLOAD_IN = In("download", BOOLEAN, "Download missing registered files into "
                 "ComfyUI/models/musetalk (verified, resumable). Off: fail with where to get them.",
                 default=True)


def run_model_loader(unet_name: str, version: str, dtype: str, download: bool) -> tuple:
    from ..musetalk_core.models.unet import load_unet

    path = resolve(unet_name, "unet_name", bool(download), companions=("musetalk.json",))
    load_device, offload = _host.model_devices()
    torch_dtype = _dtype(dtype, load_device)
    version = version or "auto"

    def load() -> Any:
        model = load_unet(path, version=version, device=offload, dtype=torch_dtype,
                          display_name=unet_name)
        if torch_dtype != torch.float32 and offload.type == "cpu" and load_device.type == "cpu" \
                and not _probe_unet(model):
            log.warning("%s not supported on %s; using fp32. Fix: dtype auto",
                        str(torch_dtype).removeprefix("torch."), load_device)
            model = load_unet(path, version=version, device=offload, dtype=torch.float32,
                              display_name=unet_name)
        return _host.attach_patcher(model, load_device, offload)

    key = ("unet", path, _stat_key(path), torch_dtype, str(offload), version)
    return (_cached(key, load),)


def run_whisper_loader(whisper_name: str, dtype: str, download: bool) -> tuple:
    from ..musetalk_core.models.whisper import load_whisper

    path = resolve(whisper_name, "whisper_name", bool(download), folder_ok=True)
    load_device, offload = _host.model_devices()
    torch_dtype = _dtype(dtype, load_device)
    key = ("whisper", path, _stat_key(path), torch_dtype, str(offload))
    return (_cached(key, lambda: _host.attach_patcher(
        load_whisper(path, device=offload, dtype=torch_dtype), load_device, offload)),)


def run_face_detector_loader(detector_name: str, landmarks_name: str, download: bool,
                             dtype: str | None = None, detect_max_side: int = 1920) -> tuple:
    from ..musetalk_core.models.face_detector import load_face_detector

    s3fd = resolve(detector_name, "detector_name", bool(download))
    fan = resolve(landmarks_name, "landmarks_name", bool(download))
    load_device, offload = _host.model_devices()
    torch_dtype = _dtype(dtype or "auto", load_device)
    side = int(1920 if detect_max_side is None else detect_max_side)
    key = ("detector", s3fd, _stat_key(s3fd), fan, _stat_key(fan), torch_dtype, str(offload),
           side)
    return (_cached(key, lambda: _host.attach_patcher(
        load_face_detector(s3fd, fan, device=offload, dtype=torch_dtype, detect_max_side=side),
        load_device, offload)),)


def run_face_parser_loader(parser_name: str, download: bool, dtype: str | None = None) -> tuple:
    from ..musetalk_core.models.face_parser import load_face_parser

    path = resolve(parser_name, "parser_name", bool(download))
    load_device, offload = _host.model_devices()
    torch_dtype = _dtype(dtype or "auto", load_device)
    key = ("parser", path, _stat_key(path), torch_dtype, str(offload))
    return (_cached(key, lambda: _host.attach_patcher(
        load_face_parser(path, device=offload, dtype=torch_dtype, display_name=parser_name),
        load_device, offload)),)


NODES: list[NodeDef] = [
    NodeDef(
        node_id="MuseTalkModelLoader",
        display_name="MuseTalk Model Loader",
        description="Loads the MuseTalk UNet (v1 pytorch_model.bin or v1.5 unet.pth, or a "
                    ".safetensors copy) with the musetalk.json beside it.",
        inputs=(
            In("unet_name", COMBO, "UNet weights in models/musetalk: musetalkV15/unet.pth (v1.5) "
               "or musetalk/pytorch_model.bin (v1); musetalk.json must sit beside it.",
               default=UNET_DEFAULT, options=unet_choices),
            In("version", COMBO, "MuseTalk version of these weights. auto: from the folder "
               "(musetalk/ = v1, musetalkV15/ = v1.5). Sets the crop and blend constants "
               "downstream.", default="auto", options=["auto", "v1", "v1.5"]),
            DTYPE_IN,
            DOWNLOAD_IN,
        ),
        outputs=(Out(MUSETALK_MODEL, "model", "The MuseTalk UNet, with its version."),),
        run=run_model_loader,
        fingerprint=fingerprint_of("unet_name"),
    ),
    NodeDef(
        node_id="MuseTalkWhisperLoader",
        display_name="MuseTalk Whisper Loader",
        description="Loads the whisper-tiny encoder from openai's tiny.pt or a Hugging Face "
                    "whisper-tiny folder (either works for either version).",
        inputs=(
            In("whisper_name", COMBO, "whisper-tiny in models/musetalk: the Hugging Face folder "
               "'whisper' (config.json + model.safetensors) or openai's whisper/tiny.pt.",
               default=WHISPER_DEFAULT, options=whisper_choices),
            DTYPE_IN,
            DOWNLOAD_IN,
        ),
        outputs=(Out(MUSETALK_WHISPER, "whisper", "The whisper-tiny audio encoder."),),
        run=run_whisper_loader,
        fingerprint=fingerprint_of("whisper_name"),
    ),
    NodeDef(
        node_id="MuseTalkFaceDetectorLoader",
        display_name="MuseTalk Face Detector Loader",
        description="Loads face-alignment's S3FD face detector and 2D-FAN 68-point landmark "
                    "model from models/musetalk/face_alignment.",
        inputs=(
            In("detector_name", COMBO, "S3FD weights (s3fd-619a316812.pth).",
               default=S3FD_DEFAULT, options=_under("face_alignment/", [S3FD_DEFAULT])),
            In("landmarks_name", COMBO, "2D-FAN weights (2DFAN4-11f355bf06.pth.tar). The old "
               "TorchScript 2DFAN4-cd938726ad.zip is used only if you placed it and no "
               "state-dict file exists.", default=FAN_DEFAULT,
               options=_under("face_alignment/", [FAN_DEFAULT])),
            DTYPE_IN,
            DOWNLOAD_IN,
            In("detect_max_side", INT, "Faces are found on a copy of each frame whose longer "
               "side is at most this; landmarks still come from the full frame. 1920 keeps HD "
               "frames as they are (as the reference). 640 finds faces several times faster on "
               "a CPU; the boxes may move by a pixel or two.", default=1920, min=64, max=8192,
               step=32),
        ),
        outputs=(Out(MUSETALK_FACE_DETECTOR, "face_detector", "S3FD + 2D-FAN."),),
        run=run_face_detector_loader,
        fingerprint=fingerprint_of("detector_name", "landmarks_name"),
    ),
    NodeDef(
        node_id="MuseTalkFaceParserLoader",
        display_name="MuseTalk Face Parser Loader",
        description="Loads the BiSeNet face parser (79999_iter.pth, 19 classes) used by the "
                    "blend's jaw/neck masks.",
        inputs=(
            In("parser_name", COMBO, "BiSeNet weights in models/musetalk/face-parse-bisent "
               "(79999_iter.pth; not the resnet18 backbone file).", default=PARSER_DEFAULT,
               options=_under("face-parse-bisent/", [PARSER_DEFAULT])),
            DTYPE_IN,
            DOWNLOAD_IN,
        ),
        outputs=(Out(MUSETALK_FACE_PARSER, "face_parser", "The BiSeNet face parser."),),
        run=run_face_parser_loader,
        fingerprint=fingerprint_of("parser_name"),
    ),
]
