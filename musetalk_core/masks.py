"""Pure tensor helpers of the blend: resampling matrices, OpenCV-style morphology, parse masks.

Everything here reproduces a library operation of the reference (musetalk.md 5) with plain,
batched torch ops so a whole batch of faces is processed at once on the runtime's device:

* Resizes are separable matrices ``out = R_y @ img @ R_x^T`` built with the library's own
  weight rule (PIL's BILINEAR/BICUBIC with antialiasing on downscale, OpenCV's INTER_LINEAR).
  Faces of different sizes in one batch get zero-padded matrices of a common size. PIL works in
  8-bit fixed point and rounds after each pass; we round after each pass too, in float32, so
  results agree with PIL to +-1 LSB on rare ties (tests measure it).
* OpenCV's dilate/erode with a non-rectangular kernel become maxima over shifted horizontal runs
  of the kernel (exact: bit-equal to ``cv2.dilate``/``cv2.erode`` with the default border).
* OpenCV's GaussianBlur is a separable matrix with the reflect-101 border folded in; its 8-bit
  fixed-point kernel makes ``cv2`` differ from ours by a few LSB at most (tests measure it).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the usual torch alias)

PARSE_SIZE = 512

SKIN, NOSE, MOUTH, UPPER_LIP, LOWER_LIP, NECK = 1, 10, 11, 12, 13, 14
MODES = ("jaw", "raw", "neck", "ellipse")
PARSE_MODES = ("jaw", "raw", "neck")


# ----------------------------------------------------------------------------- kernels

def cone_kernel() -> np.ndarray:
    """REF's 33x33 jaw dilation kernel (uint8 0/1): rows 10..20 a widening cone of odd widths
    1..21 centred on column 16, rows 21..32 a band of width 21 (columns 6..26)."""
    k = np.zeros((33, 33), dtype=np.uint8)
    for r in range(10, 21):
        half = r - 10
        k[r, 16 - half:16 + half + 1] = 1
    k[21:, 6:27] = 1
    return k


def ellipse_kernel(width: int, height: int) -> np.ndarray:
    """OpenCV's ``MORPH_ELLIPSE`` structuring element rule (uint8 0/1, ``[height, width]``)."""
    r, c = height // 2, width // 2
    inv_r2 = 1.0 / (r * r) if r else 0.0
    k = np.zeros((height, width), dtype=np.uint8)
    for i in range(height):
        dy = i - r
        if abs(dy) <= r:
            dx = int(round(c * math.sqrt((r * r - dy * dy) * inv_r2)))
            k[i, max(c - dx, 0):min(c + dx + 1, width)] = 1
    return k


def _runs(row: np.ndarray) -> list[tuple[int, int]]:
    """Half-open column runs of ones in a kernel row."""
    out, start = [], None
    for j, v in enumerate(list(row) + [0]):
        if v and start is None:
            start = j
        elif not v and start is not None:
            out.append((start, j))
            start = None
    return out


def dilate(x: torch.Tensor, kernel: np.ndarray, iterations: int = 1) -> torch.Tensor:
    """``cv2.dilate`` of binary masks (centre anchor, default border), batched.

    dst(y, x) = OR of src(y + r - kh//2, x + c - kw//2) over the kernel's ones (OpenCV's
    convention: the kernel is not flipped); pixels outside the image never count. Each kernel
    row is a set of horizontal runs, and a run is a window sum of a cumulative sum, so the cost
    does not depend on the kernel's width.

    Args:
        x: bool ``[B, H, W]``.
        kernel: 0/1 array ``[kh, kw]``.

    Returns:
        bool ``[B, H, W]``.
    """
    kh, kw = kernel.shape
    ay, ax = kh // 2, kw // 2
    h, w = x.shape[-2:]
    groups = _run_groups(kernel)
    for _ in range(iterations):
        xp = F.pad(x.to(torch.int32), (ax + 1, kw - 1 - ax, ay + 1, kh - 1 - ay))
        cs = xp.cumsum(dim=-1)  # column 0 and row 0 are extra zero padding
        out = torch.zeros_like(x, dtype=torch.bool)
        for (c0, c1), ranges in groups.items():
            # horizontal window: padded cols x+c0+1 .. x+c1
            win = cs[..., c1:c1 + w] - cs[..., c0:c0 + w]
            vs = None
            for r0, r1 in ranges:  # kernel rows r0..r1-1 -> padded rows y+r0+1 .. y+r1
                if r1 - r0 == 1:
                    out |= win[..., r1:r1 + h, :] > 0
                    continue
                if vs is None:
                    vs = win.clamp(max=1).cumsum(dim=-2)
                out |= (vs[..., r1:r1 + h, :] - vs[..., r0:r0 + h, :]) > 0
        x = out
    return x


def _run_groups(kernel: np.ndarray) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """Kernel ones as {column run: [consecutive row ranges holding it]} (half-open)."""
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for r in range(kernel.shape[0]):
        for run in _runs(kernel[r]):
            ranges = groups.setdefault(run, [])
            if ranges and ranges[-1][1] == r:
                ranges[-1] = (ranges[-1][0], r + 1)
            else:
                ranges.append((r, r + 1))
    return groups


def erode(x: torch.Tensor, kernel: np.ndarray, iterations: int = 1) -> torch.Tensor:
    """``cv2.erode`` of binary masks (centre anchor, default border: outside never counts)."""
    for _ in range(iterations):
        x = ~dilate(~x, kernel)
    return x


def cheek_mask(left: int, right: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """REF's cheek mask at 512x512 as bool ``[512, 512]``: True on columns 0..256-left and
    256+right..511 (OpenCV filled rectangles, corners inclusive, clipped to the image)."""
    cols = torch.arange(PARSE_SIZE, device=device)
    c = PARSE_SIZE // 2
    lo, hi = sorted((0, c - left))
    left_band = (cols >= lo) & (cols <= hi)
    lo, hi = sorted((c + right, PARSE_SIZE))
    right_band = (cols >= lo) & (cols <= hi)
    return (left_band | right_band).expand(PARSE_SIZE, PARSE_SIZE)


def labels_to_mask(labels: torch.Tensor, mode: str, left_cheek: int = 90,
                   right_cheek: int = 90) -> torch.Tensor:
    """REF's label -> keep-mask rule (musetalk.md 5.2).

    Args:
        labels: int ``[B, 512, 512]`` BiSeNet classes.
        mode: ``raw`` {1,11,12,13}, ``neck`` (+14) or ``jaw`` (dilated/eroded skin, nose excluded).
        left_cheek, right_cheek: jaw-mode cheek widths in 512-space pixels.

    Returns:
        float32 ``[B, 512, 512]`` with values 0 or 255.
    """
    lips = (labels == MOUTH) | (labels == UPPER_LIP) | (labels == LOWER_LIP)
    if mode == "raw":
        keep = lips | (labels == SKIN)
    elif mode == "neck":
        keep = lips | (labels == SKIN) | (labels == NECK)
    elif mode == "jaw":
        dil = dilate(labels == SKIN, cone_kernel())
        ero = erode(dil, ellipse_kernel(35, 3), iterations=2)
        cheeks = cheek_mask(left_cheek, right_cheek, labels.device)
        region = torch.where(cheeks, ero, dil)
        keep = (region & (labels != NOSE)) | lips
    else:
        raise ValueError(f"unknown parse mode {mode!r}")
    return keep.float() * 255.0


# ----------------------------------------------------------------------------- resampling

def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _bicubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@lru_cache(maxsize=512)
def pil_matrix(in_size: int, out_size: int, kind: str) -> torch.Tensor:
    """PIL's resample weights (``Image.resize``, BILINEAR or BICUBIC) as float64 ``[out, in]``.

    PIL's rule: scale = in/out; the filter is stretched by max(scale, 1) (antialiasing on
    downscale); output pixel i samples around centre (i + 0.5) * scale; weights normalised.
    """
    filt, support0 = (_bilinear, 1.0) if kind == "bilinear" else (_bicubic, 2.0)
    scale = in_size / out_size
    fscale = max(scale, 1.0)
    support = support0 * fscale
    center = (np.arange(out_size) + 0.5) * scale
    lo = np.maximum(np.trunc(center - support + 0.5), 0)[:, None]  # C's (int) truncation
    hi = np.minimum(np.trunc(center + support + 0.5), in_size)[:, None]
    j = np.arange(in_size, dtype=np.float64)[None, :]
    w = filt((j - center[:, None] + 0.5) / fscale) * ((j >= lo) & (j < hi))
    total = w.sum(axis=1, keepdims=True)
    return torch.from_numpy(w / np.where(total == 0, 1.0, total))


@lru_cache(maxsize=512)
def cv2_linear_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """OpenCV's ``cv2.resize(INTER_LINEAR)`` weights as float64 ``[out, in]``: half-pixel
    centres, two taps, no antialiasing, edge samples clamped; coefficients at OpenCV's 11-bit
    precision."""
    scale = in_size / out_size
    m = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        f = float(np.float32((i + 0.5) * scale - 0.5))
        s = math.floor(f)
        f -= s
        if s < 0:
            s, f = 0, 0.0
        if s >= in_size - 1:
            s, f = in_size - 1, 0.0
        f = round(f * 2048) / 2048
        m[i, s] += 1.0 - f
        if f:
            m[i, s + 1] += f
    return torch.from_numpy(m)


def blur_kernel_size(feather: float, width: int) -> int:
    """REF's Gaussian kernel size ``int(f * W // 2 * 2) + 1`` (Python precedence, odd)."""
    return int(feather * width // 2 * 2) + 1


def gaussian_taps(k: int) -> np.ndarray:
    """``cv2.getGaussianKernel(k, 0)``: fixed tables for k <= 7, else sigma from OpenCV's rule
    ``0.3 * ((k - 1) / 2 - 1) + 0.8``."""
    tables = {1: [1.0], 3: [0.25, 0.5, 0.25], 5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
              7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125]}
    if k in tables:
        return np.array(tables[k], dtype=np.float64)
    sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
    x = np.arange(k, dtype=np.float64) - (k - 1) * 0.5
    t = np.exp(-0.5 * x * x / (sigma * sigma))
    return t / t.sum()


@lru_cache(maxsize=512)
def gaussian_matrix(size: int, k: int) -> torch.Tensor:
    """1-D Gaussian blur of ``size`` samples, reflect-101 border, as float64 ``[size, size]``."""
    taps = gaussian_taps(k)
    half = k // 2
    m = np.zeros((size, size), dtype=np.float64)
    if size == 1:
        m[0, 0] = 1.0
        return torch.from_numpy(m)
    period = 2 * size - 2
    rows = np.arange(size)
    for t, w in enumerate(taps):
        j = np.abs(rows + t - half) % period
        j = np.where(j >= size, period - j, j)
        np.add.at(m, (rows, j), w)
    return torch.from_numpy(m)


def stack_padded(mats: list[torch.Tensor], rows: int, cols: int,
                 device: torch.device) -> torch.Tensor:
    """Stack ``[r_i, c_i]`` matrices, zero-padded, as float32 ``[B, rows, cols]`` on ``device``."""
    out = torch.zeros((len(mats), rows, cols), dtype=torch.float32)
    for i, m in enumerate(mats):
        out[i, :m.shape[0], :m.shape[1]] = m
    return out.to(device)


def resample(x: torch.Tensor, ry: torch.Tensor, rx: torch.Tensor, *,
             quantize: bool, round_between: bool = True) -> torch.Tensor:
    """Separable per-item resample ``ry @ x @ rx^T``, horizontal pass first (PIL's order).

    Args:
        x: float ``[B, C, Hin, Win]`` (0..255 when ``quantize``).
        ry: ``[B, Hout, Hin]``; rx: ``[B, Wout, Win]``.
        quantize: round and clip to 0..255 after each pass (8-bit images in PIL/OpenCV).
        round_between: with ``quantize``, also round the intermediate (PIL does; OpenCV's blur
            keeps it in fixed point).
    """
    h = torch.matmul(x, rx.transpose(1, 2).unsqueeze(1))
    if quantize and round_between:
        h = h.add_(0.5).floor_().clamp_(0, 255)  # PIL/OpenCV round half up
    v = torch.matmul(ry.unsqueeze(1), h)
    if quantize:
        v = v.add_(0.5).floor_().clamp_(0, 255)
    return v
