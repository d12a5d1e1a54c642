"""Long clip: the streaming VIDEO path against the IMAGE path (peak RSS, wall time, frames/s).

Generates a clip with PyAV (a moving synthetic "face" pattern, default 3 minutes of 720p at
25 fps, with a speech-like tone track), then runs, each in its own process so peak RSS is
per path:

* ``stream``: :func:`musetalk_core.streaming.lipsync_video` (what MuseTalk Lip Sync (video)
  runs), chunked decode -> pipeline -> H.264 + AAC;
* ``image``: the IMAGE path: every frame decoded into one float32 IMAGE tensor (what
  GetVideoComponents gives), then :class:`musetalk_core.pipeline.LipSyncProcessor` over the
  whole clip in batches into one float32 output tensor (what the IMAGE nodes hold), then
  encoded. By default it runs on the first ``--image-seconds`` (30 s) only, because the full
  clip as IMAGE would need about 2 x 10.5 MiB x 4500 frames = 92 GiB; its figures are per
  frame comparable and its peak grows linearly with length (reported as such).

Models are tiny and random (the real UNet architecture at tiny width, a stand-in VAE of the core
protocol, a stand-in whisper), and the face geometry comes from synthetic keypoints, so this
measures the plumbing and memory, not model speed. ``--quick`` runs a few seconds at 128x128
for CI.

    python -m benchmarks.long_video [--quick] [--seconds 180] [--size 1280x720] [--chunk 32]

(from the repository root, so ``musetalk_core`` and the test stand-ins import).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def make_clip(path: Path, seconds: float, width: int, height: int, fps: int = 25) -> None:
    """A clip with a bright face-like ellipse that moves sideways, plus a 16 kHz tone track."""
    import av

    n = int(seconds * fps)
    yy, xx = np.mgrid[0:height, 0:width]
    rx, ry = width * 0.15, height * 0.3
    face = ((xx - width / 2) / rx) ** 2 + ((yy - height / 2) / ry) ** 2 <= 1
    base = np.zeros((height, width, 3), np.uint8)
    base[..., 2] = 60
    base[face] = (200, 160, 140)
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        v.options = {"preset": "ultrafast", "crf": "28"}
        a = c.add_stream("aac", rate=16000)
        a.layout = "mono"
        sr, done = 16000, 0
        for i in range(n):
            img = np.roll(base, int(round(width * 0.05 * np.sin(i / 20))), axis=1)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for p in v.encode(f):
                c.mux(p)
            end = (i + 1) * sr // fps
            t = np.arange(done, end) / sr
            wave = (0.2 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)))
            af = av.AudioFrame.from_ndarray(wave.astype(np.float32)[None], format="fltp",
                                            layout="mono")
            af.sample_rate, af.pts = sr, done
            for p in a.encode(af):
                c.mux(p)
            done = end
        for s in (v, a):
            for p in s.encode(None):
                c.mux(p)


def synthetic_pose(n: int, width: int, height: int, fps: int = 25) -> list[dict]:
    """68 keypoints on the generated ellipse of each frame (POSE_KEYPOINT layout)."""
    out = []
    ang = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    for i in range(n):
        cx = width / 2 + round(width * 0.05 * np.sin(i / 20))
        pts = np.stack([cx + width * 0.12 * np.cos(ang),
                        height / 2 + height * 0.25 * np.sin(ang), np.ones(68)], 1)
        out.append({"people": [{"face_keypoints_2d": pts.reshape(-1).tolist()}],
                    "canvas_width": width, "canvas_height": height})
    return out


def _models(root: Path, unet_kind: str):
    from musetalk_core.models.unet import load_unet
    from musetalk_core.pipeline import LipSyncModels
    from tests.test_video_node import StandInWhisper
    from tests.tiny_models import StandInUNet, StubVAE, write_tiny_unet

    if unet_kind == "tiny":
        unet = load_unet(str(write_tiny_unet(root)), version="v1.5")
    else:
        unet = StandInUNet()
    return LipSyncModels(unet=unet, vae=StubVAE(), whisper=StandInWhisper())


def run_path(mode: str, clip: str, seconds: float, chunk: int, work: str,
             unet_kind: str = "tiny") -> dict:
    """One path in this process; returns its figures."""
    from musetalk_core.pipeline import LipSyncProcessor, LipSyncSettings
    from musetalk_core.runtime import default_runtime
    from musetalk_core.streaming import lipsync_video, peak_rss
    from musetalk_core.video_io import VideoWriter, open_video

    rt = default_runtime()
    models = _models(Path(work), unet_kind)
    settings = LipSyncSettings(chunk_size=chunk, batch_size=8)
    with open_video(clip) as r:
        speech = r.audio()
        w, h, fps = r.width, r.height, r.fps
    n_samples = int(seconds * speech["sample_rate"])
    speech = {"waveform": speech["waveform"][..., :n_samples], "sample_rate": 16000}
    n = int(seconds * int(fps))
    pose = synthetic_pose(n, w, h)
    base = peak_rss()
    t0 = time.perf_counter()
    out = os.path.join(work, f"{mode}.mp4")
    if mode == "stream":
        rep = lipsync_video(clip, speech, models, settings, rt, output=out, pose_keypoints=pose)
        frames = rep.frames
    else:
        from musetalk_core.audio import extract_features

        with open_video(clip) as r:  # GetVideoComponents: the whole clip as float32 IMAGE
            parts = []
            for f, _ in r.chunks(64):
                parts.append(f.float() / 255)
                if sum(p.shape[0] for p in parts) >= n:
                    break
            images = torch.cat(parts)[:n]
            del parts
        feats = extract_features(speech, models.whisper, fps, rt)
        proc = LipSyncProcessor(models, settings, feats, rt, (h, w), pose_keypoints=pose)
        result = torch.empty_like(images)  # the IMAGE output held by the host
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            idx = torch.arange(a, b)
            result[a:b], _ = proc.process(images[a:b], idx, idx)
        with VideoWriter(out, fps, w, h, audio=speech) as wr:
            for a in range(0, n, 64):
                wr.write((result[a:a + 64] * 255).round().to(torch.uint8))
        frames = n
    wall = time.perf_counter() - t0
    return {"mode": mode, "frames": frames, "seconds_of_video": frames / float(fps),
            "wall_s": wall, "fps": frames / wall, "peak_rss_gib": peak_rss() / 2**30,
            "rss_before_gib": base / 2**30}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 s at 128x128 (CI)")
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--image-seconds", type=float, default=30.0,
                    help="length the IMAGE path runs on (it holds every frame twice in RAM)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--unet", choices=("tiny", "standin"), default="tiny",
                    help="tiny: the real UNet architecture at tiny width (about 0.1-0.5 s a "
                         "frame on 2 CPU cores); standin: per-sample arithmetic, to time the "
                         "plumbing (decode, crop, blend, encode) of a long clip")
    ap.add_argument("--_run", nargs=4, metavar=("MODE", "CLIP", "SECONDS", "WORK"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._run:
        mode, clip, seconds, work = args._run
        print(json.dumps(run_path(mode, clip, float(seconds), args.chunk, work, args.unet)))
        return
    if args.quick:
        args.seconds, args.size, args.image_seconds = 4.0, "128x128", 4.0
    width, height = (int(v) for v in args.size.split("x"))
    work = args.workdir or tempfile.mkdtemp(prefix="musetalk-bench-")
    clip = os.path.join(work, "clip.mp4")
    t0 = time.perf_counter()
    make_clip(Path(clip), args.seconds, width, height)
    print(f"unet: {args.unet}, chunk {args.chunk}")
    print(f"generated {args.seconds:g} s {width}x{height} clip in "
          f"{time.perf_counter() - t0:.1f} s: {clip}")
    image_seconds = min(args.image_seconds, args.seconds)
    for mode, seconds in (("stream", args.seconds), ("image", image_seconds)):
        cmd = [sys.executable, "-m", "benchmarks.long_video", "--chunk", str(args.chunk),
               "--unet", args.unet, "--_run", mode, clip, str(seconds), work]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
        if res.returncode != 0:
            print(f"{mode}: failed\n{res.stderr[-3000:]}")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{mode:6s}: {r['frames']} frames ({r['seconds_of_video']:.1f} s of video) in "
              f"{r['wall_s']:.1f} s = {r['fps']:.2f} frames/s; peak RSS {r['peak_rss_gib']:.2f} "
              f"GiB (after setup {r['rss_before_gib']:.2f} GiB)")
    if image_seconds < args.seconds:
        print(f"note: the IMAGE path ran on the first {image_seconds:g} s only; its peak grows "
              f"linearly with length (two float32 copies of every frame).")


if __name__ == "__main__":
    main()
