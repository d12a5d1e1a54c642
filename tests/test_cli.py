"""The command line end to end with tiny random checkpoints in the real formats (shared media)."""

from __future__ import annotations

import os
import wave
from fractions import Fraction
from pathlib import Path

import pytest

from musetalk_core import cli


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from tests.tiny_models import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("models"))


def _speech(media: Path, folder: Path, seconds: float) -> Path:
    with wave.open(str(media / "speech_16k_mono.wav")) as src:
        rate = src.getframerate()
        data = src.readframes(int(rate * seconds))
    out = folder / f"speech_{seconds}.wav"
    with wave.open(str(out), "wb") as dst:
        dst.setnchannels(1)
        dst.setsampwidth(2)
        dst.setframerate(rate)
        dst.writeframes(data)
    return out


def _probe(path: Path) -> dict:
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        rate, size = v.average_rate, (v.width, v.height)
        frames = sum(1 for _ in c.decode(v))
    with av.open(str(path)) as c:
        a = c.streams.audio[0]
        samples = sum(f.samples for f in c.decode(a))
        return {"frames": frames, "rate": rate, "audio_rate": a.rate,
                "audio_seconds": samples / a.rate, "size": size}


def _args(media, models_dir, audio, out, *extra, quiet=True):
    return ["--audio", str(audio), "--output", str(out), "--models-dir", str(models_dir),
            "--no-download", "--parsing-mode", "ellipse", *(["-q"] if quiet else []), *extra]


def test_video_to_mp4_with_speech(media, models_dir, tmp_path):
    audio = _speech(media, tmp_path, 0.5)  # 12 frames at 25 fps
    out = tmp_path / "out.mp4"
    video = media / "talk_25fps_512x512.mp4"
    rc = cli.main(["--video", str(video), *_args(
        media, models_dir, audio, out, "--landmarks",
        str(media / "talk_25fps_512x512.landmarks.npz"), "--chunk-size", "5")])
    assert rc == 0 and out.is_file()
    info = _probe(out)
    assert info["frames"] == 12 and info["rate"] == Fraction(25)
    assert info["size"] == (512, 512)
    assert abs(info["audio_seconds"] - 12 / 25) < 0.05  # AAC frames round up a little
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_still_image_becomes_a_talking_portrait(media, models_dir, tmp_path):
    audio = _speech(media, tmp_path, 0.4)  # 10 frames
    out = tmp_path / "portrait.mp4"
    rc = cli.main(["--image", str(media / "portrait_video_frame_512x512.jpg"), *_args(
        media, models_dir, audio, out, "--landmarks",
        str(media / "portrait_video_frame_512x512.landmarks.npz"), "--fps", "25")])
    assert rc == 0
    info = _probe(out)
    assert info["frames"] == 10 and info["rate"] == Fraction(25)
    assert abs(info["audio_seconds"] - 0.4) < 0.05


def test_refuses_to_overwrite_and_to_write_its_input(media, models_dir, tmp_path, capsys):
    audio = _speech(media, tmp_path, 0.2)
    out = tmp_path / "exists.mp4"
    out.write_bytes(b"keep me")
    rc = cli.main(["--video", str(media / "talk_25fps_512x512.mp4"),
                   *_args(media, models_dir, audio, out)])
    assert rc == 1 and out.read_bytes() == b"keep me"
    err = capsys.readouterr().err
    assert "input '--output'" in err and "already exists" in err and "--overwrite" in err
    rc = cli.main(["--video", str(media / "talk_25fps_512x512.mp4"),
                   *_args(media, models_dir, audio, media / "talk_25fps_512x512.mp4",
                          "--overwrite")])
    assert rc == 1
    assert "--output is an input file" in capsys.readouterr().err


def test_missing_model_without_download_names_the_file(media, tmp_path, capsys):
    audio = _speech(media, tmp_path, 0.2)
    rc = cli.main(["--video", str(media / "talk_25fps_512x512.mp4"),
                   *_args(media, tmp_path / "empty", audio, tmp_path / "o.mp4")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "musetalkV15/unet.pth is missing" in err and "HF TMElyralab/MuseTalk" in err
    assert not (tmp_path / "o.mp4").exists()


def test_ctrl_c_exits_130_and_leaves_no_file(media, models_dir, tmp_path, monkeypatch):
    audio = _speech(media, tmp_path, 0.5)
    out = tmp_path / "cut.mp4"
    real = cli._ProgressBar.__call__
    seen = []

    def interrupting(self, done, total, stage):
        seen.append(stage)
        if stage == "UNet + VAE decode" and done > 0:
            raise KeyboardInterrupt
        return real(self, done, total, stage)

    monkeypatch.setattr(cli._ProgressBar, "__call__", interrupting)
    rc = cli.main(["--video", str(media / "talk_25fps_512x512.mp4"), *_args(
        media, models_dir, audio, out, "--landmarks",
        str(media / "talk_25fps_512x512.landmarks.npz"), "--chunk-size", "4",
        "--batch-size", "2", quiet=False)])  # the progress bar runs
    assert rc == 130
    assert "UNet + VAE decode" in seen
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".mp4" or ".part" in p.name] == []
    assert os.listdir(tmp_path)  # the speech file is still there


def test_silence_gate_keeps_a_silent_portrait_as_it_is(media, models_dir, tmp_path):
    import av
    import numpy as np

    silent = tmp_path / "silent.wav"
    with wave.open(str(silent), "wb") as dst:
        dst.setnchannels(1)
        dst.setsampwidth(2)
        dst.setframerate(16000)
        dst.writeframes(b"\0\0" * 6400)  # 0.4 s: 10 frames
    still = media / "portrait_video_frame_512x512.jpg"
    marks = str(media / "portrait_video_frame_512x512.landmarks.npz")
    with av.open(str(still)) as c:
        image = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(np.float32)
    error = {}
    for gate in ("0", "-60"):
        out = tmp_path / f"gate{gate}.mp4"
        assert cli.main(["--image", str(still), *_args(
            media, models_dir, silent, out, "--landmarks", marks,
            "--silence-gate-db", gate)]) == 0
        with av.open(str(out)) as c:
            frames = [f.to_ndarray(format="rgb24").astype(np.float32) for f in c.decode(video=0)]
        assert len(frames) == 10
        error[gate] = max(float(np.abs(f - image).mean()) for f in frames)
    # gated: every frame is the still itself (H.264 loss only); ungated: the face is redrawn
    assert error["-60"] < 2.0 < error["0"], error
