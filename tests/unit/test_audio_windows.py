"""Frame -> whisper-step windows: REF's index rule, the worked example, exact fps, frame counts."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from musetalk_core.audio import feature_steps, frame_count, to_fraction, window_centres, windows
from musetalk_core.errors import InputError
from musetalk_core.types import MuseTalkAudio


def _synthetic(steps: int, fps, n_states=5, width=384, n_samples=None) -> MuseTalkAudio:
    """Features whose value encodes (step + 1, layer): zeros are unambiguous padding."""
    step = torch.arange(1, steps + 1, dtype=torch.float32)[:, None, None]
    layer = torch.arange(n_states, dtype=torch.float32)[None, :, None] / 10
    feats = (step + layer).expand(steps, n_states, width).contiguous()
    n = n_samples if n_samples is not None else steps * 320
    rate = to_fraction(fps)
    return MuseTalkAudio(features=feats, fps=rate, sample_rate=16000, n_samples=n,
                         frame_count=frame_count(n, 16000, rate))


def _ref_windows(feats: torch.Tensor, n_samples: int, fps: int) -> torch.Tensor:
    """A direct transcription of REF's padded-index rule (musetalk.md 3.2 steps 5-8)."""
    steps = math.floor(n_samples / 16000 * 50)
    f = feats[:steps]
    m = 50 / int(fps)
    p = math.ceil(m)
    padded = torch.cat([torch.zeros_like(f[: 2 * p]), f, torch.zeros_like(f[: 6 * p])]) \
        if 2 * p <= len(f) and 6 * p <= len(f) else None
    assert padded is not None
    num_frames = math.floor(n_samples / 16000 * int(fps))
    out = []
    for i in range(num_frames):
        start = math.floor(i * m)
        clip = padded[start:start + 10]
        assert clip.shape[0] == 10
        out.append(clip.reshape(1, 10 * f.shape[1], f.shape[2]))
    return torch.cat(out)


def test_worked_example_3_4b():
    a = _synthetic(500, 25, n_samples=160000)
    assert feature_steps(160000) == 500 and a.frame_count == 250
    w = windows(a, torch.arange(250))
    assert w.shape == (250, 50, 384)
    feats = a.features
    # frame 0: [0, 0, 0, 0, F0 ... F5], token = 5 * t + layer
    assert torch.equal(w[0, :20], torch.zeros(20, 384))
    assert torch.equal(w[0, 20:].reshape(6, 5, 384), feats[0:6])
    # frame 1: [0, 0, F0 ... F7]
    assert torch.equal(w[1, :10], torch.zeros(10, 384))
    assert torch.equal(w[1, 10:].reshape(8, 5, 384), feats[0:8])
    # frame 249: centre 498 -> F494 ... F499, then 4 zero steps
    assert torch.equal(w[249, :30].reshape(6, 5, 384), feats[494:500])
    assert torch.equal(w[249, 30:], torch.zeros(20, 384))
    assert w[0, 20, 0] == 1.0 and w[0, 21, 0] == pytest.approx(1.1)  # F0 layer 0, layer 1


@pytest.mark.parametrize("fps", range(25, 50))
def test_equals_ref_index_rule_for_integer_fps(fps):
    n = 37 * 16000 + 1234  # 37.08 s: a seam and an odd tail
    a = _synthetic(feature_steps(n), fps, n_states=2, width=3, n_samples=n)
    ref = _ref_windows(a.features, n, fps)
    assert a.frame_count == ref.shape[0]
    ours = windows(a, torch.arange(a.frame_count))
    assert torch.equal(ours, ref)


def test_float_multiplier_cases_at_29_fps_match_ref():
    # at 29 fps REF's float product floor(i * (50 / 29)) is one below the exact value at i = 145
    assert math.floor(145 * (50 / 29)) == 249 and (145 * 50) // 29 == 250
    assert int(window_centres(torch.tensor([145]), Fraction(29))[0]) == 249


def test_no_drift_at_2997_over_ten_minutes():
    rate = to_fraction(29.97)
    assert rate == Fraction(30000, 1001)
    n = 600 * 16000
    frames = frame_count(n, 16000, rate)
    assert frames == 17982  # robustness L2 (REF's int(fps) gives 17400)
    i = torch.arange(frames)
    c = window_centres(i, rate)
    exact = i.double() * 50 * 1001 / 30000
    assert float((exact - c.double()).max()) < 1 and float((exact - c.double()).min()) >= 0
    assert int(c[-1]) == (17981 * 50 * 1001) // 30000
    a = _synthetic(feature_steps(n), rate, n_states=1, width=1, n_samples=n)
    w = windows(a, i[-3:])
    assert w.shape == (3, 10, 1) and float(w[-1, 4, 0]) == float(c[-1] + 1)


@pytest.mark.parametrize("fps,expected", [(25, Fraction(25)), (29.97, Fraction(30000, 1001)),
                                          (23.976, Fraction(24000, 1001)),
                                          (59.94, Fraction(60000, 1001)), (30.0, Fraction(30)),
                                          (12.5, Fraction(25, 2)),
                                          (Fraction(30000, 1001), Fraction(30000, 1001))])
def test_to_fraction(fps, expected):
    assert to_fraction(fps) == expected


@pytest.mark.parametrize("bad", [0, -25, float("nan"), float("inf"), "x", None])
def test_bad_fps_is_an_input_error(bad):
    with pytest.raises(InputError, match="input 'fps'.*Fix:"):
        to_fraction(bad)


def test_frame_counts():
    assert frame_count(128000, 16000, Fraction(25)) == 200
    assert frame_count(128000, 16000, Fraction(30000, 1001)) == 239
    assert frame_count(2400, 8000, Fraction(25)) == 7  # A1
    assert frame_count(640, 16000, Fraction(25)) == 1 and frame_count(480, 16000, Fraction(25)) == 0
    assert frame_count(480320, 16000, Fraction(25)) == 750  # A12: 30.02 s
    # REF's float trim is one short for some lengths; we follow it
    assert feature_steps(9280) == 28 and 9280 // 320 == 29


def test_windows_any_order_out_of_range_and_device_dtype():
    a = _synthetic(20, 25, n_states=5, width=4)
    idx = torch.tensor([7, 0, 100, 3])
    w = windows(a, idx, dtype=torch.float16)
    assert w.dtype == torch.float16 and w.shape == (4, 50, 4)
    assert torch.equal(w[2], torch.zeros(50, 4, dtype=torch.float16))  # past the end: zeros
    assert torch.equal(w[0], windows(a, torch.tensor([7]))[0].half())
    assert windows(a, torch.tensor([], dtype=torch.int64)).shape == (0, 50, 4)
