"""Blend helpers against the libraries the reference uses (OpenCV, PIL): kernels bit-exact,
resizes and blur within the stated tolerances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from musetalk_core import masks as mk

cv2 = pytest.importorskip("cv2")
Image = pytest.importorskip("PIL.Image")


def ref_cone() -> np.ndarray:
    """REF's jaw kernel, from musetalk.md 5.2 step 2 (rows 10..20 cone, 21..32 band)."""
    k = np.zeros((33, 33), np.uint8)
    for r in range(10, 21):
        k[r, 16 - (r - 10):16 + (r - 10) + 1] = 1
    k[21:33, 6:27] = 1
    return k


def random_masks(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        m = (rng.random((512, 512)) > 0.995).astype(np.uint8) * 255
        m = cv2.dilate(m, np.ones((15, 9), np.uint8))
        m[rng.integers(0, 400):, rng.integers(0, 100):rng.integers(300, 512)] = 255
        m[:3, :] = 255  # touches the border: the default border rule matters
        out.append(m)
    return np.stack(out)


def test_kernels_match_opencv_rules():
    assert np.array_equal(mk.cone_kernel(), ref_cone())
    assert mk.cone_kernel()[10:21].sum(axis=1).tolist() == list(range(1, 22, 2))
    for size in ((35, 3), (5, 5), (7, 3), (3, 7), (9, 4), (1, 1)):
        assert np.array_equal(mk.ellipse_kernel(*size),
                              cv2.getStructuringElement(cv2.MORPH_ELLIPSE, size)), size


def test_dilate_erode_bit_exact_with_opencv():
    masks = random_masks(3, 0)
    x = torch.from_numpy(masks) > 0
    dil_t = mk.dilate(x, mk.cone_kernel())
    ero = mk.erode(dil_t, mk.ellipse_kernel(35, 3), iterations=2).numpy() * 255
    dil = dil_t.numpy() * 255
    for i in range(3):
        ref_d = cv2.dilate(masks[i], ref_cone(), iterations=1)
        ref_e = cv2.erode(ref_d, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (35, 3)),
                          iterations=2)
        assert np.array_equal(dil[i].astype(np.uint8), ref_d)
        assert np.array_equal(ero[i].astype(np.uint8), ref_e)


@pytest.mark.parametrize("left,right", [(90, 90), (80, 120), (0, 0), (256, 256), (20, 160)])
def test_cheek_mask_matches_cv2_rectangles(left, right):
    ref = np.zeros((512, 512), np.uint8)
    cv2.rectangle(ref, (0, 0), (256 - left, 512), 255, -1)
    cv2.rectangle(ref, (256 + right, 0), (512, 512), 255, -1)
    assert np.array_equal(mk.cheek_mask(left, right).numpy(), ref == 255)


def ref_label_mask(parsing: np.ndarray, mode: str, lw: int, rw: int) -> np.ndarray:
    """musetalk.md 5.2's label rule written with numpy + cv2, one image."""
    p = parsing.copy()
    if mode == "neck":
        keep = np.isin(p, [1, 11, 12, 13, 14])
    elif mode == "raw":
        keep = np.isin(p, [1, 11, 12, 13])
    else:
        skin = (p == 1).astype(np.uint8) * 255
        d = cv2.dilate(skin, ref_cone(), iterations=1)
        e = cv2.erode(d, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (35, 3)), iterations=2)
        cheek = np.zeros((512, 512), np.uint8)
        cv2.rectangle(cheek, (0, 0), (256 - lw, 512), 255, -1)
        cv2.rectangle(cheek, (256 + rw, 0), (512, 512), 255, -1)
        region = cv2.bitwise_or(cv2.bitwise_and(e, cheek), cv2.bitwise_and(d, ~cheek))
        keep = ((region == 255) & ~np.isin(p, [10])) | np.isin(p, [11, 12, 13])
    return keep.astype(np.uint8) * 255


def synthetic_labels(seed: int) -> np.ndarray:
    """A face-like label map: skin ellipse, nose, lips, mouth, neck, hair, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:512, 0:512]
    lab = np.zeros((512, 512), np.int64)
    lab[yy > 400] = 14
    lab[((xx - 256) / 170.0) ** 2 + ((yy - 250) / 220.0) ** 2 < 1] = 1
    lab[yy < 90] = 17
    lab[(abs(xx - 256) < 30) & (yy > 200) & (yy < 300)] = 10
    lab[(abs(xx - 256) < 70) & (yy > 330) & (yy < 350)] = 12
    lab[(abs(xx - 256) < 60) & (yy >= 350) & (yy < 360)] = 11
    lab[(abs(xx - 256) < 70) & (yy >= 360) & (yy < 380)] = 13
    noise = rng.random((512, 512)) < 0.01
    lab[noise] = rng.integers(0, 19, noise.sum())
    return lab


@pytest.mark.parametrize("mode", ["jaw", "raw", "neck"])
def test_label_modes_match_reference_rule(mode):
    labs = np.stack([synthetic_labels(0), synthetic_labels(1)])
    ours = mk.labels_to_mask(torch.from_numpy(labs), mode, 90, 70).numpy().astype(np.uint8)
    for i in range(2):
        assert np.array_equal(ours[i], ref_label_mask(labs[i], mode, 90, 70))


@pytest.mark.parametrize("side", [300, 480, 512, 700])
def test_pil_bilinear_to_512_exact(side):
    rng = np.random.default_rng(side)
    img = cv2.GaussianBlur(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), (5, 5), 0)
    ref = np.asarray(Image.fromarray(img).resize((512, 512), Image.BILINEAR))
    r = mk.pil_matrix(side, 512, "bilinear").float()[None]
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    ours = mk.resample(x, r, r, quantize=True)[0].permute(1, 2, 0).numpy()
    diff = np.abs(ours.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


@pytest.mark.parametrize("side", [300, 481, 700])
def test_pil_bicubic_mask_back_exact(side):
    m = random_masks(1, side)[0]
    ref = np.asarray(Image.fromarray(m).resize((side, side)))  # PIL default filter
    r = mk.pil_matrix(512, side, "bicubic").float()[None]
    ours = mk.resample(torch.from_numpy(m).float()[None, None], r, r, quantize=True)[0, 0]
    diff = np.abs(ours.numpy().astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


@pytest.mark.parametrize("size", [(321, 297), (200, 180), (256, 256)])
def test_cv2_linear_within_one_lsb(size):
    img = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    ref = cv2.resize(img, size)
    ry = mk.cv2_linear_matrix(256, size[1]).float()[None]
    rx = mk.cv2_linear_matrix(256, size[0]).float()[None]
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    ours = mk.resample(x, ry, rx, quantize=True)[0].permute(1, 2, 0).numpy()
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1  # OpenCV's 11-bit fixed point


def test_gaussian_rules():
    assert mk.blur_kernel_size(0.05, 330) == 17 and mk.blur_kernel_size(0.1, 330) == 33
    for k in (1, 3, 5, 7, 17, 33, 49):
        assert np.allclose(mk.gaussian_taps(k), cv2.getGaussianKernel(k, 0)[:, 0], atol=1e-12)


@pytest.mark.parametrize("side,f", [(100, 0.05), (160, 0.05), (330, 0.05), (481, 0.1)])
def test_gaussian_blur_within_two_lsb(side, f):
    rng = np.random.default_rng(side)
    m = np.zeros((side, side), np.uint8)
    m[side // 2:int(side * 0.8), side // 5:int(side * 0.8)] = 255
    m[rng.random((side, side)) > 0.97] = 255  # also hits the reflect-101 border
    k = mk.blur_kernel_size(f, side)
    ref = cv2.GaussianBlur(m, (k, k), 0)
    g = mk.gaussian_matrix(side, k).float()[None]
    ours = mk.resample(torch.from_numpy(m).float()[None, None], g, g, quantize=True,
                       round_between=False)[0, 0]
    diff = np.abs(ours.numpy().astype(int) - ref.astype(int))
    assert diff.max() <= 2 and (diff > 0).mean() < 0.15  # OpenCV's fixed-point 8-bit path
