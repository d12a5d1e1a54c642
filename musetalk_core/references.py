"""Reference frame selection: same frame (REF inference), SIS, or one fixed frame.

MuseTalk's UNet sees two images per frame: the frame with its lower half masked, and a reference
image of the same face. REF inference uses the frame itself as its own reference, so the
reference shows the source's own mouth shape, and that shape can leak into the result. Training
instead picked the reference by *Selective Information Sampling* (SIS, musetalk.md 7.1): a frame
with the same head pose but a *different* mouth, so the model must take the mouth from the audio.
Offering SIS at inference is this pack's addition.

SIS for drive frame ``d`` (only frames with a face take part; ``N`` = their count):

1. landmarks normalised to each frame's crop box: ``(x - x1) * 256 / w``, ``(y - y1) * 256 / h``;
2. ``K = int(0.51 * N)`` (or the user's K);
3. pose set: the K frames (other than ``d``) with the smallest mean distance of jaw points
   0..15 to ``d``'s, ascending (ties by frame order);
4. lip set: the K frames with the largest mean distance of inner-lip points 60..66, descending;
5. the reference is drawn uniformly from the intersection with a seeded generator
   (reproducible). Fallback when the intersection is empty: the lip-set frame closest in pose
   (deterministic). REF's training-only rule of keeping the reference at least 5 frames away is
   not applied.

Frames without a face always reference themselves.
"""

from __future__ import annotations

import torch

from .errors import ReferenceSelectionError
from .types import CROP_SIZE, MuseTalkFaces, MuseTalkReferences

MODES = ("same_frame", "sis", "fixed_frame")
TOP_K_RATIO = 0.51
POSE_POINTS = slice(0, 16)
LIP_POINTS = slice(60, 67)
_CHUNK_ELEMENTS = 1 << 22


def normalised_landmarks(faces: MuseTalkFaces) -> torch.Tensor:
    """float64 ``[N, 68, 2]`` landmarks in the 256x256 space of each frame's crop box."""
    lm = faces.landmarks.double().cpu()
    b = faces.boxes.double().cpu()
    w = (b[:, 2] - b[:, 0]).clamp(min=1)[:, None]
    h = (b[:, 3] - b[:, 1]).clamp(min=1)[:, None]
    x = (lm[..., 0] - b[:, 0:1]) * CROP_SIZE / w
    y = (lm[..., 1] - b[:, 1:2]) * CROP_SIZE / h
    return torch.stack([x, y], -1)


def _mean_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[r, P, 2]`` x ``[n, P, 2]`` -> ``[r, n]`` mean Euclidean distance over points."""
    return (a[:, None] - b[None]).pow(2).sum(-1).sqrt().mean(-1)


def sis_sets(lm: torch.Tensor, k: int, rows: torch.Tensor) -> tuple[list[torch.Tensor],
                                                                     list[torch.Tensor],
                                                                     torch.Tensor]:
    """Pose and lip sets (positions into ``lm``) for the drive positions ``rows``.

    Returns:
        (pose sets, lip sets, pose distances ``[len(rows), N]``).
    """
    n = lm.shape[0]
    pose = lm[:, POSE_POINTS]
    lip = lm[:, LIP_POINTS]
    pd = _mean_dist(pose[rows], pose)
    ld = _mean_dist(lip[rows], lip)
    idx = torch.arange(n)
    pose_sets, lip_sets = [], []
    for r, d in enumerate(rows.tolist()):
        others = idx[idx != d]
        # stable sorts: ties keep frame order
        po = others[torch.sort(pd[r, others], stable=True).indices]
        lo = others[torch.sort(ld[r, others], descending=True, stable=True).indices]
        pose_sets.append(po[:k])
        lip_sets.append(lo[:k])
    return pose_sets, lip_sets, pd


def select_references(
    faces: MuseTalkFaces,
    mode: str = "same_frame",
    *,
    k: int = 0,
    seed: int = 0,
    frame: int = 0,
) -> MuseTalkReferences:
    """The reference source frame of every row of ``faces``.

    Args:
        faces: from face crop.
        mode: ``same_frame`` | ``sis`` | ``fixed_frame``.
        k: SIS set size (0: ``int(0.51 * N)``); must be below the number of face frames.
        seed: SIS random seed (same seed, same choice).
        frame: the row used by ``fixed_frame``; it must have a face.

    Raises:
        ReferenceSelectionError: unknown mode, K or frame out of range, a faceless fixed frame.
    """
    n = len(faces)
    src = faces.index.cpu()
    has = faces.has_face.cpu().bool()
    if mode not in MODES:
        raise ReferenceSelectionError(f"unknown mode {mode!r}", input_name="mode",
                                      fix=f"choose one of {', '.join(MODES)}")
    own = torch.arange(n)
    info: dict = {"mode": mode}
    if mode == "same_frame":
        return MuseTalkReferences(src[own].clone(), mode, info)
    if mode == "fixed_frame":
        if not 0 <= int(frame) < n:
            raise ReferenceSelectionError(
                f"frame {frame} is out of range (the clip has {n} frames)",
                input_name="frame", fix=f"use 0 to {n - 1}")
        if not bool(has[int(frame)]):
            raise ReferenceSelectionError(f"frame {frame} has no face", input_name="frame",
                                          fix="pick a frame with a face")
        ref = torch.where(has, torch.full((n,), int(frame)), own)
        info["frame"] = int(frame)
        return MuseTalkReferences(src[ref], mode, info)

    pos = torch.nonzero(has).flatten()
    m = int(pos.numel())
    auto = int(TOP_K_RATIO * m)
    if k and not 1 <= int(k) <= max(1, m - 1):
        raise ReferenceSelectionError(
            f"K {k} is out of range for {m} frames with a face", input_name="k",
            fix=f"use 0 (automatic: {auto}) or 1 to {max(1, m - 1)}")
    kk = int(k) if k else auto
    info.update({"k": kk, "seed": int(seed), "face_frames": m, "fallbacks": 0})
    ref = own.clone()
    if m < 2 or kk < 1:
        info["note"] = "fewer than 2 frames with a face: every frame references itself"
        return MuseTalkReferences(src[ref], mode, info)
    lm = normalised_landmarks(faces)[pos]
    gen = torch.Generator().manual_seed(int(seed))
    chunk = max(1, _CHUNK_ELEMENTS // (m * 16))
    fallbacks = 0
    for a in range(0, m, chunk):
        rows = torch.arange(a, min(m, a + chunk))
        pose_sets, lip_sets, pd = sis_sets(lm, kk, rows)
        for r, d in enumerate(rows.tolist()):
            lip_set = lip_sets[r]
            both = pose_sets[r][torch.isin(pose_sets[r], lip_set)]
            if both.numel():
                pick = both[torch.randint(both.numel(), (1,), generator=gen)].item()
            else:
                fallbacks += 1
                order = torch.sort(pd[r, lip_set], stable=True).indices
                pick = lip_set[order[0]].item()
            ref[pos[d]] = pos[pick]
    info["fallbacks"] = fallbacks
    return MuseTalkReferences(src[ref], mode, info)
