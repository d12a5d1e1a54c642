"""Face crop throughput: landmarks -> REF box -> 256x256 Lanczos crop, and the S3FD/2D-FAN detector.

Prints frames/s on the CPU (or --device) for 512x512 and 1920x1080 frames, using synthetic
keypoints (a face of a realistic size) so no weights are needed; the detector figure uses
full-size face-alignment networks with random weights (speed does not depend on the values).

    .venv/bin/python benchmarks/face_crop.py            # full
    .venv/bin/python benchmarks/face_crop.py --quick    # CI: few frames, no detector
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from musetalk_core.faces import crop_faces
from musetalk_core.runtime import default_runtime


def _pose(n: int, w: int, h: int) -> list[dict]:
    rng = np.random.default_rng(0)
    side = 0.6 * min(w, h)
    base = np.stack([np.linspace(0, 1, 68), np.abs(np.sin(np.linspace(0, 6, 68)))], 1)
    base[29] = (0.5, 0.35)
    base[28] = (0.5, 0.3)
    base[30] = (0.5, 0.4)
    out = []
    for _ in range(n):
        xy = base * side + (w / 2 - side / 2, h / 2 - side / 2) + rng.normal(0, 1, (68, 2))
        pts = np.concatenate([xy, np.ones((68, 1))], 1).reshape(-1).tolist()
        out.append({"people": [{"face_keypoints_2d": pts}], "canvas_width": w,
                    "canvas_height": h})
    return out


def bench_crop(n: int, w: int, h: int, device: str) -> None:
    frames = torch.rand(n, h, w, 3)
    pose = _pose(n, w, h)
    rt = default_runtime(device)
    crop_faces(frames[:2], rt, pose_keypoints=pose[:2])  # warm-up
    t = time.perf_counter()
    crop_faces(frames, rt, pose_keypoints=pose)
    dt = time.perf_counter() - t
    print(f"landmarks->box->crop {w}x{h}: {n / dt:.1f} frames/s ({n} frames, {device}, "
          f"torch {torch.__version__})")


def bench_detector(n: int, w: int, h: int, device: str) -> None:
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    from musetalk_core.models.face_detector import FaceDetector

    det = FaceDetector(s3fd().eval(), FAN(4).eval()).to(device)
    frames = torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8)
    det.detect(frames[:1])
    t = time.perf_counter()
    det.detect(frames)
    dt = time.perf_counter() - t
    print(f"S3FD detect {w}x{h}: {n / dt:.2f} frames/s (batch {n}, {device})")
    boxes = [torch.tensor([[w * 0.3, h * 0.2, w * 0.6, h * 0.7, 0.9]])] * n
    t = time.perf_counter()
    det.landmarks(frames, boxes)
    dt = time.perf_counter() - t
    print(f"2D-FAN (4 modules) landmarks: {n / dt:.2f} faces/s (batch {n}, {device})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few frames, skip the detector (CI)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--frames", type=int, default=64)
    args = ap.parse_args()
    n = 4 if args.quick else args.frames
    torch.set_grad_enabled(False)
    bench_crop(n, 512, 512, args.device)
    bench_crop(max(2, n // 4), 1920, 1080, args.device)
    if not args.quick:
        bench_detector(4, 512, 512, args.device)


if __name__ == "__main__":
    main()
