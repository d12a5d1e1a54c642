"""Face detector: face-alignment's S3FD boxes and 2D-FAN 68-point landmarks, batched.

The network classes are face-alignment's own (``face_alignment.detection.sfd.net_s3fd.s3fd`` and
``face_alignment.models.FAN``); the weights come from files in our model folder, read with
:func:`musetalk_core.checkpoint.read_checkpoint` (never torch hub's cache, never code):

* ``s3fd-619a316812.pth``: S3FD state dict.
* ``2DFAN4-11f355bf06.pth.tar``: 2D-FAN state dict (face-alignment 1.5's format). The number of
  hourglass modules is read from the keys, so a smaller FAN loads too.
* ``2DFAN4-cd938726ad.zip``: the older TorchScript FAN. It is a program, so it is loaded only when
  the user placed it there and no state-dict file sits beside it, and the log says so.

Unlike face-alignment's one-image loop, :meth:`FaceDetector.detect` runs S3FD on a batch of frames
and :meth:`FaceDetector.landmarks` runs 2D-FAN on a batch of face crops, on the module's device.

Preprocessing follows the reference (musetalk.md 4.1): S3FD sees the RGB frame minus the BGR-order
means ``(104, 117, 123)`` (REF reverses its BGR frame to RGB, then subtracts BGR means), NMS 0.3,
scores above 0.5 kept. 2D-FAN follows face-alignment: a square crop around the box centre moved up
by 12 % of the box height, side ``200 * (w + h) / 195`` pixels, bilinear to 256x256, RGB / 255;
landmarks decode from the 64x64 heatmaps by arg-max, a quarter-pixel step toward the larger
neighbour, minus half a pixel, and the inverse crop transform truncated to integers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from ..checkpoint import is_torchscript, read_checkpoint, state_dict_of
from ..errors import InputError, WeightsError

log = logging.getLogger(__name__)

S3FD_MEANS = (104.0, 117.0, 123.0)
"""Subtracted from the R, G, B channels in that order (REF's BGR-means-on-RGB quirk)."""
NMS_THRESHOLD = 0.3
SCORE_THRESHOLD = 0.5
MAX_CANDIDATES = 1000
"""Boxes entering NMS per frame at most (highest scores first): bounds the time on garbage."""
DETECT_MAX_SIDE = 1920
"""Frames whose longer side exceeds this are detected on a downscaled copy (robustness S7)."""
FAN_INPUT = 256
HEATMAP = 64
REFERENCE_SCALE = 195.0
CENTER_Y_OFFSET = 0.12
STATE_DICT_NAMES = ("2DFAN4-11f355bf06.pth.tar",)

_S3FD_FIX = "put face-alignment's s3fd-619a316812.pth in models/face_detection/ (re-download it)"
_FAN_FIX = "put face-alignment's 2DFAN4-11f355bf06.pth.tar in models/face_detection/"


def _build_s3fd() -> nn.Module:
    from face_alignment.detection.sfd.net_s3fd import s3fd

    return s3fd()


def _build_fan(num_modules: int) -> nn.Module:
    from face_alignment.models import FAN

    return FAN(num_modules)


def _load_strict(net: nn.Module, sd: dict[str, torch.Tensor], shown: str, what: str,
                 fix: str) -> None:
    own = net.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} of the wrong shape (e.g. {wrong[0]})")
        raise WeightsError(f"{shown} is not {what} weights: " + ", ".join(parts), fix=fix)
    net.load_state_dict(sd)


def load_s3fd(path: str) -> nn.Module:
    """S3FD from its state-dict file (eval mode, CPU, float32)."""
    shown = os.path.basename(path)
    sd = state_dict_of(read_checkpoint(path, fix=_S3FD_FIX), shown=shown)
    if "conv1_1.weight" not in sd:
        raise WeightsError(f"{shown} is not an S3FD face detector (no 'conv1_1.weight')",
                           fix=_S3FD_FIX)
    net = _build_s3fd()
    _load_strict(net, sd, shown, "S3FD face detector", _S3FD_FIX)
    return net.eval()


def _fan_modules(sd: dict[str, torch.Tensor]) -> int:
    n = 0
    while f"l{n}.weight" in sd:
        n += 1
    return n


def load_fan(path: str) -> nn.Module:
    """2D-FAN from a state dict, or (only when no state dict exists beside it) TorchScript."""
    shown = os.path.basename(path)
    if is_torchscript(path):
        folder = os.path.dirname(os.path.abspath(path))
        for name in STATE_DICT_NAMES:
            alt = os.path.join(folder, name)
            if os.path.isfile(alt):
                log.info("%s is TorchScript (code); using the state dict %s beside it instead",
                         shown, name)
                return load_fan(alt)
        log.warning("loading %s as TorchScript: it is a program that runs code; it was loaded "
                    "because no state-dict file (%s) exists beside it", shown,
                    STATE_DICT_NAMES[0])
        try:
            return torch.jit.load(path, map_location="cpu").eval()
        except Exception as err:  # torch raises RuntimeError subclasses for bad archives
            raise WeightsError(f"{shown} is an unreadable TorchScript archive ({err})",
                               fix=_FAN_FIX) from err
    sd = state_dict_of(read_checkpoint(path, fix=_FAN_FIX), shown=shown)
    n = _fan_modules(sd)
    if n == 0 or "conv1.weight" not in sd:
        raise WeightsError(f"{shown} is not a 2D-FAN landmark model (no 'l0.weight' heatmap "
                           "layer)", fix=_FAN_FIX)
    if sd["l0.weight"].shape[0] != 68:
        raise WeightsError(f"{shown} predicts {sd['l0.weight'].shape[0]} points, not 68 (a 3D "
                           "or other FAN?)", fix=_FAN_FIX)
    net = _build_fan(n)
    _load_strict(net, sd, shown, "2D-FAN landmark", _FAN_FIX)
    return net.eval()


def _nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS with face-alignment's ``+1`` area convention; indices by descending score."""
    order = torch.argsort(scores, descending=True)
    boxes = boxes[order].double()
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    xx1 = torch.maximum(x1[:, None], x1[None])
    yy1 = torch.maximum(y1[:, None], y1[None])
    xx2 = torch.minimum(x2[:, None], x2[None])
    yy2 = torch.minimum(y2[:, None], y2[None])
    inter = (xx2 - xx1 + 1).clamp(min=0) * (yy2 - yy1 + 1).clamp(min=0)
    over = (inter / (areas[:, None] + areas[None] - inter)).cpu()
    n = boxes.shape[0]
    alive = torch.ones(n, dtype=torch.bool)
    keep = []
    for i in range(n):
        if not alive[i]:
            continue
        keep.append(i)
        alive &= over[i] <= threshold
        alive[i] = False
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


class FaceDetector(nn.Module):
    """S3FD + 2D-FAN in one module (the ``MUSETALK_FACE_DETECTOR`` wire value).

    Attributes:
        s3fd: face-alignment's S3FD network.
        fan: face-alignment's FAN network (or a TorchScript module).
        detect_max_side: longer-side limit above which detection runs on a downscaled copy.
    """

    def __init__(self, s3fd: nn.Module, fan: nn.Module, *,
                 detect_max_side: int = DETECT_MAX_SIDE) -> None:
        super().__init__()
        self.s3fd = s3fd
        self.fan = fan
        self.detect_max_side = int(detect_max_side)

    @property
    def device(self) -> torch.device:
        return next(self.s3fd.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.s3fd.parameters()).dtype

    def _fan_dtype(self) -> torch.dtype:
        try:
            return next(self.fan.parameters()).dtype
        except StopIteration:
            return torch.float32

    @staticmethod
    def _check_frames(frames: torch.Tensor) -> None:
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise InputError(f"frames must be uint8 [B, H, W, 3] RGB, got {frames.dtype} "
                             f"{list(frames.shape)}", input_name="frames",
                             fix="convert IMAGE frames with (x * 255).round().to(torch.uint8)")

    @torch.no_grad()
    def detect(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """Face boxes of each frame.

        Args:
            frames: uint8 ``[B, H, W, 3]`` RGB on any device.

        Returns:
            one float32 ``[k, 5]`` tensor per frame (x1, y1, x2, y2, score) in frame pixels,
            highest score first, NMS 0.3 applied and scores > 0.5 kept; on the CPU.
        """
        self._check_frames(frames)
        b, h, w, _ = frames.shape
        if b == 0:
            return []
        x = frames.to(self.device).permute(0, 3, 1, 2).float()
        scale = 1.0
        if max(h, w) > self.detect_max_side:
            scale = self.detect_max_side / max(h, w)
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            log.info("detecting faces on a %dx%d copy of the %dx%d frames", size[1], size[0], w, h)
        x = x - torch.tensor(S3FD_MEANS, device=x.device).view(1, 3, 1, 1)
        outs = self.s3fd(x.to(self.dtype))
        boxes, scores = [], []
        for i in range(len(outs) // 2):
            cls = torch.softmax(outs[2 * i].float(), dim=1)[:, 1]
            reg = outs[2 * i + 1].float()
            stride = 2 ** (i + 2)
            hh, ww = cls.shape[-2:]
            cy = (torch.arange(hh, device=cls.device, dtype=torch.float32) * stride
                  + stride / 2).view(hh, 1).expand(hh, ww)
            cx = (torch.arange(ww, device=cls.device, dtype=torch.float32) * stride
                  + stride / 2).view(1, ww).expand(hh, ww)
            size = stride * 4.0
            bx = cx + reg[:, 0] * 0.1 * size
            by = cy + reg[:, 1] * 0.1 * size
            bw = size * torch.exp(reg[:, 2] * 0.2)
            bh = size * torch.exp(reg[:, 3] * 0.2)
            x1, y1 = bx - bw / 2, by - bh / 2
            boxes.append(torch.stack([x1, y1, x1 + bw, y1 + bh], -1).reshape(b, -1, 4))
            scores.append(cls.reshape(b, -1))
        all_boxes = torch.cat(boxes, 1)
        all_scores = torch.cat(scores, 1)
        result = []
        for j in range(b):
            # Only a higher-scoring box can suppress another, so filtering > 0.5 before NMS keeps
            # exactly the boxes face-alignment keeps (NMS over > 0.05, then > 0.5).
            keep = all_scores[j] > SCORE_THRESHOLD
            bj, sj = all_boxes[j][keep], all_scores[j][keep]
            if sj.numel() > MAX_CANDIDATES:
                top = torch.topk(sj, MAX_CANDIDATES).indices
                bj, sj = bj[top], sj[top]
            if sj.numel():
                order = _nms(bj, sj, NMS_THRESHOLD)
                bj, sj = bj[order], sj[order]
            det = torch.cat([bj / scale, sj[:, None]], 1).cpu()
            result.append(det)
        return result

    @torch.no_grad()
    def landmarks(self, frames: torch.Tensor, boxes: Sequence[torch.Tensor]) -> torch.Tensor:
        """68 iBUG points for each box.

        Args:
            frames: uint8 ``[B, H, W, 3]`` RGB.
            boxes: one ``[k_i, >=4]`` tensor (x1, y1, x2, y2, ...) per frame, like
                :meth:`detect` returns.

        Returns:
            float32 ``[sum k_i, 68, 2]`` (x, y) in frame pixels (integers, as face-alignment
            truncates them), in the order of the boxes; on the CPU.
        """
        self._check_frames(frames)
        if len(boxes) != frames.shape[0]:
            raise InputError(f"{len(boxes)} box lists for {frames.shape[0]} frames",
                             input_name="boxes", fix="pass one box tensor per frame")
        crops, params = [], []
        dev = self.device
        for j, bj in enumerate(boxes):
            for row in bj.tolist():
                x1, y1, x2, y2 = row[:4]
                cx = x2 - (x2 - x1) / 2.0
                cy = y2 - (y2 - y1) / 2.0 - (y2 - y1) * CENTER_Y_OFFSET
                scale = (x2 - x1 + y2 - y1) / REFERENCE_SCALE
                crops.append(self._crop(frames[j], cx, cy, scale, dev))
                params.append((cx, cy, scale))
        if not crops:
            return torch.zeros(0, 68, 2)
        inp = torch.stack(crops).to(self._fan_dtype())
        out = self.fan(inp)
        if isinstance(out, (list, tuple)):
            out = out[-1]
        return decode_heatmaps(out.float(), torch.tensor(params, dtype=torch.float64)).cpu()

    @staticmethod
    def _crop(frame: torch.Tensor, cx: float, cy: float, scale: float,
              dev: torch.device) -> torch.Tensor:
        """face-alignment's crop: the square [ul, br) of the frame, zero outside, to 256."""
        ul = _crop_corner(1.0, cx, cy, scale)
        br = _crop_corner(float(FAN_INPUT), cx, cy, scale)
        # face-alignment's crop holds frame pixels ul .. br-1 (zeros outside the frame).
        x0, y0 = ul
        side_w, side_h = max(1, br[0] - x0), max(1, br[1] - y0)
        fh, fw = frame.shape[:2]
        sx0, sy0 = max(0, x0), max(0, y0)
        sx1, sy1 = min(fw, x0 + side_w), min(fh, y0 + side_h)
        patch = torch.zeros(3, side_h, side_w, device=dev)
        if sx1 > sx0 and sy1 > sy0:
            src = frame[sy0:sy1, sx0:sx1].to(dev).permute(2, 0, 1).float()
            patch[:, sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = src
        out = F.interpolate(patch[None], size=(FAN_INPUT, FAN_INPUT), mode="bilinear",
                            align_corners=False)[0]
        return out / 255.0


def _crop_corner(p: float, cx: float, cy: float, scale: float) -> list[int]:
    """Crop point ``(p, p)`` mapped back to the frame as face-alignment does it: a float32 3x3
    affine, inverted in float32, truncated to int (its rounding decides the crop's pixels)."""
    h = 200.0 * scale
    t = torch.eye(3, dtype=torch.float32)
    t[0, 0] = t[1, 1] = FAN_INPUT / h
    t[0, 2] = FAN_INPUT * (-cx / h + 0.5)
    t[1, 2] = FAN_INPUT * (-cy / h + 0.5)
    q = torch.linalg.inv(t) @ torch.tensor([p, p, 1.0])
    return [int(v) for v in q[:2].int().tolist()]


def decode_heatmaps(hm: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Heatmaps ``[k, 68, 64, 64]`` + per-face (cx, cy, scale) ``[k, 3]`` -> points ``[k, 68, 2]``.

    Arg-max, +-0.25 toward the larger neighbour (interior peaks only), -0.5, then the inverse of
    the crop transform (``x * h / 64 + c - h / 2`` with ``h = 200 * scale``) truncated toward zero.
    """
    k, c, hh, ww = hm.shape
    flat = hm.reshape(k, c, hh * ww)
    idx = flat.argmax(-1)
    px, py = idx % ww, idx // ww
    inner = (px > 0) & (px < ww - 1) & (py > 0) & (py < hh - 1)
    pxc, pyc = px.clamp(1, ww - 2), py.clamp(1, hh - 2)

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return flat.gather(-1, (yy * ww + xx)[..., None])[..., 0]

    dx = torch.sign(at(pyc, pxc + 1) - at(pyc, pxc - 1)) * inner
    dy = torch.sign(at(pyc + 1, pxc) - at(pyc - 1, pxc)) * inner
    pts = torch.stack([px + 1 + 0.25 * dx, py + 1 + 0.25 * dy], -1).double() - 0.5
    p = params.to(pts.device)
    h = (200.0 * p[:, 2])[:, None]
    ox = pts[..., 0] * h / hh + p[:, 0:1] - h / 2
    oy = pts[..., 1] * h / hh + p[:, 1:2] - h / 2
    return torch.trunc(torch.stack([ox, oy], -1)).float()


def load_face_detector(
    s3fd_path: str,
    fan_path: str,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    detect_max_side: int = DETECT_MAX_SIDE,
) -> FaceDetector:
    """Load S3FD and 2D-FAN from their files onto ``device`` in ``dtype`` (default float32).

    ``detect_max_side``: S3FD runs on a copy of each frame whose longer side is at most this
    (boxes are mapped back; the landmarks still come from the full frame). The default keeps
    frames up to 1920 pixels as they are, as the reference; 640 makes detection of HD frames
    several times faster on a CPU.

    Raises:
        WeightsError: missing, corrupt, code-carrying or wrong-model files (each names the file).
        InputError: ``detect_max_side`` below 64.
    """
    if int(detect_max_side) < 64:
        raise InputError(f"detect_max_side {detect_max_side} is too small",
                         input_name="detect_max_side",
                         fix="use at least 64 (640 for speed, 1920 as the reference)")
    s3fd = load_s3fd(s3fd_path)
    fan = load_fan(fan_path)
    det = FaceDetector(s3fd, fan, detect_max_side=int(detect_max_side))
    det.to(device=torch.device(device), dtype=dtype or torch.float32)
    log.info("face detector: S3FD %s + FAN %s on %s (%s)", os.path.basename(s3fd_path),
             os.path.basename(fan_path), device, dtype or torch.float32)
    return det.eval()
