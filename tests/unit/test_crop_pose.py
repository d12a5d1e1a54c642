"""POSE_KEYPOINT parsing: DWPose/OpenPose layouts as comfyui_controlnet_aux emits them (F10)."""

from __future__ import annotations

import numpy as np
import pytest

from musetalk_core.errors import InputError
from musetalk_core.landmarks import pose_candidates


def _face(x0=100.0, y0=120.0, n=70, conf=1.0):
    rng = np.random.default_rng(0)
    pts = np.stack([x0 + rng.uniform(0, 100, n), y0 + rng.uniform(0, 120, n),
                    np.full(n, conf)], 1)
    return pts


def _frame(*faces, w=512, h=512):
    return {"people": [{"face_keypoints_2d": f.reshape(-1).tolist(), "pose_keypoints_2d": []}
                       for f in faces], "canvas_width": w, "canvas_height": h}


def test_70_points_keep_the_first_68_in_pixels():
    f = _face()
    c = pose_candidates([_frame(f)], 1, 512, 512)[0]
    assert c.landmarks.shape == (1, 68, 2)
    assert np.allclose(c.landmarks[0], f[:68, :2], atol=1e-4)


def test_normalised_coordinates_and_no_integer_lost():
    f = _face()
    f[:, 0] /= 512
    f[:, 1] /= 512
    f[0, :2] = [299.99999 / 512, 0.5]
    c = pose_candidates([_frame(f)], 1, 512, 512)[0]
    assert c.landmarks[0, 0, 0] == 300.0 and int(c.landmarks[0, 0, 0]) == 300
    assert np.allclose(c.landmarks[0, 1:], f[1:68, :2] * 512, atol=1e-3)
    g = _face()
    g[3, :2] = [299.99999, 200.0]
    assert pose_candidates([_frame(g)], 1, 512, 512)[0].landmarks[0, 3, 0] == 300.0


def test_no_face_cases():
    zero = np.zeros((70, 3))
    frames = [_frame(zero), {"people": [{"face_keypoints_2d": None}], "canvas_width": 512,
                             "canvas_height": 512}, {"people": [], "canvas_width": 512,
                                                     "canvas_height": 512}]
    assert [len(c) for c in pose_candidates(frames, 3, 512, 512)] == [0, 0, 0]


def test_dropped_points_filled_inside_the_face():
    f = _face()
    f[5] = 0.0  # DWPose drops points below 0.3 as (0, 0, 0)
    c = pose_candidates([_frame(f)], 1, 512, 512)[0]
    assert c.landmarks[0, :, 0].min() >= 100 and c.landmarks[0, :, 1].min() >= 120
    f[29] = 0.0  # no nose bridge: unusable face
    assert len(pose_candidates([_frame(f)], 1, 512, 512)[0]) == 0


def test_canvas_scaling_and_mismatches():
    f = _face()
    c = pose_candidates([_frame(f, w=1024, h=1024)], 1, 512, 512)[0]
    assert np.allclose(c.landmarks[0], f[:68, :2] / 2, atol=1e-3)
    with pytest.raises(InputError, match="keypoints are for 1024x512, images are 512x512"):
        pose_candidates([_frame(f, w=1024, h=512)], 1, 512, 512)
    with pytest.raises(InputError, match="2 frames but the images hold 3"):
        pose_candidates([_frame(f)] * 2, 3, 512, 512)
    with pytest.raises(InputError, match="pose_keypoints"):
        pose_candidates("nonsense", 1, 512, 512)


def test_many_people_bounded():
    faces = [_face(x0=float(i % 400), n=68) for i in range(300)]
    c = pose_candidates([_frame(*faces)], 1, 512, 512)[0]
    assert len(c) == 16
