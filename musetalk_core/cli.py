"""The command line: lip-sync a video or a still image with a speech file to an mp4.

::

    python -m musetalk_core --video input.mp4 --audio speech.wav --output out.mp4
    musetalk --image portrait.png --audio speech.mp3 --output talking.mp4 --version v1

Models are looked up in ``--models-dir`` (default ``./models``), laid out like ``ComfyUI/models``
(``musetalk/musetalkV15/unet.pth``, ``musetalk/whisper/tiny.pt``, ``vae/sd-vae-ft-mse/...``), so
``--models-dir ComfyUI/models`` shares ComfyUI's files. Missing files are downloaded on first use
(``--no-download`` turns that off). Frames are read, processed and written in chunks, so memory
does not grow with the clip's length. Exit codes: 0 done, 1 bad input or missing model (the
message says what to fix), 130 interrupted (Ctrl-C; no output file is left).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from . import timeline
from .errors import InputError, MuseTalkError, RunInterruptedError, WeightsError
from .runtime import default_runtime

log = logging.getLogger("musetalk_core.cli")

DEFAULT_MODELS_DIR = "models"

DTYPES = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="musetalk",
        description="Lip-sync a video or a still image to speech with MuseTalk (v1 / v1.5).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", help="input video (any container PyAV reads)")
    src.add_argument("--image", help="input still image (a talking portrait)")
    p.add_argument("--audio", required=True,
                   help="speech: wav, mp3, or any file with an audio stream PyAV reads")
    p.add_argument("--output", required=True, help="output .mp4 (the speech is muxed in)")
    p.add_argument("--version", choices=["v1", "v1.5"], default="v1.5",
                   help="MuseTalk weights (default v1.5)")
    p.add_argument("--models-dir", default=DEFAULT_MODELS_DIR,
                   help="folder laid out like ComfyUI/models (default ./models); "
                        "pass ComfyUI/models to share ComfyUI's files")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1, mps (default: cuda when available, else cpu)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="auto",
                   help="compute precision (auto: fp16 on CUDA, bf16 on a CPU with native bf16 "
                        "instructions (avx512_bf16 / AMX), else fp32)")
    p.add_argument("--batch-size", type=int, default=0,
                   help="frames per model batch; 0 picks one from free memory")
    p.add_argument("--chunk-size", type=int, default=64,
                   help="source frames read and written per chunk (memory vs. speed)")
    p.add_argument("--detect-max-side", type=int, default=1920,
                   help="find faces on a copy of each frame at most this many pixels long "
                        "(1920: HD as it is, as the reference; 640: several times faster on CPU)")
    p.add_argument("--silence-gate-db", type=float, default=0.0,
                   help="0 = off (every frame lip-synced, as the reference); a level in dBFS "
                        "such as -45: frames whose speech is quieter keep the source mouth")
    p.add_argument("--fps", type=float, default=25.0,
                   help="frame rate of the output for --image (ignored for --video)")
    p.add_argument("--bbox-shift", type=int, default=0,
                   help="v1 only: move the mask line down (+) or up (-) in pixels")
    p.add_argument("--extra-margin", type=int, default=None,
                   help="v1.5: pixels added below the face box (default 10)")
    p.add_argument("--length-policy", choices=timeline.POLICIES, default=timeline.DEFAULT_POLICY,
                   help="when the speech outlasts the video (default pingpong, as the reference)")
    p.add_argument("--parsing-mode", choices=["auto", "jaw", "raw", "neck", "ellipse"],
                   default="auto",
                   help="blend mask (auto: jaw for v1.5, raw for v1; ellipse needs no parser)")
    p.add_argument("--landmarks", default=None,
                   help="take face landmarks from a .landmarks.npz (float [N,(faces,)68,2]) or a "
                        "POSE_KEYPOINT .json instead of running the face detector")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--no-download", action="store_true",
                   help="never download; fail with the file to fetch by hand instead")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


class _ProgressBar:
    """Plain-text progress on stderr: one line per stage, rewritten in place."""

    def __init__(self, stream: Any, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.stage: str | None = None
        self.last = 0.0
        self.lines = 0

    def __call__(self, done: int, total: int, stage: str) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if stage != self.stage:
            if self.stage is not None:
                self.stream.write("\n")
            self.stage = stage
        elif now - self.last < 0.2 and done < total:
            return
        self.last = now
        total = max(int(total), 1)
        width = 30
        filled = int(width * min(done, total) / total)
        self.stream.write(f"\r{stage:<18} [{'#' * filled}{'.' * (width - filled)}] "
                          f"{done}/{total}")
        self.stream.flush()
        self.lines += 1

    def end(self) -> None:
        if self.enabled and self.stage is not None:
            self.stream.write("\n")
            self.stream.flush()
            self.stage = None


def _check_paths(args: argparse.Namespace) -> None:
    src = args.video or args.image
    if not os.path.isfile(src):
        raise InputError(f"{src} does not exist", input_name="--video" if args.video else "--image",
                         fix="check the file name and folder")
    if not os.path.isfile(args.audio):
        raise InputError(f"{args.audio} does not exist", input_name="--audio",
                         fix="check the file name and folder")
    out = os.path.abspath(args.output)
    for given in (src, args.audio):
        if out == os.path.abspath(given) or (os.path.exists(out) and os.path.samefile(out, given)):
            raise InputError("--output is an input file", input_name="--output",
                             fix="choose another name")
    if os.path.exists(out) and not args.overwrite:
        raise InputError(f"{args.output} already exists", input_name="--output",
                         fix="choose another name, or pass --overwrite")
    folder = os.path.dirname(out) or "."
    if not os.path.isdir(folder):
        raise InputError(f"the folder {folder} does not exist", input_name="--output",
                         fix="create it first")
    if args.batch_size < 0:
        raise InputError(f"--batch-size {args.batch_size} is negative", input_name="--batch-size",
                         fix="use 0 (automatic) or a positive number")
    if args.chunk_size < 1:
        raise InputError(f"--chunk-size {args.chunk_size} is below 1", input_name="--chunk-size",
                         fix="use a positive number such as 64")


def _device(name: str | None) -> torch.device:
    if name:
        try:
            return torch.device(name)
        except (RuntimeError, ValueError) as err:
            raise InputError(f"unknown device {name!r}", input_name="--device",
                             fix="use cpu, cuda, cuda:0 or mps") from err
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _cpuinfo_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags Linux reports (empty elsewhere or when unreadable)."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX), so bf16 is a speed-up.

    oneDNN's own check (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) is also true on plain
    AVX512 CPUs, where bf16 is emulated and slower than fp32, so it is not enough. The order:
    oneDNN must be available; then torch's private CPU probes
    (``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported``, present since torch
    2.3); when they are missing or fail, the Linux ``/proc/cpuinfo`` flags ``avx512_bf16`` /
    ``amx_bf16``. Anything unexpected answers False (fp32: always correct, never the slow path).
    """
    try:
        if not torch.backends.mkldnn.is_available():
            return False
    except Exception:  # an odd build: be conservative
        return False
    probes = [getattr(torch.cpu, name, None)
              for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(callable(p) for p in probes):
        try:
            return any(bool(p()) for p in probes)
        except Exception:  # fall through to the kernel's flags
            pass
    return bool(_cpuinfo_flags() & {"avx512_bf16", "amx_bf16"})


def _dtype(name: str, device: torch.device) -> torch.dtype:
    """The compute dtype for ``--dtype name`` on ``device``.

    ``auto``: fp16 on CUDA (ComfyUI's default there), bf16 on a CPU with native bf16
    (:func:`cpu_has_native_bf16`; about 2x faster than fp32 for the VAE and UNet), else fp32.
    """
    dtype = DTYPES[name]
    if dtype is None:
        if device.type == "cuda":
            return torch.float16
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    return dtype


def run(args: argparse.Namespace, stderr: Any = None) -> dict[str, Any]:
    """Do the job described by parsed ``args``; returns the run's summary figures."""
    from . import pipeline

    stderr = stderr or sys.stderr
    _check_paths(args)
    device = _device(args.device)
    dtype = _dtype(args.dtype, device)
    bar = _ProgressBar(stderr, enabled=not args.quiet)
    runtime = default_runtime(device=device, dtype=dtype, progress=bar)
    try:
        models = pipeline.load_models_from_dir(
            args.models_dir, version=args.version, device=device, dtype=dtype,
            need_detector=args.landmarks is None, need_parser=args.parsing_mode != "ellipse",
            download=not args.no_download, progress=bar,
            detect_max_side=args.detect_max_side)
        settings = pipeline.LipSyncSettings(
            bbox_shift=args.bbox_shift,
            extra_margin=args.extra_margin,
            length_policy=args.length_policy,
            parsing_mode=None if args.parsing_mode == "auto" else args.parsing_mode,
            batch_size=args.batch_size,
            chunk_size=args.chunk_size,
            silence_gate_db=min(0.0, args.silence_gate_db),
        )
        return pipeline.lipsync_file(
            models, settings, runtime,
            video=args.video, image=args.image, audio=args.audio, output=args.output,
            fps=args.fps, landmarks=args.landmarks, overwrite=args.overwrite)
    finally:
        bar.end()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m musetalk_core`` and the ``musetalk`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        run(args)
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted; no output written\n")
        return 130
    except RunInterruptedError as err:
        sys.stderr.write(f"\n{err}\n")
        return 130
    except (MuseTalkError, WeightsError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    return 0
