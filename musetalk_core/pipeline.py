"""The whole job, chunk by chunk: frames + speech -> lip-synced frames (CLI and streaming node).

:class:`LipSyncProcessor` is the per-clip state machine. Give it the models, the settings and the
speech features; then hand it chunks of the output timeline (source frames with their source and
output indices, as :class:`musetalk_core.streaming.Chunk` carries them, in any order and with
repeats). For each chunk it

1. finds the face geometry of source frames it has not seen (landmarks from the detector, or
   given ones), keeping it for the whole clip (about 0.5 KiB a frame), so a ping-pong walk that
   comes back to a frame reuses its box;
2. crops the faces (:func:`musetalk_core.crop.crop_resize`);
3. encodes, runs the UNet and decodes (:func:`musetalk_core.inpaint.inpaint`), reusing the
   latents of recently seen source frames (a bounded memo: a still image is encoded once);
4. blends the faces back (:func:`musetalk_core.blend.blend_faces`).

These are the same core functions the separate nodes call; no step has a second implementation.
Memory depends on the chunk size, not on the clip's length. :func:`lipsync_file` drives it
from files (the CLI): a video through :func:`musetalk_core.streaming.stream_video`, a still
image through a plain loop over the output timeline.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from . import blend, crop, inpaint, timeline
from .errors import FaceError, InputError, WeightsError
from .runtime import Runtime
from .tracking import TrackState
from .types import CROP_SIZE, LatentVAE, MuseTalkAudio, MuseTalkFaces, version_settings

log = logging.getLogger(__name__)


@dataclass
class LipSyncModels:
    """The loaded models of one run.

    Attributes:
        unet: ``MuseTalkUNet`` (its ``.version`` sets the crop rule and blend defaults).
        vae: a ``LatentVAE`` (``DiffusersLatentVAE`` or ``HostLatentVAE``).
        whisper: ``WhisperEncoder`` (only needed to turn speech into features here).
        detector: ``FaceDetector``, or ``None`` when landmarks are given.
        parser: ``FaceParser``, or ``None`` for the feathered-ellipse blend.
    """

    unet: Any
    vae: LatentVAE
    whisper: Any = None
    detector: Any = None
    parser: Any = None

    @property
    def version(self) -> str:
        return str(getattr(self.unet, "version", "v1.5"))


@dataclass(frozen=True)
class LipSyncSettings:
    """The main knobs (defaults are REF's).

    Attributes:
        bbox_shift: v1 only: moves the mask line (pixels; REF forces 0 for v1.5).
        extra_margin: v1.5 margin below the box (``None``: the version's default, 10).
        length_policy: ``pingpong``, ``loop``, ``hold_last`` or ``trim``.
        parsing_mode: ``None`` (auto: jaw for v1.5, raw for v1; ellipse without a parser),
            ``jaw``, ``raw``, ``neck`` or ``ellipse``.
        left_cheek_width, right_cheek_width, feather: blend settings (musetalk.md 5).
        batch_size: frames per model batch (0: from free memory, halving on out-of-memory).
        chunk_size: output frames per chunk (streaming paths).
        latent_memo: source frames whose latents are kept between chunks.
        face_index: -1 automatic, else the face counted left to right (tracked across chunks).
        on_missing_face: ``passthrough``, ``hold_last`` (across chunks too) or ``error``.
        smooth_boxes: causal box smoothing 0..1 (0 = REF; continues across chunks).
        silence_gate_db: 0 (off, REF) or a dBFS level: quieter frames keep the source mouth.
    """

    bbox_shift: int = 0
    extra_margin: int | None = None
    length_policy: str = timeline.DEFAULT_POLICY
    parsing_mode: str | None = None
    left_cheek_width: int = 90
    right_cheek_width: int = 90
    feather: float = 0.05
    batch_size: int = 0
    chunk_size: int = 32
    latent_memo: int = 1024
    face_index: int = -1
    on_missing_face: str = "passthrough"
    smooth_boxes: float = 0.0
    silence_gate_db: float = 0.0


# --------------------------------------------------------------------------- memory


def available_ram() -> int | None:
    """Bytes of RAM available to new allocations (Linux ``MemAvailable``), or ``None``."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def preflight_ram(n_frames: int, height: int, width: int, *, input_name: str = "audio") -> int:
    """Refuse, before any heavy work, an IMAGE output that cannot fit in RAM (robustness L4).

    The output is float32 frames plus a float32 mask: ``16 * H * W`` bytes a frame. Over the
    available RAM: :class:`InputError`; over half of it: a warning. Returns the bytes needed.
    """
    need = int(n_frames) * int(height) * int(width) * 16
    free = available_ram()
    if free is None:
        return need
    if need > free:
        raise InputError(
            f"output would need about {need / 1e9:.1f} GB of RAM as IMAGE frames "
            f"({n_frames} frames of {width}x{height}); {free / 1e9:.1f} GB free",
            input_name=input_name,
            fix="use 'MuseTalk Lip Sync (video)', which streams, or shorten the audio")
    if need > free // 2:
        log.warning("the output frames will take about %.1f GB of the %.1f GB of free RAM; "
                    "'MuseTalk Lip Sync (video)' streams long clips instead", need / 1e9,
                    free / 1e9)
    return need


# --------------------------------------------------------------------------- landmarks


def load_landmarks(path: str | os.PathLike[str], *, face: int = 0) -> list[dict]:
    """Landmarks per source frame from a file, as a ``POSE_KEYPOINT`` list (one dict a frame).

    Accepts the shared-media ``.landmarks.npz`` (``landmarks`` ``[N, faces, 68, 2]`` or
    ``[N, 68, 2]`` in pixels, NaN where no face; slot ``face``) or a ``POSE_KEYPOINT`` ``.json``
    (as DWPose Estimator emits it). The face crop stage reads it exactly as it reads DWPose's
    keypoints, so there is no second landmark path.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path} does not exist", input_name="--landmarks",
                         fix="check the file name")
    if path.endswith(".json"):
        import json

        try:
            with open(path, encoding="utf-8") as fh:
                pose = json.load(fh)
        except (OSError, ValueError) as err:
            raise InputError(f"{path} is not a POSE_KEYPOINT JSON file ({err})",
                             input_name="--landmarks", fix="pass DWPose's keypoints") from err
        return pose if isinstance(pose, list) else [pose]
    try:
        data = np.load(path)
        lm = np.asarray(data["landmarks"], dtype=np.float32)
        h, w = int(data["height"]), int(data["width"])
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"{path} is not a landmarks .npz with 'landmarks', 'height' and "
                         f"'width' ({err})", input_name="--landmarks",
                         fix="pass a .landmarks.npz or a POSE_KEYPOINT .json") from err
    if lm.ndim == 4:
        lm = lm[:, face]
    if lm.ndim != 3 or lm.shape[1:] != (68, 2):
        raise InputError(f"landmarks have shape {lm.shape}, expected [N, 68, 2]",
                         input_name="--landmarks", fix="pass 68-point landmarks")
    return landmarks_to_pose(lm, h, w)


def landmarks_to_pose(lm: np.ndarray, height: int, width: int) -> list[dict]:
    """float ``[N, 68, 2]`` pixel landmarks (NaN: no face) -> ``POSE_KEYPOINT`` list."""
    out = []
    for frame in np.asarray(lm, np.float64):
        people = []
        if np.isfinite(frame).all():
            pts = np.concatenate([frame, np.ones((68, 1))], axis=1).reshape(-1).tolist()
            people.append({"face_keypoints_2d": pts})
        out.append({"people": people, "canvas_width": int(width), "canvas_height": int(height)})
    return out


# --------------------------------------------------------------------------- processor


@dataclass
class _Geometry:
    boxes: torch.Tensor
    has_face: torch.Tensor
    landmarks: torch.Tensor


@dataclass
class ProcessorStats:
    frames: int = 0
    faces: int = 0
    encoded: int = 0
    silent: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


class LatentStore:
    """The latents of up to ``capacity`` source frames, least recently used out first.

    All rows live in two ``[capacity, C, h, w]`` tensors made on the first write, with rows
    copied in and out, so a long clip makes no per-frame allocation that outlives its chunk.
    Rows never written cost no resident memory (the pages are committed on first touch). Keeping
    one small cloned tensor per frame instead pinned the heap between the chunks' large
    transient buffers: measured here, 0.55 MB of resident memory per kept frame against 32 KiB of
    latents.

    Args:
        capacity: most source frames kept (0 keeps none).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, int(capacity))
        self._slot: OrderedDict[int, int] = OrderedDict()
        self._masked: torch.Tensor | None = None
        self._full: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self._slot)

    def read(self, source: int, masked: torch.Tensor, full: torch.Tensor) -> bool:
        """Copy the latents of ``source`` into ``masked`` and ``full``; ``False`` if not kept."""
        slot = self._slot.get(source)
        if slot is None or self._masked is None or self._full is None:
            return False
        self._slot.move_to_end(source)
        masked.copy_(self._masked[slot])
        full.copy_(self._full[slot])
        return True

    def write(self, source: int, masked: torch.Tensor, full: torch.Tensor) -> None:
        """Keep a copy of one frame's latents (``[C, h, w]`` each), evicting the oldest."""
        if self.capacity <= 0:
            return
        if self._masked is None or self._full is None:
            self._masked = masked.new_empty((self.capacity, *masked.shape))
            self._full = full.new_empty((self.capacity, *full.shape))
        slot = self._slot.get(source)
        if slot is None:
            slot = len(self._slot) if len(self._slot) < self.capacity else \
                self._slot.popitem(last=False)[1]
            self._slot[source] = slot
        self._slot.move_to_end(source)
        self._masked[slot].copy_(masked)
        self._full[slot].copy_(full)


class LipSyncProcessor:
    """Per-clip state for chunked lip sync (module notes). Call :meth:`process` per chunk.

    Args:
        models: the loaded models.
        settings: the knobs.
        audio: the speech's whisper features (their ``fps`` is the video's).
        runtime: device, dtype, progress, interruption, memory.
        source_size: ``(height, width)`` of the source frames.
        pose_keypoints: optional ``POSE_KEYPOINT`` list, one dict per source frame (one for a
            still image), used instead of the detector (:func:`load_landmarks` reads files).
    """

    def __init__(self, models: LipSyncModels, settings: LipSyncSettings, audio: MuseTalkAudio,
                 runtime: Runtime, source_size: tuple[int, int],
                 pose_keypoints: list[dict] | None = None) -> None:
        if models.detector is None and pose_keypoints is None:
            raise InputError("neither a face detector nor landmarks were given",
                             input_name="detector",
                             fix="connect MuseTalk Face Detector Loader, or pass landmarks")
        self.models = models
        self.settings = settings
        self.audio = audio
        self.runtime = runtime
        self.version = models.version
        vs = version_settings(self.version)
        self.extra_margin = (vs.extra_margin if settings.extra_margin is None
                             else int(settings.extra_margin)) if self.version == "v1.5" else 0
        self.bbox_shift = int(settings.bbox_shift) if vs.bbox_shift_allowed else 0
        self.source_size = (int(source_size[0]), int(source_size[1]))
        self.pose = pose_keypoints
        self._geo: dict[int, tuple[torch.Tensor, bool, torch.Tensor]] = {}
        self.track = TrackState()
        self._latents = LatentStore(int(settings.latent_memo))
        self.stats = ProcessorStats()

    # ---------------------------------------------------------------- geometry

    def _pose_for(self, src: list[int]) -> list[dict]:
        n = len(self.pose)
        if n == 1:  # a still image's keypoints apply to every repeat
            return [self.pose[0]] * len(src)
        if max(src) >= n:
            raise InputError(f"the landmarks cover {n} frames but frame {max(src)} is needed",
                             input_name="pose_keypoints",
                             fix="give landmarks for every source frame")
        return [self.pose[i] for i in src]

    def _geometry(self, frames: torch.Tensor, src: list[int]) -> dict[int, torch.Tensor]:
        """Face geometry of the distinct source frames ``src`` (uint8 ``frames``, one each).

        New frames go through :func:`musetalk_core.faces.crop_faces` (the Face Crop node's
        function) with the clip's :class:`~musetalk_core.tracking.TrackState`, so the chosen
        face, ``hold_last`` and smoothing continue across chunks exactly as in one whole-clip
        call (new source frames arrive in order: the first walk reads the source forward).
        Their geometry is kept for the clip. Returns the crops it made, by source.
        """
        from .faces import crop_faces

        todo = [j for j, s in enumerate(src) if s not in self._geo]
        if not todo:
            return {}
        t0 = time.perf_counter()
        ids = [src[j] for j in todo]
        pose = self._pose_for(ids) if self.pose is not None else None
        try:
            found = crop_faces(frames[todo].float() / 255.0, self.runtime,
                               detector=None if pose is not None else self.models.detector,
                               pose_keypoints=pose, version=self.version,
                               bbox_shift=self.bbox_shift, extra_margin=self.extra_margin,
                               face_index=int(self.settings.face_index),
                               on_missing_face=self.settings.on_missing_face,
                               smooth=float(self.settings.smooth_boxes), state=self.track)
        except FaceError as err:
            if err.input_name != "frames":
                raise
            for s in ids:  # no face anywhere in this chunk: those frames pass through
                self._geo[s] = (torch.zeros(4, dtype=torch.int64), False, torch.zeros(68, 2))
            self._tick("detection", t0)
            return {}
        made = {}
        for j, s in enumerate(ids):
            self._geo[s] = (found.boxes[j].cpu(), bool(found.has_face[j]),
                            found.landmarks[j].cpu().float())
            made[s] = found.crops[j]
        self._tick("detection + crop", t0)
        return made

    def _tick(self, stage: str, t0: float) -> None:
        self.stats.seconds[stage] = self.stats.seconds.get(stage, 0.0) + time.perf_counter() - t0

    # ---------------------------------------------------------------- chunks

    def faces_for(self, frames: torch.Tensor, source_index: torch.Tensor
                  ) -> tuple[MuseTalkFaces, torch.Tensor, list[int]]:
        """Source faces of the chunk's distinct source frames.

        Returns:
            ``(faces, local, unique)``: faces with one row per distinct source frame (in
            ``unique`` order, ``source_index`` local), the row of each chunk frame, and the
            distinct global source indices.
        """
        src = [int(s) for s in source_index.tolist()]
        unique = list(dict.fromkeys(src))
        first = {s: src.index(s) for s in unique}
        rows = [first[s] for s in unique]
        made = self._geometry(frames[rows], unique)
        local = torch.tensor([unique.index(s) for s in src], dtype=torch.int64)
        boxes = torch.stack([self._geo[s][0] for s in unique])
        has = torch.tensor([self._geo[s][1] for s in unique], dtype=torch.bool)
        lms = torch.stack([self._geo[s][2] for s in unique]).float()
        again = [j for j, s in enumerate(unique) if s not in made]
        crops = torch.zeros(len(unique), CROP_SIZE, CROP_SIZE, 3, dtype=torch.uint8)
        if again:
            t0 = time.perf_counter()
            crops[again] = crop.crop_resize(frames[[rows[j] for j in again]], boxes[again],
                                            has[again])
            self._tick("detection + crop", t0)
        for j, s in enumerate(unique):
            if s in made:
                crops[j] = made[s].cpu()
        faces = MuseTalkFaces(boxes=boxes, has_face=has, landmarks=lms, crops=crops,
                              source_size=self.source_size, version=self.version,
                              bbox_shift=self.bbox_shift, extra_margin=self.extra_margin)
        return faces, local, unique

    def _seed_latents(self, faces: MuseTalkFaces, unique: list[int]) -> None:
        memo = inpaint.latent_memo(faces, self.models.vae, self.runtime)
        for j, s in enumerate(unique):
            if bool(faces.has_face[j]) and self._latents.read(s, memo.masked[j], memo.full[j]):
                memo.done[j] = True

    def _keep_latents(self, faces: MuseTalkFaces, unique: list[int]) -> None:
        if self._latents.capacity <= 0:
            return
        memo = inpaint.latent_memo(faces, self.models.vae, self.runtime)
        for j, s in enumerate(unique):
            if bool(memo.done[j]):
                self._latents.write(s, memo.masked[j], memo.full[j])

    def process(self, frames: torch.Tensor, source_index: torch.Tensor,
                out_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lip-sync one chunk.

        Args:
            frames: uint8 ``[k, H, W, 3]`` RGB source frames, one per output frame (or float
                0..1 IMAGE frames: then pass-through pixels keep their float values exactly).
            source_index: int64 ``[k]`` global source frame of each row.
            out_index: int64 ``[k]`` output (audio) frame of each row.

        Returns:
            ``(images, mask)``: float32 ``[k, H, W, 3]`` in 0..1 and ``[k, H, W]``.
        """
        rt = self.runtime
        originals = frames
        if frames.dtype != torch.uint8:  # host IMAGE: crops from 8-bit pixels, blend on floats
            frames = (frames.float().clamp(0, 1) * 255).round().to(torch.uint8)
        faces, local, unique = self.faces_for(frames, source_index)
        self._seed_latents(faces, unique)
        t0 = time.perf_counter()
        gen = inpaint.inpaint(faces, self.audio, self.models.unet, self.models.vae, rt,
                              source_index=local, frame_indices=out_index,
                              batch_size=self.settings.batch_size,
                              silence_gate_db=self.settings.silence_gate_db)
        self._tick("inpaint", t0)
        self._keep_latents(faces, unique)
        first = [int(source_index.tolist().index(s)) for s in unique]
        src_frames = (originals[first].float() if originals.dtype != torch.uint8
                      else originals[first].float() / 255.0)
        t0 = time.perf_counter()
        images, mask = blend.blend_faces(
            src_frames, gen, runtime=rt, parser=self.models.parser,
            mode=self.settings.parsing_mode or "auto",
            left_cheek_width=self.settings.left_cheek_width,
            right_cheek_width=self.settings.right_cheek_width,
            feather=self.settings.feather,
            batch_size=max(1, self.settings.batch_size or 16))
        self._tick("blend", t0)
        self.stats.frames += int(frames.shape[0])
        self.stats.faces += int(gen.has_face.sum())
        self.stats.encoded += int(gen.info.get("encoded_frames", 0))
        self.stats.silent += len(gen.info.get("silent_frames", ()))
        return images, mask

    def __call__(self, chunk: Any) -> torch.Tensor:
        """``streaming.ProcessFn``: a ``Chunk`` -> float frames ``[k, H, W, 3]``."""
        images, _ = self.process(chunk.frames, chunk.source_index, chunk.out_index)
        return images

    def check_found_faces(self) -> None:
        """After a run: raise :class:`FaceError` if no frame had a face at all."""
        if self._geo and not any(v[1] for v in self._geo.values()):
            raise FaceError(f"no face was found in any of the {len(self._geo)} source frames",
                            input_name="images",
                            fix="use footage with a visible frontal face, or give landmarks")


# --------------------------------------------------------------------------- files (CLI)


def read_audio_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The first audio stream of any file PyAV reads -> host AUDIO dict ``[1, C, n]`` float32."""
    import av

    path = os.fspath(path)
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError) as err:
        raise InputError(f"{path} is not a readable audio file ({err})", input_name="--audio",
                         fix="use a wav, mp3 or m4a file") from err
    with container:
        if not container.streams.audio:
            raise InputError(f"{path} has no audio stream", input_name="--audio",
                             fix="use a file with speech in it")
        stream = container.streams.audio[0]
        rate = int(stream.rate or stream.codec_context.sample_rate)
        chunks = []
        for frame in container.decode(stream):
            arr = frame.to_ndarray()
            if arr.dtype.kind == "i":
                arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max + 1)
            arr = arr.astype(np.float32)
            channels = len(frame.layout.channels)
            if frame.format.is_planar:
                arr = arr.reshape(channels, -1)
            else:
                arr = arr.reshape(-1, channels).T
            chunks.append(arr)
    if not chunks:
        raise InputError(f"{path} holds no audio samples", input_name="--audio",
                         fix="use a file with speech in it")
    wave = torch.from_numpy(np.concatenate(chunks, axis=1))
    return {"waveform": wave[None], "sample_rate": rate}


def lipsync_file(
    models: LipSyncModels,
    settings: LipSyncSettings,
    runtime: Runtime,
    *,
    audio: str,
    output: str,
    video: str | None = None,
    image: str | None = None,
    fps: float = 25.0,
    landmarks: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Lip-sync a video or image file with a speech file into an mp4 (speech muxed in)."""
    from . import streaming
    from .audio import extract_features
    from .video_io import VideoWriter, read_image

    started = time.perf_counter()
    speech = read_audio_file(audio)
    lm = load_landmarks(landmarks) if landmarks else None
    if models.whisper is None:
        raise WeightsError("no whisper model loaded", input_name="whisper",
                           fix="load whisper-tiny")
    if video is not None:
        report = streaming.lipsync_video(video, speech, models, settings, runtime,
                                         output=output, pose_keypoints=lm)
        frames_out, out_fps = report.frames, report.fps
        stats = None
    else:
        still = read_image(image)
        rate = Fraction(fps).limit_denominator(1001)
        feats = extract_features(speech, models.whisper, rate, runtime)
        h, w = int(still.shape[1]), int(still.shape[2])
        proc = LipSyncProcessor(models, settings, feats, runtime, (h, w), pose_keypoints=lm)
        n_out = timeline.output_length(1, feats.frame_count, settings.length_policy)
        wave = speech["waveform"][..., :timeline.samples_for(n_out, rate, speech["sample_rate"])]
        with VideoWriter(output, rate, w, h, audio={"waveform": wave,
                                                    "sample_rate": speech["sample_rate"]}) as wr:
            for a in range(0, n_out, settings.chunk_size):
                b = min(n_out, a + settings.chunk_size)
                k = b - a
                images, _ = proc.process(still.expand(k, -1, -1, -1),
                                         torch.zeros(k, dtype=torch.int64),
                                         torch.arange(a, b, dtype=torch.int64))
                wr.write((images.clamp(0, 1) * 255).round().to(torch.uint8))
                runtime.step(b, n_out, "lip sync")
            proc.check_found_faces()  # inside the writer: no face -> no file
        frames_out, out_fps = n_out, rate
        stats = proc.stats
    seconds = time.perf_counter() - started
    summary = {"frames": frames_out, "fps": out_fps, "seconds": seconds,
               "frames_per_second": frames_out / max(seconds, 1e-9), "output": output}
    extra = ""
    if stats is not None:
        extra = ", ".join(f"{k} {v:.1f} s" for k, v in stats.seconds.items())
        extra = f", {stats.faces} faces, {stats.encoded} encoded ({extra})"
    log.info("MuseTalk: %d frames at %s fps in %.1f s (%.2f frames/s)%s -> %s", frames_out,
             out_fps, seconds, summary["frames_per_second"], extra, output)
    return summary


# --------------------------------------------------------------------------- models (CLI)


def _ensure(key: str, roots: dict[str, list[str]], download: bool, progress: Any) -> str:
    from .weights import download as dl
    from .weights import registry

    wf = registry.BY_KEY[key]
    folders = roots[wf.folder]
    for root in folders:
        if os.path.isfile(wf.target(root)):
            return wf.target(root)
    if not download:
        raise WeightsError(f"{wf.rel} is missing in {os.path.join(folders[0], wf.subdir)}",
                           input_name="--models-dir",
                           fix=f"run without --no-download, or download {wf.source} by hand "
                               f"into {os.path.join(folders[0], wf.subdir)}")
    log.info("downloading %s from %s", wf.rel, wf.source)
    return dl.ensure(wf, folders, progress=progress)


def load_models_from_dir(models_dir: str, *, version: str, device: torch.device,
                         dtype: torch.dtype, need_detector: bool = True, need_parser: bool = True,
                         download: bool = True, progress: Any = None,
                         detect_max_side: int = 1920) -> LipSyncModels:
    """Load (downloading what is missing) every model from a ``ComfyUI/models``-like folder."""
    from .models.unet import load_unet
    from .models.vae import load_vae
    from .models.whisper import load_whisper

    roots = {"musetalk": [os.path.join(models_dir, "musetalk")],
             "vae": [os.path.join(models_dir, "vae")]}
    v15 = version == "v1.5"
    unet_path = _ensure("unet_v15" if v15 else "unet_v1", roots, download, progress)
    _ensure("unet_v15_config" if v15 else "unet_v1_config", roots, download, progress)
    vae_file = _ensure("vae", roots, download, progress)
    _ensure("vae_config", roots, download, progress)
    whisper_dir = os.path.join(roots["musetalk"][0], "whisper")
    if os.path.isfile(os.path.join(whisper_dir, "tiny.pt")) or not os.path.isfile(
            os.path.join(whisper_dir, "config.json")):
        whisper_path = _ensure("whisper_tiny_pt", roots, download, progress)
    else:
        whisper_path = whisper_dir
    unet = load_unet(unet_path, version=version, device=device, dtype=dtype)
    vae = load_vae(os.path.dirname(vae_file), device=device, dtype=dtype)
    whisper = load_whisper(whisper_path, device=device, dtype=dtype)
    detector = parser = None
    if need_detector:
        from .models.face_detector import load_face_detector

        s3fd = _ensure("s3fd", roots, download, progress)
        fan = _ensure("fan2d", roots, download, progress)
        detector = load_face_detector(s3fd, fan, device=device, dtype=dtype,
                                      detect_max_side=detect_max_side)
    if need_parser:
        from .models.face_parser import load_face_parser

        parser = load_face_parser(_ensure("face_parser", roots, download, progress),
                                  device=device, dtype=dtype)
    return LipSyncModels(unet=unet, vae=vae, whisper=whisper, detector=detector, parser=parser)
