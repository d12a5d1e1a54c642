"""Test helpers: cheap stand-ins of the core protocols, synthetic values, and tiny checkpoints.

* :class:`StubVAE` implements ``LatentVAE`` with pooling and upsampling, counting encoder calls.
* :class:`StandInUNet` maps ``(sample [B,8,32,32], audio [B,50,384]) -> [B,4,32,32]`` with
  per-sample arithmetic only, so results do not depend on the batch composition.
* :func:`synthetic_audio`, :func:`faces_from_npz` build ``MuseTalkAudio`` / ``MuseTalkFaces``.
* :func:`write_tiny_models` writes tiny random checkpoints in the real file formats into a
  ``models`` folder laid out like ``ComfyUI/models`` (for the CLI and pipeline tests).
"""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import nn


class StubVAE:
    """A ``LatentVAE``: 8x8 average pooling to 4 channels, nearest upsampling back."""

    latent_channels = 4

    def __init__(self) -> None:
        self.encode_calls = 0
        self.encoded_images = 0
        self.decode_calls = 0

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        self.encode_calls += 1
        self.encoded_images += int(pixels.shape[0])
        x = torch.nn.functional.avg_pool2d(pixels.float() * 2 - 1, 8)
        lum = x.mean(dim=1, keepdim=True)
        return torch.cat([x, lum], dim=1) * 0.18215

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self.decode_calls += 1
        x = latents.float()[:, :3] / 0.18215
        x = torch.nn.functional.interpolate(x, scale_factor=8, mode="nearest")
        return (x / 2 + 0.5).clamp(0, 1)


class StandInUNet(nn.Module):
    """Per-sample arithmetic with the ``MuseTalkUNet`` call signature (and ``.version``).

    With ``fail_on_call=k`` every call from the k-th on raises ``oom`` while the batch is larger
    than ``fail_above`` (robustness.md H7's seam).
    """

    def __init__(self, version: str = "v1.5", fail_on_call: int | None = None,
                 fail_above: int = 4, oom: type[BaseException] = torch.OutOfMemoryError) -> None:
        super().__init__()
        self.version = version
        self.weight = nn.Parameter(torch.tensor([0.5, 0.4, 0.3]))
        self.calls = 0
        self.batches: list[int] = []
        self.fail_on_call = fail_on_call
        self.fail_above = fail_above
        self.oom = oom

    def forward(self, sample: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if (self.fail_on_call is not None and self.calls >= self.fail_on_call
                and sample.shape[0] > self.fail_above):
            raise self.oom("injected out of memory")
        self.batches.append(int(sample.shape[0]))
        a = audio.float().mean(dim=(1, 2)).view(-1, 1, 1, 1)
        w = self.weight
        return w[0] * sample[:, :4] + w[1] * sample[:, 4:] + w[2] * torch.tanh(a) * 0.18215


def synthetic_audio(frames: int, fps: Fraction = Fraction(25), seed: int = 0):
    """A ``MuseTalkAudio`` with random features for ``frames`` frames at ``fps``."""
    from musetalk_core.types import MuseTalkAudio

    g = torch.Generator().manual_seed(seed)
    sr = 16000
    n = int(Fraction(frames) * sr / fps) + 1
    steps = int(Fraction(n, sr) * 50) + 1
    return MuseTalkAudio(
        features=torch.randn(steps, 5, 384, generator=g),
        fps=fps,
        sample_rate=sr,
        n_samples=n,
        frame_count=frames,
        waveform=torch.randn(n, generator=g) * 0.1,
    )


def synthetic_faces(n: int, *, size: tuple[int, int] = (128, 128), version: str = "v1.5",
                    no_face: tuple[int, ...] = (), seed: int = 0):
    """``MuseTalkFaces`` with random crops and a centred box; rows in ``no_face`` lack a face."""
    from musetalk_core.types import MuseTalkFaces

    g = torch.Generator().manual_seed(seed)
    h, w = size
    has = torch.ones(n, dtype=torch.bool)
    has[list(no_face)] = False
    boxes = torch.tensor([w // 4, h // 4, 3 * w // 4, 3 * h // 4]).repeat(n, 1)
    boxes[~has] = 0
    return MuseTalkFaces(
        boxes=boxes.to(torch.int64),
        has_face=has,
        landmarks=torch.zeros(n, 68, 2),
        crops=torch.randint(0, 256, (n, 256, 256, 3), generator=g, dtype=torch.uint8),
        source_size=(h, w),
        version=version,
        extra_margin=10 if version == "v1.5" else 0,
    )


def npz_landmarks(path: str | os.PathLike, frames: int | None = None) -> np.ndarray:
    """The first face's landmarks from a shared-media ``.landmarks.npz``: float32 ``[n,68,2]``."""
    data = np.load(path)
    lm = data["landmarks"][:, 0]
    return lm if frames is None else lm[:frames]


# --------------------------------------------------------------------------- tiny checkpoints


TINY_UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.6.0.dev0",
    "act_fn": "silu",
    "attention_head_dim": 2,
    "block_out_channels": [32, 64],
    "center_input_sample": False,
    "cross_attention_dim": 384,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 8,
    "layers_per_block": 1,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 8,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
}

TINY_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 8, 16, 16],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 256,
}


def write_tiny_unet(folder: Path, version: str = "v1.5", seed: int = 0) -> Path:
    """A tiny diffusers UNet saved as REF's ``musetalk.json`` + weights file."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    sub = folder / ("musetalkV15" if version == "v1.5" else "musetalk")
    sub.mkdir(parents=True, exist_ok=True)
    cfg = dict(TINY_UNET_CONFIG)
    model = UNet2DConditionModel(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    (sub / "musetalk.json").write_text(json.dumps(cfg, indent=2))
    name = "unet.pth" if version == "v1.5" else "pytorch_model.bin"
    torch.save(model.state_dict(), sub / name)
    return sub / name


def write_tiny_vae(folder: Path, seed: int = 0) -> Path:
    """A tiny diffusers AutoencoderKL saved as a diffusers folder (config + safetensors)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**TINY_VAE_CONFIG)
    out = folder / "sd-vae-ft-mse"
    vae.save_pretrained(out, safe_serialization=True)
    return out
