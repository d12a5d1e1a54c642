"""BiSeNet face parser (19 CelebAMask-HQ classes) with the reference's ``79999_iter.pth`` layout.

Architecture (musetalk.md 5.2, 1.4): a ResNet-18 context path (``cp.resnet``) whose 1/8, 1/16 and
1/32 features feed two attention-refinement modules, a feature-fusion module (``ffm``) that fuses
the 1/8 backbone feature with the refined context, and three output heads (``conv_out`` main,
``conv_out16`` and ``conv_out32`` auxiliary). Only the main head is used at inference; the
auxiliary heads exist so the state dict matches the released file key for key.

Module names and parameter shapes follow the released checkpoint, so ``state_dict()`` of
:class:`FaceParser` has exactly the keys of ``79999_iter.pth``. The code is our own.
"""

from __future__ import annotations

import itertools
import logging
import os

import torch
import torch.nn.functional as F  # noqa: N812 (the usual torch alias)
from torch import nn

from ..checkpoint import read_checkpoint, state_dict_of, strip_prefixes
from ..errors import WeightsError

log = logging.getLogger(__name__)

N_CLASSES = 19
PARSE_SIZE = 512
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CLASS_NAMES = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eyeglasses", "l_ear", "r_ear",
    "earring", "nose", "mouth", "u_lip", "l_lip", "neck", "necklace", "cloth", "hair", "hat",
)
PARSER_FILE = "79999_iter.pth"
BACKBONE_FILE = "resnet18-5c106cde.pth"

_ids = itertools.count(1)


class _ConvBNReLU(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU; keys ``conv.weight``, ``bn.*``."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, pad: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, pad, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class _BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 projection (``downsample.0/1``) where shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(skip + y)


def _stage(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1))


class _ResNet18(nn.Module):
    """ResNet-18 trunk without the classifier; returns the 1/8, 1/16 and 1/32 features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _stage(64, 64, 1)
        self.layer2 = _stage(64, 128, 2)
        self.layer3 = _stage(128, 256, 2)
        self.layer4 = _stage(256, 512, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        f8 = self.layer2(self.layer1(x))
        f16 = self.layer3(f8)
        return f8, f16, self.layer4(f16)


class _AttentionRefinement(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = _ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        att = torch.sigmoid(self.bn_atten(self.conv_atten(F.adaptive_avg_pool2d(feat, 1))))
        return feat * att


class _ContextPath(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.resnet = _ResNet18()
        self.arm16 = _AttentionRefinement(256, 128)
        self.arm32 = _AttentionRefinement(512, 128)
        self.conv_head32 = _ConvBNReLU(128, 128)
        self.conv_head16 = _ConvBNReLU(128, 128)
        self.conv_avg = _ConvBNReLU(512, 128, k=1, pad=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f8, f16, f32 = self.resnet(x)
        glob = self.conv_avg(F.adaptive_avg_pool2d(f32, 1))  # [B,128,1,1], broadcasts
        up32 = F.interpolate(self.arm32(f32) + glob, size=f16.shape[2:], mode="nearest")
        up32 = self.conv_head32(up32)
        up16 = F.interpolate(self.arm16(f16) + up32, size=f8.shape[2:], mode="nearest")
        up16 = self.conv_head16(up16)
        return f8, up16, up32


class _FeatureFusion(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.convblk = _ConvBNReLU(cin, cout, k=1, pad=0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([a, b], dim=1))
        att = F.adaptive_avg_pool2d(feat, 1)
        att = torch.sigmoid(self.conv2(F.relu(self.conv1(att))))
        return feat * att + feat


class _Head(nn.Module):
    def __init__(self, cin: int, mid: int, n_classes: int) -> None:
        super().__init__()
        self.conv = _ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, n_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class FaceParser(nn.Module):
    """BiSeNet face parser (wire type ``MUSETALK_FACE_PARSER``).

    Attributes:
        parser_id: a stable string naming the weights (file, size and mtime for a loaded file), used
            to key memoised parse masks; two parsers with the same id give the same labels.
    """

    def __init__(self, n_classes: int = N_CLASSES, parser_id: str | None = None) -> None:
        super().__init__()
        self.cp = _ContextPath()
        self.ffm = _FeatureFusion(256, 256)
        self.conv_out = _Head(256, 256, n_classes)
        self.conv_out16 = _Head(128, 64, n_classes)  # auxiliary (training) heads, unused here
        self.conv_out32 = _Head(128, 64, n_classes)
        self.n_classes = n_classes
        self.parser_id = parser_id or f"in-memory-{next(_ids)}"
        self.register_buffer("_mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Main-head logits.

        Args:
            x: ``[B, 3, H, W]`` normalised RGB (ImageNet mean/std), normally 512x512.

        Returns:
            float ``[B, 19, H, W]``: logits upsampled bilinearly with ``align_corners=True`` (REF).
        """
        f8, up16, _ = self.cp(x)
        fused = self.ffm(f8, up16)
        return F.interpolate(self.conv_out(fused), size=x.shape[2:], mode="bilinear",
                             align_corners=True)

    @torch.no_grad()
    def parse(self, rgb: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
        """Class labels of RGB face crops.

        Args:
            rgb: float ``[B, 3, H, W]`` RGB in 0..1 on any device. Crops that are not 512x512 are
                resized with torch's antialiased bilinear filter (close to REF's PIL BILINEAR; the
                blend does REF's exact resize itself and hands 512x512 crops here).
            batch_size: images per forward pass.

        Returns:
            int64 ``[B, 512, 512]`` labels 0..18 on the parser's device.
        """
        p = next(self.parameters())
        out = []
        for i in range(0, rgb.shape[0], max(1, batch_size)):
            x = rgb[i:i + batch_size].to(device=p.device, dtype=torch.float32)
            if x.shape[-2:] != (PARSE_SIZE, PARSE_SIZE):
                x = F.interpolate(x, size=(PARSE_SIZE, PARSE_SIZE), mode="bilinear",
                                  align_corners=False, antialias=True)
            x = ((x - self._mean.float()) / self._std.float()).to(p.dtype)
            out.append(self(x).argmax(dim=1))
        if not out:
            return torch.zeros((0, PARSE_SIZE, PARSE_SIZE), dtype=torch.int64, device=p.device)
        return torch.cat(out)


def _looks_like_imagenet_resnet(sd: dict[str, torch.Tensor]) -> bool:
    return "fc.weight" in sd or ("layer1.0.conv1.weight" in sd and "conv1.weight" in sd)


def load_face_parser(
    path: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    display_name: str | None = None,
) -> FaceParser:
    """Load ``79999_iter.pth`` (or a safetensors copy) into a :class:`FaceParser`, strictly.

    Args:
        path: the checkpoint file.
        device: where the parser will live.
        dtype: parameter dtype (default float32). Inputs are cast to it in :meth:`FaceParser.parse`.
        display_name: how errors name the file (e.g. ``face-parse-bisent/79999_iter.pth``).

    Raises:
        WeightsError: unreadable or unsafe file, the ImageNet ResNet-18 backbone instead of the
            parser (robustness M10), a head with another class count, or keys that do not match.
    """
    shown = display_name or f"face-parse-bisent/{os.path.basename(path)}"
    fix_pick = f"pick {PARSER_FILE} (the BiSeNet face parser) in models/face-parse-bisent"
    sd = state_dict_of(read_checkpoint(path, display_name=shown), shown=shown)
    sd = strip_prefixes(sd, ("module.",))
    if _looks_like_imagenet_resnet(sd):
        raise WeightsError(f"{shown} is the ImageNet ResNet-18 backbone, not the BiSeNet face "
                           "parser", fix=f"pick {PARSER_FILE}")
    head = sd.get("conv_out.conv_out.weight")
    if head is not None and head.ndim == 4 and head.shape[0] != N_CLASSES:
        raise WeightsError(f"{shown} is a face parser with {head.shape[0]} classes; MuseTalk's "
                           f"blend needs the 19-class CelebAMask-HQ parser", fix=fix_pick)
    st = os.stat(path)
    model = FaceParser(parser_id=f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}")
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected),
                             ("wrong shape", wrong)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:5])}{more}")
        raise WeightsError(f"{shown} is not the BiSeNet face parser ({'; '.join(parts)})",
                           fix=fix_pick)
    for k, v in expected.items():  # old checkpoints may lack BatchNorm's step counters
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = v
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise WeightsError(f"{shown} holds non-finite weights ({bad[0]})",
                           fix=f"delete it and download {PARSER_FILE} again")
    model.load_state_dict(sd, strict=True)
    model.eval().requires_grad_(False)
    return model.to(device=torch.device(device), dtype=dtype or torch.float32)
