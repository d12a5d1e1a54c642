"""Streaming video I/O: exact chunked decode, timestamps, atomic H.264 + AAC writing."""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
import pytest
import torch

from musetalk_core.errors import InputError
from musetalk_core.video_io import (
    VideoWriter,
    even_size,
    guard_pts,
    open_video,
    read_image,
    write_video,
)


def _read_all(path, n):
    frames, pts = [], []
    with open_video(path) as reader:
        for chunk, stamps in reader.chunks(n):
            assert chunk.dtype == torch.uint8 and chunk.shape[0] <= n
            assert len(stamps) == chunk.shape[0]
            frames.append(chunk)
            pts += stamps
    return torch.cat(frames), pts


@pytest.mark.parametrize(
    ("name", "count", "fps", "tb"),
    [
        ("talk_25fps_512x512.mp4", 200, Fraction(25), Fraction(1, 12800)),
        ("talk_29_97fps_512x512.mp4", 240, Fraction(30000, 1001), Fraction(1, 30000)),
    ],
)
def test_chunked_read_is_exact_and_chunk_independent(media, name, count, fps, tb):
    path = media / name
    with open_video(path) as reader:
        assert reader.fps == fps and isinstance(reader.fps, Fraction)
        assert reader.time_base == tb
        assert (reader.width, reader.height) == (512, 512)
        assert reader.frame_count == count
        assert reader.has_audio and reader.rotation == 0
        audio = reader.audio()
    assert audio["sample_rate"] == 16000
    assert audio["waveform"].dtype == torch.float32
    assert audio["waveform"].shape[:2] == (1, 2)
    assert abs(audio["waveform"].shape[2] - 128000) <= 1024

    a, pa = _read_all(path, 7)
    b, pb = _read_all(path, 64)
    assert a.shape == (count, 512, 512, 3)
    assert torch.equal(a, b) and pa == pb
    assert all(y > x for x, y in zip(pa, pa[1:], strict=False))
    step = round(1 / (fps * tb))
    assert pa[0] == 0 and pa[-1] == (count - 1) * step


def test_chunks_is_one_pass(media):
    with open_video(media / "talk_25fps_512x512.mp4") as reader:
        next(reader.chunks(4))
        with pytest.raises(RuntimeError):
            next(reader.chunks(4))


def test_guard_pts():
    assert guard_pts(None, None, 512) == 0
    assert guard_pts(None, 1024, 512) == 1536  # missing: last + one frame
    assert guard_pts(1024, 1024, 512) == 1025  # duplicate: last + 1 tick
    assert guard_pts(10, 1024, 512) == 1025  # backwards
    assert guard_pts(2048, 1024, 512) == 2048  # kept


def _speech(seconds: float, rate: int = 16000, channels: int = 1) -> dict:
    t = torch.arange(int(seconds * rate)) / rate
    wave = 0.3 * torch.sin(2 * torch.pi * 220 * t)
    return {"waveform": wave.repeat(1, channels, 1).float(), "sample_rate": rate}


@pytest.mark.parametrize("fps", [Fraction(25), Fraction(30000, 1001)])
def test_write_read_roundtrip_with_driving_audio(tmp_path, fps):
    frames = torch.randint(0, 256, (37, 64, 96, 3), dtype=torch.uint8)
    out = tmp_path / "o.mp4"
    with VideoWriter(out, fps, 96, 64, audio=_speech(5.0, channels=2)) as w:
        for i in range(0, 37, 10):
            w.write(frames[i:i + 10])
    assert os.listdir(tmp_path) == ["o.mp4"]
    back, pts = _read_all(out, 16)
    assert back.shape == (37, 64, 96, 3)
    step = 1 / fps
    with open_video(out) as r:
        assert r.fps == fps
        audio = r.audio()
    video_s = 37 / fps
    audio_s = audio["waveform"].shape[-1] / audio["sample_rate"]
    assert abs(audio_s - float(video_s)) <= float(step)  # audio stops at the video's end
    assert audio["waveform"].shape[1] == 2
    with open_video(out) as r:
        times = [p * r.time_base for p in pts]
    assert times == [i / fps for i in range(37)]  # frame i at i / fps exactly
    # a smooth random-free frame survives within codec loss
    grad = torch.linspace(0, 255, 96).round().to(torch.uint8).view(1, 1, 96, 1)
    smooth = grad.expand(3, 64, 96, 3).contiguous()
    write_video(tmp_path / "s.mp4", smooth, fps)
    back2, _ = _read_all(tmp_path / "s.mp4", 8)
    assert (back2.int() - smooth.int()).abs().float().mean() < 2.0


def test_keeps_given_pts_and_guards_duplicates(tmp_path):
    tb = Fraction(1, 12800)
    frames = torch.zeros((5, 32, 32, 3), dtype=torch.uint8)
    frames[:, :, :, 0] = torch.arange(5).view(5, 1, 1) * 40
    out = tmp_path / "p.mp4"
    given = [0, 512, 512, 2048, 2560]  # a duplicate, then a gap (variable rate)
    with VideoWriter(out, Fraction(25), 32, 32, time_base=tb) as w:
        w.write(frames, pts=given)
    with open_video(out) as r:
        chunks = list(r.chunks(2))
        got = sum((p for _, p in chunks), [])
        times = [Fraction(p) * r.time_base for p in got]
    assert len(got) == 5
    expected = [Fraction(p) * tb for p in [0, 512, 513, 2048, 2560]]
    assert all(abs(a - b) <= Fraction(1, 1000) for a, b in zip(times, expected, strict=True))


def test_odd_size_is_padded_to_even(tmp_path):
    assert even_size(321, 241) == (322, 242)
    frames = torch.randint(0, 256, (3, 241, 321, 3), dtype=torch.uint8)
    write_video(tmp_path / "odd.mp4", frames, Fraction(25))
    with open_video(tmp_path / "odd.mp4") as r:
        assert (r.width, r.height) == (322, 242)
        assert sum(len(f) for f, _ in r.chunks(2)) == 3


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interruption_mid_write_leaves_nothing(tmp_path, exc):
    out = tmp_path / "never.mp4"
    frames = torch.zeros((4, 32, 32, 3), dtype=torch.uint8)
    with pytest.raises(exc), VideoWriter(out, Fraction(25), 32, 32, audio=_speech(1.0)) as w:
        w.write(frames)
        raise exc("stop")
    assert os.listdir(tmp_path) == []


def test_existing_file_untouched_on_abort(tmp_path):
    out = tmp_path / "keep.mp4"
    out.write_bytes(b"old")
    w = VideoWriter(out, Fraction(25), 16, 16)
    w.write(torch.zeros((2, 16, 16, 3), dtype=torch.uint8))
    w.abort()
    assert out.read_bytes() == b"old" and os.listdir(tmp_path) == ["keep.mp4"]


def test_wrong_frame_size_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="images"), \
            VideoWriter(tmp_path / "x.mp4", Fraction(25), 16, 16) as w:
        w.write(torch.zeros((1, 8, 8, 3), dtype=torch.uint8))
    assert os.listdir(tmp_path) == []


def test_rotation_metadata_is_applied(tmp_path):
    import av

    path = tmp_path / "rot.mp4"
    img = np.zeros((32, 64, 3), dtype=np.uint8)
    img[:, :8, 0] = 255  # red stripe on the left edge
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 32, "yuv420p"
        s.set_display_rotation(90)
        for i in range(2):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    with open_video(path) as r:
        assert r.rotation == 90 and (r.width, r.height) == (32, 64)
        frames, _ = next(r.chunks(2))
    assert frames.shape == (2, 64, 32, 3)
    # 90 degrees counter-clockwise: the left edge becomes the bottom edge
    assert frames[0, -4:, :, 0].float().mean() > 200 and frames[0, :4, :, 0].float().mean() < 50


def test_bad_files_are_input_errors(tmp_path):
    not_video = tmp_path / "x.mp4"
    not_video.write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError, match="video"):
        open_video(not_video)
    with pytest.raises(InputError, match="does not exist"):
        open_video(tmp_path / "missing.mp4")


def test_read_image(media, tmp_path):
    img = read_image(media / "portrait_video_frame_512x512.jpg")
    assert img.shape == (1, 512, 512, 3) and img.dtype == torch.uint8
    png = read_image(media / "portrait_astronaut_512x512.png")
    assert png.shape == (1, 512, 512, 3)
    with pytest.raises(InputError):
        read_image(tmp_path / "none.png")
