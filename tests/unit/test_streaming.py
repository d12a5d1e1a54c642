"""Streaming engine: timeline, timestamps, audio, ping-pong re-decoding, interrupts, memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from musetalk_core import timeline
from musetalk_core.errors import AudioError, InputError
from musetalk_core.runtime import Runtime
from musetalk_core.streaming import audio_frame_count, identity, stream_video
from musetalk_core.video_io import open_video

ROOT = Path(__file__).resolve().parents[2]


def numbered_clip(path: Path, n: int, fps: Fraction = Fraction(25), size: int = 32,
                  pts: list[int] | None = None, time_base: Fraction | None = None) -> Path:
    """A clip whose frame i is a flat grey of level 10 + 20 * (i % 12) (survives the codec)."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.options = {"crf": "0", "g": "8"}
        if time_base is not None:
            s.codec_context.time_base = time_base
        for i in range(n):
            img = np.full((size, size, 3), 10 + 20 * (i % 12), dtype=np.uint8)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i if pts is None else pts[i]
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def level_of(frames: torch.Tensor) -> list[int]:
    """Frame numbers (mod 12) read back from the grey levels."""
    return [int(round((float(f.float().mean()) - 10) / 20)) for f in frames]


def speech(seconds: float, rate: int = 16000) -> dict:
    n = int(round(seconds * rate))
    t = torch.arange(n) / rate
    return {"waveform": (0.2 * torch.sin(2 * torch.pi * 200 * t)).view(1, 1, n),
            "sample_rate": rate}


def probe(path: Path) -> dict:
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        return {"fps": v.average_rate, "frames": v.frames,
                "video_s": float(v.duration * v.time_base),
                "audio_s": float(a.duration * a.time_base)}


@pytest.mark.parametrize(("name", "expected"), [("talk_25fps_512x512.mp4", 200),
                                                ("talk_29_97fps_512x512.mp4", 239)])
def test_own_speech_gives_exact_length(media, tmp_path, name, expected):
    src = media / name
    with open_video(src) as r:
        audio = r.audio()
        fps = r.fps
    out = tmp_path / "o.mp4"
    rep = stream_video(src, audio, out, frames_per_chunk=64)
    assert rep.frames == expected == audio_frame_count(audio["waveform"].shape[-1], 16000, fps)
    info = probe(out)
    assert info["fps"] == fps and info["frames"] == expected
    assert abs(info["audio_s"] - info["video_s"]) <= float(1 / fps)
    assert os.listdir(tmp_path) == ["o.mp4"]


@pytest.mark.parametrize("policy", timeline.POLICIES)
def test_short_source_follows_the_policy(tmp_path, policy):
    src = numbered_clip(tmp_path / "src.mp4", 12)
    seen: list[torch.Tensor] = []
    indices: list[torch.Tensor] = []

    def process(chunk):
        indices.append(chunk.source_index)
        return chunk.frames

    out = tmp_path / "o.mp4"
    rep = stream_video(src, speech(1.5), out, process, frames_per_chunk=5, length_policy=policy,
                       capture=lambda f, p: seen.append(f))
    expected = timeline.source_index(12, 37, policy)
    assert rep.frames == len(expected) == (12 if policy == "trim" else 37)
    assert torch.equal(torch.cat(indices), expected)
    assert level_of(torch.cat(seen)) == [int(i) % 12 for i in expected]
    info = probe(out)
    assert info["frames"] == rep.frames
    assert abs(info["audio_s"] - rep.frames / 25) <= 0.04


def test_audio_shorter_than_video_truncates(tmp_path):
    src = numbered_clip(tmp_path / "src.mp4", 50)
    rep = stream_video(src, speech(1.0), tmp_path / "o.mp4", frames_per_chunk=16)
    assert rep.frames == 25 and abs(probe(tmp_path / "o.mp4")["video_s"] - 1.0) < 1e-6


def test_variable_frame_rate_keeps_every_timestamp(tmp_path):
    tb = Fraction(1, 1000)
    pts = [i * 40 for i in range(10)] + [400 + i * 100 for i in range(1, 11)]  # 25 then 10 fps
    src = numbered_clip(tmp_path / "vfr.mp4", 20, fps=Fraction(25), pts=pts, time_base=tb)
    with open_video(src) as r:
        fps = r.fps  # the average rate: 20 frames over the clip
    seconds = float(20 / fps) + 0.01  # exactly enough speech for 20 frames
    out = tmp_path / "o.mp4"
    rep = stream_video(src, speech(seconds), out, frames_per_chunk=7)
    assert rep.frames == 20
    with open_video(src) as r:
        src_times = [p * r.time_base for _, ps in r.chunks(50) for p in ps]
    with open_video(out) as r:
        out_times = [p * r.time_base for _, ps in r.chunks(50) for p in ps]
    assert len(out_times) == 20
    assert out_times == src_times[:20]
    # the track lasts past the last frame's timestamp (with B-frames it ended 120 ms early)
    assert probe(out)["video_s"] > float(out_times[-1])


def test_chunk_size_does_not_change_frames(tmp_path):
    src = numbered_clip(tmp_path / "src.mp4", 12)
    results = []
    for n in (3, 5, 16):
        got: list[torch.Tensor] = []
        stream_video(src, speech(2.0), tmp_path / f"o{n}.mp4", identity, frames_per_chunk=n,
                     capture=lambda f, p, got=got: got.append(f))
        results.append(torch.cat(got))
    assert all(torch.equal(results[0], r) for r in results[1:])


class StopError(Exception):
    pass


@pytest.mark.parametrize("stop_after", [1, 4])
def test_interrupt_leaves_nothing(tmp_path, stop_after):
    src = numbered_clip(tmp_path / "src.mp4", 12)
    calls = {"n": 0}

    def check():
        calls["n"] += 1
        if calls["n"] > stop_after:
            raise StopError

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(StopError):
        stream_video(src, speech(3.0), out_dir / "o.mp4", frames_per_chunk=4,
                     runtime=Runtime(check_interrupt=check))
    assert os.listdir(out_dir) == []


def test_bad_inputs(tmp_path):
    src = numbered_clip(tmp_path / "src.mp4", 4)
    with pytest.raises(AudioError, match="audio"):
        stream_video(src, speech(0.01), tmp_path / "o.mp4")
    with pytest.raises(AudioError, match="empty"):
        stream_video(src, {"waveform": torch.zeros(1, 1, 0), "sample_rate": 16000},
                     tmp_path / "o.mp4")
    with pytest.raises(InputError, match="length_policy"):
        stream_video(src, speech(1.0), tmp_path / "o.mp4", length_policy="bounce")
    assert sorted(os.listdir(tmp_path)) == ["src.mp4"]


_MEMORY_SCRIPT = r"""
import json, sys, torch
from collections.abc import Mapping
from fractions import Fraction
from musetalk_core.streaming import stream_video, peak_rss
from tests.unit.test_streaming import numbered_clip, speech
from pathlib import Path
tmp = Path(sys.argv[1]); seconds = float(sys.argv[2])
src = numbered_clip(tmp / "src.mp4", int(seconds * 25), size=96)
audio = speech(seconds)
before = peak_rss()
stream_video(src, audio, tmp / "o.mp4", frames_per_chunk=16)
print(json.dumps({{"before": before, "after": peak_rss()}}))
"""


def _peak_growth(tmp: Path, seconds: float) -> int:
    tmp.mkdir()
    script = _MEMORY_SCRIPT.format()  # run from the root: ``python -c`` imports from cwd
    out = subprocess.run([sys.executable, "-c", script, str(tmp), str(seconds)], cwd=ROOT,
                         capture_output=True, text=True, check=True, timeout=300)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    return info["after"] - info["before"]


def test_peak_memory_does_not_grow_with_length(tmp_path):
    short = _peak_growth(tmp_path / "short", 6.0)
    long = _peak_growth(tmp_path / "long", 60.0)
    # 10x the frames; growth must stay within 10 % (+ 8 MiB for the longer waveform/allocator)
    assert long <= short * 1.1 + 8 * 2**20, (short, long)


class LazyAudio(Mapping):
    """A read-only, lazily loaded AUDIO mapping, shaped like VideoHelperSuite's (not a dict)."""

    def __init__(self, make):
        self._make, self._value, self.loads = make, None, 0

    def _get(self) -> dict:
        if self._value is None:
            self._value = self._make()
            self.loads += 1
        return self._value

    def __getitem__(self, key):
        return self._get()[key]

    def __iter__(self):
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


def test_lazy_audio_mapping_is_accepted(tmp_path):
    src = numbered_clip(tmp_path / "src.mp4", 30)
    lazy = LazyAudio(lambda: speech(0.6))
    assert not isinstance(lazy, dict)
    rep = stream_video(src, lazy, tmp_path / "o.mp4", frames_per_chunk=8)
    info = probe(tmp_path / "o.mp4")
    assert rep.frames == 15 and info["frames"] == 15 and lazy.loads == 1
    assert abs(info["audio_s"] - 0.6) < 0.05
    with pytest.raises(AudioError, match="AUDIO"):
        stream_video(src, [("waveform", 1)], tmp_path / "p.mp4")
