"""Video and image files in and out, streaming, with exact timing (PyAV; no ffmpeg CLI).

Reading: :func:`open_video` gives a :class:`VideoReader` that decodes one sequential pass in
chunks of uint8 RGB frames with their timestamps, and decodes the first audio track into the
host's AUDIO dict. Writing: :class:`VideoWriter` encodes H.264 ``yuv420p`` chunk by chunk, keeps
the frames' timestamps, encodes a driving AUDIO as AAC in slices as the video advances, and
publishes the file atomically (temp name in the target folder, renamed only on success).

Facts this module relies on are in ``comfyui-host.md`` 12.4 and 12.7:

* the rate is the stream's ``average_rate`` as a :class:`~fractions.Fraction` (never rounded);
* timestamps are kept, not recounted; broken ones are guarded: a missing pts becomes the last
  one plus one frame step, a pts not after the last becomes the last plus one tick;
* the decoder is flushed at the end of the pass and both encoders at :meth:`VideoWriter.close`;
* libx264 refuses odd sizes: the writer pads odd widths/heights by one replicated column/row
  (the output is then one pixel wider/taller; see :func:`even_size`);
* rotation metadata (a display matrix) is **applied** on read: frames come out upright, and
  ``width``/``height`` are the displayed size. Mirror flags are logged, not applied.

``av`` (and PIL for images) are imported inside functions, never at import time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from fractions import Fraction
from types import TracebackType
from typing import Any

import numpy as np
import torch

from .errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "VideoReader",
    "VideoWriter",
    "even_size",
    "guard_pts",
    "open_video",
    "read_image",
    "write_video",
]

_PROBE_FRAMES = 16


def _fraction(value: Any) -> Fraction | None:
    """``value`` as a positive Fraction, or ``None`` for 0, None or a non-number."""
    if value is None:
        return None
    try:
        f = Fraction(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return f if f > 0 else None


def guard_pts(pts: int | None, last: int | None, step: int) -> int:
    """A usable timestamp after ``last`` (``comfyui-host.md`` 12.7).

    A missing ``pts`` becomes ``last + step`` (one frame; 0 for the first frame), a ``pts`` not
    after ``last`` becomes ``last + 1`` tick; any other value is kept as given.
    """
    if pts is None:
        return 0 if last is None else last + step
    if last is not None and pts <= last:
        return last + 1
    return int(pts)


def even_size(width: int, height: int) -> tuple[int, int]:
    """The encoded size of a ``width`` x ``height`` clip: odd sides grow by one (replicated)."""
    return width + (width & 1), height + (height & 1)


class VideoReader:
    """One video file opened for a single sequential pass. Use :func:`open_video`.

    Attributes:
        path: the file.
        fps: the video stream's ``average_rate`` (exact Fraction). Where the container has no
            rate, it is derived from the median timestamp step of the first frames (logged).
        time_base: the video stream's time base (Fraction); ``pts`` are in this unit.
        width, height: the size of the frames :meth:`chunks` yields (rotation applied).
        frame_count: frames the container announces, or ``None`` when it does not say (the
            actual count can differ for damaged files; count what :meth:`chunks` yields).
        duration: seconds the container announces, or ``None``.
        has_audio: whether the file has an audio stream.
        variable_rate: the container's base rate differs from its average rate (timestamps
            are not evenly spaced).
        rotation: counter-clockwise degrees of the display matrix (0, 90, 180 or 270), applied.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import av

        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise InputError(f"{self.path} does not exist", input_name="video",
                             fix="check the file name and folder")
        try:
            self._container = av.open(self.path, mode="r")
        except (av.FFmpegError, OSError) as err:
            raise InputError(f"{self.path} is not a readable video ({err})",
                             input_name="video", fix="re-export it as MP4 (H.264)") from err
        try:
            self._init_streams()
        except BaseException:
            self._container.close()
            raise
        self._used = False
        self.raw_pts: list[int | None] = []
        """The container's own pts of every frame :meth:`chunks` yielded so far (for seeking)."""
        self.complete = False
        """True once :meth:`chunks` reached the end of the stream (``raw_pts`` is then whole)."""

    def _init_streams(self) -> None:
        container = self._container
        if not container.streams.video:
            raise InputError(f"{self.path} has no video stream", input_name="video",
                             fix="connect a video file (an audio-only file cannot be lip-synced)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        self._stream = stream
        self.time_base: Fraction = _fraction(stream.time_base) or Fraction(1, 90000)
        self.has_audio = bool(container.streams.audio)
        self.frame_count: int | None = int(stream.frames) or None
        if stream.duration:
            self.duration: float | None = float(stream.duration * self.time_base)
        elif container.duration:
            self.duration = container.duration / 1_000_000
        else:
            self.duration = None

        probe = self._probe()
        self.rotation = probe["rotation"]
        fps = _fraction(stream.average_rate) or _fraction(stream.guessed_rate)
        if fps is None:
            fps = probe["fps"]
            if fps is None:
                raise InputError(
                    f"cannot tell the frame rate of {self.path} (the container says 0 and the "
                    "frames have no timestamps)", input_name="video",
                    fix="re-mux it with a rate (e.g. ffmpeg -r 25)")
            log.warning("%s has no frame rate; using %s fps from its timestamps", self.path, fps)
        self.fps: Fraction = fps
        base = _fraction(stream.base_rate)
        average = _fraction(stream.average_rate)
        self.variable_rate: bool = bool(base and average and base != average)
        w, h = probe["size"]
        if self.rotation in (90, 270):
            w, h = h, w
        self.width: int = w
        self.height: int = h
        if self.rotation:
            log.info("%s: applying its %d degree rotation metadata (frames are %dx%d upright)",
                     self.path, self.rotation, w, h)

    def _probe(self) -> dict[str, Any]:
        """Decode the first few frames in a separate handle: size, rotation, timestamp rate."""
        import av

        info: dict[str, Any] = {"rotation": 0, "fps": None,
                                "size": (self._stream.codec_context.width,
                                         self._stream.codec_context.height)}
        pts: list[int] = []
        try:
            with av.open(self.path, mode="r") as probe:
                stream = probe.streams.video[0]
                for i, frame in enumerate(probe.decode(stream)):
                    if i == 0:
                        info["size"] = (frame.width, frame.height)
                        rot = int(round(getattr(frame, "rotation", 0) or 0))
                        info["rotation"] = (round(rot / 90) * 90) % 360
                        if rot % 90:
                            log.warning("%s: rotation %d degrees is not a multiple of 90; "
                                        "using %d", self.path, rot, info["rotation"])
                    if frame.pts is not None:
                        pts.append(int(frame.pts))
                    if i + 1 >= _PROBE_FRAMES:
                        break
        except av.FFmpegError as err:
            raise InputError(f"{self.path} is not a readable video ({err})",
                             input_name="video", fix="re-export it as MP4 (H.264)") from err
        steps = np.diff(np.asarray(sorted(set(pts)), dtype=np.int64))
        if steps.size:
            step = Fraction(int(np.median(steps))) * self.time_base
            info["fps"] = 1 / step if step > 0 else None
        return info

    # ------------------------------------------------------------------ frames

    def _frame_step(self) -> int:
        """Ticks of one frame at the nominal rate (at least 1)."""
        return max(1, round(1 / (self.fps * self.time_base)))

    def chunks(self, n: int) -> Iterator[tuple[torch.Tensor, list[int]]]:
        """Decode the whole video once, ``n`` frames at a time.

        Yields:
            ``(frames, pts)``: uint8 ``[k, H, W, 3]`` RGB (``k <= n``; only the last chunk is
            short) and the ``k`` guarded, strictly increasing timestamps in :attr:`time_base`.
            Frames whose size differs from the first frame's are scaled to it with the aspect
            kept and padded with black (logged once).
        Raises:
            RuntimeError: on a second call (one sequential pass; open the file again).
        """
        import av

        if n < 1:
            raise ValueError(f"chunk size must be >= 1, got {n}")
        if self._used:
            raise RuntimeError("VideoReader.chunks() is a single pass; open the video again")
        self._used = True
        step = self._frame_step()
        last: int | None = None
        frames: list[np.ndarray] = []
        stamps: list[int] = []
        index = 0
        k_rot = self.rotation // 90
        target = self._raw_size()
        warned_size = False
        decoded = self._container.decode(self._stream)
        while True:
            try:
                frame = next(decoded)
            except StopIteration:
                break
            except av.FFmpegError as err:
                log.warning("%s: video ends early at frame %d (file damaged: %s)",
                            self.path, index, err)
                break
            arr = frame.to_ndarray(format="rgb24")
            if arr.shape[:2] != target:
                if not warned_size:
                    log.warning("%s: frame %d is %dx%d but the video started at %dx%d; "
                                "scaling later frames to the first size (aspect kept, padded)",
                                self.path, index, arr.shape[1], arr.shape[0], target[1],
                                target[0])
                    warned_size = True
                arr = _letterbox(arr, target)
            last = guard_pts(frame.pts, last, step)
            self.raw_pts.append(frame.pts)
            frames.append(arr)
            stamps.append(last)
            index += 1
            if len(frames) == n:
                yield self._batch(frames, k_rot), stamps
                frames, stamps = [], []
        self.complete = True
        if frames:
            yield self._batch(frames, k_rot), stamps

    def _raw_size(self) -> tuple[int, int]:
        """``(H, W)`` of decoded frames before rotation."""
        rotated = (self.rotation // 90) % 2 == 1
        return (self.width, self.height) if rotated else (self.height, self.width)

    def seeker(self) -> FrameSeeker:
        """Random access to the frames by index, after :meth:`chunks` has run to the end."""
        if not self.complete:
            raise RuntimeError("VideoReader.seeker() needs a finished chunks() pass")
        return FrameSeeker(self)

    @staticmethod
    def _batch(frames: list[np.ndarray], k_rot: int) -> torch.Tensor:
        batch = torch.from_numpy(np.stack(frames))
        if k_rot:
            batch = torch.rot90(batch, k_rot, dims=(1, 2)).contiguous()
        return batch

    # ------------------------------------------------------------------ audio

    def audio(self) -> dict[str, Any] | None:
        """The first audio stream as the host's AUDIO dict, or ``None`` without audio.

        Returns:
            ``{"waveform": float32 [1, C, n], "sample_rate": int}`` (decoded in its own pass,
            independent of :meth:`chunks`).
        """
        import av

        if not self.has_audio:
            return None
        parts: list[np.ndarray] = []
        with av.open(self.path, mode="r") as container:
            stream = container.streams.audio[0]
            rate = int(stream.rate or stream.codec_context.sample_rate)
            stream_samples = 0
            if stream.duration and stream.time_base:
                stream_samples = int(stream.duration * stream.time_base * rate)
            resampler = None
            try:
                for frame in container.decode(stream):
                    if resampler is None:
                        resampler = av.AudioResampler(format="fltp", layout=frame.layout,
                                                      rate=frame.sample_rate)
                    for out in resampler.resample(frame):
                        parts.append(out.to_ndarray())
                if resampler is not None:
                    for out in resampler.resample(None):
                        parts.append(out.to_ndarray())
            except av.FFmpegError as err:
                log.warning("%s: audio ends early (file damaged: %s)", self.path, err)
        if not parts:
            return None
        wave = np.concatenate(parts, axis=1).astype(np.float32, copy=False)
        if stream_samples and 0 < stream_samples < wave.shape[1]:
            wave = wave[:, :stream_samples]  # the AAC decoder's last frame is padded
        return {"waveform": torch.from_numpy(wave)[None], "sample_rate": rate}

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"VideoReader({self.path!r}, {self.width}x{self.height}, fps={self.fps}, "
                f"frames={self.frame_count})")


class FrameSeeker:
    """Frames of a video by index, decoded again on demand (bounded memory).

    Built by :meth:`VideoReader.seeker` from the container timestamps recorded in the first
    pass. A request is split into runs of nearby indices; each run continues the open decoder
    when it lies a little ahead of it, and otherwise seeks to the keyframe at or before its
    first frame (at most one GOP of extra decoding per run). Files whose timestamps are missing
    or not increasing cannot be seeked reliably: they are decoded again from the start (logged).
    Only the frames of the latest request are kept, so repeated indices (a held last frame, the
    turn of a ping-pong) cost nothing, and memory is bounded by the request size.
    """

    GAP = 48
    """Indices closer than this are decoded in one run rather than with a new seek."""

    def __init__(self, reader: VideoReader) -> None:
        self._reader = reader
        self._raw = list(reader.raw_pts)
        self.count = len(self._raw)
        ok = all(p is not None for p in self._raw) and all(
            b > a for a, b in zip(self._raw, self._raw[1:], strict=False))
        self._seekable = ok
        if not ok:
            log.warning("%s has missing or repeated timestamps; frames needed again are "
                        "decoded from the start (slower)", reader.path)
        self._index_of = {p: i for i, p in enumerate(self._raw)} if ok else {}
        self._container: Any = None
        self._frames: Iterator[Any] | None = None
        self._pos: int | None = None  # index of the next frame the open decoder yields
        self._cache: dict[int, np.ndarray] = {}
        self.seeks = 0

    def get(self, indices: torch.Tensor | list[int]) -> torch.Tensor:
        """uint8 ``[k, H, W, 3]`` RGB frames at ``indices`` (each in ``0..count-1``), in order."""
        wanted = [int(i) for i in torch.as_tensor(indices).tolist()]
        if any(i < 0 or i >= self.count for i in wanted):
            raise IndexError(f"frame index out of 0..{self.count - 1}")
        have = {i: self._cache[i] for i in set(wanted) if i in self._cache}
        todo = sorted(set(wanted) - set(have))
        runs: list[list[int]] = []
        for i in todo:
            if runs and i - runs[-1][-1] <= self.GAP:
                runs[-1].append(i)
            else:
                runs.append([i])
        for run in runs:
            have.update(self._decode_run(run))
        self._cache = have
        k_rot = self._reader.rotation // 90
        return VideoReader._batch([have[i] for i in wanted], k_rot)

    def _open(self, start: int) -> None:
        """Position a decoder so it yields frame ``start`` (or an earlier one) next."""
        import av

        if self._seekable and start > 0 and self._container is not None:
            stream = self._container.streams.video[0]
            self._container.seek(int(self._raw[start]), stream=stream, backward=True,
                                 any_frame=False)
            self._pos = None  # known again from the first frame's pts
        else:
            self.close()
            self._container = av.open(self._reader.path, mode="r")
            stream = self._container.streams.video[0]
            stream.thread_type = "AUTO"
            if self._seekable and start > 0:
                self._container.seek(int(self._raw[start]), stream=stream, backward=True,
                                     any_frame=False)
                self._pos = None
            else:
                self._pos = 0
        self.seeks += 1
        self._frames = self._container.decode(self._container.streams.video[0])

    def _decode_run(self, run: list[int]) -> dict[int, np.ndarray]:
        lo, hi = run[0], run[-1]
        wanted = set(run)
        ahead = self._pos is not None and self._frames is not None and lo >= self._pos
        if not (ahead and (lo - self._pos <= self.GAP or not self._seekable)):
            self._open(lo)
        assert self._frames is not None
        target = self._reader._raw_size()
        out: dict[int, np.ndarray] = {}
        for frame in self._frames:
            if self._pos is None:
                idx = self._index_of.get(frame.pts)
                if idx is None:
                    continue
            else:
                idx = self._pos
            self._pos = idx + 1
            if idx in wanted:
                arr = frame.to_ndarray(format="rgb24")
                out[idx] = arr if arr.shape[:2] == target else _letterbox(arr, target)
            if idx >= hi:
                break
        missing = wanted - set(out)
        if missing:
            raise RuntimeError(f"{self._reader.path}: could not decode frame(s) "
                               f"{sorted(missing)[:5]} again")
        return out

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
            self._frames = None
            self._pos = None


def _letterbox(arr: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """Scale ``arr`` [h, w, 3] uint8 into ``target`` (H, W) keeping the aspect, pad black."""
    th, tw = target
    h, w = arr.shape[:2]
    scale = min(th / h, tw / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].float()
    x = torch.nn.functional.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0)
    out = torch.zeros((th, tw, 3), dtype=torch.uint8)
    top, left = (th - nh) // 2, (tw - nw) // 2
    out[top:top + nh, left:left + nw] = x
    return out.numpy()


def open_video(path: str | os.PathLike[str]) -> VideoReader:
    """Open ``path`` for streaming (a context manager). Raises :class:`InputError` if unusable."""
    return VideoReader(path)


def read_image(path: str | os.PathLike[str]) -> torch.Tensor:
    """A PNG/JPEG (any PIL format) as uint8 ``[1, H, W, 3]`` RGB, EXIF orientation applied."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(os.fspath(path)) as img:
            img = ImageOps.exif_transpose(img)
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as err:
        raise InputError(f"{path} does not exist", input_name="image",
                         fix="check the file name and folder") from err
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"{path} is not a readable image ({err})", input_name="image",
                         fix="use a PNG or JPEG file") from err
    return torch.from_numpy(rgb.copy())[None]


# ---------------------------------------------------------------------------------- writing


def _audio_layout(channels: int) -> str:
    return "mono" if channels == 1 else "stereo"


class VideoWriter:
    """Encode an H.264 MP4 chunk by chunk, with an optional driving AUDIO, atomically.

    Args:
        path: the final file. Nothing appears there until :meth:`close` succeeds: frames go to
            a hidden temp file in the same folder, renamed over ``path`` at the end.
        fps: the exact frame rate (a Fraction, e.g. ``Fraction(30000, 1001)``).
        width, height: the frames' size. Odd sides are padded by replicating the last
            column/row, so the file is :func:`even_size` (libx264 ``yuv420p`` needs even sides).
        audio: the host's AUDIO dict (``waveform`` ``[B, C, n]``, first clip used; 1 or 2
            channels, more are cut to the first two) encoded as AAC. It is written in slices as
            the video advances and stops at the video's end (the end of the last frame).
        crf: libx264 quality (0..51, lower is better; 18 is visually lossless).
        time_base: the unit of the ``pts`` given to :meth:`write` (default ``1/fps``).
        bframes: let libx264 use B-frames. Pass ``False`` for unevenly spaced timestamps: with
            frame reordering the MP4 track duration loses the reorder delay measured at the
            clip's end rather than its start (120 ms short for a 25 -> 10 fps clip here), and
            players may cut the last frames.

    On an exception inside ``with`` (KeyboardInterrupt and the host's interrupt included),
    or on :meth:`abort`, the temp file is deleted and ``path`` is left untouched.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: Fraction,
        width: int,
        height: int,
        *,
        audio: dict | None = None,
        crf: int = 18,
        time_base: Fraction | None = None,
        bframes: bool = True,
    ) -> None:
        import av

        fps_f = _fraction(fps)
        if fps_f is None:
            raise InputError(f"{fps!r} is not a frame rate", input_name="fps",
                             fix="give a positive rate such as 25 or 30000/1001")
        if width < 1 or height < 1:
            raise InputError(f"frame size {width}x{height} is empty", input_name="images",
                             fix="check the upstream node")
        self.path = os.fspath(path)
        self.fps = fps_f
        self.width, self.height = int(width), int(height)
        self.enc_width, self.enc_height = even_size(self.width, self.height)
        if (self.enc_width, self.enc_height) != (self.width, self.height):
            log.info("%dx%d is odd; encoding %dx%d (last column/row repeated) for H.264",
                     self.width, self.height, self.enc_width, self.enc_height)
        self.time_base = _fraction(time_base) or 1 / fps_f
        self.frames_written = 0
        self._last_pts: int | None = None
        self._end_pts = 0
        self._closed = False
        self._bframes = bool(bframes)

        folder = os.path.dirname(os.path.abspath(self.path))
        fd, self.temp_path = tempfile.mkstemp(prefix=".musetalk-", suffix=".part.mp4", dir=folder)
        os.close(fd)
        try:
            self._container = av.open(self.temp_path, mode="w", format="mp4")
            self._open_streams(av, int(crf), audio)
        except BaseException:
            if hasattr(self, "_container"):
                self._container.close()
            self._discard()
            raise

    def _open_streams(self, av: Any, crf: int, audio: dict | None) -> None:
        stream = self._container.add_stream("libx264", rate=self.fps)
        stream.width, stream.height = self.enc_width, self.enc_height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = self.time_base
        stream.options = {"crf": str(crf)} if self._bframes else {"crf": str(crf), "bf": "0"}
        self._vstream = stream
        self._astream = None
        self._wave: np.ndarray | None = None
        self._audio_done = 0
        if audio is None:
            return
        wave = audio.get("waveform")
        rate = int(audio.get("sample_rate") or 0)
        if wave is None or rate <= 0:
            raise InputError("audio has no waveform or sample rate", input_name="audio",
                             fix="connect a core AUDIO output (e.g. LoadAudio)")
        w = torch.as_tensor(wave).detach().to("cpu", torch.float32)
        if w.dim() == 3:
            w = w[0]
        elif w.dim() == 1:
            w = w[None]
        if w.shape[0] > 2:
            log.info("audio has %d channels; writing the first two", w.shape[0])
            w = w[:2]
        self._wave = np.ascontiguousarray(w.clamp(-1, 1).numpy())
        self._rate = rate
        astream = self._container.add_stream("aac", rate=rate)
        astream.layout = _audio_layout(self._wave.shape[0])
        astream.format = "fltp"
        astream.codec_context.time_base = Fraction(1, rate)
        self._astream = astream

    # ------------------------------------------------------------------ frames

    def _pad(self, frames: torch.Tensor) -> torch.Tensor:
        if self.enc_height != self.height:
            frames = torch.cat([frames, frames[:, -1:]], dim=1)
        if self.enc_width != self.width:
            frames = torch.cat([frames, frames[:, :, -1:]], dim=2)
        return frames

    def write(self, frames: torch.Tensor | np.ndarray, pts: list[int] | None = None) -> None:
        """Encode uint8 ``[k, H, W, 3]`` RGB frames at ``pts`` (in :attr:`time_base`).

        Without ``pts`` the ``i``-th frame written overall is placed at ``i / fps``. Timestamps
        not after the previous one are moved to it plus one tick (logged at debug level).
        """
        import av

        if self._closed:
            raise RuntimeError("VideoWriter is closed")
        frames = torch.as_tensor(frames)
        if frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise InputError(f"frames must be uint8 [k,H,W,3], got {tuple(frames.shape)} "
                             f"{frames.dtype}", input_name="images",
                             fix="convert frames with (x*255).round().to(torch.uint8)")
        if tuple(frames.shape[1:3]) != (self.height, self.width):
            raise InputError(f"frames are {frames.shape[2]}x{frames.shape[1]} but the video is "
                             f"{self.width}x{self.height}", input_name="images",
                             fix="keep every frame at the first frame's size")
        k = int(frames.shape[0])
        if pts is not None and len(pts) != k:
            raise ValueError(f"{k} frames but {len(pts)} timestamps")
        step = 1 / (self.fps * self.time_base)
        data = self._pad(frames.to("cpu")).numpy()
        try:
            for i in range(k):
                given = round(self.frames_written * step) if pts is None else pts[i]
                p = guard_pts(given, self._last_pts, max(1, round(step)))
                self._last_pts = p
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(data[i]), format="rgb24")
                vf.pts = p
                vf.time_base = self.time_base
                for packet in self._vstream.encode(vf):
                    self._container.mux(packet)
                self.frames_written += 1
                self._end_pts = p + max(1, round(step))
            self._write_audio(self._end_pts)
        except BaseException:
            self.abort()
            raise

    def _write_audio(self, end_pts: int) -> None:
        """Encode the driving audio up to the video time ``end_pts`` (exclusive)."""
        import av

        if self._astream is None or self._wave is None:
            return
        end = min(int(end_pts * self.time_base * self._rate), self._wave.shape[1])
        slice_len = 1024 * 16
        while self._audio_done < end:
            stop = min(end, self._audio_done + slice_len)
            chunk = np.ascontiguousarray(self._wave[:, self._audio_done:stop])
            af = av.AudioFrame.from_ndarray(chunk, format="fltp",
                                            layout=_audio_layout(chunk.shape[0]))
            af.sample_rate = self._rate
            af.pts = self._audio_done
            af.time_base = Fraction(1, self._rate)
            for packet in self._astream.encode(af):
                self._container.mux(packet)
            self._audio_done = stop

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Flush both encoders, finish the file and rename it to :attr:`path`."""
        if self._closed:
            return
        try:
            for packet in self._vstream.encode(None):
                self._container.mux(packet)
            if self._astream is not None:
                self._write_audio(self._end_pts)
                for packet in self._astream.encode(None):
                    self._container.mux(packet)
            self._container.close()
            self._closed = True
            os.replace(self.temp_path, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Stop and delete the temp file; :attr:`path` is left as it was."""
        if not self._closed:
            self._closed = True
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - best effort while discarding a failed file
                log.debug("closing a discarded video failed", exc_info=True)
        self._discard()

    def _discard(self) -> None:
        self._closed = True
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp_path)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(
    path: str | os.PathLike[str],
    frames: torch.Tensor,
    fps: Fraction,
    audio: dict | None = None,
    *,
    crf: int = 18,
) -> None:
    """Write a short clip in one call: ``frames`` uint8 ``[N,H,W,3]`` (or float IMAGE 0..1)."""
    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8:
        frames = (frames.float().clamp(0, 1) * 255).round().to(torch.uint8)
    if frames.dim() != 4 or frames.shape[0] == 0:
        raise InputError(f"frames have shape {tuple(frames.shape)}", input_name="images",
                         fix="give at least one frame as [N,H,W,3]")
    with VideoWriter(path, fps, int(frames.shape[2]), int(frames.shape[1]), audio=audio,
                     crf=crf) as writer:
        writer.write(frames)
