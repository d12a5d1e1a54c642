"""Reference selection: SIS rules verified by brute force, seeds, fallback, other modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from musetalk_core.errors import ReferenceSelectionError
from musetalk_core.references import normalised_landmarks, select_references
from musetalk_core.types import MuseTalkFaces


def _faces(lm: np.ndarray, has=None) -> MuseTalkFaces:
    n = len(lm)
    lm = torch.from_numpy(lm.astype(np.float32))
    mins, maxs = lm.min(1).values, lm.max(1).values
    boxes = torch.cat([mins.floor(), maxs.ceil() + 1], 1).long()
    has = torch.ones(n, dtype=torch.bool) if has is None else torch.tensor(has)
    return MuseTalkFaces(boxes=boxes, has_face=has, landmarks=lm,
                         crops=torch.zeros(n, 256, 256, 3, dtype=torch.uint8),
                         source_size=(512, 512), version="v1.5")


def _brute(lm: np.ndarray, d: int, k: int):
    def dist(a, b):
        return float(np.mean(np.linalg.norm(a - b, axis=-1)))

    others = [f for f in range(len(lm)) if f != d]
    pose = sorted(others, key=lambda f: (dist(lm[d, 0:16], lm[f, 0:16]), f))[:k]
    lip = sorted(others, key=lambda f: (-dist(lm[d, 60:67], lm[f, 60:67]), f))[:k]
    return set(pose), set(lip)


def _clip(media, n=40):
    return np.load(media / "talk_25fps_512x512.landmarks.npz")["landmarks"][:n, 0]


def test_sis_choices_satisfy_the_rules_on_real_landmarks(media):
    faces = _faces(_clip(media))
    refs = select_references(faces, "sis", seed=3)
    norm = normalised_landmarks(faces).numpy()
    k = int(0.51 * 40)
    assert refs.info["k"] == k
    for d in range(40):
        pose, lip = _brute(norm, d, k)
        r = int(refs.index[d])
        assert r != d
        if pose & lip:
            assert r in pose & lip
        else:
            assert r in lip
    again = select_references(faces, "sis", seed=3)
    assert torch.equal(refs.index, again.index)
    other = select_references(faces, "sis", seed=4)
    assert not torch.equal(refs.index, other.index)


def test_normalisation_is_to_the_crop_box():
    lm = np.zeros((1, 68, 2))
    lm[0, :, 0] = np.linspace(10, 110, 68)
    lm[0, :, 1] = np.linspace(20, 70, 68)
    faces = _faces(lm)
    b = faces.boxes[0].double()
    n = normalised_landmarks(faces)[0]
    assert torch.allclose(n[0], torch.tensor([(10 - b[0]) * 256 / (b[2] - b[0]),
                                              (20 - b[1]) * 256 / (b[3] - b[1])]).double())


def test_empty_intersection_falls_back_to_nearest_pose_among_lip_set():
    rng = np.random.default_rng(0)
    base = rng.uniform(50, 200, (68, 2))
    lm = np.stack([base.copy() for _ in range(6)])
    lm[:, 27] = (0.0, 0.0)  # fixed extents: the same crop box for every frame
    lm[:, 33] = (300.0, 300.0)
    # from frame 0, pose and lip distances both grow with f: the K=2 nearest poses {1, 2}
    # and the K=2 most different lips {4, 5} never meet
    for f in range(6):
        lm[f, 0:16] += f * 3.0
        lm[f, 60:67] += f * 5.0
    faces = _faces(lm)
    refs = select_references(faces, "sis", k=2, seed=0)
    norm = normalised_landmarks(faces).numpy()
    pose, lip = _brute(norm, 0, 2)
    assert not pose & lip  # the construction really empties the intersection
    dists = {f: np.mean(np.linalg.norm(norm[0, 0:16] - norm[f, 0:16], axis=-1)) for f in lip}
    assert int(refs.index[0]) == min(dists, key=lambda f: (dists[f], f))
    assert int(refs.index[0]) == 4 and refs.info["fallbacks"] >= 1


def test_faceless_frames_reference_themselves_and_modes():
    rng = np.random.default_rng(1)
    lm = rng.uniform(50, 200, (8, 68, 2))
    faces = _faces(lm, has=[True, True, False, True, True, True, False, True])
    for mode in ("same_frame", "sis", "fixed_frame"):
        refs = select_references(faces, mode, frame=3)
        assert refs.index[2] == 2 and refs.index[6] == 6 and refs.mode == mode
    assert select_references(faces, "same_frame").index.tolist() == list(range(8))
    fixed = select_references(faces, "fixed_frame", frame=3).index.tolist()
    assert fixed == [3, 3, 2, 3, 3, 3, 6, 3]
    sis = select_references(faces, "sis").index
    assert all(bool(faces.has_face[int(r)]) for r, h in zip(sis, faces.has_face, strict=True)
               if h)


def test_bad_settings_are_clear_errors():
    faces = _faces(np.random.default_rng(2).uniform(50, 200, (5, 68, 2)), [True] * 4 + [False])
    with pytest.raises(ReferenceSelectionError, match="K 1000000000 is out of range"):
        select_references(faces, "sis", k=10**9)
    with pytest.raises(ReferenceSelectionError, match="frame 9 is out of range"):
        select_references(faces, "fixed_frame", frame=9)
    with pytest.raises(ReferenceSelectionError, match="frame 4 has no face"):
        select_references(faces, "fixed_frame", frame=4)
    with pytest.raises(ReferenceSelectionError, match="unknown mode"):
        select_references(faces, "nearest")
