"""Speech -> whisper features -> per-frame audio windows (musetalk.md section 3, REF = target).

Pipeline (:func:`extract_features`): validate the core ``AUDIO`` dict, average channels to mono,
resample to 16 kHz (:mod:`.resample`; 16 kHz input passes through bit-exact), cut into 30 s pieces,
normalised log-mel per piece (:mod:`.mel`), whisper-tiny's five hidden states per piece, concatenate
and trim to REF's step count. Only the compact ``[steps, 5, 384]`` features are kept
(:class:`~musetalk_core.types.MuseTalkAudio`); per-frame ``[50, 384]`` windows are gathered on
demand, batch by batch (:func:`windows`).

Deliberate deviations from REF (``musetalk/utils/audio_processor.py``), and why:

* **Exact frame rate.** REF truncates the frame rate with ``int(fps)`` for the frame count and the
  frame -> step map, but writes the video at the real rate, so 29.97 fps drifts by 0.97 frames per
  second of speech (musetalk.md pitfall 9). We keep the rate as a :class:`~fractions.Fraction`
  (29.97 -> 30000/1001): frame ``i`` centres on step ``floor(i * 50 / fps)``.
  For integer rates the centre is computed exactly as REF does, ``floor(i * (50 / fps))`` with a
  float64 multiplier, because that float product differs from the exact value by one step at rare
  frames for 29 and 31 fps (pitfall 10) and we want bit-equality with REF there.
* **Window offset outside 25-49 fps.** REF pads ``2 * ceil(50 / int(fps))`` zero steps in front,
  so its window is ``c-4 ... c+5`` only for 25 <= fps < 50 and shifts (``c-6 ... c+3`` at 24 fps,
  ``c-2 ... c+7`` at 60 fps; musetalk.md 3.2 step 8). That shift is an artefact of its padding, and
  the model was trained with ``c-4 ... c+5`` (musetalk.md 3.5), so we use ``c-4 ... c+5`` at every
  rate.
* **Frame count** ``floor(n_samples * fps / sample_rate)`` in integers from the input's own sample
  count and rate (REF: ``floor(L / 16000 * int(fps))`` from the resampled length).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from .errors import AudioError, InputError
from .mel import PIECE_SAMPLES, SAMPLE_RATE, log_mel
from .resample import resample
from .runtime import Runtime
from .types import MuseTalkAudio

log = logging.getLogger(__name__)

__all__ = [
    "STEPS_PER_SECOND", "WINDOW_STEPS", "WINDOW_LEFT", "to_fraction", "frame_count",
    "prepare_waveform", "to_16k", "feature_steps", "extract_features", "window_centres",
    "window_indices", "windows",
]

STEPS_PER_SECOND = 50
"""Whisper feature steps per second (conv2 stride 2 over 100 mel frames a second)."""
WINDOW_STEPS = 10
"""Steps per frame window: ``2 * (left + right + 1)`` with REF's paddings 2 and 2."""
WINDOW_LEFT = 4
"""Steps before the centre: window ``c - 4 ... c + 5``."""
_NTSC = (Fraction(24000, 1001), Fraction(30000, 1001), Fraction(60000, 1001),
         Fraction(48000, 1001), Fraction(120000, 1001))
_FIX_UPSTREAM = "the upstream node does not emit core AUDIO; convert it (e.g. Load Audio)"


# --------------------------------------------------------------------------- frame rate, counts


def to_fraction(fps: Any, *, input_name: str = "fps") -> Fraction:
    """The exact frame rate: NTSC floats (29.97, 23.976, 59.94 within 1e-3) become n*1000/1001.

    Accepts int, float, Fraction (or anything with numerator/denominator) and numeric strings.
    """
    try:
        if isinstance(fps, Fraction):
            value = fps
        elif isinstance(fps, (int, np.integer)) and not isinstance(fps, bool):
            value = Fraction(int(fps))
        else:
            f = float(fps)
            if not math.isfinite(f):
                raise ValueError
            value = next((n for n in _NTSC if abs(f - float(n)) < 1e-3), None)
            if value is None:
                value = Fraction(f).limit_denominator(1001)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"fps {fps!r} is not a number", input_name=input_name,
                         fix="wire the video's frame rate (e.g. from Get Video Components)"
                         ) from None
    if value <= 0 or value > 1000:
        raise InputError(f"fps {fps!r} is out of range (0, 1000]", input_name=input_name,
                         fix="wire the video's frame rate (e.g. from Get Video Components)")
    return value


def frame_count(n_samples: int, sample_rate: int, fps: Fraction) -> int:
    """Video frames covered by the audio: ``floor(n_samples * fps / sample_rate)``, exactly."""
    return (n_samples * fps.numerator) // (sample_rate * fps.denominator)


def feature_steps(n_16k: int) -> int:
    """REF's step count for ``n_16k`` samples at 16 kHz: ``math.floor(L / 16000 * 50)``.

    Kept in REF's float form on purpose: it is one less than ``L // 320`` for some L (e.g. 9280).
    """
    return math.floor(n_16k / SAMPLE_RATE * STEPS_PER_SECOND)


# --------------------------------------------------------------------------- validation


def _sample_rate(value: Any, input_name: str) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        f = float("nan")
    if not math.isfinite(f) or f <= 0 or f != int(f):
        raise AudioError(f"sample_rate {value!r} is not valid", input_name=input_name,
                         fix="check the upstream node; it must give a positive whole number "
                         "of samples per second")
    sr = int(f)
    if sr < 8000:
        log.warning("audio sample rate %d Hz is below 8 kHz: the speech band is lost; used as is",
                    sr)
    return sr


def _to_float(wave: torch.Tensor, input_name: str) -> torch.Tensor:
    """float32 samples (integer PCM scaled by full scale, as the host's ``f32_pcm``)."""
    if wave.dtype.is_floating_point:
        return wave.to(torch.float32)
    scales = {torch.int16: 2.0 ** 15, torch.int32: 2.0 ** 31, torch.int8: 2.0 ** 7}
    if wave.dtype == torch.uint8:
        return (wave.to(torch.float32) - 128.0) / 128.0
    if wave.dtype not in scales:
        raise AudioError(f"waveform dtype {wave.dtype} is not audio", input_name=input_name,
                         fix=_FIX_UPSTREAM)
    return wave.to(torch.float32) / scales[wave.dtype]


def prepare_waveform(audio: Any, *, input_name: str = "audio") -> tuple[torch.Tensor, int]:
    """Validate a core ``AUDIO`` dict and return (mono float32 ``[n]`` on the CPU, sample rate).

    Mono is the mean over channels (librosa's rule). Raises :class:`AudioError` for a missing or
    empty clip, a batch of several clips, a wrong layout, non-finite samples or a bad rate.
    """
    if audio is None:
        raise AudioError("is empty (no audio): the source has no sound track",
                         input_name=input_name,
                         fix="connect speech from Load Audio or a TTS node")
    if not isinstance(audio, Mapping) or "waveform" not in audio:
        raise AudioError(f"{type(audio).__name__} is not core AUDIO "
                         "({'waveform': [batch, channels, samples], 'sample_rate': int})",
                         input_name=input_name, fix=_FIX_UPSTREAM)
    sr = _sample_rate(audio.get("sample_rate", audio.get("sampler_rate")), input_name)
    wave = audio["waveform"]
    if isinstance(wave, np.ndarray):
        wave = torch.from_numpy(wave)
    if not isinstance(wave, torch.Tensor):
        raise AudioError(f"waveform is a {type(wave).__name__}, not a tensor",
                         input_name=input_name, fix=_FIX_UPSTREAM)
    if wave.ndim != 3:
        raise AudioError(f"waveform is {list(wave.shape)}; AUDIO must be [batch, channels, "
                         "samples]", input_name=input_name, fix=_FIX_UPSTREAM)
    if wave.shape[0] != 1:
        raise AudioError(f"holds {wave.shape[0]} clips; one face is driven by one clip",
                         input_name=input_name, fix="select one clip, or run two prompts")
    if wave.shape[1] < 1 or wave.shape[2] == 0:
        raise AudioError(f"is empty ({wave.shape[2]} samples): the source has no sound track",
                         input_name=input_name, fix="connect speech from Load Audio or a TTS node")
    wave = _to_float(wave.detach().cpu(), input_name)[0]
    finite = torch.isfinite(wave)
    if not bool(finite.all()):
        bad = (~finite).any(dim=0)
        first = int(bad.nonzero()[0, 0])
        raise AudioError(
            f"{int(bad.sum())} samples are NaN or infinite (first at {first / sr:.3f} s); they "
            "would corrupt the whole 30 s window", input_name=input_name,
            fix="check the upstream audio node")
    same = wave.shape[0] == 1 or bool((wave == wave[:1]).all())
    mono = wave[0] if same else wave.mean(dim=0)  # identical channels: bit-equal to mono
    mean, peak = float(mono.mean()), float(mono.abs().max())
    if abs(mean) > 0.05:
        log.warning("audio has a DC offset of %.3f; used as is", mean)
    if peak > 1.0:
        log.warning("audio peaks at %.2f (above full scale 1.0); used as is", peak)
    return mono, sr


def to_16k(mono: torch.Tensor, sample_rate: int, device: torch.device | None = None
           ) -> torch.Tensor:
    """Mono float32 at 16 kHz (bit-exact pass-through when already 16 kHz)."""
    if device is not None:
        mono = mono.to(device)
    return resample(mono, sample_rate, SAMPLE_RATE)


# --------------------------------------------------------------------------- features


def _encoder_dtype(encoder: torch.nn.Module) -> torch.dtype:
    return next(encoder.parameters()).dtype


@torch.no_grad()
def extract_features(
    audio: Any,
    encoder: torch.nn.Module,
    fps: Any,
    runtime: Runtime,
    *,
    input_name: str = "audio",
) -> MuseTalkAudio:
    """Whisper features of a core ``AUDIO`` clip (REF's recipe, exact fps).

    Args:
        audio: ``{"waveform": [1, C, n], "sample_rate": int}`` (float or integer PCM).
        encoder: a :class:`~musetalk_core.models.whisper.WhisperEncoder` (``mel [B, 80, 3000] ->
            [B, 1500, 5, 384]``).
        fps: the video's frame rate (float, int or Fraction).
        runtime: device, progress (one step per 30 s piece), interruption, model loading. The
            encoder runs in its own dtype (the loader's: fp16/bf16 on GPU by default); on CUDA a
            different ``runtime.dtype`` is honoured through autocast.

    Returns:
        :class:`MuseTalkAudio` with float32 features ``[steps, 5, 384]`` on
        ``runtime.intermediate_device``.
    """
    rate = to_fraction(fps)
    mono, sr = prepare_waveform(audio, input_name=input_name)
    n = int(mono.shape[0])
    frames = frame_count(n, sr, rate)
    if frames < 1:
        raise AudioError(
            f"audio lasts {n / sr:.3f} s, less than one frame at {float(rate):g} fps "
            f"({float(1 / rate):.3f} s); nothing to lip-sync", input_name=input_name,
            fix="use longer audio")
    runtime.load_models([encoder])
    param = next(encoder.parameters())
    dev = param.device
    dtype = runtime.dtype or param.dtype
    wave16 = to_16k(mono, sr, dev)
    n16 = int(wave16.shape[0])
    pieces = max(1, -(-n16 // PIECE_SAMPLES))
    feats = []
    runtime.step(0, pieces, "whisper features")
    autocast = dtype != param.dtype and dev.type == "cuda"
    for p in range(pieces):
        mel = log_mel(wave16[p * PIECE_SAMPLES:(p + 1) * PIECE_SAMPLES])
        with torch.autocast(dev.type, dtype=dtype, enabled=autocast):
            out = encoder(mel[None].to(dtype if autocast else param.dtype))[0]
        feats.append(out.to(device=runtime.intermediate_device, dtype=torch.float32))
        runtime.step(p + 1, pieces, "whisper features")
    steps = feature_steps(n16)
    features = torch.cat(feats)[:steps]
    if not bool(torch.isfinite(features).all()):
        raise AudioError("whisper produced non-finite features (numeric overflow)",
                         input_name=input_name,
                         fix="load whisper with dtype fp32 (fp16 overflowed)")
    log.info("audio: %.3f s at %d Hz -> %d whisper steps, %d frames at %s fps", n / sr, sr,
             steps, frames, rate)
    return MuseTalkAudio(features=features, fps=rate, sample_rate=sr, n_samples=n,
                         frame_count=frames, waveform=mono)


# --------------------------------------------------------------------------- windows


def window_centres(frame_indices: torch.Tensor, fps: Fraction) -> torch.Tensor:
    """Centre step of each frame: ``floor(i * 50 / fps)``, int64 ``[n]`` on the CPU.

    Integer rates use REF's float64 product ``floor(i * (50 / fps))`` (bit-equal to REF);
    other rates the exact rational ``(i * 50 * den) // num``.
    """
    idx = torch.as_tensor(frame_indices, dtype=torch.int64).cpu()
    if fps.denominator == 1:
        mult = STEPS_PER_SECOND / fps.numerator  # Python float, as REF computes it
        return torch.floor(idx.to(torch.float64) * mult).to(torch.int64)
    return torch.div(idx * (STEPS_PER_SECOND * fps.denominator), fps.numerator,
                     rounding_mode="floor")


def window_indices(frame_indices: torch.Tensor, fps: Fraction) -> torch.Tensor:
    """Step indices of each frame's window, int64 ``[n, 10]``: ``c - 4 ... c + 5``."""
    centres = window_centres(frame_indices, fps)
    return centres[:, None] + torch.arange(-WINDOW_LEFT, WINDOW_STEPS - WINDOW_LEFT)[None]


def windows(
    audio: MuseTalkAudio,
    frame_indices: torch.Tensor,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The UNet's audio tokens for the given frames, built on demand.

    Args:
        audio: the clip's features ``[steps, S, D]`` (``S = 5``, ``D = 384`` for whisper-tiny).
        frame_indices: int ``[n]`` video frame numbers (any order; may exceed ``frame_count``).
        device, dtype: where the result lives.

    Returns:
        ``[n, 10 * S, D]`` (``[n, 50, 384]``), token ``S * t + layer`` for window step ``t``;
        steps outside the audio are zeros (REF's zero padding).
    """
    idx = window_indices(frame_indices, audio.fps)  # [n, 10]
    feats = audio.features
    steps, n_states, width = feats.shape
    n = idx.shape[0]
    if n == 0:
        return torch.zeros(0, WINDOW_STEPS * n_states, width, device=device, dtype=dtype)
    valid = (idx >= 0) & (idx < steps)
    if not bool(valid.any()):
        return torch.zeros(n, WINDOW_STEPS * n_states, width, device=device, dtype=dtype)
    lo = int(idx[valid].min())
    hi = int(idx[valid].max()) + 1
    span = feats[lo:hi].to(device=device, dtype=dtype)  # only the steps this batch needs
    span = torch.cat([span, span.new_zeros(1, n_states, width)])  # row for "outside"
    local = torch.where(valid, idx - lo, hi - lo).to(device)
    out = span[local.reshape(-1)].reshape(n, WINDOW_STEPS * n_states, width)
    return out


# --------------------------------------------------------------------------- silence gate

SILENCE_FLOOR_DB = -100.0
"""Level reported for digital silence (and anything quieter)."""


def frame_levels_db(audio: MuseTalkAudio, frame_indices: torch.Tensor) -> torch.Tensor:
    """RMS level in dBFS of the speech under each video frame.

    Frame ``i`` covers samples ``floor(i * sr / fps) .. floor((i + 1) * sr / fps)`` of the
    original mono waveform (exact integer arithmetic, as :func:`frame_count`). A full-scale sine
    is -3.01 dBFS; silence is :data:`SILENCE_FLOOR_DB`.

    Args:
        audio: features with their ``waveform`` (mono float32 ``[n]`` at ``sample_rate``).
        frame_indices: int64 ``[k]`` output (audio) frames, usually ascending.

    Returns:
        float32 ``[k]`` on the CPU.
    """
    if audio.waveform is None:
        raise AudioError("these audio features carry no waveform, so the silence gate cannot "
                         "measure them", input_name="audio",
                         fix="make them with MuseTalk Audio Features, or set the gate to 0")
    wave = audio.waveform.detach().to("cpu", torch.float64).flatten()
    fps = Fraction(audio.fps)
    sr = int(audio.sample_rate)
    f = frame_indices.to("cpu", torch.int64).flatten()
    start = (f * sr * fps.denominator) // fps.numerator
    stop = ((f + 1) * sr * fps.denominator) // fps.numerator
    start, stop = start.clamp(0, wave.numel()), stop.clamp(0, wave.numel())
    out = torch.full((f.numel(),), SILENCE_FLOOR_DB, dtype=torch.float32)
    step = 2048  # frames per block: a block's cumulative sum spans only its own samples
    for b in range(0, f.numel(), step):
        s, e = start[b:b + step], stop[b:b + step]
        lo, hi = int(s.min()), int(e.max())
        if hi <= lo:
            continue
        sums = torch.zeros(hi - lo + 1, dtype=torch.float64)
        sums[1:] = torch.cumsum(wave[lo:hi] ** 2, 0)
        count = (e - s).clamp(min=1).double()
        mean_sq = (sums[e - lo] - sums[s - lo]).clamp(min=0) / count
        level = 10 * torch.log10(mean_sq.clamp(min=10 ** (SILENCE_FLOOR_DB / 10)))
        out[b:b + step] = torch.where(e > s, level, SILENCE_FLOOR_DB).float()
    return out


def silent_frames(audio: MuseTalkAudio, frame_indices: torch.Tensor,
                  threshold_db: float) -> torch.Tensor:
    """bool ``[k]``: frames whose speech is quieter than ``threshold_db`` dBFS.

    ``threshold_db >= 0`` switches the gate off (all False), the reference's behaviour.
    """
    if threshold_db is None or float(threshold_db) >= 0:
        return torch.zeros(int(frame_indices.numel()), dtype=torch.bool)
    return frame_levels_db(audio, frame_indices) < float(threshold_db)

