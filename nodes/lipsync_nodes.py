"""MuseTalk Lip Sync: the whole chain in one node (IMAGE or VIDEO + AUDIO -> frames, audio, mask).

It calls exactly what the separate nodes call, in their order: ``faces.crop_faces`` (Face Crop),
``audio.extract_features`` (Audio Features), :func:`nodes.inpaint_nodes.run_inpaint` (Inpaint) and
``blend.blend_faces`` (Blend), so its frames equal the modular chain's. Unlike the modular chain,
changing the audio re-runs everything here (the host caches whole nodes).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from ..musetalk_core import blend, pipeline, timeline
from ..musetalk_core.errors import InputError
from . import _host
from ._spec import (
    AUDIO,
    COMBO,
    FLOAT,
    IMAGE,
    INT,
    MASK,
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
from .face_nodes import FACE_SELECTION
from .inpaint_nodes import SILENCE_GATE, run_inpaint

log = logging.getLogger(__name__)

PARSING_MODES = ("auto", "jaw", "raw", "neck", "ellipse")


def source_frames(images: Any, video: Any, fps: Any) -> tuple[torch.Tensor, Any]:
    """The frames and their exact rate, from IMAGE + fps or from a VIDEO's components."""
    from ..musetalk_core.audio import to_fraction
    from ..musetalk_core.faces import check_frames

    if video is not None:
        comps = video.get_components()
        return check_frames(comps.images, "video"), to_fraction(comps.frame_rate,
                                                                input_name="video")
    if images is None:
        raise InputError("no frames connected", input_name="images",
                         fix="connect an IMAGE batch (or a VIDEO to 'video')")
    return check_frames(images, "images"), to_fraction(25.0 if fps is None else fps)


def trimmed_audio(audio: dict, n_frames: int, fps: Any) -> dict:
    """The AUDIO cut (or zero-padded) to last ``n_frames / fps`` within one sample."""
    wave = torch.as_tensor(audio["waveform"])
    rate = int(audio["sample_rate"])
    n = timeline.samples_for(n_frames, fps, rate)
    if wave.shape[-1] >= n:
        wave = wave[..., :n]
    else:
        pad = torch.zeros(*wave.shape[:-1], n - wave.shape[-1], dtype=wave.dtype)
        wave = torch.cat([wave, pad], dim=-1)
    return {"waveform": wave, "sample_rate": rate}


def run_lipsync(images: Any, audio: Any, model: Any, vae: Any, whisper: Any, rt: Any, *,
                video: Any = None, detector: Any = None, pose_keypoints: Any = None,
                parser: Any = None, fps: Any = 25.0, bbox_shift: int = 0,
                extra_margin: int = 10, length_policy: str = timeline.DEFAULT_POLICY,
                parsing_mode: str = "auto", batch_size: int = 0, face_index: int = -1,
                on_missing_face: str = "passthrough", smooth_boxes: float = 0.0,
                silence_gate_db: float = 0.0) -> tuple:
    """The node's work: ``(frames, audio, mask, fps)``."""
    from ..musetalk_core.audio import extract_features
    from ..musetalk_core.faces import crop_faces

    t0 = time.perf_counter()
    if model is None:
        raise InputError("no MuseTalk model connected", input_name="model",
                         fix="connect MuseTalk Model Loader")
    if whisper is None:
        raise InputError("no whisper model connected", input_name="whisper",
                         fix="connect MuseTalk Whisper Loader")
    if length_policy not in timeline.POLICIES:
        raise InputError(f"unknown length policy {length_policy!r}", input_name="length_policy",
                         fix=f"use one of {', '.join(timeline.POLICIES)}")
    frames, rate = source_frames(images, video, fps)
    n_src, h, w = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
    feats = extract_features(audio, whisper, rate, rt)
    n_out = timeline.output_length(n_src, feats.frame_count, length_policy)
    pipeline.preflight_ram(n_out, h, w, input_name="audio")
    version = str(getattr(model, "version", "v1.5"))
    faces = crop_faces(frames, rt, detector=detector, pose_keypoints=pose_keypoints,
                       version=version, bbox_shift=int(bbox_shift or 0),
                       extra_margin=int(10 if extra_margin is None else extra_margin),
                       face_index=int(-1 if face_index is None else face_index),
                       on_missing_face=on_missing_face or "passthrough",
                       smooth=float(smooth_boxes or 0.0))
    gen = run_inpaint(faces, feats, model, vae, None, length_policy, int(batch_size or 0), rt,
                      silence_gate_db=float(silence_gate_db or 0.0))
    out, mask = blend.blend_faces(frames, gen, runtime=rt, parser=parser,
                                  mode=parsing_mode or "auto")
    speech = trimmed_audio(audio, n_out, rate)
    dt = time.perf_counter() - t0
    log.info("MuseTalk Lip Sync: %d frames (%d source, %d with a face) at %s fps in %.1f s "
             "(%.2f frames/s)", n_out, n_src, int(gen.has_face.sum()), rate, dt,
             n_out / dt if dt > 0 else 0.0)
    return out, speech, mask, float(rate)


def _run(audio: Any, model: Any, vae: Any, whisper: Any, images: Any = None, video: Any = None,
         detector: Any = None, pose_keypoints: Any = None, parser: Any = None,
         fps: float = 25.0, bbox_shift: int = 0, extra_margin: int = 10,
         length_policy: str = timeline.DEFAULT_POLICY, parsing_mode: str = "auto",
         batch_size: int = 0, face_index: int = -1, on_missing_face: str = "passthrough",
         smooth_boxes: float = 0.0, silence_gate_db: float = 0.0) -> Result:
    return Result(run_lipsync(
        images, audio, model, vae, whisper, _host.runtime(), video=video, detector=detector,
        pose_keypoints=pose_keypoints, parser=parser, fps=25.0 if fps is None else fps,
        bbox_shift=int(bbox_shift or 0), extra_margin=10 if extra_margin is None else extra_margin,
        length_policy=length_policy or timeline.DEFAULT_POLICY,
        parsing_mode=parsing_mode or "auto", batch_size=int(batch_size or 0),
        face_index=face_index, on_missing_face=on_missing_face, smooth_boxes=smooth_boxes,
        silence_gate_db=silence_gate_db))


LIPSYNC = NodeDef(
    node_id="MuseTalkLipSync",
    display_name="MuseTalk Lip Sync",
    description=(
        "Lip-syncs frames (or a video) to speech in one node: face crop, audio features, latent "
        "inpainting and blend-back with the reference's defaults. Same results as the separate "
        "MuseTalk nodes. The output follows the audio's length. For long clips use MuseTalk Lip "
        "Sync (video), which streams instead of holding every frame in memory."
    ),
    inputs=(
        In("audio", AUDIO, "The speech that drives the mouth (Load Audio, a TTS node, ...)."),
        In("model", MUSETALK_MODEL, "The MuseTalk UNet from MuseTalk Model Loader (v1 or v1.5)."),
        In("vae", VAE, "sd-vae-ft-mse from the core Load VAE node."),
        In("whisper", MUSETALK_WHISPER, "Whisper-tiny from MuseTalk Whisper Loader."),
        In("images", IMAGE, "The frames to lip-sync (a video's frames, or one still image for a "
           "talking portrait). Leave empty when 'video' is connected.", optional=True),
        In("video", VIDEO, "A VIDEO instead of frames (its frame rate is used and 'fps' is "
           "ignored). Decoded fully into memory.", optional=True),
        In("detector", MUSETALK_FACE_DETECTOR, "Face detector from MuseTalk Face Detector "
           "Loader. Optional when pose_keypoints is connected.", optional=True),
        In("pose_keypoints", POSE_KEYPOINT, "DWPose keypoints of these frames (the reference's "
           "own landmark source); used instead of the detector when connected.", optional=True),
        In("parser", MUSETALK_FACE_PARSER, "BiSeNet from MuseTalk Face Parser Loader; without "
           "it a feathered lower-face ellipse is blended.", optional=True),
        In("fps", FLOAT, "Frame rate of 'images' (ignored when 'video' is connected); 29.97 is "
           "treated as 30000/1001.", default=25.0, min=1.0, max=240.0, step=0.001),
        In("bbox_shift", INT, "v1 only: move the mask line down (+) or up (-) in pixels; "
           "ignored for v1.5.", default=0, min=-200, max=200, step=1),
        In("extra_margin", INT, "v1.5 only: pixels added below the chin (reference: 10).",
           default=10, min=0, max=256, step=1),
        In("length_policy", COMBO, "When the audio outlasts the frames: pingpong (reference), "
           "loop, hold_last, or trim the audio to the frames.",
           default=timeline.DEFAULT_POLICY, options=timeline.POLICIES),
        In("parsing_mode", COMBO, "Blend region: auto (jaw for v1.5, raw for v1), jaw, raw, "
           "neck, or ellipse (no parser needed).", default="auto", options=PARSING_MODES),
        In("batch_size", INT, "Frames per model batch; 0 picks one from free memory.",
           default=0, min=0, max=256, step=1),
        *FACE_SELECTION,
        SILENCE_GATE,
    ),
    outputs=(
        Out(IMAGE, "frames", "The lip-synced frames, as many as the audio lasts at the fps."),
        Out(AUDIO, "audio", "The speech trimmed to the frames' duration (for Create Video)."),
        Out(MASK, "mask", "Blend alpha per frame: 0 exactly where the output equals the input."),
        Out(FLOAT, "fps", "The frame rate of the output frames."),
    ),
    run=_run,
)

NODES: list[NodeDef] = [LIPSYNC]
