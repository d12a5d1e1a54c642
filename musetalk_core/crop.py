"""Crop boxes from landmarks (musetalk.md 4.2), 256x256 crops (4.3) and face-box masks.

The box rule, exactly as the reference (REF) computes it, per frame with a face:

1. ``lm`` = the 68 landmarks cast to int32 (truncation toward zero).
2. v1 only: ``lm[29].y += bbox_shift`` in place (so the shifted point takes part in the max).
3. ``y2 = max(lm.y)``, ``yc = lm[29].y``, ``y1 = int(max(0, 2 * yc - y2))``,
   ``x1 = min(lm.x)``, ``x2 = max(lm.x)``.
4. If ``y2 - y1 <= 0`` or ``x2 - x1 <= 0`` or ``x1 < 0``: the fallback box instead (the S3FD box
   with negatives clipped to 0 and ``int()``; with keypoints only, the landmark extents clipped to
   the frame).
5. v1.5 only: ``y2 = min(y2 + extra_margin, frame_height)``.

We then clip the box to the frame (REF's numpy slice does the same implicitly); a box left
empty means "no face" for that frame. REF's suggested ``bbox_shift`` range is
``[-int(mean(lm30.y - lm29.y)), int(mean(lm29.y - lm28.y))]`` over the frames with a face.
"""

from __future__ import annotations

import numpy as np
import torch

from .types import CROP_SIZE, Version


def int_landmarks(lm: torch.Tensor) -> torch.Tensor:
    """float ``[..., 68, 2]`` -> int64 truncated toward zero (numpy ``astype(int32)``)."""
    return torch.trunc(lm.double()).to(torch.int64)


def bbox_shift_range(lm: torch.Tensor, has_face: torch.Tensor) -> tuple[int, int] | None:
    """REF's suggested ``bbox_shift`` range ``(low, high)`` over frames with a face, or None."""
    if not bool(has_face.any()):
        return None
    li = int_landmarks(lm[has_face])
    minus = (li[:, 30, 1] - li[:, 29, 1]).double().mean().item()
    plus = (li[:, 29, 1] - li[:, 28, 1]).double().mean().item()
    return -int(minus), int(plus)


def landmark_boxes(
    lm: torch.Tensor, version: Version, bbox_shift: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1-4 without the fallback: boxes int64 ``[N, 4]`` and ``valid`` bool ``[N]``."""
    li = int_landmarks(lm).clone()
    if version == "v1" and bbox_shift != 0:
        li[:, 29, 1] += int(bbox_shift)
    yc = li[:, 29, 1]
    y2 = li[..., 1].max(-1).values
    y1 = (2 * yc - y2).clamp(min=0)
    x1 = li[..., 0].min(-1).values
    x2 = li[..., 0].max(-1).values
    boxes = torch.stack([x1, y1, x2, y2], -1)
    valid = (y2 - y1 > 0) & (x2 - x1 > 0) & (x1 >= 0)
    return boxes, valid


def fallback_boxes(det_boxes: torch.Tensor | None, lm: torch.Tensor, height: int,
                   width: int) -> torch.Tensor:
    """REF's fallback: the detector box (negatives to 0, ``int()``); else landmark extents."""
    if det_boxes is not None:
        return torch.trunc(det_boxes.double().clamp(min=0)).to(torch.int64)
    li = int_landmarks(lm)
    ext = torch.cat([li.min(-2).values, li.max(-2).values], -1)
    lim = torch.tensor([width, height, width, height])
    return torch.minimum(ext.clamp(min=0), lim)


def crop_boxes(
    lm: torch.Tensor,
    has_face: torch.Tensor,
    *,
    version: Version,
    height: int,
    width: int,
    bbox_shift: int = 0,
    extra_margin: int = 10,
    det_boxes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The crop box of every frame (musetalk.md 4.2).

    Args:
        lm: float ``[N, 68, 2]`` landmarks in frame pixels.
        has_face: bool ``[N]``.
        version: ``v1`` (``bbox_shift`` honoured, no margin) or ``v1.5`` (shift ignored, margin).
        height, width: frame size.
        det_boxes: float ``[N, 4]`` detector boxes for the fallback, or None (keypoints).

    Returns:
        ``boxes`` int64 ``[N, 4]`` clipped to the frame (zeros without a face), ``has_face``
        bool ``[N]`` (False where even the fallback box is empty), ``fell_back`` bool ``[N]``.
    """
    n = lm.shape[0]
    boxes, valid = landmark_boxes(lm, version, bbox_shift if version == "v1" else 0)
    fb = fallback_boxes(det_boxes, lm, height, width)
    fell_back = has_face & ~valid
    boxes = torch.where(fell_back[:, None], fb, boxes)
    if version == "v1.5":
        boxes[:, 3] = torch.clamp(boxes[:, 3] + int(extra_margin), max=height)
    lim = torch.tensor([width, height, width, height])
    boxes = torch.minimum(boxes.clamp(min=0), lim)
    ok = has_face & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes = torch.where(ok[:, None], boxes, torch.zeros(n, 4, dtype=torch.int64))
    return boxes, ok, fell_back & ok


def smooth_boxes(boxes: torch.Tensor, has_face: torch.Tensor, strength: float, height: int,
                 width: int, state: dict | None = None) -> torch.Tensor:
    """Causal temporal smoothing of the boxes within each run of face frames (resumable).

    A double exponential (Holt) filter per coordinate: it follows steady motion without lag and
    damps jitter. ``strength`` in 0..1 sets the level gain ``alpha = 1 - 0.85 * strength`` and
    the trend gain ``alpha / 4`` (0: unchanged). A frame without a face ends the run: the next
    face starts afresh. Causal, so a clip cut into chunks gives the same boxes as one call when
    the same ``state`` dict (``level``, ``trend``: float64 ``[4]``; empty at the start) is
    passed to each chunk in turn; it is updated in place. Rounded to ints, clipped to the
    frame; boxes stay at least 1 pixel wide and tall.
    """
    if state is None:
        state = {}
    if strength <= 0:
        return boxes
    alpha = 1.0 - 0.85 * float(strength)
    beta = alpha / 4.0
    b = boxes.double().numpy()
    hf = has_face.numpy()
    out = b.copy()
    level, trend = state.get("level"), state.get("trend")
    for i in range(len(b)):
        if not hf[i]:
            level = trend = None
            continue
        if level is None:
            level, trend = b[i].copy(), np.zeros(4)
        else:
            prev = level
            level = alpha * b[i] + (1.0 - alpha) * (level + trend)
            trend = beta * (level - prev) + (1.0 - beta) * trend
        out[i] = level
    state["level"], state["trend"] = level, trend
    res = torch.from_numpy(np.round(out)).to(torch.int64)
    lim = torch.tensor([width, height, width, height])
    res = torch.minimum(res.clamp(min=0), lim)
    res[:, 2] = torch.maximum(res[:, 2], res[:, 0] + 1).clamp(max=width)
    res[:, 3] = torch.maximum(res[:, 3], res[:, 1] + 1).clamp(max=height)
    res[:, 0] = torch.minimum(res[:, 0], res[:, 2] - 1)
    res[:, 1] = torch.minimum(res[:, 1], res[:, 3] - 1)
    return torch.where(has_face[:, None], res, boxes)


def crop_resize(frames_u8: torch.Tensor, boxes: torch.Tensor,
                has_face: torch.Tensor) -> torch.Tensor:
    """``frame[y1:y2, x1:x2]`` resized to 256x256 with OpenCV INTER_LANCZOS4 (REF 4.3).

    Lanczos is separable and per channel, so RGB input gives REF's BGR numbers channel-reversed.

    Args:
        frames_u8: uint8 ``[b, H, W, 3]`` RGB, or float 0..1 (then each box is rounded to
            uint8 as ``round(x * 255)``); any device (moved to the CPU for OpenCV).
        boxes: int64 ``[b, 4]``; has_face: bool ``[b]``.

    Returns:
        uint8 ``[b, 256, 256, 3]`` on the CPU (zeros without a face).
    """
    import cv2

    b = frames_u8.shape[0]
    out = np.zeros((b, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    for i in range(b):
        if not bool(has_face[i]):
            continue
        x1, y1, x2, y2 = (int(v) for v in boxes[i])
        patch = frames_u8[i, y1:y2, x1:x2]
        if patch.dtype != torch.uint8:  # float 0..1: only the box is converted
            patch = (torch.nan_to_num(patch.float(), nan=0.0).clamp(0, 1) * 255).round()
        patch = patch.to(torch.uint8).cpu().numpy()
        out[i] = cv2.resize(patch, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_LANCZOS4)
    return torch.from_numpy(out)


def box_mask(boxes: torch.Tensor, has_face: torch.Tensor, height: int, width: int,
             device: torch.device | None = None) -> torch.Tensor:
    """float32 ``[N, H, W]``: 1 inside each frame's box (half-open), 0 elsewhere."""
    dev = device or boxes.device
    bx = boxes.to(dev)
    rows = torch.arange(height, device=dev)[None, :, None]
    cols = torch.arange(width, device=dev)[None, None, :]
    inside = ((rows >= bx[:, 1, None, None]) & (rows < bx[:, 3, None, None])
              & (cols >= bx[:, 0, None, None]) & (cols < bx[:, 2, None, None]))
    return (inside & has_face.to(dev)[:, None, None]).float()
