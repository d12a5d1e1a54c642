"""Latent inpainting: masked + reference latents and an audio window -> a generated face crop.

For every output frame (musetalk.md 2.2, 4.3-4.5):

1. the source frame's 256x256 crop with rows 128..255 set to 0 in 0..1 space (-1 after the VAE's
   normalisation) and the reference crop (the same frame, or the frame chosen by
   ``MuseTalkReferences``) are encoded by the VAE, scaled by 0.18215;
2. they are concatenated masked-first into 8 channels and run once through the UNet at timestep 0
   with the frame's whisper window (the positional encoding is added inside ``MuseTalkUNet``);
3. the predicted latent is decoded to a uint8 crop.

Deviation from REF: latents are the VAE posterior **mean** (``LatentVAE.encode``), where REF draws a
random sample (musetalk.md 4.4). The mean makes runs deterministic and cacheable; with the real
sd-vae-ft-mse the posterior std is small, so the difference is not visible.

Encoding depends only on the source crops, never on the audio. Latents are memoised per source
frame in ``faces.cache`` (keyed by the VAE object), so a new audio clip on the same cached
faces (the host's node cache, or the pipeline's per-clip state) encodes nothing again: REF's
"avatar" mode. A reference latent is simply the unmasked latent of the reference frame, so the
memo does not depend on the references either.

Rows whose source frame has no face are not run through the models: they keep the source crop and
``has_face`` False, so the blend passes those frames through untouched.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, replace
from typing import Any

import torch

from .batching import auto_batch_size, per_frame_bytes, run_batched
from .errors import InputError
from .runtime import Runtime
from .types import CROP_SIZE, LatentVAE, MuseTalkAudio, MuseTalkFaces, MuseTalkReferences

log = logging.getLogger(__name__)

_CACHE_KEY = "musetalk.inpaint.latents"


@dataclass
class SourceLatents:
    """Memo of one VAE's latents for every source row of a ``MuseTalkFaces``.

    Attributes:
        masked: ``[N, 4, 32, 32]`` latents of the lower-half-masked crops.
        full: ``[N, 4, 32, 32]`` latents of the unmasked crops (the reference latents).
        done: bool ``[N]``: rows already encoded.
        vae_ref: weak reference to the VAE (guards against a reused ``id``).
        encoded: how many rows this memo has encoded so far (for the log and the tests).
    """

    masked: torch.Tensor
    full: torch.Tensor
    done: torch.Tensor
    vae_ref: Any
    encoded: int = 0


def _vae_ref(vae: Any) -> Any:
    try:
        return weakref.ref(vae)
    except TypeError:
        return lambda: vae


def _latent_cache(faces: MuseTalkFaces, vae: LatentVAE, dtype: torch.dtype,
                  device: torch.device) -> SourceLatents:
    store: dict = faces.cache.setdefault(_CACHE_KEY, {})
    key = id(vae)
    entry = store.get(key)
    if entry is None or entry.vae_ref() is not vae:
        n = len(faces)
        c = int(getattr(vae, "latent_channels", 4))
        side = CROP_SIZE // 8
        entry = SourceLatents(
            masked=torch.zeros(n, c, side, side, dtype=dtype, device=device),
            full=torch.zeros(n, c, side, side, dtype=dtype, device=device),
            done=torch.zeros(n, dtype=torch.bool),
            vae_ref=_vae_ref(vae),
        )
        store[key] = entry
    return entry


def latent_memo(faces: MuseTalkFaces, vae: LatentVAE, runtime: Runtime) -> SourceLatents:
    """The latent memo of ``vae`` in ``faces.cache`` (created empty if absent).

    Callers that keep latents across ``MuseTalkFaces`` values (the chunked pipeline) read and
    fill it; rows with ``done`` set are never encoded again.
    """
    return _latent_cache(faces, vae, torch.float32, runtime.intermediate_device)


def crops_to_pixels(crops: torch.Tensor, device: torch.device,
                    dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``[B, 256, 256, 3]`` crops -> (masked, full) float ``[B, 3, 256, 256]`` in 0..1.

    The masked copy has rows 128..255 at 0 (musetalk.md 4.3: masked before normalisation).
    """
    full = crops.to(device).permute(0, 3, 1, 2).to(dtype) / 255.0
    masked = full.clone()
    masked[:, :, CROP_SIZE // 2:, :] = 0
    return masked, full


def pixels_to_crops(pixels: torch.Tensor) -> torch.Tensor:
    """float ``[B, 3, 256, 256]`` 0..1 -> uint8 ``[B, 256, 256, 3]`` (round half up, as REF)."""
    x = (pixels.float().clamp(0, 1) * 255.0).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def encode_sources(
    faces: MuseTalkFaces,
    vae: LatentVAE,
    rows: torch.Tensor,
    runtime: Runtime,
    *,
    batch_size: int = 0,
) -> SourceLatents:
    """Encode the masked and unmasked crops of source ``rows`` not yet in the memo.

    Args:
        faces: source faces (crops uint8 ``[N, 256, 256, 3]``).
        vae: a :class:`LatentVAE`.
        rows: int64 source rows that will be needed.
        runtime: device, dtype, progress.
        batch_size: frames per VAE call (0: automatic).

    Returns:
        the memo; ``masked[rows]`` and ``full[rows]`` are filled.
    """
    dtype = runtime.dtype or torch.float32
    entry = _latent_cache(faces, vae, torch.float32, runtime.intermediate_device)
    rows = torch.unique(rows.to(torch.int64).cpu())
    todo = rows[~entry.done[rows]]
    if todo.numel() == 0:
        return entry
    runtime.load_models([vae])
    batch = auto_batch_size(runtime, todo.numel(), per_frame_bytes(dtype), requested=batch_size)

    def work(start: int, stop: int) -> None:
        idx = todo[start:stop]
        masked, full = crops_to_pixels(faces.crops[idx], runtime.device, dtype)
        with torch.no_grad():
            lat = vae.encode(torch.cat([masked, full])).to(entry.masked.device, torch.float32)
        b = idx.numel()
        entry.masked[idx] = lat[:b]
        entry.full[idx] = lat[b:]

    run_batched(todo.numel(), batch, work, runtime, "VAE encode")
    entry.done[todo] = True
    entry.encoded += int(todo.numel())
    return entry


def _model_dtype(module: Any, runtime: Runtime) -> torch.dtype:
    if runtime.dtype is not None:
        return runtime.dtype
    try:
        return next(module.parameters()).dtype
    except (AttributeError, StopIteration):
        return torch.float32


def check_inputs(
    faces: MuseTalkFaces,
    unet: Any,
    references: MuseTalkReferences | None,
) -> None:
    """Refuse mis-wired inputs before any model runs (robustness T6, T7)."""
    if faces.generated:
        raise InputError(
            "these faces already hold generated crops",
            input_name="faces",
            fix="connect the output of MuseTalk Face Crop, not of MuseTalk Inpaint",
        )
    if len(faces) == 0:
        raise InputError("the faces hold no frames", input_name="faces",
                         fix="connect frames to MuseTalk Face Crop")
    version = getattr(unet, "version", None)
    if version is not None and version != faces.version:
        margin = "no extra margin" if faces.version == "v1" else "the v1.5 extra margin"
        raise InputError(
            f"faces were cropped with {faces.version} rules ({margin}) but the model is "
            f"{version}",
            input_name="faces",
            fix=f"set MuseTalk Face Crop's version to {version}",
        )
    if references is not None and references.index.shape[0] != len(faces):
        raise InputError(
            f"the references cover {references.index.shape[0]} frames but the faces have "
            f"{len(faces)}",
            input_name="references",
            fix="make the references from the same MuseTalk Face Crop output",
        )


def inpaint(
    faces: MuseTalkFaces,
    audio: MuseTalkAudio,
    unet: torch.nn.Module,
    vae: LatentVAE,
    runtime: Runtime,
    *,
    source_index: torch.Tensor,
    frame_indices: torch.Tensor | None = None,
    references: MuseTalkReferences | None = None,
    batch_size: int = 0,
    silence_gate_db: float = 0.0,
) -> MuseTalkFaces:
    """Generate the lip-synced face crop of every output frame.

    Args:
        faces: source faces, one row per source frame (``generated`` False).
        audio: whisper features of the speech.
        unet: ``MuseTalkUNet``: ``(sample [B,8,32,32], audio [B,50,384]) -> [B,4,32,32]``.
        vae: a :class:`LatentVAE`.
        runtime: device, dtype, progress, interruption, memory.
        source_index: int64 ``[M]``: the row of ``faces`` each output frame shows
            (:func:`musetalk_core.timeline.source_index`).
        frame_indices: int64 ``[M]``: the audio frame of each output row (default ``0..M-1``;
            the streaming pipeline passes its chunk's range).
        references: optional reference choice per source row (default: the frame itself).
        batch_size: frames per UNet + decode batch (0: from free memory; halves on OOM).
        silence_gate_db: 0 (off, as REF) or a level in dBFS: output frames whose speech is
            quieter keep the source mouth (no face generated: ``has_face`` False, so the blend
            leaves them untouched). Their count and frame numbers go to ``info`` and the log.

    Returns:
        ``MuseTalkFaces`` with ``M`` rows, ``generated`` True, ``source_index`` mapping rows to
        source frames, geometry gathered per row and generated uint8 crops (source crops where
        the frame has no face).
    """
    from .audio import silent_frames, windows
    from .faces import frame_ranges

    check_inputs(faces, unet, references)
    si = source_index.to(torch.int64).cpu()
    if si.numel() and (int(si.min()) < 0 or int(si.max()) >= len(faces)):
        raise InputError(f"source index out of range 0..{len(faces) - 1}", input_name="faces",
                         fix="this is a bug in the caller; please report it")
    m = int(si.numel())
    fi = torch.arange(m, dtype=torch.int64) if frame_indices is None else frame_indices.cpu()
    ref_of = (torch.arange(len(faces), dtype=torch.int64) if references is None
              else references.index.to(torch.int64).cpu().clamp(0, len(faces) - 1))
    # A reference without a face cannot serve: fall back to the frame itself.
    ref_of = torch.where(faces.has_face[ref_of], ref_of, torch.arange(len(faces)))

    has = faces.has_face[si]
    quiet = silent_frames(audio, fi, silence_gate_db) & has
    if bool(quiet.any()):
        log.info("silence gate (%.0f dBFS): %d frames keep the source mouth: %s",
                 float(silence_gate_db), int(quiet.sum()), frame_ranges(fi[quiet].tolist()))
        has = has & ~quiet
    rows = torch.nonzero(has).flatten()
    crops = faces.crops[si].to(runtime.intermediate_device).clone()

    encoded = 0
    if rows.numel():
        src = si[rows]
        ref = ref_of[src]
        before = _latent_cache(faces, vae, torch.float32, runtime.intermediate_device).encoded
        memo = encode_sources(faces, vae, torch.cat([src, ref]), runtime, batch_size=batch_size)
        encoded = memo.encoded - before
        dtype = _model_dtype(unet, runtime)
        runtime.load_models([unet, vae])
        batch = auto_batch_size(runtime, rows.numel(), per_frame_bytes(dtype),
                                requested=batch_size)

        def work(start: int, stop: int) -> None:
            r = rows[start:stop]
            s = si[r]
            sample = torch.cat([memo.masked[s], memo.full[ref_of[s]]], dim=1)
            sample = sample.to(runtime.device, dtype)
            feats = windows(audio, fi[r], device=runtime.device, dtype=dtype)
            with torch.no_grad():
                latents = unet(sample, feats)
                pixels = vae.decode(latents)
            crops[r] = pixels_to_crops(pixels).to(crops.device)

        run_batched(rows.numel(), batch, work, runtime, "UNet + VAE decode")

    info = dict(faces.info)
    info.update({"generated_frames": int(rows.numel()), "passthrough_frames": m - int(rows.numel()),
                 "encoded_frames": encoded, "silent_frames": fi[quiet].tolist()})
    return replace(
        faces,
        boxes=faces.boxes[si],
        has_face=has,
        landmarks=faces.landmarks[si],
        crops=crops,
        source_index=faces.index[si],
        generated=True,
        cache=faces.cache,  # shared: the blend memoises per source frame there too
        info=info,
    )
