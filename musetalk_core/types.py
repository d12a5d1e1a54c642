"""The values that travel between the pack's stages (and between its nodes as ``MUSETALK_*`` wires).

They are plain dataclasses of tensors and numbers, documented field by field, so other packs and
scripts can read them. Nodes never mutate a received value: the host caches node outputs and
hands the same object to later runs. Functions that "change" one return a new instance
(``dataclasses.replace``).

Colour convention: every image tensor in the core is RGB. Crops are uint8 ``[N, 256, 256, 3]``
(channels last, like the host's IMAGE but compact), so a long clip's crops cost 192 KiB a frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal, Protocol, runtime_checkable

import torch

Version = Literal["v1", "v1.5"]
VERSIONS: tuple[Version, ...] = ("v1", "v1.5")

LATENT_SCALE = 0.18215
"""sd-vae-ft-mse latent scaling (diffusers' default; musetalk.md 1.4). Our latents are scaled."""

CROP_SIZE = 256
"""Side of the face crop the VAE encodes (musetalk.md 4.3)."""


@dataclass(frozen=True)
class VersionSettings:
    """Constants that differ between the released weights (musetalk.md 5.4, REF column).

    Attributes:
        version: ``"v1"`` or ``"v1.5"``.
        extra_margin: pixels added below the crop box (v1.5: 10; v1: 0).
        bbox_shift_allowed: v1 honours ``bbox_shift``; REF forces 0 for v1.5.
        expand: side factor of the square blend crop around the box (1.5 in REF).
        parsing_mode: default parse mode of the blend (``raw`` for v1, ``jaw`` for v1.5).
        cheek_width: default left/right cheek widths in 512-space pixels (jaw mode).
        blur_factor: Gaussian feather factor of the blend mask (0.05 in REF normal inference).
    """

    version: Version
    extra_margin: int
    bbox_shift_allowed: bool
    expand: float = 1.5
    parsing_mode: str = "raw"
    cheek_width: int = 90
    blur_factor: float = 0.05


def version_settings(version: Version) -> VersionSettings:
    """REF's constants for ``version``."""
    if version == "v1":
        return VersionSettings("v1", extra_margin=0, bbox_shift_allowed=True, parsing_mode="raw")
    if version == "v1.5":
        return VersionSettings("v1.5", extra_margin=10, bbox_shift_allowed=False,
                               parsing_mode="jaw")
    raise ValueError(f"unknown MuseTalk version {version!r}; expected one of {VERSIONS}")


@runtime_checkable
class LatentVAE(Protocol):
    """What the core needs of a VAE: scaled latents in, RGB pixels out.

    ``encode``: ``[B, 3, 256, 256]`` float RGB in 0..1 -> ``[B, 4, 32, 32]`` latents already
    multiplied by :data:`LATENT_SCALE` (posterior mean: deterministic).
    ``decode``: scaled ``[B, 4, 32, 32]`` -> ``[B, 3, 256, 256]`` float RGB in 0..1.
    Both accept tensors on any device and return them on ``device``.
    """

    latent_channels: int

    def encode(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class MuseTalkAudio:
    """Whisper features of one speech clip (wire type ``MUSETALK_AUDIO``).

    Attributes:
        features: float32 ``[steps, 5, 384]`` on the intermediate device: whisper-tiny's five
            hidden states per 50 Hz step (REF convention, musetalk.md 3.2). Compact: per-frame
            windows are gathered from it batch by batch (:func:`musetalk_core.audio.windows`).
        fps: the video frame rate the frame count refers to (exact, e.g. ``Fraction(30000, 1001)``).
        sample_rate: the input's sample rate (before resampling to 16 kHz).
        n_samples: the input's sample count at ``sample_rate``.
        frame_count: ``floor(n_samples * fps / sample_rate)`` in exact integer arithmetic.
        waveform: the speech as float32 mono ``[n]`` at ``sample_rate`` (for trimming and muxing).
    """

    features: torch.Tensor
    fps: Fraction
    sample_rate: int
    n_samples: int
    frame_count: int
    waveform: torch.Tensor | None = None

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.n_samples / self.sample_rate


@dataclass(frozen=True)
class MuseTalkFaces:
    """Face geometry and 256x256 crops of a clip (wire type ``MUSETALK_FACES``).

    From face crop (one row per source frame) or from inpainting (one row per output frame, with
    generated crops and ``source_index`` mapping rows to source frames).

    Attributes:
        boxes: int64 ``[N, 4]`` crop boxes (x1, y1, x2, y2) in source-frame pixels, the v1.5
            margin included (musetalk.md 4.2). Rows without a face hold zeros.
        has_face: bool ``[N]``.
        landmarks: float32 ``[N, 68, 2]`` iBUG-68 points in source pixels (zeros without a face).
        crops: uint8 ``[N, 256, 256, 3]`` RGB crops (source crops, or generated ones).
        source_size: ``(height, width)`` of the source frames.
        version: the model version whose crop rule made the boxes.
        bbox_shift: the v1 shift used (0 for v1.5).
        extra_margin: the v1.5 margin used (0 for v1).
        source_index: int64 ``[N]``: the source frame of each row (``arange(N)`` for face crop).
        generated: True once the crops are MuseTalk's output (after inpainting).
        cache: memo of data derived from the crops alone (e.g. VAE latents per VAE, parse
            masks per parser), so a new audio clip re-encodes nothing. It never changes what
            the value means and is not part of equality.
        info: free-form report (frames without a face, the suggested bbox_shift range, ...).
    """

    boxes: torch.Tensor
    has_face: torch.Tensor
    landmarks: torch.Tensor
    crops: torch.Tensor
    source_size: tuple[int, int]
    version: Version
    bbox_shift: int = 0
    extra_margin: int = 0
    source_index: torch.Tensor | None = None
    generated: bool = False
    cache: dict = field(default_factory=dict, compare=False, repr=False)
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def index(self) -> torch.Tensor:
        """``source_index``, defaulting to ``arange(N)``."""
        if self.source_index is not None:
            return self.source_index
        return torch.arange(len(self), dtype=torch.int64)


@dataclass(frozen=True)
class MuseTalkReferences:
    """The reference frame of every frame (wire type ``MUSETALK_REFERENCES``).

    Attributes:
        index: int64 ``[N]``: row ``i`` uses source frame ``index[i]`` as its reference image.
        mode: ``same_frame`` (REF inference), ``sis`` or ``fixed_frame``.
        info: how the choice was made (K, seed, fallbacks used).
    """

    index: torch.Tensor
    mode: str
    info: dict = field(default_factory=dict)
