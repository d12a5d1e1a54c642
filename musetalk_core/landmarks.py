"""Face candidates per frame, from a ``POSE_KEYPOINT`` input or from the face detector.

A :class:`Candidates` value lists the faces found in one frame: a box used for tracking, a
confidence, and (when known) 68 iBUG landmarks in frame pixels.

``POSE_KEYPOINT`` is taken exactly as comfyui_controlnet_aux's DWPose / OpenPose preprocessors emit
it: a list with one dict per frame, each holding ``people`` (each person with a flat
``face_keypoints_2d`` list ``[x0, y0, c0, x1, y1, c1, ...]``, or ``None`` when no face point
passed DWPose's 0.3 score), ``canvas_width`` and ``canvas_height``. DWPose gives 70 face points
(68 iBUG points plus the two eyes appended); points below its score threshold are ``0, 0, 0``.
Coordinates are pixels of the canvas (DWPose) or normalised 0..1 (the OpenPose node).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import InputError

log = logging.getLogger(__name__)

MAX_PEOPLE = 16
"""Faces per frame kept for scoring (largest first): bounds the time on absurd inputs (S7)."""
MIN_VALID_POINTS = 34
KEY_POINTS = (28, 29, 30)
"""Points the crop rule cannot do without (nose bridge)."""
SNAP = 1e-3
INPUT = "pose_keypoints"
_FIX_POSE = "connect the POSE_KEYPOINT output of DWPose Estimator run on these same frames"


@dataclass(frozen=True)
class Candidates:
    """Faces found in one frame.

    Attributes:
        boxes: float64 ``[k, 4]`` (x1, y1, x2, y2) tracking boxes (detector box, or landmark
            extents for keypoints).
        scores: float64 ``[k]`` confidences.
        landmarks: float32 ``[k, 68, 2]`` or ``None`` (detector faces before 2D-FAN ran).
        det_boxes: float64 ``[k, 4]`` detector boxes (the REF fallback box) or ``None``.
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray | None = None
    det_boxes: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @staticmethod
    def empty() -> Candidates:
        return Candidates(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 68, 2), np.float32))


def snap(values: np.ndarray) -> np.ndarray:
    """Round values within ``1e-3`` of an integer to it (299.99999 -> 300), keep the rest."""
    r = np.round(values)
    return np.where(np.abs(values - r) < SNAP, r, values)


def extents(lm: np.ndarray) -> np.ndarray:
    """``[..., 68, 2]`` points -> ``[..., 4]`` (min x, min y, max x, max y)."""
    return np.concatenate([lm.min(-2), lm.max(-2)], -1).astype(np.float64)


def _frame_dicts(pose: Any, n_frames: int) -> list[dict]:
    if isinstance(pose, dict):
        pose = [pose]
    if not isinstance(pose, (list, tuple)):
        raise InputError(f"expected a list of per-frame pose dicts, got {type(pose).__name__}",
                         input_name=INPUT, fix=_FIX_POSE)
    if len(pose) != n_frames:
        raise InputError(f"keypoints hold {len(pose)} frames but the images hold {n_frames}",
                         input_name=INPUT, fix="run DWPose on exactly these frames (same count)")
    for i, d in enumerate(pose):
        if not isinstance(d, dict):
            raise InputError(f"frame {i} is a {type(d).__name__}, not a pose dict",
                             input_name=INPUT, fix=_FIX_POSE)
    return list(pose)


def _person_points(person: Any, frame: int) -> np.ndarray | None:
    """``[68, 3]`` (x, y, c) of one person, or None when the person has no face points."""
    if not isinstance(person, dict):
        return None
    flat = person.get("face_keypoints_2d")
    if not flat:
        return None
    arr = np.asarray(flat, dtype=np.float64).reshape(-1)
    if arr.size % 3 or arr.size < 68 * 3:
        raise InputError(f"frame {frame}: face_keypoints_2d has {arr.size} numbers; expected "
                         "68 or 70 points of (x, y, confidence)", input_name=INPUT,
                         fix=_FIX_POSE)
    return arr.reshape(-1, 3)[:68]


def pose_candidates(pose: Any, n_frames: int, height: int, width: int) -> list[Candidates]:
    """Per-frame face candidates from a ``POSE_KEYPOINT`` value.

    Points with confidence 0 (DWPose's dropped points) are missing: a face needs
    :data:`KEY_POINTS` and at least :data:`MIN_VALID_POINTS` points, and its missing points are
    filled with the centroid of its valid ones (inside the face, so they never widen the box).
    A canvas of another size but the same aspect is scaled to the frames; another aspect is an
    error. Normalised coordinates (every valid value <= 2) are multiplied by the frame size.
    Values are snapped to integers within 1e-3 so truncation never loses one (299.99999 -> 300).
    """
    frames = _frame_dicts(pose, n_frames)
    parsed: list[list[np.ndarray]] = []
    vmax = 0.0
    canvases = []
    for i, d in enumerate(frames):
        cw, ch = d.get("canvas_width", width), d.get("canvas_height", height)
        try:
            cw, ch = float(cw), float(ch)
        except (TypeError, ValueError) as err:
            raise InputError(f"frame {i}: canvas size {cw!r}x{ch!r} is not a number",
                             input_name=INPUT, fix=_FIX_POSE) from err
        if not (cw > 0 and ch > 0):
            raise InputError(f"frame {i}: canvas size {cw}x{ch} is empty", input_name=INPUT,
                             fix=_FIX_POSE)
        if abs(cw / ch - width / height) > 0.01 * (width / height):
            raise InputError(f"keypoints are for {cw:g}x{ch:g}, images are {width}x{height}",
                             input_name=INPUT, fix="run DWPose on these frames")
        canvases.append((cw, ch))
        people = d.get("people") or []
        faces = []
        for person in people:
            pts = _person_points(person, i)
            if pts is None:
                continue
            valid = pts[:, 2] > 0
            if not np.isfinite(pts[valid, :2]).all():
                continue
            if valid.any():
                vmax = max(vmax, float(np.abs(pts[valid, :2]).max()))
            faces.append(pts)
        parsed.append(faces)
    normalised = 0.0 < vmax <= 2.0
    if normalised:
        log.info("pose keypoints look normalised (max %.3f); scaling by %dx%d", vmax, width,
                 height)
    out = []
    dropped = 0
    for i, faces in enumerate(parsed):
        cw, ch = canvases[i]
        sx, sy = (width, height) if normalised else (width / cw, height / ch)
        lms, scores = [], []
        for pts in faces:
            valid = pts[:, 2] > 0
            if valid.sum() < MIN_VALID_POINTS or not valid[list(KEY_POINTS)].all():
                dropped += int(valid.any())
                continue
            xy = pts[:, :2] * np.array([sx, sy])
            xy[~valid] = xy[valid].mean(0)
            lms.append(snap(xy))
            scores.append(float(pts[valid, 2].mean()))
        if not lms:
            out.append(Candidates.empty())
            continue
        lm = np.stack(lms).astype(np.float32)
        boxes = extents(lm)
        if len(lms) > MAX_PEOPLE:
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            top = np.argsort(-area, kind="stable")[:MAX_PEOPLE]
            lm, boxes, scores = lm[top], boxes[top], [scores[t] for t in top]
        out.append(Candidates(boxes, np.asarray(scores, np.float64), lm, None))
    if dropped:
        log.info("%d keypoint faces had too few points (or no nose bridge) and were ignored",
                 dropped)
    return out


def detector_candidates(dets: Sequence[torch.Tensor]) -> list[Candidates]:
    """Per-frame candidates from :meth:`FaceDetector.detect` output (no landmarks yet)."""
    out = []
    for d in dets:
        d = d.detach().cpu().double().numpy().reshape(-1, 5)
        if d.shape[0] > MAX_PEOPLE:
            area = (d[:, 2] - d[:, 0]) * (d[:, 3] - d[:, 1])
            d = d[np.argsort(-area, kind="stable")[:MAX_PEOPLE]]
        out.append(Candidates(d[:, :4].copy(), d[:, 4].copy(), None, d[:, :4].copy()))
    return out
