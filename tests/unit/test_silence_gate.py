"""Silence gate: per-frame speech levels, the gate in Inpaint, and silent input (robustness A7)."""

from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction

import pytest
import torch

from musetalk_core import inpaint as inp
from musetalk_core import timeline
from musetalk_core.audio import (
    SILENCE_FLOOR_DB,
    frame_levels_db,
    silent_frames,
)
from musetalk_core.errors import AudioError
from musetalk_core.runtime import Runtime
from tests.tiny_models import StandInUNet, StubVAE, synthetic_audio, synthetic_faces


def _with_wave(audio, wave):
    return replace(audio, waveform=wave, n_samples=int(wave.numel()))


def test_levels_follow_exact_frame_spans_at_29_97():
    fps, sr = Fraction(30000, 1001), 16000
    audio = synthetic_audio(30, fps=fps)
    wave = torch.zeros(audio.n_samples)
    # frame 10 spans floor(10 sr / fps) .. floor(11 sr / fps): 5338 .. 5872 (30 fps: 5333 ..)
    a, b = (10 * sr * fps.denominator) // fps.numerator, (11 * sr * fps.denominator) // \
        fps.numerator
    assert (a, b) == (5338, 5872)
    wave[a:b] = 0.1
    levels = frame_levels_db(_with_wave(audio, wave), torch.arange(30))
    assert levels[10].item() == pytest.approx(-20.0, abs=1e-4)
    assert levels[9].item() == levels[11].item() == SILENCE_FLOOR_DB
    assert levels.shape == (30,) and levels.dtype == torch.float32


def test_sine_level_and_gate_threshold():
    sr, fps = 16000, Fraction(25)
    t = torch.arange(sr) / sr
    wave = torch.cat([0.5 * torch.sin(2 * math.pi * 400 * t), torch.zeros(sr)])
    audio = _with_wave(synthetic_audio(50), wave)
    levels = frame_levels_db(audio, torch.arange(50))
    assert levels[:25].sub(20 * math.log10(0.5 / math.sqrt(2))).abs().max() < 0.05  # -9.03
    assert torch.all(levels[25:] == SILENCE_FLOOR_DB)
    assert not silent_frames(audio, torch.arange(50), 0.0).any()  # 0 = off, as REF
    gate = silent_frames(audio, torch.arange(50), -45.0)
    assert gate.tolist() == [False] * 25 + [True] * 25
    # frames are looked up by number: a chunk of the timeline gets its own rows
    assert silent_frames(audio, torch.tensor([24, 25]), -45.0).tolist() == [False, True]
    assert fps == audio.fps


def test_gate_without_waveform_is_an_actionable_error():
    audio = replace(synthetic_audio(5), waveform=None)
    with pytest.raises(AudioError, match="silence gate") as err:
        silent_frames(audio, torch.arange(5), -40.0)
    assert err.value.input_name == "audio"
    assert not silent_frames(audio, torch.arange(5), 0.0).any()  # off: never measured


def test_inpaint_gate_keeps_the_source_mouth_in_pauses(caplog):
    faces = synthetic_faces(4)
    audio = synthetic_audio(10)
    wave = audio.waveform.clone()
    span = audio.sample_rate // 25
    wave[3 * span:6 * span + span // 2] = 0  # frames 3, 4, 5 are silent; 6 is half loud
    audio = _with_wave(audio, wave)
    idx = timeline.source_index(4, 10, "pingpong")
    unet, vae = StandInUNet(), StubVAE()
    off = inp.inpaint(faces, audio, unet, vae, Runtime(), source_index=idx, batch_size=4)
    with caplog.at_level("INFO", logger="musetalk_core.inpaint"):
        on = inp.inpaint(faces, audio, unet, vae, Runtime(), source_index=idx, batch_size=4,
                         silence_gate_db=-50.0)
    assert off.has_face.all() and off.info["silent_frames"] == []
    assert on.has_face.tolist() == [True] * 3 + [False] * 3 + [True] * 4
    assert on.info["silent_frames"] == [3, 4, 5] and on.info["generated_frames"] == 7
    # silent rows carry the source crops untouched; the others equal the ungated run
    for row in (3, 4, 5):
        assert torch.equal(on.crops[row], faces.crops[idx[row]])
    loud = [0, 1, 2, 6, 7, 8, 9]
    assert torch.equal(on.crops[loud], off.crops[loud])
    assert "3-5" in caplog.text and "silence gate" in caplog.text


def test_silent_input_gives_finite_features_and_a_gated_clip(tmp_path):
    """robustness A7: 5.00 s of zeros -> 125 frames with finite features; the gate keeps all."""
    from musetalk_core.audio import extract_features
    from musetalk_core.models.whisper import load_whisper
    from tests.tiny_models import write_tiny_whisper

    whisper = load_whisper(str(write_tiny_whisper(tmp_path)))
    zeros = {"waveform": torch.zeros(1, 1, 80000), "sample_rate": 16000}
    feats = extract_features(zeros, whisper, 25, Runtime())
    assert feats.frame_count == 125 and bool(torch.isfinite(feats.features).all())
    assert bool(silent_frames(feats, torch.arange(125), -60.0).all())
    faces = synthetic_faces(5)
    out = inp.inpaint(faces, feats, StandInUNet(), StubVAE(), Runtime(),
                      source_index=timeline.source_index(5, 125, "pingpong"),
                      silence_gate_db=-60.0)
    assert len(out) == 125 and not out.has_face.any() and out.info["generated_frames"] == 0
