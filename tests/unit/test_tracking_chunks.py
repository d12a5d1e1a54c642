"""Resumable face tracking: a clip cut into chunks gives exactly the whole-clip result.

Real two-face clip landmarks (fed as POSE_KEYPOINT) through ``crop_faces`` with a
``TrackState``, and through ``LipSyncProcessor.faces_for`` (the streaming node's per-chunk path).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from musetalk_core.crop import smooth_boxes
from musetalk_core.faces import crop_faces
from musetalk_core.runtime import Runtime
from musetalk_core.tracking import TrackState

H, W, N = 96, 192, 100
"""Frames at a quarter of the clip's 768x384 (the keypoint canvas is scaled to them): fast."""
CANVAS = (768, 384)
GONE = range(12, 22)
"""Frames where the right face (slot 1) is missing: crosses the chunk boundaries 14, 16, 21."""


def _pose(lm: np.ndarray, drop_right: bool) -> list[dict]:
    out = []
    for f in range(N):
        people = []
        for slot in (1, 0) if f % 2 else (0, 1):  # people order varies from frame to frame
            if drop_right and slot == 1 and f in GONE:
                continue
            pts = np.concatenate([lm[f, slot], np.ones((68, 1))], 1).reshape(-1).tolist()
            people.append({"face_keypoints_2d": pts})
        out.append({"people": people, "canvas_width": CANVAS[0], "canvas_height": CANVAS[1]})
    return out


@pytest.fixture(scope="module")
def two_faces():
    from tests.conftest import MEDIA

    path = MEDIA / "two_faces_25fps_768x384.landmarks.npz"
    if not path.exists():
        pytest.skip(f"shared test media not found at {MEDIA}")
    return np.load(path)["landmarks"][:, :2].astype(np.float64)


FRAMES = torch.rand(1, H, W, 3, generator=torch.Generator().manual_seed(3)).expand(N, -1, -1, -1)


def _run(pose, chunk: int | None, **kw):
    rt = Runtime(device=torch.device("cpu"))
    if chunk is None:
        f = crop_faces(FRAMES, rt, pose_keypoints=pose, **kw)
        return f.boxes, f.has_face, f.landmarks, f.crops
    state = TrackState()
    parts = []
    for a in range(0, N, chunk):
        b = min(N, a + chunk)
        f = crop_faces(FRAMES[a:b], rt, pose_keypoints=pose[a:b], state=state, **kw)
        parts.append((f.boxes, f.has_face, f.landmarks, f.crops))
    assert state.frames == N
    return tuple(torch.cat([p[i] for p in parts]) for i in range(4))


@pytest.mark.parametrize("face_index,policy,smooth", [
    (-1, "passthrough", 0.0), (0, "hold_last", 0.7), (1, "passthrough", 0.0),
    (1, "hold_last", 0.0), (1, "hold_last", 0.7)])
def test_chunked_equals_whole_clip_and_never_switches(two_faces, face_index, policy, smooth):
    pose = _pose(two_faces, drop_right=True)
    kw = dict(face_index=face_index, on_missing_face=policy, smooth=smooth)
    whole = _run(pose, None, **kw)
    has, lm = whole[1], whole[2]
    # which face: face_index counts left to right; the left face is slot 0 (x < 384)
    slot = {0: 0, 1: 1}.get(face_index)
    centre = lm[has].mean(1)[:, 0]
    if slot is None:
        slot = 0 if float(centre[0]) < W / 2 else 1
    assert bool(((centre < W / 2) == (slot == 0)).all()), "the face jumped"
    real = [f for f in range(N) if not (slot == 1 and f in GONE)]
    if smooth == 0:
        want = torch.from_numpy(two_faces[real, slot] * W / CANVAS[0]).float()
        assert torch.allclose(lm[real], want, atol=1e-4)
    if slot == 1 and policy == "hold_last":
        assert bool(has.all())
        assert torch.equal(lm[GONE.start:GONE.stop], lm[GONE.start - 1].expand(10, -1, -1))
    elif slot == 1:
        assert not bool(has[GONE.start:GONE.stop].any())
    for chunk in (7, 16, 61):
        got = _run(pose, chunk, **kw)
        for name, a, b in zip(("boxes", "has_face", "landmarks", "crops"), whole, got, strict=True):
            assert torch.equal(a, b), f"{name} differ at chunk size {chunk}"


def test_smoothing_is_resumable_and_smooths():
    rng = np.random.default_rng(1)
    drift = np.linspace(0, 60, 40)[:, None] * np.array([1, 0, 1, 0])
    boxes = torch.from_numpy(np.array([100, 80, 200, 300]) + drift
                             + rng.integers(-6, 7, (40, 4))).round().long()
    has = torch.ones(40, dtype=torch.bool)
    has[25] = False  # a gap restarts the filter
    whole = smooth_boxes(boxes, has, 0.8, 512, 512)
    state: dict = {}
    parts = [smooth_boxes(boxes[a:a + 9], has[a:a + 9], 0.8, 512, 512, state)
             for a in range(0, 40, 9)]
    assert torch.equal(torch.cat(parts), whole)
    assert torch.equal(whole[25], boxes[25]) and torch.equal(whole[26], boxes[26])
    jitter = (whole[:25].double().diff(dim=0) - 60 / 39 * torch.tensor([1, 0, 1, 0])).abs()
    raw = (boxes[:25].double().diff(dim=0) - 60 / 39 * torch.tensor([1, 0, 1, 0])).abs()
    assert jitter.mean() < raw.mean() / 2
    # no lag on steady motion: the smoothed box follows the drift
    assert (whole[:25, 0].double() - boxes[:25, 0].double())[10:].mean().abs() < 3


def test_processor_tracks_across_chunks(two_faces):
    """The streaming node's per-chunk path (LipSyncProcessor) keeps one face across chunks."""
    from types import SimpleNamespace

    from musetalk_core.pipeline import LipSyncModels, LipSyncProcessor, LipSyncSettings

    pose = _pose(two_faces, drop_right=True)
    models = LipSyncModels(unet=SimpleNamespace(version="v1.5"), vae=None)
    whole = _run(pose, None, face_index=1, on_missing_face="hold_last", smooth=0.5)
    for chunk in (16, 61):
        settings = LipSyncSettings(face_index=1, on_missing_face="hold_last", smooth_boxes=0.5)
        proc = LipSyncProcessor(models, settings, None, Runtime(device=torch.device("cpu")),
                                (H, W), pose_keypoints=pose)
        u8 = (FRAMES[:1] * 255).round().to(torch.uint8).expand(N, -1, -1, -1)
        boxes = []
        for a in range(0, N, chunk):
            src = torch.arange(a, min(N, a + chunk))
            faces, _, _ = proc.faces_for(u8[a:a + chunk], src)
            boxes.append(faces.boxes)
        assert torch.equal(torch.cat(boxes), whole[0])
        assert proc.track.frames == N
