"""Tiny random checkpoints in the real MuseTalk file formats (shared by the model tests)."""

from __future__ import annotations

import json
import os

import torch

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
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 8,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
}


def tiny_unet(seed: int = 0, **overrides):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config({**TINY_UNET_CONFIG, **overrides}).eval()
    with torch.no_grad():  # diffusers zero-inits conv_out and proj_out: make every weight count
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return unet


def write_config(folder, config=None, name="musetalk.json") -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        json.dump(config or TINY_UNET_CONFIG, f)
    return path


def save_unet(unet, path: str, fmt: str | None = None, prefix: str = "",
              dtype: torch.dtype | None = None) -> str:
    """Save the state dict as the real files are saved (torch.save / safetensors)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sd = {prefix + k: (v.to(dtype) if dtype else v).contiguous()
          for k, v in unet.state_dict().items()}
    fmt = fmt or os.path.splitext(path)[1]
    if fmt == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, path)
    else:
        torch.save(sd, path)
    return path
