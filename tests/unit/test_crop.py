"""Crop-box rules (musetalk.md 4.2) by hand-computed cases, crops, masks, smoothing, reports."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from musetalk_core import crop as cr
from musetalk_core.faces import frame_ranges


def _face(**pts) -> torch.Tensor:
    """68 points at (150.9, 200.5) except the given ones (index -> (x, y))."""
    lm = torch.full((68, 2), 0.0)
    lm[:, 0], lm[:, 1] = 150.9, 200.5
    base = {0: (100.9, 210.0), 16: (200.6, 210.0), 8: (150.0, 300.99), 28: (150.0, 180.2),
            29: (150.0, 190.7), 30: (150.0, 205.3)}
    base.update({int(k[1:]): v for k, v in pts.items()})
    for i, (x, y) in base.items():
        lm[i] = torch.tensor([x, y])
    return lm[None]


ONE = torch.tensor([True])


@pytest.mark.parametrize("shift,expected", [
    (0, [100, 80, 200, 300]),      # yc 190, y2 300 -> y1 = 2*190 - 300 = 80
    (5, [100, 90, 200, 300]),      # lm29.y 195
    (-7, [100, 66, 200, 300]),     # lm29.y 183
    (105, [100, 290, 200, 300]),   # lm29.y 295
])
def test_v1_box_by_hand(shift, expected):
    boxes, ok, fell = cr.crop_boxes(_face(), ONE, version="v1", height=512, width=512,
                                   bbox_shift=shift)
    assert boxes[0].tolist() == expected and ok.all() and not fell.any()


def test_v1_shift_past_the_chin_falls_back_to_the_detector_box():
    # lm29.y = 190 + 111 = 301 joins the max: y2 = 301, y1 = 301 -> empty -> detector box
    det = torch.tensor([[-3.7, 20.9, 250.2, 330.5]], dtype=torch.float64)
    boxes, ok, fell = cr.crop_boxes(_face(), ONE, version="v1", height=512, width=512,
                                   bbox_shift=111, det_boxes=det)
    assert boxes[0].tolist() == [0, 20, 250, 330] and fell.all()


def test_y1_clamped_at_zero_and_truncation_toward_zero():
    boxes, _, _ = cr.crop_boxes(_face(p29=(150.0, 100.4)), ONE, version="v1", height=512,
                               width=512)
    assert boxes[0].tolist() == [100, 0, 200, 300]
    # x = -0.5 truncates to 0 (not -1): no fallback
    boxes, _, fell = cr.crop_boxes(_face(p0=(-0.5, 210.0)), ONE, version="v1", height=512,
                                  width=512)
    assert boxes[0].tolist() == [0, 80, 200, 300] and not fell.any()
    # x = -1.2 -> -1 < 0 -> fallback; keypoints only: landmark extents clipped to the frame
    boxes, _, fell = cr.crop_boxes(_face(p0=(-1.2, 210.0)), ONE, version="v1", height=512,
                                  width=512)
    assert fell.all() and boxes[0].tolist() == [0, 180, 200, 300]


def test_v15_margin_and_clamp_and_shift_ignored():
    b, _, _ = cr.crop_boxes(_face(), ONE, version="v1.5", height=512, width=512, extra_margin=10,
                           bbox_shift=5)
    assert b[0].tolist() == [100, 80, 200, 310]
    b, _, _ = cr.crop_boxes(_face(), ONE, version="v1.5", height=305, width=512, extra_margin=10)
    assert b[0].tolist() == [100, 80, 200, 305]
    b, _, _ = cr.crop_boxes(_face(), ONE, version="v1.5", height=512, width=512, extra_margin=40)
    assert b[0].tolist() == [100, 80, 200, 340]


def test_no_face_rows_are_zero():
    lm = torch.cat([_face(), _face()])
    b, ok, _ = cr.crop_boxes(lm, torch.tensor([True, False]), version="v1", height=512,
                            width=512)
    assert b[1].tolist() == [0, 0, 0, 0] and ok.tolist() == [True, False]


def test_bbox_shift_range_is_ref_formula():
    a = _face()  # 30-29 = 205-190 = 15, 29-28 = 190-180 = 10
    b = _face(p30=(150.0, 212.0), p28=(150.0, 171.0))  # 22, 19
    lm = torch.cat([a, b])
    assert cr.bbox_shift_range(lm, torch.tensor([True, True])) == (-18, 14)  # -int(18.5), 14
    assert cr.bbox_shift_range(lm, torch.tensor([False, False])) is None


def test_lanczos_on_rgb_equals_ref_bgr_order():
    import cv2

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (1, 120, 90, 3), dtype=np.uint8)
    boxes = torch.tensor([[7, 11, 80, 117]])
    ours = cr.crop_resize(torch.from_numpy(frame), boxes, ONE)[0].numpy()
    bgr = np.ascontiguousarray(frame[0, 11:117, 7:80, ::-1])
    ref = cv2.resize(bgr, (256, 256), interpolation=cv2.INTER_LANCZOS4)[..., ::-1]
    assert np.array_equal(ours, ref)


def test_box_mask_half_open():
    m = cr.box_mask(torch.tensor([[1, 2, 4, 3], [0, 0, 5, 5]]), torch.tensor([True, False]), 5, 6)
    assert m.shape == (2, 5, 6) and m[1].sum() == 0
    assert m[0].nonzero().tolist() == [[2, 1], [2, 2], [2, 3]]


def test_smoothing_off_is_identity_and_on_reduces_jitter():
    rng = np.random.default_rng(1)
    base = np.array([100, 80, 200, 300])
    boxes = torch.from_numpy(base + rng.integers(-6, 7, (30, 4))).long()
    has = torch.ones(30, dtype=torch.bool)
    assert torch.equal(cr.smooth_boxes(boxes, has, 0.0, 512, 512), boxes)
    sm = cr.smooth_boxes(boxes, has, 1.0, 512, 512)
    assert sm.double().diff(dim=0).abs().mean() < boxes.double().diff(dim=0).abs().mean() / 2
    has[10] = False
    sm = cr.smooth_boxes(boxes, has, 1.0, 512, 512)
    assert torch.equal(sm[10], boxes[10])


def test_frame_ranges():
    assert frame_ranges([12, 13, 14, 40, 77, 39]) == "12-14, 39-40, 77"
    assert frame_ranges([]) == ""
