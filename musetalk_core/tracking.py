"""Which face: choose one face in the first frame with faces and follow it through the clip.

Rule (deterministic, documented in the node):

* ``face_index >= 0``: the faces of the first frame with faces, counted left to right by box
  centre, pick the face.
* automatic (``face_index = -1``): among that frame's faces keep, in turn,
  1. the confident ones (score >= 0.9 x the best score);
  2. the plausible ones (upright face shape: RMS distance of the normalised landmarks to a mean
     frontal face at most 0.1 above the best candidate's), which rejects a badge or a poster
     detection whose landmarks do not form an upright face;
  3. the large ones (side >= 0.8 x the largest);
  4. the steadiest (found in the most frames when tracked through the clip);
  5. the topmost, then the leftmost.
* tracking: frame by frame, the candidate with the largest overlap (IoU >= 0.3) with the face's
  last known box; with no such candidate the frame has no face. It never jumps to another face.

Resumable: :class:`TrackState` carries the tracked face's last box and the choice from one call to
the next, so a clip cut into chunks (the streaming node) tracks exactly as one whole-clip call
does. Rule 4 (steadiest) sees only the frames of the call that holds the start frame; it decides
only when rules 1-3 and the start frame leave a tie.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import FaceError
from .landmarks import Candidates

log = logging.getLogger(__name__)

IOU_MIN = 0.3
CONFIDENCE_RATIO = 0.9
SIZE_RATIO = 0.8
PLAUSIBILITY_MARGIN = 0.1

# Mean frontal iBUG-68 face, centred, unit RMS radius, x100 (from the ground-truth landmarks of
# the two talking-head test clips: a data-derived constant, not a model).
_TEMPLATE = np.array([
    [-131, -60], [-128, -27], [-122, 6], [-115, 39], [-104, 70], [-86, 98], [-62, 121],
    [-32, 139], [3, 144], [37, 138], [65, 120], [89, 97], [106, 69], [116, 38], [121, 4],
    [125, -29], [127, -62], [-107, -97], [-91, -113], [-70, -121], [-47, -119], [-26, -109],
    [22, -110], [44, -121], [67, -124], [89, -117], [104, -100], [-1, -77], [0, -55], [0, -33],
    [1, -10], [-24, 7], [-12, 11], [1, 14], [13, 10], [25, 6], [-80, -67], [-67, -77],
    [-50, -77], [-34, -66], [-50, -61], [-67, -61], [32, -67], [47, -79], [65, -79], [78, -70],
    [66, -63], [49, -63], [-48, 57], [-30, 45], [-12, 39], [0, 41], [13, 39], [31, 45],
    [50, 56], [32, 75], [15, 83], [1, 85], [-13, 84], [-31, 75], [-39, 57], [-12, 51], [0, 51],
    [13, 50], [41, 57], [14, 64], [0, 65], [-12, 64]], dtype=np.float64) / 100.0


@dataclass
class TrackState:
    """Where the face tracking of a clip stands after the frames seen so far (resumable).

    Attributes:
        frames: source frames seen so far (the next call's first frame has this index).
        last_box: float64 ``[4]`` tracking box of the followed face in the last frame it was
            found, or ``None`` before the first face.
        choice: the face-choice report of the start frame (``{}`` before it).
        last_landmarks: float32 ``[68, 2]`` of the last frame with the face (``hold_last``).
        last_det: float64 ``[4]`` detector box of that frame (``hold_last``, detector path).
        smooth: box-smoothing filter state (:func:`musetalk_core.crop.smooth_boxes`).
    """

    frames: int = 0
    last_box: np.ndarray | None = None
    choice: dict = field(default_factory=dict)
    last_landmarks: np.ndarray | None = None
    last_det: np.ndarray | None = None
    smooth: dict = field(default_factory=dict)

    @property
    def started(self) -> bool:
        """True once the face to follow has been chosen."""
        return self.last_box is not None


def _normalise(lm: np.ndarray) -> np.ndarray:
    p = lm - lm.mean(-2, keepdims=True)
    r = np.sqrt((p ** 2).sum(-1).mean(-1))[..., None, None]
    return p / np.maximum(r, 1e-9)


def implausibility(lm: np.ndarray) -> np.ndarray:
    """``[k, 68, 2]`` landmarks -> ``[k]`` RMS distance to an upright mean face (0 = perfect)."""
    t = _normalise(_TEMPLATE)
    return np.sqrt(((_normalise(lm.astype(np.float64)) - t) ** 2).sum(-1).mean(-1))


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``[4]`` box with ``[k, 4]`` boxes."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    a = (box[2] - box[0]) * (box[3] - box[1])
    b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(a + b - inter, 1e-9)


def track(cands: Sequence[Candidates], start: int, index: int | None,
          last: np.ndarray | None = None) -> list[int | None]:
    """Follow candidate ``index`` of frame ``start`` (or, with ``index`` None, the face whose
    last box is ``last``, from frame ``start`` on): per frame the candidate index or None."""
    out: list[int | None] = [None] * len(cands)
    first = start
    if index is not None:
        out[start] = index
        last = cands[start].boxes[index]
        first = start + 1
    for f in range(first, len(cands)):
        c = cands[f]
        if len(c) == 0:
            continue
        ov = iou(last, c.boxes)
        j = int(np.argmax(ov))
        if ov[j] >= IOU_MIN:
            out[f] = j
            last = c.boxes[j]
    return out


def last_found_box(cands: Sequence[Candidates], chosen: Sequence[int | None]
                   ) -> np.ndarray | None:
    """Tracking box of the last frame where the followed face was found (``None``: none)."""
    for f in range(len(chosen) - 1, -1, -1):
        if chosen[f] is not None:
            return np.asarray(cands[f].boxes[chosen[f]], np.float64).copy()
    return None


def _describe(box: np.ndarray) -> str:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    return f"({x1},{y1})-({x2},{y2})"


def choose_face(cands: Sequence[Candidates], face_index: int = -1,
                state: TrackState | None = None) -> tuple[list[int | None], dict]:
    """Pick the face to follow and track it (or go on tracking it, given a started ``state``).

    Args:
        cands: per-frame candidates; the start frame's should carry landmarks when available
            (plausibility needs them).
        face_index: -1 for automatic, else the face counted left to right in the first frame
            with faces.
        state: optional :class:`TrackState` of the frames before ``cands``; updated in place
            (last box, choice, frame count) so the next call continues where this one ended.

    Returns:
        (per-frame candidate index or None, report dict with ``start_frame``, ``faces_in_start``,
        ``chosen`` (left-to-right index), ``rejected`` (list of reasons)).

    Raises:
        FaceError: no candidate in any frame (before the face was chosen), or ``face_index``
            out of range.
    """
    if state is not None and state.started:
        out = track(cands, 0, None, state.last_box)
        _advance(state, cands, out, state.choice)
        return out, dict(state.choice)
    try:
        out, report = _choose(cands, face_index)
    except FaceError as err:
        if state is not None and err.input_name == "frames":
            state.frames += len(cands)
        raise
    if state is not None:
        _advance(state, cands, out, report)
    return out, report


def _advance(state: TrackState, cands: Sequence[Candidates], out: list[int | None],
             report: dict) -> None:
    box = last_found_box(cands, out)
    if box is not None:
        state.last_box = box
    if not state.choice:
        state.choice = {**report, "start_frame": report["start_frame"] + state.frames}
    state.frames += len(cands)


def _choose(cands: Sequence[Candidates], face_index: int) -> tuple[list[int | None], dict]:
    start = next((i for i, c in enumerate(cands) if len(c)), None)
    if start is None:
        raise FaceError(f"no face found in any of the {len(cands)} frames", input_name="frames",
                        fix="use frames showing a face (frontal, at least ~64 px), or connect "
                            "DWPose keypoints to 'pose_keypoints'")
    c = cands[start]
    k = len(c)
    centres = (c.boxes[:, 0] + c.boxes[:, 2]) / 2
    ltr = np.argsort(centres, kind="stable")
    rank = {int(j): r for r, j in enumerate(ltr)}
    report: dict = {"start_frame": start, "faces_in_start": k, "rejected": []}
    if face_index >= 0:
        if face_index >= k:
            raise FaceError(f"only {k} face{'s' if k != 1 else ''} found; face_index must be "
                            + ("0" if k == 1 else "0 or 1" if k == 2 else f"0 to {k - 1}")
                            + f" (got {face_index})",
                            input_name="face_index",
                            fix="set face_index to -1 (automatic) or to a face that exists")
        chosen = int(ltr[face_index])
        report["chosen"] = face_index
        report["rule"] = "face_index"
        return track(cands, start, chosen), report

    alive = np.arange(k)
    rejected = report["rejected"]

    def keep(mask: np.ndarray, reason: str) -> None:
        nonlocal alive
        if mask.all():
            return
        for j in alive[~mask]:
            rejected.append(f"face {_describe(c.boxes[j])} rejected: {reason}")
        alive = alive[mask]

    s = c.scores[alive]
    keep(s >= CONFIDENCE_RATIO * s.max(), "lower confidence")
    if c.landmarks is not None and len(alive) > 1:
        bad = implausibility(c.landmarks[alive])
        keep(bad <= bad.min() + PLAUSIBILITY_MARGIN, "not an upright face shape")
    if len(alive) > 1:
        b = c.boxes[alive]
        side = np.sqrt(np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None))
        keep(side >= SIZE_RATIO * side.max(), "smaller")
    tracks = {int(j): track(cands, start, int(j)) for j in alive}
    if len(alive) > 1:
        found = np.array([sum(t is not None for t in tracks[int(j)]) for j in alive])
        keep(found == found.max(), "found in fewer frames")
    if len(alive) > 1:
        b = c.boxes[alive]
        order = np.lexsort((b[:, 0], b[:, 1]))
        mask = np.zeros(len(alive), bool)
        mask[order[0]] = True
        keep(mask, "lower in the frame (tie broken by the topmost face)")
    chosen = int(alive[0])
    report["chosen"] = rank[chosen]
    report["rule"] = "auto"
    for line in rejected:
        log.info(line)
    if k > 1:
        side = "left" if rank[chosen] == 0 else ("right" if rank[chosen] == k - 1 else "middle")
        log.info("%d faces; using face %d (%s). Set face_index to choose", k, rank[chosen], side)
    return tracks[chosen], report
