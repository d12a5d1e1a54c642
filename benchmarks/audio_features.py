"""Audio-feature throughput: seconds of audio processed per second of wall time.

Full-size random whisper-tiny (80 mels, 1500 ctx, width 384, 6 heads, 4 layers); the speech is
random noise at 44.1 kHz stereo, so resampling, log-mel, encoder and window gathering are all
timed. Prints one line per device (CPU, and CUDA when present) with peak memory.

    .venv/bin/python -m benchmarks.audio_features [--seconds 120] [--quick]

(run as a module from the repository root, so ``musetalk_core`` imports without installing)
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from musetalk_core.audio import extract_features, windows
from musetalk_core.models.whisper import WhisperDims, WhisperEncoder
from musetalk_core.runtime import default_runtime


def run(device: str, seconds: float, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    enc = WhisperEncoder(WhisperDims()).to(device=device, dtype=dtype).eval()
    sr = 44100
    audio = {"waveform": 0.1 * torch.randn(1, 2, int(seconds * sr)), "sample_rate": sr}
    rt = default_runtime(device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    extract_features({"waveform": audio["waveform"][..., :sr], "sample_rate": sr}, enc, 25, rt)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    feats = extract_features(audio, enc, 25, rt)
    if device == "cuda":
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    for start in range(0, feats.frame_count, 64):
        idx = torch.arange(start, min(start + 64, feats.frame_count))
        windows(feats, idx, device=device, dtype=dtype)
    if device == "cuda":
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    peak = (f"peak CUDA {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
            if device == "cuda" else
            f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"device={device} dtype={str(dtype).split('.')[-1]} torch={torch.__version__} "
          f"audio={seconds:.0f}s@44.1kHz stereo: features {seconds / (t1 - t0):.1f} audio-s/s "
          f"({t1 - t0:.2f} s), windows for {feats.frame_count} frames {t2 - t1:.3f} s, {peak}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="audio length to process")
    parser.add_argument("--quick", action="store_true", help="10 s of audio (CI smoke run)")
    args = parser.parse_args()
    seconds = 10.0 if args.quick else args.seconds
    run("cpu", seconds, torch.float32)
    if torch.cuda.is_available():
        run("cuda", seconds, torch.float16)
        run("cuda", seconds, torch.float32)


if __name__ == "__main__":
    main()
