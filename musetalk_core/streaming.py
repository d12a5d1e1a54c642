"""Lip-sync a video file of any length in bounded memory: decode -> process -> encode, per chunk.

:func:`stream_video` walks the output timeline in chunks of ``frames_per_chunk`` frames:

1. **Timeline.** The output follows the speech: ``T = floor(n_samples * fps / sample_rate)``
   frames (exact integers; ``fps`` is the source's ``average_rate`` Fraction), reconciled with
   the source's ``N`` frames by the length policy of :mod:`musetalk_core.timeline`. ``N`` is only
   known once the source has been read to its end (a container's frame count can lie), so
   the first pass maps output frame ``i`` to source frame ``i`` (true for every policy while
   ``i < min(N, T)``) and stops decoding once ``T`` frames are out.
2. **Second walk (source shorter than the speech).** Ping-pong, loop and hold-last need source
   frames again. Design choice: the full frames are **decoded again** by a
   :class:`~musetalk_core.video_io.FrameSeeker` (seek to the keyframe before each run, at most a
   GOP of extra decoding per chunk) instead of caching them (a 10-minute 1080p source would be
   90 GB of frames) or caching the 256x256 crops (192 KiB per frame, 2.8 GB for 10 minutes; and
   blending needs the full frame anyway). Memory therefore depends on the chunk size, not on
   the length. Per-source-frame *geometry* (boxes, landmarks: about 0.5 KiB a frame) is small and
   may be kept by the processor across walks (the pipeline adapter does).
3. **Timestamps.** Output frame ``i < N`` keeps the source frame's timestamp (shifted so the
   first frame is at 0), so variable frame rates keep every frame time; frames past the source's
   end continue at the nominal rate. The encoder uses the source time base.
4. **Audio.** The driving speech is encoded as AAC in slices as the video advances and stops at
   the end of the last frame (:class:`~musetalk_core.video_io.VideoWriter`).
5. **Safety.** The output is written to a temp name in the output's folder and renamed only on
   success; an exception, the host's interrupt (raised by ``runtime.step`` once per chunk) or a
   full disk removes the partial file.

The per-chunk work is a callable (``process``) that gets a :class:`Chunk` and returns the
finished frames; :func:`musetalk_core.pipeline` builds the MuseTalk one (detect or take
landmarks, crop, encode, inpaint, decode, blend) from the same functions as the IMAGE nodes.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch

from . import timeline
from .errors import AudioError, InputError, MuseTalkError
from .runtime import Runtime, default_runtime
from .video_io import VideoWriter, open_video

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 32


@dataclass(frozen=True)
class Chunk:
    """One chunk of the output timeline, handed to the ``process`` callable.

    Attributes:
        frames: uint8 ``[k, H, W, 3]`` RGB source frames, one per output frame (a source frame
            appears once per output frame that shows it).
        source_index: int64 ``[k]``: the source frame of each row (``0..N-1``).
        out_index: int64 ``[k]``: the output frame numbers (the audio timeline: frame ``i``
            uses the speech around ``i / fps``).
        times: float64 ``[k]``: the output frames' timestamps in seconds (source timing).
        fps: the nominal frame rate (exact).
        total: the number of output frames of the whole run.
    """

    frames: torch.Tensor
    source_index: torch.Tensor
    out_index: torch.Tensor
    times: torch.Tensor
    fps: Fraction
    total: int


ProcessFn = Callable[[Chunk], torch.Tensor]
"""``process(chunk) -> frames``: uint8 ``[k,H,W,3]`` or float ``[k,H,W,3]`` in 0..1."""

CaptureFn = Callable[[torch.Tensor, list[int]], None]
"""``capture(frames, pts)``: sees each chunk's processed frames before encoding (test hook)."""


@dataclass(frozen=True)
class StreamReport:
    """What :func:`stream_video` wrote.

    Attributes:
        path: the output MP4.
        frames: output frames written.
        source_frames: source frames seen (``None`` if the source was not read to its end).
        fps: the output's nominal frame rate (the source's).
        duration: seconds of video (end of the last frame).
        audio_samples: samples of the driving speech that were encoded.
        seconds: wall time.
        peak_rss: the process's peak resident memory in bytes (lifetime peak).
    """

    path: str
    frames: int
    source_frames: int | None
    fps: Fraction
    duration: float
    audio_samples: int
    seconds: float
    peak_rss: int


def identity(chunk: Chunk) -> torch.Tensor:
    """A ``process`` that returns the source frames (for tests and the plumbing benchmark)."""
    return chunk.frames


def peak_rss() -> int:
    """The process's peak resident set size in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def audio_frame_count(n_samples: int, sample_rate: int, fps: Fraction) -> int:
    """``floor(n_samples * fps / sample_rate)`` in exact integer arithmetic."""
    fps = Fraction(fps)
    return (n_samples * fps.numerator) // (sample_rate * fps.denominator)


def _audio_info(audio: Mapping[str, Any]) -> tuple[int, int]:
    """``(samples, rate)`` of any AUDIO mapping (a dict, or VideoHelperSuite's lazy map)."""
    if not isinstance(audio, Mapping) or "waveform" not in audio:
        raise AudioError("audio is not an AUDIO value", input_name="audio",
                         fix="connect a core AUDIO output (e.g. LoadAudio)")
    wave = audio["waveform"]
    rate = int(audio.get("sample_rate") or 0)
    if rate <= 0:
        raise AudioError(f"sample rate {rate} is not valid", input_name="audio",
                         fix="connect a core AUDIO output (e.g. LoadAudio)")
    n = int(wave.shape[-1]) if getattr(wave, "dim", lambda: 0)() >= 1 else 0
    if n == 0:
        raise AudioError("audio is empty (0 samples)", input_name="audio", fix="connect speech")
    return n, rate


def _as_uint8(frames: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    frames = torch.as_tensor(frames).detach()
    if frames.shape != like.shape:
        raise InputError(f"the chunk step returned {tuple(frames.shape)} for "
                         f"{tuple(like.shape)} frames", fix="this is a bug; please report it")
    if frames.dtype == torch.uint8:
        return frames.to("cpu")
    return (frames.to("cpu", torch.float32).clamp(0, 1) * 255).round().to(torch.uint8)


def _disk_full(err: BaseException) -> bool:
    return getattr(err, "errno", None) == errno.ENOSPC


def stream_video(
    source: str | os.PathLike[str],
    audio: Mapping[str, Any],
    output: str | os.PathLike[str],
    process: ProcessFn = identity,
    *,
    frames_per_chunk: int = DEFAULT_CHUNK,
    length_policy: str = timeline.DEFAULT_POLICY,
    runtime: Runtime | None = None,
    crf: int = 18,
    capture: CaptureFn | None = None,
) -> StreamReport:
    """Stream ``source`` through ``process`` into an H.264 MP4 at ``output`` with ``audio``.

    Args:
        source: the video file (path).
        audio: the driving speech, host AUDIO (a dict, or any mapping such as
            VideoHelperSuite's lazy audio: ``waveform`` ``[B, C, n]``, ``sample_rate``);
            it sets the output length (see the module notes).
        output: the final MP4 path (written atomically).
        process: per-chunk work (:data:`ProcessFn`); :func:`identity` by default.
        frames_per_chunk: frames decoded, processed and encoded at a time (memory scales with
            it: about 70 MiB per 720p frame of chunk with the MuseTalk pipeline on CPU, measured
            by benchmarks/long_video.py; the blend works on float copies of full frames).
        length_policy: ``pingpong``, ``loop``, ``hold_last`` or ``trim``.
        runtime: progress and interruption (``runtime.step`` once per chunk).
        crf: libx264 quality.
        capture: optional hook seeing each chunk's processed frames (before uint8 conversion)
            and output pts.

    Returns:
        a :class:`StreamReport`.
    Raises:
        InputError: unreadable video, 0 frames. AudioError: empty or too short speech.
        MuseTalkError: disk full while writing (names the folder).
    """
    runtime = runtime or default_runtime()
    if frames_per_chunk < 1:
        raise InputError(f"frames_per_chunk is {frames_per_chunk}", input_name="frames_per_chunk",
                         fix="use a value of at least 1 (32 is a good default)")
    if length_policy not in timeline.POLICIES:
        raise InputError(f"unknown length policy {length_policy!r}", input_name="length_policy",
                         fix=f"use one of {', '.join(timeline.POLICIES)}")
    n_samples, rate = _audio_info(audio)
    started = time.perf_counter()
    output = os.fspath(output)
    with open_video(source) as reader:
        fps, tb = reader.fps, reader.time_base
        total = audio_frame_count(n_samples, rate, fps)
        if total < 1:
            raise AudioError(f"audio is shorter than one frame at {fps} fps ({n_samples} samples "
                             f"at {rate} Hz)", input_name="audio", fix="connect longer speech")
        step = max(1, round(1 / (fps * tb)))
        try:
            writer = VideoWriter(output, fps, reader.width, reader.height, audio=audio,
                                 crf=crf, time_base=tb, bframes=not reader.variable_rate)
        except OSError as err:
            raise _write_error(err, output) from err
        state = {"done": 0, "last_pts": None}

        def emit(frames: torch.Tensor, src: torch.Tensor, pts: list[int], n_out: int) -> None:
            k = int(frames.shape[0])
            out_index = torch.arange(state["done"], state["done"] + k, dtype=torch.int64)
            times = torch.tensor([float(p * tb) for p in pts], dtype=torch.float64)
            result = process(Chunk(frames, src, out_index, times, fps, n_out))
            if capture is not None:
                capture(result, list(pts))
            writer.write(_as_uint8(result, frames), pts)
            state["done"] += k
            state["last_pts"] = pts[-1]
            done = state["done"]
            runtime.step(done, n_out, f"lip sync video: frame {done}/{n_out} "
                                      f"({float(done / fps):.1f}/{float(n_out / fps):.1f} s)")

        try:
            with writer:
                n_source, first = 0, None
                for frames, pts in reader.chunks(frames_per_chunk):
                    runtime.check_interrupt()
                    if first is None:
                        first = pts[0]
                    k = min(int(frames.shape[0]), total - state["done"])
                    n_source += int(frames.shape[0])
                    src = torch.arange(state["done"], state["done"] + k, dtype=torch.int64)
                    emit(frames[:k], src, [p - first for p in pts[:k]], total)
                    if state["done"] >= total:
                        break
                if n_source == 0:
                    raise InputError(f"{reader.path} has 0 frames", input_name="video",
                                     fix="check the upstream node (a filter or loader that "
                                         "returned nothing)")
                source_frames = n_source if reader.complete else None
                if state["done"] < total:
                    n_out = timeline.output_length(n_source, total, length_policy)
                    log.info("%s", timeline.describe(n_source, total, length_policy))
                    if n_out > state["done"]:
                        _second_walk(reader, n_source, total, n_out, length_policy,
                                     frames_per_chunk, step, state, emit)
                elif source_frames is None or source_frames > total:
                    log.info("video truncated to %d frames to match the audio", total)
        except OSError as err:
            if _disk_full(err):
                raise _write_error(err, output) from err
            raise
    frames_out = state["done"]
    duration = float((state["last_pts"] + step) * tb) if frames_out else 0.0
    seconds = time.perf_counter() - started
    report = StreamReport(
        path=output, frames=frames_out, source_frames=source_frames, fps=fps,
        duration=duration, audio_samples=min(n_samples, int(duration * rate)),
        seconds=seconds, peak_rss=peak_rss())
    log.info("lip sync video: %d frames (%.2f s of video at %s fps) in %.1f s = %.2f frames/s, "
             "chunk %d, peak RSS %.2f GiB -> %s", frames_out, duration, fps, seconds,
             frames_out / max(seconds, 1e-9), frames_per_chunk, report.peak_rss / 2**30, output)
    return report


def _second_walk(reader: Any, n_source: int, total: int, n_out: int, policy: str, chunk: int,
                 step: int, state: dict[str, Any], emit: Callable[..., None]) -> None:
    """Output frames ``done..n_out-1`` from source frames decoded again (module notes, 2)."""
    index = timeline.source_index(n_source, total, policy)[:n_out]
    seeker = reader.seeker()
    try:
        while state["done"] < n_out:
            start = state["done"]
            src = index[start:min(start + chunk, n_out)]
            frames = seeker.get(src)
            last = state["last_pts"]
            pts = [last + step * (j + 1) for j in range(int(src.shape[0]))]
            emit(frames, src, pts, n_out)
    finally:
        seeker.close()


def _write_error(err: BaseException, output: str) -> MuseTalkError:
    folder = os.path.dirname(os.path.abspath(output))
    if _disk_full(err):
        return MuseTalkError(
            f"no space left in {folder} while writing the output video",
            input_name="video",
            fix="free disk space there, or start ComfyUI with --temp-directory on a larger disk")
    return MuseTalkError(f"cannot write the output video in {folder} ({err})",
                         input_name="video", fix="check that the folder exists and is writable")


class FileVideo:
    """A minimal file-backed VIDEO for use outside the host (the host gets its ``VideoFromFile``).

    Implements what VIDEO consumers call: ``get_stream_source``, ``get_dimensions``,
    ``get_duration``, ``get_container_format``, ``save_to`` (a copy for an MP4 target) and
    ``get_components`` (a full decode, as the host's: only for short clips).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    def get_stream_source(self) -> str:
        return self.path

    def get_dimensions(self) -> tuple[int, int]:
        with open_video(self.path) as r:
            return r.width, r.height

    def get_duration(self) -> float:
        with open_video(self.path) as r:
            if r.duration is not None:
                return float(r.duration)
            return float((r.frame_count or 0) / r.fps)

    def get_container_format(self) -> str:
        return "mp4"

    def save_to(self, path: str, format: Any = "auto", codec: Any = "auto",  # noqa: A002
                metadata: dict | None = None) -> None:
        import shutil

        shutil.copyfile(self.path, path)

    def get_components(self) -> Any:
        """``(images float [T,H,W,3], audio dict | None, fps)`` as a simple namespace."""
        from types import SimpleNamespace

        with open_video(self.path) as r:
            frames = torch.cat([f for f, _ in r.chunks(64)]).float() / 255
            return SimpleNamespace(images=frames, audio=r.audio(), frame_rate=r.fps,
                                   metadata=None)

    def __repr__(self) -> str:
        return f"FileVideo({self.path!r})"


def lipsync_video(
    source: str | os.PathLike[str],
    speech: Mapping[str, Any],
    models: Any,
    settings: Any,
    runtime: Runtime,
    *,
    output: str | os.PathLike[str],
    pose_keypoints: list[dict] | None = None,
    capture: CaptureFn | None = None,
) -> StreamReport:
    """MuseTalk on a video file, streamed: the VIDEO node's and the benchmark's entry point.

    Args:
        source: the video file.
        speech: the driving AUDIO dict (sets the output length; muxed in as AAC).
        models: :class:`musetalk_core.pipeline.LipSyncModels` (whisper needed).
        settings: :class:`musetalk_core.pipeline.LipSyncSettings` (``chunk_size`` is the
            streaming chunk, ``length_policy`` the timeline).
        runtime: device, progress and interruption.
        output: the final MP4 (written atomically; removed again if no frame had a face).
        pose_keypoints: optional ``POSE_KEYPOINT`` list (one dict per source frame) instead of
            the detector.
        capture: test hook, see :func:`stream_video`.

    The per-chunk work is :class:`musetalk_core.pipeline.LipSyncProcessor`, the same code as
    the CLI; speech features come from :func:`musetalk_core.audio.extract_features` once for the
    whole track (compact: 38 MB of waveform and 0.8 MB of features a minute at most).
    """
    from .audio import extract_features
    from .errors import WeightsError
    from .pipeline import LipSyncProcessor

    if getattr(models, "whisper", None) is None:
        raise WeightsError("no whisper model connected", input_name="whisper",
                           fix="connect MuseTalk Whisper Loader")
    with open_video(source) as reader:
        fps, size = reader.fps, (reader.height, reader.width)
    features = extract_features(speech, models.whisper, fps, runtime)
    proc = LipSyncProcessor(models, settings, features, runtime, size,
                            pose_keypoints=pose_keypoints)
    report = stream_video(source, speech, output, proc,
                          frames_per_chunk=int(settings.chunk_size),
                          length_policy=settings.length_policy, runtime=runtime,
                          capture=capture)
    try:
        proc.check_found_faces()
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(report.path)
        raise
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in proc.stats.seconds.items())
    log.info("lip sync video: %d faces, %d crops encoded, %d silent frames kept as filmed (%s)",
             proc.stats.faces, proc.stats.encoded, proc.stats.silent, stages)
    return report
