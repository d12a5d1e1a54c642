"""MuseTalk Lip Sync (video): VIDEO + AUDIO -> VIDEO, streamed in bounded memory.

The node renders inside its own run (``comfyui-host.md`` 12.5 "render-in-execute"): it reads the
source lazily through ``video.get_stream_source()`` (never ``get_components()``, which decodes
the whole clip into RAM), lip-syncs chunk by chunk with the same core pipeline as the IMAGE
nodes, writes an H.264 MP4 with the speech muxed in into the host's temp folder and returns a
standard file-backed VIDEO (the host's ``VideoFromFile``). Progress, interruption and errors
belong to this node; the result is cached like any output, and SaveVideo only remuxes it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import uuid
from typing import Any

from ..musetalk_core import timeline
from ..musetalk_core.errors import InputError
from . import _host
from ._spec import (
    AUDIO,
    COMBO,
    FLOAT,
    INT,
    MUSETALK_FACE_DETECTOR,
    MUSETALK_FACE_PARSER,
    MUSETALK_MODEL,
    MUSETALK_WHISPER,
    POSE_KEYPOINT,
    VAE,
    VIDEO,
    In,
    NodeDef,
    Out,
    Result,
)
from .inpaint_nodes import SILENCE_GATE

log = logging.getLogger(__name__)

PARSING_MODES = ("auto", "jaw", "raw", "neck", "ellipse")

CAPTURE = None
"""Test hook: a ``streaming.CaptureFn`` that sees every chunk's frames before encoding."""


def output_folder() -> str:
    """Where rendered videos go: the host's temp folder, else a ``musetalk`` system temp dir."""
    folder = _host.temp_directory() or os.path.join(tempfile.gettempdir(), "musetalk")
    os.makedirs(folder, exist_ok=True)
    return folder


@contextlib.contextmanager
def _source_path(video: Any, folder: str):
    """A file path for ``video``'s stream source; an in-memory source is spilled to a temp file
    (short clips: ``VideoFromComponents`` encodes itself into a BytesIO) and removed after."""
    getter = getattr(video, "get_stream_source", None)
    if getter is None:
        raise InputError(f"expected a VIDEO, got {type(video).__name__}", input_name="video",
                         fix="connect Load Video (or another node with a VIDEO output)")
    src = getter()
    if isinstance(src, (str, os.PathLike)):
        yield os.fspath(src)
        return
    if not isinstance(src, io.IOBase) and not hasattr(src, "read"):
        raise InputError(f"the VIDEO's stream source is a {type(src).__name__}",
                         input_name="video", fix="connect Load Video")
    path = os.path.join(folder, f".musetalk-src-{uuid.uuid4().hex[:12]}.mp4")
    try:
        if hasattr(src, "seek"):
            src.seek(0)
        with open(path, "wb") as fh:
            shutil.copyfileobj(src, fh)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _run(video: Any, audio: Any, model: Any, vae: Any, whisper: Any, detector: Any = None,
         pose_keypoints: Any = None, parser: Any = None, frames_per_chunk: int = 32,
         bbox_shift: int = 0, extra_margin: int = 10,
         length_policy: str = timeline.DEFAULT_POLICY, parsing_mode: str = "auto",
         batch_size: int = 0, face_index: int = -1, on_missing_face: str = "passthrough",
         smooth_boxes: float = 0.0, silence_gate_db: float = 0.0) -> Result:
    from ..musetalk_core.pipeline import LipSyncModels, LipSyncSettings
    from ..musetalk_core.streaming import lipsync_video
    from .inpaint_nodes import latent_vae

    if video is None:
        raise InputError("no video connected", input_name="video", fix="connect Load Video")
    if model is None:
        raise InputError("no MuseTalk model connected", input_name="model",
                         fix="connect MuseTalk Model Loader")
    if detector is None and pose_keypoints is None:
        raise InputError("neither a face detector nor pose keypoints are connected",
                         input_name="detector",
                         fix="connect MuseTalk Face Detector Loader (or a DWPose POSE_KEYPOINT)")
    models = LipSyncModels(unet=model, vae=latent_vae(vae), whisper=whisper,
                           detector=None if pose_keypoints is not None else detector,
                           parser=parser)
    settings = LipSyncSettings(
        bbox_shift=int(bbox_shift or 0),
        extra_margin=None if extra_margin is None else int(extra_margin),
        length_policy=length_policy or timeline.DEFAULT_POLICY,
        parsing_mode=None if parsing_mode in (None, "auto") else parsing_mode,
        batch_size=int(batch_size or 0), chunk_size=int(frames_per_chunk or 32),
        face_index=-1 if face_index is None else int(face_index),
        on_missing_face=on_missing_face or "passthrough",
        smooth_boxes=float(smooth_boxes or 0.0),
        silence_gate_db=float(silence_gate_db or 0.0))
    folder = output_folder()
    output = os.path.join(folder, f"musetalk_lipsync_{uuid.uuid4().hex[:12]}.mp4")
    with _source_path(video, folder) as source:
        report = lipsync_video(source, audio, models, settings, _host.runtime(), output=output,
                               pose_keypoints=pose_keypoints, capture=CAPTURE)
    text = (f"{report.frames} frames, {report.duration:.2f} s at {report.fps} fps, "
            f"{report.frames / max(report.seconds, 1e-9):.2f} frames/s")
    return Result((_host.video_from_file(report.path),), {"text": [text]})


LIPSYNC_VIDEO = NodeDef(
    node_id="MuseTalkLipSyncVideo",
    display_name="MuseTalk Lip Sync (video)",
    description=(
        "Lip-syncs a whole video to speech in bounded memory: frames are decoded, lip-synced and "
        "encoded a chunk at a time, so a clip of any length needs about the same RAM. Returns an "
        "MP4 (H.264, speech as AAC) in the temp folder as a VIDEO; connect Save Video to keep it. "
        "The output follows the speech; a shorter video is walked by the length policy."
    ),
    inputs=(
        In("video", VIDEO, "The source video (Load Video). Read lazily from its file; never "
                           "decoded whole."),
        In("audio", AUDIO, "The driving speech (Load Audio). Sets the output length and is "
                           "muxed into the result."),
        In("model", MUSETALK_MODEL, "The MuseTalk UNet from MuseTalk Model Loader (v1 or v1.5)."),
        In("vae", VAE, "sd-vae-ft-mse from Load VAE."),
        In("whisper", MUSETALK_WHISPER, "whisper-tiny from MuseTalk Whisper Loader."),
        In("detector", MUSETALK_FACE_DETECTOR, "Face detector + 68-point landmarks (MuseTalk "
           "Face Detector Loader). Not needed when pose keypoints are connected.", optional=True),
        In("pose_keypoints", POSE_KEYPOINT, "Face keypoints per source frame (DWPose/OpenPose) "
           "instead of the detector.", optional=True),
        In("parser", MUSETALK_FACE_PARSER, "BiSeNet face parser for the blend mask; without "
           "it a feathered ellipse is used.", optional=True),
        In("frames_per_chunk", INT, "Frames decoded, lip-synced and encoded at a time. RAM grows "
           "with it (about 70 MB per 720p frame on CPU), never with the clip length.",
           default=32, min=1, max=1024, step=1),
        In("bbox_shift", INT, "v1 only: moves the mouth-mask line down (+) or up (-) in pixels.",
           default=0, min=-100, max=100, step=1),
        In("extra_margin", INT, "v1.5 only: pixels added below the face box (chin room).",
           default=10, min=0, max=100, step=1),
        In("length_policy", COMBO, "When the speech outlasts the video: pingpong walks it "
           "forward and back (REF), loop restarts, hold_last freezes, trim cuts the speech.",
           default=timeline.DEFAULT_POLICY, options=list(timeline.POLICIES)),
        In("parsing_mode", COMBO, "Blend region: auto (jaw for v1.5, raw for v1), jaw, raw, "
           "neck, or ellipse (no parser).", default="auto", options=list(PARSING_MODES)),
        In("batch_size", INT, "Frames per model batch; 0 picks it from free memory and halves it "
           "on out-of-memory.", default=0, min=0, max=256, step=1),
        In("face_index", INT, "-1: automatic (the largest plausible face). 0, 1, ...: the face "
           "counted left to right in the first frame with faces. It is followed through the "
           "whole clip, across chunks.", default=-1, min=-1, max=64, step=1),
        In("on_missing_face", COMBO, "Frames without the face: passthrough (left untouched), "
           "hold_last (the last face box, also across chunks) or error.",
           default="passthrough", options=["passthrough", "hold_last", "error"]),
        In("smooth_boxes", FLOAT, "Temporal smoothing of the crop boxes (0 = off, matches the "
           "reference; 1 = strongest). Causal, so the chunk size does not change the result.",
           default=0.0, min=0.0, max=1.0, step=0.05),
        SILENCE_GATE,
    ),
    outputs=(Out(VIDEO, "video", "The lip-synced MP4 with the speech, file-backed (temp folder): "
                                 "Save Video keeps it without re-encoding."),),
    run=_run,
)

NODES: list[NodeDef] = [LIPSYNC_VIDEO]
