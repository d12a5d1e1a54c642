"""Which source frame each output frame shows (length policies, robustness.md section 5).

The output has as many frames as the audio (``MuseTalkAudio.frame_count``), except under
``trim``, where the audio is cut to the video instead. When the audio outlasts the source, the
source is walked according to the policy:

* ``pingpong`` (default, REF ``datagen``): the cycle is ``frames + reversed(frames)``, length
  ``2N``, so both ends appear twice at each turn: ``0..N-1, N-1..0, 0..N-1, ...``.
* ``loop``: ``0..N-1, 0..N-1, ...``.
* ``hold_last``: ``0..N-1`` then frame ``N-1`` for the rest.
* ``trim``: ``min(N, T)`` frames, ``0..``; the audio is trimmed to match (:func:`samples_for`).

When the source is longer than the audio every policy gives ``0..T-1`` (the video is truncated).
A single still image (``N == 1``) repeats for the whole audio under every policy, ``trim``
included: cutting speech to one frame is never what a talking portrait wants.

All functions are pure; indices are int64 tensors on the CPU.
"""

from __future__ import annotations

import logging
from fractions import Fraction

import torch

from .errors import InputError

log = logging.getLogger(__name__)

POLICIES: tuple[str, ...] = ("pingpong", "loop", "hold_last", "trim")
DEFAULT_POLICY = "pingpong"


def _check(n_source: int, n_audio: int, policy: str) -> None:
    if policy not in POLICIES:
        raise InputError(
            f"unknown length policy {policy!r}",
            input_name="length_policy",
            fix=f"use one of {', '.join(POLICIES)}",
        )
    if n_source < 1:
        raise InputError(
            "there are no source frames (0 frames)",
            input_name="images",
            fix="connect at least one frame or image",
        )
    if n_audio < 1:
        raise InputError(
            f"the audio is shorter than one video frame ({n_audio} frames)",
            input_name="audio",
            fix="connect longer speech (at least one frame's worth at the clip's fps)",
        )


def output_length(n_source: int, n_audio: int, policy: str = DEFAULT_POLICY) -> int:
    """Number of output frames for ``n_source`` source frames and ``n_audio`` audio frames."""
    _check(n_source, n_audio, policy)
    if policy == "trim" and n_source > 1:
        return min(n_source, n_audio)
    return n_audio


def source_index(n_source: int, n_audio: int, policy: str = DEFAULT_POLICY) -> torch.Tensor:
    """The source frame shown by each output frame.

    Args:
        n_source: source frames ``N`` (1 for a still image).
        n_audio: audio frames ``T`` at the video's fps.
        policy: one of :data:`POLICIES`.

    Returns:
        int64 ``[output_length(...)]`` with values in ``0..N-1``.
    """
    n_out = output_length(n_source, n_audio, policy)
    i = torch.arange(n_out, dtype=torch.int64)
    if n_out <= n_source:
        return i
    if n_source == 1:
        return torch.zeros(n_out, dtype=torch.int64)
    if policy == "pingpong":
        k = i % (2 * n_source)
        return torch.where(k < n_source, k, 2 * n_source - 1 - k)
    if policy == "loop":
        return i % n_source
    # hold_last (trim never reaches here: it never outlasts the source)
    return i.clamp(max=n_source - 1)


def describe(n_source: int, n_audio: int, policy: str = DEFAULT_POLICY) -> str:
    """One log line saying how the lengths were reconciled."""
    n_out = output_length(n_source, n_audio, policy)
    if n_source == 1:
        return f"still image repeated for {n_out} frames of audio"
    if n_out < n_source:
        return f"video truncated to {n_out} of {n_source} frames to match the audio"
    if policy == "trim" and n_out < n_audio:
        return f"audio trimmed to the video's {n_out} frames (of {n_audio})"
    if n_out > n_source:
        return f"{n_source} video frames extended to {n_out} frames of audio ({policy})"
    return f"{n_out} frames (video and audio match)"


def samples_for(n_frames: int, fps: Fraction | float, sample_rate: int) -> int:
    """Audio samples lasting ``n_frames / fps`` seconds, rounded to the nearest sample."""
    fps = Fraction(fps).limit_denominator(1_000_000) if not isinstance(fps, Fraction) else fps
    return int(round(Fraction(n_frames) * sample_rate / fps))
