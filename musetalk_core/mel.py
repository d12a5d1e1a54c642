"""Whisper's log-mel spectrogram, as Hugging Face's ``WhisperFeatureExtractor`` computes it.

REF feeds each 30 s piece of 16 kHz audio to the feature extractor (musetalk.md 3.2 step 3):
zero-pad the waveform to 480000 samples, periodic Hann window of 400, centred reflect-padded STFT
with hop 160, power spectrum, Slaney mel filterbank (80 bins, 0-8000 Hz, Slaney area
normalisation), drop the last frame (3000 remain), ``log10(max(x, 1e-10))``, clamp from below at
the piece's maximum minus 8, then ``(x + 4) / 4``. The filterbank is built here, not imported.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

__all__ = ["SAMPLE_RATE", "PIECE_SAMPLES", "N_FFT", "HOP", "N_MELS", "mel_filterbank", "log_mel"]

SAMPLE_RATE = 16000
PIECE_SAMPLES = 30 * SAMPLE_RATE
N_FFT = 400
HOP = 160
N_MELS = 80
FRAMES = PIECE_SAMPLES // HOP  # 3000


def _hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    """Slaney mel scale: linear below 1 kHz (3 per 200 Hz), logarithmic above."""
    f_sp = 200.0 / 3
    min_log_hz, logstep = 1000.0, math.log(6.4) / 27.0
    lin = f / f_sp
    return torch.where(f >= min_log_hz,
                       min_log_hz / f_sp + torch.log(f.clamp(min=1e-10) / min_log_hz) / logstep,
                       lin)


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    f_sp = 200.0 / 3
    min_log_hz, logstep = 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)),
                       f_sp * m)


@lru_cache(maxsize=4)
def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE,
                   f_min: float = 0.0, f_max: float = 8000.0) -> torch.Tensor:
    """Slaney-normalised triangular mel filters, float64 ``[n_mels, n_fft // 2 + 1]``."""
    fft_hz = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lo, hi = _hz_to_mel(torch.tensor([f_min, f_max], dtype=torch.float64))
    edges = _mel_to_hz(torch.linspace(float(lo), float(hi), n_mels + 2, dtype=torch.float64))
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (fft_hz[None] - left) / (centre - left)
    down = (right - fft_hz[None]) / (right - centre)
    tri = torch.clamp(torch.minimum(up, down), min=0.0)
    return tri * (2.0 / (right - left))  # Slaney: constant energy per filter


def log_mel(piece: torch.Tensor) -> torch.Tensor:
    """Normalised log-mel of one piece of 16 kHz audio.

    Args:
        piece: float ``[n]`` with ``n <= 480000`` (zero-padded here to 480000).

    Returns:
        float32 ``[80, 3000]`` on ``piece``'s device, values in about ``[-1.5, 2.5]``.
    """
    n = int(piece.shape[-1])
    if n > PIECE_SAMPLES:
        raise ValueError(f"a piece holds at most {PIECE_SAMPLES} samples, got {n}")
    dev = piece.device
    x = torch.nn.functional.pad(piece.to(torch.float32), (0, PIECE_SAMPLES - n))
    window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float32, device=dev)
    spec = torch.stft(x, N_FFT, HOP, window=window, center=True, pad_mode="reflect",
                      return_complex=True)
    power = spec[:, :-1].abs() ** 2  # [201, 3000]
    filters = mel_filterbank().to(device=dev, dtype=torch.float32)
    mel = torch.log10(torch.clamp(filters @ power, min=1e-10))
    mel = torch.maximum(mel, mel.max() - 8.0)
    return (mel + 4.0) / 4.0
