"""MuseTalk's UNet: a diffusers ``UNet2DConditionModel`` plus the audio positional encoding.

Built from the ``musetalk.json`` beside the weights (never a hard-coded config), loaded from
``pytorch_model.bin`` (v1), ``unet.pth`` (v1.5) or a ``.safetensors`` conversion with a strict key
check (musetalk.md 1.2, 2.1). The version travels with the model as ``.version``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping

import torch
from torch import nn

from ..checkpoint import read_checkpoint, state_dict_of, strip_prefixes
from ..errors import InputError, WeightsError
from ..types import VERSIONS, Version
from ..weights.hashing import file_sha256
from ..weights.registry import known_releases

log = logging.getLogger(__name__)

CONFIG_NAMES = ("musetalk.json", "musetalk_musetalk.json")
PE_MAX_LEN = 5000
SOURCE_FIX = ("download it again from HF TMElyralab/MuseTalk (musetalk/pytorch_model.bin or "
              "musetalkV15/unet.pth)")
PICK_FIX = "pick musetalk/pytorch_model.bin or musetalkV15/unet.pth"


def positional_encoding(d_model: int = 384, max_len: int = PE_MAX_LEN) -> torch.Tensor:
    """REF's sinusoidal table, float32 ``[1, max_len, d_model]`` (musetalk.md 3.6).

    ``PE[p, 2k] = sin(p * div[k])``, ``PE[p, 2k+1] = cos(p * div[k])`` with
    ``div[k] = exp(2k * (-ln 10000 / d_model))``.
    """
    pos = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32)
                    * (-math.log(10000.0) / d_model))
    pe = torch.zeros(max_len, d_model, dtype=torch.float32)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe.unsqueeze(0)


class MuseTalkUNet(nn.Module):
    """The inpainting UNet of one MuseTalk release.

    Attributes:
        unet: the diffusers ``UNet2DConditionModel``.
        version: ``"v1"`` or ``"v1.5"``; sets the version constants downstream.
        pe: positional-encoding buffer ``[1, 5000, d]`` (d = 384), in the model's dtype.
        source: the file it was loaded from (for messages and cache keys).
        channels_last: on CPU, run the convolutions in the ``channels_last`` memory format
            (oneDNN's NHWC kernels: faster, same values within float rounding). The weights
            are re-laid out once, on the first call on a given device type. Default True.
    """

    def __init__(self, unet: nn.Module, version: Version, source: str = "") -> None:
        super().__init__()
        self.unet = unet
        self.version: Version = version
        self.source = source
        d_model = int(unet.config.cross_attention_dim)
        self.register_buffer("pe", positional_encoding(d_model), persistent=False)
        self.channels_last = True
        self._format: torch.memory_format | None = None

    def _memory_format(self, device: torch.device) -> torch.memory_format:
        """The layout for this call; re-lays the UNet's weights out when it changes."""
        fmt = (torch.channels_last if self.channels_last and device.type == "cpu"
               else torch.contiguous_format)
        if fmt != self._format:
            self.unet.to(memory_format=fmt)
            self._format = fmt
        return fmt

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    def forward(self, sample: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Predict the face latents.

        Args:
            sample: ``[B, 8, h, w]`` = [masked latents, reference latents] (scaled), any float.
            audio: ``[B, T, 384]`` whisper window tokens (T = 50), before positional encoding.

        Returns:
            ``[B, 4, h, w]`` predicted (scaled) latents in the model's dtype, on its device.
        """
        d_model = self.pe.shape[-1]
        if sample.ndim != 4 or sample.shape[1] != self.in_channels:
            raise InputError(f"UNet sample has shape {list(sample.shape)}, expected "
                             f"[B, {self.in_channels}, h, w]", input_name="sample",
                             fix="pass [masked, reference] latents concatenated on channels")
        if (audio.ndim != 3 or audio.shape[0] != sample.shape[0] or audio.shape[2] != d_model
                or audio.shape[1] > self.pe.shape[1]):
            raise InputError(f"UNet audio has shape {list(audio.shape)}, expected "
                             f"[{sample.shape[0]}, T<={self.pe.shape[1]}, {d_model}]",
                             input_name="audio", fix="pass whisper windows of [B, 50, 384]")
        dtype, device = self.dtype, self.device
        audio = audio.to(device=device, dtype=dtype)
        audio = audio + self.pe[:, : audio.shape[1]].to(dtype)
        timestep = torch.zeros(1, dtype=torch.long, device=device)
        fmt = self._memory_format(device)
        sample = sample.to(device=device, dtype=dtype).contiguous(memory_format=fmt)
        out = self.unet(sample, timestep, encoder_hidden_states=audio, return_dict=False)[0]
        return out.contiguous()


def find_config(weights_path: str) -> str | None:
    """``musetalk.json`` (or the ``musetalk_musetalk.json`` download name) beside the weights."""
    folder = os.path.dirname(os.path.abspath(weights_path))
    for name in CONFIG_NAMES:
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def version_from_path(path: str) -> Version | None:
    """``v1.5`` for a ``musetalkV15`` folder or ``unet.pth``; ``v1`` for ``musetalk``."""
    folder = os.path.basename(os.path.dirname(os.path.abspath(path))).lower()
    if folder in ("musetalkv15", "musetalkv1.5", "musetalk_v15", "musetalk-v15"):
        return "v1.5"
    if folder == "musetalk":
        return "v1"
    name = os.path.basename(path).lower()
    if name.startswith("unet.pth"):
        return "v1.5"
    if name.startswith("pytorch_model.bin"):
        return "v1"
    return None


def _shown(path: str) -> str:
    parts = os.path.abspath(path).replace(os.sep, "/").split("/")
    return "/".join(parts[-2:])


def _some(keys: list[str], n: int = 5) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(repr(k) for k in keys[:n]) + more


def _check_not_sd(sd: Mapping[str, torch.Tensor], shown: str) -> None:
    """Refuse a Stable Diffusion 1.x UNet before anything is built (M4)."""
    sd_msg = (f"{shown} is a Stable Diffusion 1.x UNet (4 input channels, text width 768), not "
              "MuseTalk's (8 and 384)")
    if any(k.startswith("model.diffusion_model.") for k in sd):
        raise WeightsError(sd_msg, fix=PICK_FIX)
    conv_in = sd.get("conv_in.weight")
    if conv_in is None:
        log.debug("keys of %s: %s", shown, sorted(sd))
        raise WeightsError(f"{shown} holds no UNet weights (no 'conv_in.weight'; first keys: "
                           f"{_some(sorted(sd))})", fix=PICK_FIX)
    widths = {int(v.shape[1]) for k, v in sd.items() if k.endswith("attn2.to_k.weight")}
    if conv_in.shape[1] == 4 or 768 in widths or 1024 in widths:
        raise WeightsError(sd_msg, fix=PICK_FIX)


def _resolve_version(path: str, shown: str, version: str | None,
                     releases: Mapping[str, str]) -> Version:
    explicit = version not in (None, "auto")
    if explicit and version not in VERSIONS:
        raise InputError(f"unknown version {version!r}", input_name="version",
                         fix=f"use one of auto, {', '.join(VERSIONS)}")
    chosen = version if explicit else (version_from_path(path) or "v1.5")
    if releases:
        released = releases.get(file_sha256(path))
        if released is not None and released != chosen:
            if explicit:
                raise WeightsError(f"{shown} is the released {released} UNet but version is "
                                   f"{chosen}", input_name="version",
                                   fix=f"set version to {released}")
            chosen = released
        if released is not None:
            log.info("%s is the released %s UNet", shown, released)
            return chosen  # type: ignore[return-value]
    log.info("loading %s as MuseTalk %s (%s)", shown, chosen,
             "as set" if explicit else "from its folder name")
    return chosen  # type: ignore[return-value]


def load_unet(
    path: str,
    *,
    version: str | None = None,
    config_path: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    releases: Mapping[str, str] | None = None,
    display_name: str | None = None,
) -> MuseTalkUNet:
    """Load a MuseTalk UNet checkpoint.

    Args:
        path: ``pytorch_model.bin`` (v1), ``unet.pth`` (v1.5) or a ``.safetensors`` conversion.
        version: ``"v1"``, ``"v1.5"``, or ``None``/``"auto"`` (from the folder name).
        config_path: the architecture json; default ``musetalk.json`` beside ``path``.
        device: where the weights are placed (the offload device in the host).
        dtype: weight dtype (float tensors are cast on load; fp16 files upcast to fp32).
        releases: ``sha256 -> version`` of known release files (default: the registry's);
            the file is hashed (cached) only when this is non-empty.
        display_name: how errors name the file (default ``<folder>/<file>``).

    Raises:
        WeightsError: unreadable, unsafe, wrong model (SD 1.x), missing/mismatched config,
            missing or unexpected keys, or a released file of the other version.
    """
    from diffusers import UNet2DConditionModel

    shown = display_name or _shown(path)
    releases = known_releases() if releases is None else releases
    chosen = _resolve_version(path, shown, version, releases)
    sd = state_dict_of(read_checkpoint(path, display_name=shown, fix=SOURCE_FIX), shown=shown)
    if any(k.startswith("model.diffusion_model.") for k in sd):  # an SD single-file checkpoint
        _check_not_sd(sd, shown)
    sd = strip_prefixes(sd)
    _check_not_sd(sd, shown)

    config_path = config_path or find_config(path)
    if config_path is None:
        raise WeightsError(f"musetalk.json not found beside {shown}",
                           fix="turn download on, or copy it from HF TMElyralab/MuseTalk "
                               "(same folder as the weights)")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"{os.path.basename(config_path)} beside {shown} is unreadable "
                           f"({err})", fix="download musetalk.json again") from err

    with torch.device("meta"):
        try:
            unet = UNet2DConditionModel.from_config(config)
        except Exception as err:  # diffusers raises ValueError/TypeError/KeyError variously
            raise WeightsError(f"{os.path.basename(config_path)} beside {shown} is not a UNet "
                               f"config ({type(err).__name__}: {err})",
                               fix="download musetalk.json again") from err
    expected = unet.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        log.debug("%s: missing keys %s; unexpected keys %s", shown, missing, unexpected)
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_some(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_some(unexpected)})")
        raise WeightsError(f"{shown} does not match {os.path.basename(config_path)}: "
                           + "; ".join(parts), fix=f"{PICK_FIX}, with its own musetalk.json")
    for key, ref in expected.items():
        if tuple(sd[key].shape) != tuple(ref.shape):
            raise WeightsError(
                f"{os.path.basename(config_path)} does not match {shown}: '{key}' is "
                f"{list(sd[key].shape)} in the weights but {list(ref.shape)} in the config",
                fix="use the musetalk.json that came with these weights")
    device = torch.device(device)
    sd = {k: (v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device))
          for k, v in sd.items()}
    unet.load_state_dict(sd, strict=True, assign=True)
    unet.eval().requires_grad_(False)
    model = MuseTalkUNet(unet, chosen, source=path)
    model.to(device=device, dtype=dtype)
    return model
