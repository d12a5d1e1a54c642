"""Test helpers: cheap stand-ins of the core protocols, synthetic values, and tiny checkpoints.

* :class:`StubVAE` implements ``LatentVAE`` with pooling and upsampling, counting encoder calls.
* :class:`StandInUNet` maps ``(sample [B,8,32,32], audio [B,50,384]) -> [B,4,32,32]`` with
  per-sample arithmetic only, so results do not depend on the batch composition.
* :func:`synthetic_audio`, :func:`faces_from_npz` build ``MuseTalkAudio`` / ``MuseTalkFaces``.
* :func:`write_tiny_models` writes tiny random checkpoints in the real file formats into a
  ``models`` folder laid out like ``ComfyUI/models`` (for the CLI and pipeline tests).
"""

from __future__ import annotations

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


def write_tiny_unet(models_dir: Path, version: str = "v1.5", seed: int = 0) -> Path:
    """A tiny diffusers UNet as REF ships it: ``musetalk.json`` + ``unet.pth``/``.bin``."""
    from tests.models._tiny import save_unet, tiny_unet, write_config

    sub = Path(models_dir) / "musetalk" / ("musetalkV15" if version == "v1.5" else "musetalk")
    write_config(str(sub))
    name = "unet.pth" if version == "v1.5" else "pytorch_model.bin"
    return Path(save_unet(tiny_unet(seed), str(sub / name)))


def write_tiny_vae(models_dir: Path, seed: int = 0) -> Path:
    """A tiny AutoencoderKL as the diffusers folder ``vae/sd-vae-ft-mse`` (safetensors)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**TINY_VAE_CONFIG).eval()
    with torch.no_grad():  # diffusers zero-inits nothing here, but make the scale non-trivial
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    out = Path(models_dir) / "vae" / "sd-vae-ft-mse"
    vae.save_pretrained(out, safe_serialization=True)
    return out


def write_tiny_whisper(models_dir: Path, seed: int = 0) -> Path:
    """A whisper-tiny-shaped HF folder ``musetalk/whisper`` (width 384, 4 layers, small FFN)."""
    from transformers import WhisperConfig, WhisperModel

    torch.manual_seed(seed)
    cfg = WhisperConfig(d_model=384, encoder_layers=4, decoder_layers=1,
                        encoder_attention_heads=6, decoder_attention_heads=6, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, num_mel_bins=80, max_source_positions=1500,
                        max_target_positions=16, vocab_size=64, pad_token_id=1, bos_token_id=2,
                        eos_token_id=3, decoder_start_token_id=2, suppress_tokens=[],
                        begin_suppress_tokens=[])
    out = Path(models_dir) / "musetalk" / "whisper"
    WhisperModel(cfg).eval().save_pretrained(out, safe_serialization=True)
    return out


def write_tiny_parser(models_dir: Path, seed: int = 0) -> Path:
    """BiSeNet (its real, small architecture) with random weights as ``79999_iter.pth``."""
    from musetalk_core.models.face_parser import FaceParser

    torch.manual_seed(seed)
    out = Path(models_dir) / "musetalk" / "face-parse-bisent" / "79999_iter.pth"
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(FaceParser().state_dict(), out)
    return out


def write_tiny_models(models_dir: Path, *, version: str = "v1.5", parser: bool = False) -> Path:
    """A ``ComfyUI/models``-like folder with tiny random checkpoints in the real formats."""
    models_dir = Path(models_dir)
    write_tiny_unet(models_dir, version)
    write_tiny_vae(models_dir)
    write_tiny_whisper(models_dir)
    if parser:
        write_tiny_parser(models_dir)
    return models_dir


# --------------------------------------------------------------------------- host models tree


def _taesd_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with the key layout of a TAESD single file (``taesd_encoder.*``,
    ``taesd_decoder.*``, ``vae_scale``, ``vae_shift``), which the host's ``comfy.sd.VAE`` detects
    and builds as its TAESD architecture: 4 latent channels, 8x down/up-sampling."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def conv(key: str, cin: int, cout: int, bias: bool = True) -> None:
        sd[f"{key}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (1.0 / (cin * 9)) ** 0.5
        if bias:
            sd[f"{key}.bias"] = torch.zeros(cout)

    def block(key: str) -> None:
        for j in (0, 2, 4):
            conv(f"{key}.conv.{j}", 64, 64)

    enc = "taesd_encoder"
    conv(f"{enc}.0", 3, 64)
    block(f"{enc}.1")
    for start in (2, 6, 10):  # strided conv, then three blocks
        conv(f"{enc}.{start}", 64, 64, bias=False)
        for b in range(1, 4):
            block(f"{enc}.{start + b}")
    conv(f"{enc}.14", 64, 4)
    dec = "taesd_decoder"
    conv(f"{dec}.1", 4, 64)
    for start in (3, 8, 13):  # three blocks, upsample, conv
        for b in range(3):
            block(f"{dec}.{start + b}")
        conv(f"{dec}.{start + 4}", 64, 64, bias=False)
    block(f"{dec}.18")
    conv(f"{dec}.19", 64, 3)
    sd["vae_scale"] = torch.tensor(1.0)
    sd["vae_shift"] = torch.tensor(0.0)
    return sd


def _full_sd_vae_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A full-size sd-vae-ft-mse architecture (diffusers keys) with random fp16 weights."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512],
                        down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2,
                        latent_channels=4, sample_size=256)
    return {k: v.to(torch.float16).contiguous() for k, v in vae.state_dict().items()}


def write_tiny_face_detector(models_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """face-alignment's S3FD (its real architecture) and a one-module 2D-FAN, random weights,
    as ``musetalk/face_alignment/{s3fd-619a316812.pth,2DFAN4-11f355bf06.pth.tar}``."""
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    torch.manual_seed(seed)
    folder = Path(models_dir) / "musetalk" / "face_alignment"
    folder.mkdir(parents=True, exist_ok=True)
    s3fd_path = folder / "s3fd-619a316812.pth"
    fan_path = folder / "2DFAN4-11f355bf06.pth.tar"
    torch.save(s3fd().state_dict(), s3fd_path)
    torch.save(FAN(1).state_dict(), fan_path)
    return s3fd_path, fan_path


def write_tiny_whisper_pt(models_dir: Path, seed: int = 0) -> Path:
    """openai-whisper's ``tiny.pt`` format (``dims`` + ``model_state_dict``), whisper-tiny's
    encoder shape with a one-layer tiny decoder, random weights: ``musetalk/whisper/tiny.pt``."""
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(seed)
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6,
                           n_audio_layer=4, n_vocab=64, n_text_ctx=16, n_text_state=384,
                           n_text_head=6, n_text_layer=1)
    out = Path(models_dir) / "musetalk" / "whisper" / "tiny.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"dims": dims.__dict__, "model_state_dict": Whisper(dims).state_dict()}, out)
    return out


HOST_VAE_NAME = "sd-vae-ft-mse/diffusion_pytorch_model.safetensors"
"""The VAE slot of the shipped workflows (core VAELoader's name, relative to ``models/vae``)."""


def build_models_tree(path: str | os.PathLike, *, full_vae: bool | None = None) -> Path:
    """A ``ComfyUI/models``-like tree for host tests, every file in its real format.

    ``musetalk/musetalkV15/{unet.pth,musetalk.json}``, ``musetalk/musetalk/{pytorch_model.bin,
    musetalk.json}`` (tiny UNets), ``musetalk/whisper/`` (a whisper-tiny-shaped HF folder),
    ``musetalk/face-parse-bisent/79999_iter.pth`` (BiSeNet), ``musetalk/face_alignment/`` (S3FD,
    one-module 2D-FAN) and ``vae/sd-vae-ft-mse/diffusion_pytorch_model.safetensors``.

    The VAE file fills the sd-vae-ft-mse slot with random weights in the TAESD single-file layout,
    which the host's ``VAELoader`` -> ``comfy.sd.VAE`` recognises (the host infers a fixed
    architecture from the keys and accepts no smaller SD VAE; the full-size one costs about 30 s
    per 256x256 frame on the 2-core test machine). ``full_vae=True`` (or the environment variable
    ``MUSETALK_HOST_FULL_VAE=1``) writes the full sd-vae architecture at fp16 (about 167 MB)
    instead.
    """
    from safetensors.torch import save_file

    models = Path(path)
    write_tiny_unet(models, "v1.5")
    write_tiny_unet(models, "v1")
    whisper = write_tiny_whisper(models)
    # the loader expects the whole registered whisper/ folder (tiny.pt and the HF files)
    (whisper / "preprocessor_config.json").write_text('{"feature_size": 80, '
                                                     '"sampling_rate": 16000}')
    write_tiny_whisper_pt(models)
    write_tiny_parser(models)
    write_tiny_face_detector(models)
    if full_vae is None:
        full_vae = os.environ.get("MUSETALK_HOST_FULL_VAE") == "1"
    vae_file = models / "vae" / HOST_VAE_NAME
    vae_file.parent.mkdir(parents=True, exist_ok=True)
    sd = _full_sd_vae_state_dict() if full_vae else _taesd_state_dict()
    save_file(sd, str(vae_file))
    return models
