"""MuseTalk Inpaint: source faces + audio features -> generated crops on the audio's timeline."""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from typing import Any

import torch

from ..musetalk_core import inpaint, timeline
from ..musetalk_core.errors import InputError
from ..musetalk_core.types import LatentVAE, MuseTalkAudio, MuseTalkFaces
from . import _host
from ._spec import (
    COMBO,
    FLOAT,
    IMAGE,
    INT,
    MUSETALK_AUDIO,
    MUSETALK_FACES,
    MUSETALK_MODEL,
    MUSETALK_REFERENCES,
    VAE,
    In,
    NodeDef,
    Out,
    Result,
)

log = logging.getLogger(__name__)

PREVIEW_MAX = 1000
"""The crops preview holds at most this many frames (every k-th frame of a longer clip)."""

_WRAPPERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def latent_vae(vae: Any) -> LatentVAE:
    """The core ``LatentVAE`` for a host ``comfy.sd.VAE`` (or a LatentVAE already).

    A host VAE gets one wrapper per VAE object for its lifetime, so the latent memo kept in the
    cached faces (keyed by the wrapper) is found again when only the audio changes.
    """
    if vae is None:
        raise InputError("no VAE connected", input_name="vae",
                         fix="connect a Load VAE node with sd-vae-ft-mse")
    is_host_vae = hasattr(vae, "first_stage_model") or hasattr(vae, "patcher")
    if not is_host_vae and isinstance(vae, LatentVAE):
        return vae
    if not is_host_vae:
        raise InputError(f"expected a VAE, got {type(vae).__name__}", input_name="vae",
                         fix="connect a Load VAE node with sd-vae-ft-mse")
    try:
        wrapped = _WRAPPERS.get(vae)
    except TypeError:
        wrapped = None
    if wrapped is None:
        from ..musetalk_core.models.vae import HostLatentVAE

        wrapped = HostLatentVAE(vae)
        with contextlib.suppress(TypeError):
            _WRAPPERS[vae] = wrapped
    return wrapped


def check_types(faces: Any, audio: Any) -> None:
    if not isinstance(faces, MuseTalkFaces):
        raise InputError(f"expected MUSETALK_FACES, got {type(faces).__name__}",
                         input_name="faces", fix="connect MuseTalk Face Crop's faces output")
    if not isinstance(audio, MuseTalkAudio):
        raise InputError(f"expected MUSETALK_AUDIO, got {type(audio).__name__}",
                         input_name="audio", fix="connect MuseTalk Audio Features' output")


def crops_preview(faces: MuseTalkFaces) -> torch.Tensor:
    """IMAGE ``[k, 256, 256, 3]`` float32 of the crops, strided to at most :data:`PREVIEW_MAX`."""
    n = len(faces)
    step = max(1, -(-n // PREVIEW_MAX))
    return faces.crops[::step].float() / 255.0


SILENCE_GATE = In(
    "silence_gate_db", FLOAT, "0 = off: every frame is lip-synced, as the reference. A level "
    "in dBFS such as -45: frames whose speech is quieter keep the source mouth (pauses stay "
    "closed-mouthed as filmed); the log lists them.", default=0.0, min=-96.0, max=0.0, step=1.0)
"""The silence gate's input, shared by MuseTalk Inpaint and both Lip Sync nodes."""


def run_inpaint(faces: MuseTalkFaces, audio: MuseTalkAudio, model: Any, vae: Any,
                references: Any, length_policy: str, batch_size: int, rt: Any,
                silence_gate_db: float = 0.0) -> MuseTalkFaces:
    """The node's work, shared with MuseTalk Lip Sync: timeline, then :func:`inpaint.inpaint`."""
    check_types(faces, audio)
    if model is None:
        raise InputError("no MuseTalk model connected", input_name="model",
                         fix="connect MuseTalk Model Loader")
    n_src = len(faces)
    idx = timeline.source_index(n_src, audio.frame_count, length_policy)
    log.info("MuseTalk Inpaint: %s", timeline.describe(n_src, audio.frame_count, length_policy))
    t0 = time.perf_counter()
    out = inpaint.inpaint(faces, audio, model, latent_vae(vae), rt, source_index=idx,
                          references=references, batch_size=int(batch_size or 0),
                          silence_gate_db=float(silence_gate_db or 0.0))
    dt = time.perf_counter() - t0
    log.info("MuseTalk Inpaint: %d frames (%d generated, %d encoded) in %.1f s (%.2f frames/s)",
             len(out), out.info["generated_frames"], out.info["encoded_frames"], dt,
             len(out) / dt if dt > 0 else 0.0)
    return out


def _run(model: Any, vae: Any, faces: Any, audio: Any, references: Any = None,
         length_policy: str = timeline.DEFAULT_POLICY, batch_size: int = 0,
         silence_gate_db: float = 0.0) -> Result:
    out = run_inpaint(faces, audio, model, vae, references,
                      length_policy or timeline.DEFAULT_POLICY, int(batch_size or 0),
                      _host.runtime(), silence_gate_db=float(silence_gate_db or 0.0))
    return Result((out, crops_preview(out)))


INPAINT = NodeDef(
    node_id="MuseTalkInpaint",
    display_name="MuseTalk Inpaint",
    description=(
        "Redraws the lower half of every face crop to match the speech: one UNet step in the "
        "VAE's latent space per output frame. The output follows the audio's length. Source "
        "crops are encoded once and remembered, so changing only the audio re-encodes nothing."
    ),
    inputs=(
        In("model", MUSETALK_MODEL, "The MuseTalk UNet from MuseTalk Model Loader (v1 or v1.5)."),
        In("vae", VAE, "sd-vae-ft-mse from the core Load VAE node."),
        In("faces", MUSETALK_FACES, "Face crops from MuseTalk Face Crop (same version as the "
           "model)."),
        In("audio", MUSETALK_AUDIO, "Speech features from MuseTalk Audio Features; their frame "
           "count sets the output length."),
        In("references", MUSETALK_REFERENCES, "Optional reference frame per frame from MuseTalk "
           "Reference Select; default: each frame is its own reference (as the reference code).",
           optional=True),
        In("length_policy", COMBO, "When the audio outlasts the frames: pingpong walks forward "
           "then back (reference behaviour), loop restarts, hold_last freezes the last frame, "
           "trim cuts the audio to the frames. A longer video is always cut to the audio.",
           default=timeline.DEFAULT_POLICY, options=timeline.POLICIES),
        In("batch_size", INT, "Frames per UNet and VAE batch; 0 picks one from free memory. "
           "Halves automatically on out-of-memory.", default=0, min=0, max=256, step=1),
        SILENCE_GATE,
    ),
    outputs=(
        Out(MUSETALK_FACES, "faces", "Generated face crops on the audio's timeline, for "
            "MuseTalk Blend."),
        Out(IMAGE, "crops", f"Preview of the generated 256x256 crops (every k-th frame beyond "
            f"{PREVIEW_MAX})."),
    ),
    run=_run,
)

NODES: list[NodeDef] = [INPAINT]
