"""Blend-back benchmark: BiSeNet parsing + mask + composite, ms per frame and peak memory.

A full-size BiSeNet with random weights (compute is real), smooth random frames, faces boxes of
a typical talking head (about 0.6 of the frame height), random generated crops. For each frame
size and batch size it prints:

* ``parse``: BiSeNet at 512x512 alone,
* ``blend cold``: the whole blend on a clip seen for the first time (crop, resize, parse, masks,
  blur, composite),
* ``blend cached``: the same clip with new generated faces (parse masks memoised: a new audio).

    .venv/bin/python -m benchmarks.blend [--quick] [--device cuda] [--frames 16] [--dtype fp16]

(run as a module from the repository root, so ``musetalk_core`` imports without installing)
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from musetalk_core.blend import blend_faces
from musetalk_core.models.face_parser import FaceParser
from musetalk_core.runtime import default_runtime
from musetalk_core.types import MuseTalkFaces


def make_clip(n: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, MuseTalkFaces]:
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, h // 16, w // 16, generator=g)
    frames = torch.nn.functional.interpolate(small, size=(h, w), mode="bilinear")
    frames = frames.permute(0, 2, 3, 1).contiguous()
    fh = int(h * 0.6)
    fw = int(fh * 0.8)
    x1, y1 = w // 2 - fw // 2, int(h * 0.2)
    jitter = torch.randint(-4, 5, (n, 2), generator=g)
    boxes = torch.tensor([[x1, y1, x1 + fw, min(y1 + fh, h)]] * n) + jitter.repeat(1, 2)
    crops = torch.randint(0, 256, (n, 256, 256, 3), dtype=torch.uint8, generator=g)
    faces = MuseTalkFaces(boxes=boxes, has_face=torch.ones(n, dtype=torch.bool),
                          landmarks=torch.zeros(n, 68, 2), crops=crops, source_size=(h, w),
                          version="v1.5", extra_margin=10, source_index=torch.arange(n),
                          generated=True)
    return frames, faces


def peak_mb(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB GPU"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB RSS"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny run for CI")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    sizes = [(512, 512)] if args.quick else [(512, 512), (1080, 1920)]
    batches = [2] if args.quick else [1, 8, 16]
    n = 2 if args.quick else args.frames
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}, {torch.get_num_threads()} threads), torch "
          f"{torch.__version__}, parser {args.dtype}")
    parser = FaceParser().eval().requires_grad_(False).to(device=device, dtype=dtype)
    rt = default_runtime(device)
    for h, w in sizes:
        for bs in batches:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            x = torch.rand(bs, 3, 512, 512, device=device)
            parser.parse(x, batch_size=bs)  # warm-up
            sync(device)
            t0 = time.perf_counter()
            reps = max(1, n // bs)
            for _ in range(reps):
                parser.parse(x, batch_size=bs)
            sync(device)
            parse_ms = (time.perf_counter() - t0) * 1000 / (reps * bs)
            frames, faces = make_clip(n, h, w)
            blend_faces(frames[:1], _head(faces, 1), runtime=rt, parser=parser, batch_size=bs)
            sync(device)
            t0 = time.perf_counter()
            blend_faces(frames, faces, runtime=rt, parser=parser, batch_size=bs)
            sync(device)
            cold = (time.perf_counter() - t0) * 1000 / n
            faces2 = MuseTalkFaces(**{**faces.__dict__, "crops": faces.crops.flip(1)})
            t0 = time.perf_counter()
            blend_faces(frames, faces2, runtime=rt, parser=parser, batch_size=bs)
            sync(device)
            cached = (time.perf_counter() - t0) * 1000 / n
            print(f"{w}x{h} batch {bs:2d}: parse {parse_ms:7.1f} ms/frame | blend cold "
                  f"{cold:7.1f} ms/frame | blend cached {cached:6.1f} ms/frame | peak "
                  f"{peak_mb(device)}")


def _head(faces: MuseTalkFaces, k: int) -> MuseTalkFaces:
    return MuseTalkFaces(**{**faces.__dict__, "boxes": faces.boxes[:k], "has_face":
                            faces.has_face[:k], "landmarks": faces.landmarks[:k],
                            "crops": faces.crops[:k], "source_index": faces.source_index[:k],
                            "cache": {}})


if __name__ == "__main__":
    main()
