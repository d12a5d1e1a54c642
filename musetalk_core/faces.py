"""Face crop stage: frames + (detector or POSE_KEYPOINT) -> :class:`MuseTalkFaces`.

Pipeline (each long pass batched, with ``runtime.step`` per batch):

1. candidates per frame: parsed keypoints (:mod:`.landmarks`), or S3FD boxes of every frame;
2. one face chosen and tracked (:mod:`.tracking`);
3. its landmarks (keypoints, or 2D-FAN on the tracked boxes in batches);
4. the missing-face policy; 5. REF's crop boxes (:mod:`.crop`), optional smoothing;
6. 256x256 Lanczos crops, uint8 on the intermediate device.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from . import crop as cropmod
from .batching import run_batched
from .errors import FaceError, InputError
from .landmarks import Candidates, detector_candidates, pose_candidates
from .runtime import Runtime
from .tracking import TrackState, choose_face
from .types import CROP_SIZE, VERSIONS, MuseTalkFaces, Version

log = logging.getLogger(__name__)

MISSING_POLICIES = ("passthrough", "hold_last", "error")
BBOX_SHIFT_LIMIT = 200
EXTRA_MARGIN_LIMIT = 256
SMALL_FACE = 64
DETECT_BUDGET_BYTES = 2 * 2**30
"""Working memory S3FD may use per batch where free memory is unknown (CPU)."""
DETECT_BYTES_PER_PIXEL = 1536
"""Peak S3FD working memory per input pixel at fp32 (two 64-channel full-size maps and more)."""
CROP_BATCH = 32


def frame_ranges(frames: Sequence[int]) -> str:
    """Compact ranges: ``[12, 13, ..., 40, 77] -> "12-40, 77"``."""
    parts: list[str] = []
    items = sorted(set(int(f) for f in frames))
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        parts.append(str(items[i]) if i == j else f"{items[i]}-{items[j]}")
        i = j + 1
    return ", ".join(parts)


def check_frames(frames: Any, name: str = "frames") -> torch.Tensor:
    """Validate an IMAGE batch; returns a ``[N, H, W, 3]`` view (RGBA cut, grey repeated)."""
    if not isinstance(frames, torch.Tensor):
        raise InputError(f"expected an IMAGE tensor, got {type(frames).__name__}",
                         input_name=name, fix="connect an IMAGE output (e.g. Load Image)")
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4:
        raise InputError(f"IMAGE must be [B, H, W, C], got shape {list(frames.shape)}",
                         input_name=name, fix="connect a core IMAGE output")
    if frames.shape[0] == 0:
        raise InputError(f"input '{name}' has 0 frames", input_name=name,
                         fix="check the upstream node (a filter or loader that returned nothing)")
    c = frames.shape[-1]
    if c not in (1, 3, 4):
        if frames.shape[1] in (1, 3, 4):
            raise InputError(f"images look channels-first {list(frames.shape)}; IMAGE is "
                             "[B, H, W, 3]", input_name=name,
                             fix="the upstream node is not emitting core IMAGE")
        raise InputError(f"IMAGE has {c} channels", input_name=name,
                         fix="connect an RGB IMAGE")
    if c == 4:
        frames = frames[..., :3]
    elif c == 1:
        frames = frames.expand(*frames.shape[:-1], 3)
    if frames.shape[1] < 1 or frames.shape[2] < 1:
        raise InputError(f"frames are {frames.shape[2]}x{frames.shape[1]} pixels",
                         input_name=name, fix="use real frames")
    return frames


def to_uint8(frames: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """float 0..1 ``[b, H, W, 3]`` -> uint8 (clamped, rounded; NaN -> 0)."""
    x = frames.to(device) if device is not None else frames
    if x.dtype == torch.uint8:
        return x
    x = torch.nan_to_num(x.float(), nan=0.0)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _detect_batch(runtime: Runtime, h: int, w: int, n: int, dtype: torch.dtype) -> int:
    per = h * w * DETECT_BYTES_PER_PIXEL * torch.empty((), dtype=dtype).element_size() // 4
    free = runtime.free_memory(runtime.device)
    budget = DETECT_BUDGET_BYTES if free is None else int(free * 0.5)
    return max(1, min(n, 64, budget // max(1, per)))


def _detector_pass(detector: Any, frames: torch.Tensor, runtime: Runtime) -> list[Candidates]:
    n, h, w, _ = frames.shape
    runtime.load_models([detector])
    dets: list[Any] = [None] * n

    def work(a: int, b: int) -> None:
        out = detector.detect(to_uint8(frames[a:b], runtime.device))
        dets[a:b] = out

    dtype = getattr(detector, "dtype", torch.float32)
    run_batched(n, _detect_batch(runtime, h, w, n, dtype), work, runtime, "face detection")
    return detector_candidates(dets)


def _with_start_landmarks(detector: Any, frames: torch.Tensor, cands: list[Candidates],
                          runtime: Runtime) -> list[Candidates]:
    """Add 2D-FAN landmarks to the first frame with several faces (plausibility needs them)."""
    start = next((i for i, c in enumerate(cands) if len(c)), None)
    if start is None or len(cands[start]) < 2:
        return cands
    c = cands[start]
    u8 = to_uint8(frames[start:start + 1], runtime.device)
    lm = detector.landmarks(u8, [torch.from_numpy(c.boxes)]).numpy()
    cands = list(cands)
    cands[start] = Candidates(c.boxes, c.scores, lm.astype(np.float32), c.det_boxes)
    return cands


def _detector_landmarks(detector: Any, frames: torch.Tensor, boxes: np.ndarray,
                        has: np.ndarray, runtime: Runtime) -> np.ndarray:
    n = frames.shape[0]
    lm = np.zeros((n, 68, 2), np.float32)
    idx = np.flatnonzero(has)

    def work(a: int, b: int) -> None:
        sel = idx[a:b]
        u8 = to_uint8(frames[torch.from_numpy(sel)], runtime.device)
        out = detector.landmarks(u8, [torch.from_numpy(boxes[i:i + 1]) for i in sel])
        lm[sel] = out.numpy()

    run_batched(len(idx), 32, work, runtime, "face landmarks")
    return lm


def _apply_policy(policy: str, has: np.ndarray, lm: np.ndarray, det: np.ndarray | None,
                  state: TrackState | None = None) -> np.ndarray:
    """Fill faceless frames for ``hold_last``, in place: the face of the last frame with one
    (from ``state`` across calls); leading ones with none before take the first face. Records
    the last face in ``state``."""
    found = np.flatnonzero(has)
    if policy != "hold_last":
        return has
    prior = state is not None and state.last_landmarks is not None
    if len(found) == len(has) or (not len(found) and not prior):
        _remember(state, has, lm, det)
        return has
    if prior:
        lm_all = np.concatenate([state.last_landmarks[None].astype(lm.dtype), lm])
        det_all = (np.concatenate([state.last_det[None], det]) if det is not None
                   and state.last_det is not None else None)
        has_all = np.concatenate([[True], has])
        src = np.maximum.accumulate(np.where(has_all, np.arange(len(has_all)), -1))[1:]
    else:
        lm_all, det_all = lm.copy(), None if det is None else det.copy()
        src = np.maximum.accumulate(np.where(has, np.arange(len(has)), -1))
        src[src < 0] = found[0]
    lm[:] = lm_all[src]
    if det is not None and det_all is not None:
        det[:] = det_all[src]
    filled = np.ones_like(has)
    _remember(state, filled, lm, det)
    return filled


def _remember(state: TrackState | None, has: np.ndarray, lm: np.ndarray,
              det: np.ndarray | None) -> None:
    found = np.flatnonzero(has)
    if state is None or not len(found):
        return
    state.last_landmarks = lm[found[-1]].copy()
    state.last_det = None if det is None else det[found[-1]].copy()


def crop_faces(
    frames: torch.Tensor,
    runtime: Runtime,
    *,
    detector: Any = None,
    pose_keypoints: Any = None,
    version: Version = "v1.5",
    bbox_shift: int = 0,
    extra_margin: int = 10,
    face_index: int = -1,
    on_missing_face: str = "passthrough",
    smooth: float = 0.0,
    state: TrackState | None = None,
) -> MuseTalkFaces:
    """Find, choose, box and crop one face per frame.

    Args:
        frames: IMAGE float ``[N, H, W, C]`` in 0..1 (any device; RGBA/grey accepted).
        runtime: device, progress and interruption.
        detector: a :class:`~musetalk_core.models.face_detector.FaceDetector` (or anything with
            its ``detect``/``landmarks``), used when ``pose_keypoints`` is None.
        pose_keypoints: a ``POSE_KEYPOINT`` value (list of per-frame dicts).
        version, bbox_shift, extra_margin: the crop rule (musetalk.md 4.2).
        face_index: -1 automatic, else the face counted left to right.
        on_missing_face: ``passthrough`` | ``hold_last`` | ``error``.
        smooth: temporal box smoothing strength 0..1 (0 = REF).
        state: a :class:`~musetalk_core.tracking.TrackState` to resume from, for a clip given in
            chunks (the streaming node): pass the same object with each chunk in order; it is
            updated in place (chosen face, its last box, the last face for ``hold_last``, the
            smoothing filter) and also returned in ``info["track_state"]``. The chunks' results
            then equal one call on the whole clip, with one exception: under ``hold_last``,
            faceless frames before the clip's first face take that face only when it is in
            the same call (a chunk cannot see ahead); earlier chunks have no face.
            ``None``: a whole clip in one call.

    Returns:
        :class:`MuseTalkFaces` with ``info`` holding ``text`` lines, the missing frames, the
        suggested bbox_shift range and the face choice.

    Raises:
        FaceError: no face in any frame; a missing face under ``error``; bad ``face_index``.
        InputError: bad frames, keypoints or settings.
    """
    frames = check_frames(frames)
    n, h, w, _ = frames.shape
    if version not in VERSIONS:
        raise InputError(f"unknown version {version!r}", input_name="version",
                         fix=f"choose one of {', '.join(VERSIONS)}")
    if on_missing_face not in MISSING_POLICIES:
        raise InputError(f"unknown policy {on_missing_face!r}", input_name="on_missing_face",
                         fix=f"choose one of {', '.join(MISSING_POLICIES)}")
    if not -BBOX_SHIFT_LIMIT <= int(bbox_shift) <= BBOX_SHIFT_LIMIT:
        raise InputError(f"bbox_shift {bbox_shift} is out of range", input_name="bbox_shift",
                         fix=f"use a value from -{BBOX_SHIFT_LIMIT} to {BBOX_SHIFT_LIMIT} (the "
                             "usable range is reported by this node)")
    if not 0 <= int(extra_margin) <= EXTRA_MARGIN_LIMIT:
        raise InputError(f"extra_margin {extra_margin} is out of range",
                         input_name="extra_margin", fix=f"use 0 to {EXTRA_MARGIN_LIMIT} (REF: 10)")
    if not (isinstance(smooth, (int, float)) and math.isfinite(smooth) and 0 <= smooth <= 1):
        raise InputError(f"smooth_boxes {smooth} is out of range", input_name="smooth_boxes",
                         fix="use 0 (off) to 1")
    text: list[str] = []
    if version == "v1.5" and bbox_shift:
        text.append(f"bbox_shift {bbox_shift} ignored: v1.5 uses extra_margin (REF forces 0)")
        bbox_shift = 0
    if version == "v1":
        extra_margin = 0

    if pose_keypoints is not None:
        source = "pose_keypoints"
        cands = pose_candidates(pose_keypoints, n, h, w)
        if detector is not None:
            log.info("both a detector and pose keypoints given; using the keypoints")
    elif detector is not None:
        source = "detector"
        cands = _detector_pass(detector, frames, runtime)
        if state is None or not state.started:
            cands = _with_start_landmarks(detector, frames, cands, runtime)
    else:
        raise InputError("neither a face detector nor pose keypoints is connected",
                         input_name="detector",
                         fix="connect MuseTalk Face Detector Loader to 'detector', or DWPose "
                             "Estimator's POSE_KEYPOINT to 'pose_keypoints'")

    chosen, choice = choose_face(cands, face_index, state)
    has = np.array([c is not None for c in chosen])
    det = np.zeros((n, 4))
    lm = np.zeros((n, 68, 2), np.float32)
    for f, j in enumerate(chosen):
        if j is None:
            continue
        det[f] = cands[f].boxes[j]
        if cands[f].landmarks is not None:
            lm[f] = cands[f].landmarks[j]
    if source == "detector":
        lm = _detector_landmarks(detector, frames, det, has, runtime)
    missing = np.flatnonzero(~has).tolist()
    if missing and on_missing_face == "error":
        raise FaceError(f"no face in {len(missing)} of {n} frames (first: frame {missing[0]}; "
                        f"frames {frame_ranges(missing)})", input_name="on_missing_face",
                        fix="set on_missing_face to passthrough or hold_last, or trim the clip")
    has = _apply_policy(on_missing_face, has, lm, det if source == "detector" else None, state)

    lm_t = torch.from_numpy(lm)
    has_t = torch.from_numpy(has)
    boxes, ok, fell = cropmod.crop_boxes(
        lm_t, has_t, version=version, height=h, width=w, bbox_shift=int(bbox_shift),
        extra_margin=int(extra_margin),
        det_boxes=torch.from_numpy(det) if source == "detector" else None)
    if smooth > 0:
        boxes = cropmod.smooth_boxes(boxes, ok, float(smooth), h, w,
                                     None if state is None else state.smooth)
    lost = np.flatnonzero(has & ~ok.numpy()).tolist()
    rng = cropmod.bbox_shift_range(lm_t, ok)
    lm_t = torch.where(ok[:, None, None], lm_t, torch.zeros(()))

    crops = torch.zeros(n, CROP_SIZE, CROP_SIZE, 3, dtype=torch.uint8,
                        device=runtime.intermediate_device)
    nan_frames: list[int] = []

    def work(a: int, b: int) -> None:
        part = frames[a:b]
        for i in range(b - a):
            if ok[a + i]:
                x1, y1, x2, y2 = (int(v) for v in boxes[a + i])
                if torch.isnan(part[i, y1:y2, x1:x2].sum()):
                    nan_frames.append(a + i)
        crops[a:b] = cropmod.crop_resize(part, boxes[a:b], ok[a:b]).to(crops.device)

    run_batched(n, CROP_BATCH, work, runtime, "face crops")
    if nan_frames:
        raise InputError(f"NaN pixels inside the face box of frames {frame_ranges(nan_frames)}",
                         input_name="frames", fix="fix the upstream node producing NaN values")

    no_face = sorted(set(missing) | set(lost))
    sides = ((boxes[:, 2] - boxes[:, 0]).double() * (boxes[:, 3] - boxes[:, 1]).double()).sqrt()
    if no_face:
        text.append(f"{len(no_face)} frame{'s' if len(no_face) != 1 else ''} without a face: "
                    f"{frame_ranges(no_face)}" + (" (box of the nearest face held)"
                                                  if on_missing_face == "hold_last" else ""))
    if rng is not None:
        text.append(f"bbox_shift usable range (REF): [{rng[0]}, {rng[1]}]; current "
                    f"{bbox_shift if version == 'v1' else 0}")
    if bool(fell.any()):
        text.append(f"landmark box unusable in frames {frame_ranges(np.flatnonzero(fell.numpy()))}"
                    "; the detector/landmark-extent box was used (REF rule)")
    if bool(ok.any()):
        small = float(sides[ok].median())
        if small < SMALL_FACE:
            text.append(f"face is {small:.0f} px; MuseTalk renders the mouth at 256 px, the "
                        "result will be soft")
        lm_ok = lm[ok.numpy()]
        span = float(np.median(lm_ok[..., 1].max(-1) - lm_ok[..., 1].min(-1)))
        if span > h:
            text.append(f"face (about {span:.0f} px) is larger than the frame; expect a soft "
                        "mouth (the model works at 256 px)")
        eyes = lm_ok[:, 42:48].mean(1) - lm_ok[:, 36:42].mean(1)
        roll = np.degrees(np.arctan2(eyes[:, 1], eyes[:, 0]))
        tilted = np.flatnonzero(ok.numpy())[np.abs(roll) > 20]
        if len(tilted):
            text.append(f"faces tilted by up to {np.abs(roll).max():.0f} deg in frames "
                        f"{frame_ranges(tilted)}; MuseTalk was trained on upright faces")
    if choice.get("faces_in_start", 1) > 1:
        text.append(f"{choice['faces_in_start']} faces; using face {choice['chosen']} (counted "
                    "left to right). Set face_index to choose")
    for line in text:
        log.info(line)
    log.info("face crop: %d frames %dx%d, %d with a face, %s, source %s", n, w, h,
             int(ok.sum()), version, source)

    info = {
        "text": text,
        "source": source,
        "frames": n,
        "faces": int(ok.sum()),
        "missing_frames": frame_ranges(no_face),
        "missing_count": len(no_face),
        "bbox_shift_range": list(rng) if rng is not None else None,
        "fallback_frames": frame_ranges(np.flatnonzero(fell.numpy())),
        "face_choice": choice,
        "on_missing_face": on_missing_face,
        "smooth_boxes": float(smooth),
        "track_state": state,
    }
    return MuseTalkFaces(
        boxes=boxes.to(runtime.intermediate_device),
        has_face=ok.to(runtime.intermediate_device),
        landmarks=lm_t.to(runtime.intermediate_device),
        crops=crops,
        source_size=(h, w),
        version=version,
        bbox_shift=int(bbox_shift) if version == "v1" else 0,
        extra_margin=int(extra_margin) if version == "v1.5" else 0,
        source_index=torch.arange(n, dtype=torch.int64),
        info=info,
    )
