"""Audio features end to end: mel vs transformers, resampling vs librosa, real speech, bad input."""

from __future__ import annotations

import wave
from fractions import Fraction

import numpy as np
import pytest
import torch

from musetalk_core import audio as core_audio
from musetalk_core.errors import AudioError
from musetalk_core.mel import log_mel
from musetalk_core.models.whisper import WhisperDims, WhisperEncoder
from musetalk_core.resample import resample
from musetalk_core.runtime import default_runtime

RATES = [8000, 22050, 44100, 48000]


@pytest.fixture(scope="module")
def speech(media) -> np.ndarray:
    with wave.open(str(media / "speech_16k_mono.wav")) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return data.astype(np.float32) / 32768


@pytest.fixture(scope="module")
def encoder() -> WhisperEncoder:
    """A tiny random whisper with the real context (30 s pieces) and 5 states per step."""
    torch.manual_seed(3)
    enc = WhisperEncoder(WhisperDims(n_ctx=1500, width=16, heads=2, layers=4, ffn=32))
    with torch.no_grad():
        enc.positional_embedding.normal_()
    return enc.eval()


def _audio(x, sr) -> dict:
    t = torch.as_tensor(np.asarray(x))
    while t.ndim < 3:
        t = t[None]
    return {"waveform": t, "sample_rate": sr}


def _source(speech: np.ndarray, sr: int) -> np.ndarray:
    import soxr

    return soxr.resample(speech, 16000, sr, "VHQ").astype(np.float32)


# --------------------------------------------------------------------------- mel


def test_mel_matches_transformers_feature_extractor(speech):
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor()  # whisper-tiny's preprocessor defaults (80 bins, 30 s)
    rng = np.random.default_rng(0)
    cases = [speech, 0.3 * rng.standard_normal(480000).astype(np.float32), speech[:333],
             np.zeros(1600, np.float32)]
    for x in cases:
        ref = fe(x, sampling_rate=16000, return_tensors="pt").input_features[0]
        ours = log_mel(torch.from_numpy(x))
        assert ours.shape == (80, 3000)
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_silence_gives_constant_minus_1_5():
    assert torch.equal(log_mel(torch.zeros(80000)), torch.full((80, 3000), -1.5))


# --------------------------------------------------------------------------- resampling


def test_16k_passes_through_bit_exact(speech):
    x = torch.from_numpy(speech)
    assert core_audio.to_16k(x, 16000) is x


@pytest.mark.parametrize("sr", RATES + [96000])
def test_resampler_close_to_librosa_soxr_hq(speech, sr):
    import librosa

    src = _source(speech, sr)
    ref = librosa.resample(src, orig_sr=sr, target_sr=16000, res_type="soxr_hq")
    ours = resample(torch.from_numpy(src), sr, 16000).numpy()
    assert ours.shape == ref.shape
    diff = np.abs(ours - ref)
    # measured: max 3.3e-3 and RMS 1.1e-4 of full scale on this speech (peak 1.0)
    assert diff.max() < 6e-3 and np.sqrt(np.mean(diff**2)) < 3e-4


@pytest.mark.parametrize("sr", RATES)
@pytest.mark.parametrize("channels", [1, 2])
def test_any_rate_mono_or_stereo_matches_librosa_load(speech, sr, channels):
    import librosa

    src = _source(speech, sr)
    if channels == 2:
        src = np.stack([src, 0.5 * np.roll(src, 100)])
    mono, rate = core_audio.prepare_waveform(_audio(src, sr))
    assert rate == sr
    ours = core_audio.to_16k(mono, rate)
    ref_mono = librosa.to_mono(src) if channels == 2 else src
    ref = librosa.resample(ref_mono, orig_sr=sr, target_sr=16000, res_type="soxr_hq")
    assert np.abs(ours.numpy() - ref).max() < 6e-3
    assert core_audio.frame_count(int(mono.shape[0]), sr, Fraction(25)) == 200  # A2
    # the normalised log-mel stays close to the one of librosa's 16 kHz audio (A2 tolerance)
    mel_diff = (log_mel(ours) - log_mel(torch.from_numpy(ref))).abs()
    assert float(mel_diff.max()) < 0.1 and float(mel_diff.mean()) < 2e-3


# --------------------------------------------------------------------------- end to end


def test_real_speech_file(speech, encoder):
    rt = default_runtime()
    for fps, frames in [(25, 200), (29.97, 239), (Fraction(30000, 1001), 239)]:
        out = core_audio.extract_features(_audio(speech, 16000), encoder, fps, rt)
        assert out.frame_count == frames and out.n_samples == 128000
        assert out.features.shape == (400, 5, 16) and out.features.dtype == torch.float32
        assert bool(torch.isfinite(out.features).all())
    # the features are the encoder's on the HF-style mel of the zero-padded piece, trimmed
    mel = log_mel(torch.from_numpy(speech))
    with torch.no_grad():
        direct = encoder(mel[None])[0, :400]
    assert torch.equal(out.features, direct)
    w = core_audio.windows(out, torch.arange(out.frame_count))
    assert w.shape == (239, 50, 16)


@pytest.mark.parametrize("sr", [8000, 44100])
def test_other_rates_end_to_end(speech, encoder, sr):
    out = core_audio.extract_features(_audio(np.stack([_source(speech, sr)] * 2), sr), encoder, 25,
                             default_runtime())
    assert out.frame_count == 200 and out.features.shape[0] == 400
    assert out.sample_rate == sr and out.waveform.shape == (8 * sr,)


def test_identical_channels_int16_and_float64_equal_float32_path(speech, encoder):
    rt = default_runtime()
    q = np.round(speech * 32767).astype(np.int16)
    as_float = torch.from_numpy(q.astype(np.float32) / 32768)
    base = core_audio.extract_features(_audio(as_float, 16000), encoder, 25, rt).features
    six = core_audio.extract_features(_audio(as_float[None].repeat(6, 1), 16000), encoder, 25, rt)
    assert torch.equal(six.features, base)  # A3
    pcm = core_audio.extract_features(_audio(torch.from_numpy(q), 16000), encoder, 25, rt)
    assert torch.equal(pcm.features, base)  # A10 int16
    dbl = core_audio.extract_features(_audio(as_float.double(), 16000), encoder, 25, rt)
    assert torch.equal(dbl.features, base)  # A10 float64


def test_seams_progress_and_interrupt(speech, encoder):
    tiled = np.tile(speech, 8)  # 64 s -> 3 pieces
    calls = []
    rt = default_runtime(progress=lambda d, t, s: calls.append((d, t)))
    cut = tiled[: 480320]  # 30.02 s (A12)
    out = core_audio.extract_features(_audio(cut, 16000), encoder, 25, rt)
    assert out.frame_count == 750 and out.features.shape[0] == 1501
    assert calls == [(0, 2), (1, 2), (2, 2)]

    class StopError(Exception):
        pass

    def interrupt():
        if len(seen) >= 2:
            raise StopError
    seen: list = []
    from musetalk_core.runtime import Runtime

    rt2 = Runtime(progress=lambda d, t, s: seen.append(d), check_interrupt=interrupt)
    with pytest.raises(StopError):
        core_audio.extract_features(_audio(tiled, 16000), encoder, 25, rt2)
    assert seen == [0, 1]


def test_silence_and_one_frame(encoder):
    rt = default_runtime()
    out = core_audio.extract_features(_audio(np.zeros(80000, np.float32), 16000), encoder, 25, rt)
    assert out.frame_count == 125 and bool(torch.isfinite(out.features).all())  # A7
    one = core_audio.extract_features(_audio(np.zeros(640, np.float32), 16000), encoder, 25, rt)
    assert one.frame_count == 1 and one.features.shape[0] == 2  # A6


# --------------------------------------------------------------------------- bad input


def _err(audio, encoder, fps=25) -> str:
    with pytest.raises(AudioError) as e:
        core_audio.extract_features(audio, encoder, fps, default_runtime())
    msg = str(e.value)
    assert "input 'audio'" in msg and "Fix:" in msg
    return msg


def test_bad_inputs(encoder):
    x = np.random.default_rng(1).uniform(-0.5, 0.5, 32000).astype(np.float32)
    t = torch.from_numpy(x)
    assert "[6, 32000]; AUDIO must be [batch, channels, samples]" in _err(
        {"waveform": t[None].repeat(6, 1), "sample_rate": 16000}, encoder)  # A3
    assert "[32000]" in _err({"waveform": t, "sample_rate": 16000}, encoder)
    assert "holds 2 clips" in _err({"waveform": t.repeat(2, 1, 1), "sample_rate": 16000},
                                   encoder)  # A4
    assert "empty (0 samples)" in _err({"waveform": torch.zeros(1, 1, 0), "sample_rate": 16000},
                                       encoder)  # A5
    assert "no sound track" in _err(None, encoder)
    assert "not core AUDIO" in _err({"samples": t}, encoder)
    assert "0.030 s, less than one frame at 25 fps (0.040 s)" in _err(
        _audio(x[:480], 16000), encoder)  # A6
    bad = t.clone()
    bad[19744:19747] = float("nan")
    bad[19800] = float("inf")
    assert "4 samples are NaN or infinite (first at 1.234 s)" in _err(_audio(bad, 16000),
                                                                      encoder)  # A9
    for sr in (0, -16000, 44100.5, None, "abc"):
        assert "sample_rate" in _err({"waveform": t[None, None], "sample_rate": sr}, encoder)
    ok = core_audio.extract_features({"waveform": t[None, None], "sample_rate": 16000.0},
                                     encoder, 25, default_runtime())
    assert ok.sample_rate == 16000 and ok.frame_count == 50  # A11: integral float accepted


def test_warnings_for_dc_offset_and_peak(encoder, caplog):
    x = np.full(16000, 0.3, np.float32)
    x[100] = 3.0
    with caplog.at_level("WARNING"):
        out = core_audio.extract_features(_audio(x, 16000), encoder, 25, default_runtime())
    assert out.frame_count == 25
    assert "DC offset" in caplog.text and "peaks at 3.00" in caplog.text


# --------------------------------------------------------------------------- node


def test_node(pack, speech, encoder):
    (node,) = [n for n in pack.nodes.audio_nodes.NODES if n.node_id == "MuseTalkAudioFeatures"]
    assert all(i.tooltip for i in node.inputs) and all(o.tooltip for o in node.outputs)
    assert [o.type for o in node.outputs] == ["MUSETALK_AUDIO", "INT"]
    res = node.call(audio=_audio(speech, 16000), whisper=encoder, fps=29.97)
    feats, count = res.values
    assert count == 239 and feats.frame_count == 239 and feats.fps == Fraction(30000, 1001)
    err = pack.musetalk_core.errors.AudioError
    with pytest.raises(err, match="holds 2 clips"):
        node.call(audio={"waveform": torch.zeros(2, 1, 16000), "sample_rate": 16000},
                  whisper=encoder, fps=25.0)
