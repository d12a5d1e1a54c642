"""Band-limited resampling in torch (what REF gets from ``librosa.load(sr=16000)``, soxr_hq).

A Kaiser-windowed sinc filter applied polyphase: for the reduced ratio ``up/down`` (by their gcd)
each of the ``up`` output phases has its own fractional-delay kernel, and one strided
``conv1d`` with ``up`` output channels computes all phases at once. The filter is linear-phase and
its delay is compensated, so output sample ``j`` sits at input time ``j * sr_in / sr_out``, as
soxr's does. Samples before the start and after the end count as zeros. Output length is
``ceil(n * sr_out / sr_in)`` (librosa's).

Accuracy against soxr_hq is measured in ``tests/unit/test_audio_resample.py``: passband ripple and
the transition band differ a little (soxr's exact design is not public API), so waveforms differ by
a few 1e-3 of full scale at most on speech, and the normalised log-mel by far less than whisper
cares about. Only the 16 kHz path is bit-exact with REF (it passes through untouched).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

__all__ = ["resample", "ROLLOFF", "ZERO_CROSSINGS", "KAISER_BETA"]

ROLLOFF = 0.955
"""Cutoff as a fraction of the lower Nyquist frequency (soxr_hq's passband ends near 0.91 and its
stopband starts at 1.0; the cutoff sits between)."""

ZERO_CROSSINGS = 96
"""Sinc zero crossings on each side of the kernel centre (at the lower of the two rates)."""

KAISER_BETA = 11.0
"""Kaiser window shape (about 110 dB stopband); rolloff, crossings and beta were tuned so speech
resampled from 8-96 kHz lands within ~3e-3 (max) and ~1e-4 (RMS) of soxr_hq."""


_BLOCK_TAPS = 1 << 24
"""Taps per conv call (frames x kernel): about 64 MiB of scratch in float32."""


@lru_cache(maxsize=16)
def _kernels(up: int, down: int) -> tuple[torch.Tensor, int]:
    """Polyphase weights ``[up, 1, K]`` (float64) and the left padding of the input."""
    scale = min(1.0, up / down)  # cutoff relative to the input's Nyquist
    cutoff = ROLLOFF * scale
    half = math.ceil(ZERO_CROSSINGS / cutoff)  # half-width in input samples
    phases = torch.arange(up, dtype=torch.float64)
    start = torch.div(phases * down, up, rounding_mode="floor")  # first input index per phase
    frac = phases * down / up - start  # fractional position in [0, 1)
    offsets = torch.arange(-half, down + half + 1, dtype=torch.float64)  # relative to start[0]=0
    # tap k of phase p reads input index start[p] + k' where k' = offsets - start[p]
    x = offsets[None, :] - start[:, None] - frac[:, None]  # distance from the output's time
    window = torch.special.i0(KAISER_BETA * torch.sqrt(torch.clamp(1 - (x / half) ** 2, min=0)))
    window = window / torch.special.i0(torch.tensor(KAISER_BETA, dtype=torch.float64))
    window = torch.where(x.abs() <= half, window, torch.zeros_like(window))
    weights = cutoff * torch.sinc(cutoff * x) * window
    return weights[:, None, :], half


def resample(wave: torch.Tensor, sr_in: int, sr_out: int = 16000) -> torch.Tensor:
    """Resample mono ``wave`` float ``[n]`` from ``sr_in`` to ``sr_out`` Hz.

    Returns float32 ``[ceil(n * sr_out / sr_in)]`` on ``wave``'s device; ``wave`` itself when the
    rates are equal (bit-exact pass-through).
    """
    if sr_in == sr_out:
        return wave
    g = math.gcd(int(sr_in), int(sr_out))
    up, down = int(sr_out) // g, int(sr_in) // g
    n = int(wave.shape[-1])
    n_out = -(-n * up // down)
    weights, half = _kernels(up, down)
    weights = weights.to(device=wave.device, dtype=torch.float32)
    kernel = weights.shape[-1]
    frames = -(-n_out // up)  # output samples per phase
    # input index of tap 0 for frame s of phase 0 is s*down - half; pad to cover every tap
    total = (frames - 1) * down + kernel
    x = torch.nn.functional.pad(wave.to(torch.float32), (half, max(0, total - half - n)))
    block = max(1, _BLOCK_TAPS // kernel)  # frames per conv call: bounds conv's scratch memory
    out = []
    for s0 in range(0, frames, block):
        s1 = min(frames, s0 + block)
        seg = x[s0 * down:(s1 - 1) * down + kernel]
        y = torch.nn.functional.conv1d(seg[None, None], weights, stride=down)  # [1, up, s1-s0]
        out.append(y[0].transpose(0, 1).reshape(-1))
    return torch.cat(out)[:n_out]
