"""End-to-end lip-sync benchmark: per-stage ms per frame and frames/s, at several batch sizes.

Full-size models with random weights, so the compute is real: the MuseTalk UNet with the real
``musetalk.json`` values (musetalk.md 2.1), sd-vae-ft-mse's AutoencoderKL config, a whisper-tiny
encoder, S3FD + 2D-FAN and BiSeNet. Frames are real (``talk_25fps_512x512.mp4`` when the shared
media is present, else smooth noise), faces come from the clip's ground-truth landmarks (random
detector weights find no faces, so the detector is timed on its own).

Stages: audio features (whisper), detection (S3FD + 2D-FAN), crop (box + Lanczos 256), encode
(VAE, masked + reference), UNet, decode (VAE), parsing (BiSeNet), blend (parse + masks +
composite, cold), and end to end through :class:`musetalk_core.pipeline.LipSyncProcessor`
twice: a new clip (everything) and the same clip with new audio (cached encodes, the avatar mode).

    .venv/bin/python -m benchmarks.pipeline [--quick] [--frames 8] [--batches 1,8,16]
        [--device cuda] [--dtype fp16]

``--quick`` uses tiny UNet/VAE/whisper, 2 frames at batch 2 (CI runs it in a test).
Run from the repository root.

The dtype defaults to the command line's ``--dtype auto`` choice (fp16 on CUDA, bf16 on a CPU
with native bf16, else fp32). Before our figures, a **reference-style baseline** runs on the
same machine with the same models: REF's per-frame pipeline shape (fp32, batch 8, contiguous
NCHW weights and inputs, both VAE encodes done for every output frame, no latent or mask cache,
face parsing for every frame); its "cached" pass reuses the encodes and masks as REF's avatar
mode does, still fp32 NCHW. The speed-up of ours (cached encodes and masks, channels_last on
CPU, bf16/fp16 where supported) over that baseline is printed for a new clip and the cached
case. The baseline's blend is our batched blend with parsing every frame (REF blends per frame
with PIL, which is slower), so the baseline is if anything flattered.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT.parent / "shared" / "media"

MUSETALK_JSON = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 384,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 8,
    "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
    "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                       "CrossAttnUpBlock2D"],
}
SD_VAE_FT_MSE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512], "norm_num_groups": 32, "sample_size": 256,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
TINY_UNET = {**MUSETALK_JSON, "attention_head_dim": 2, "block_out_channels": [32, 64],
             "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "layers_per_block": 1}
TINY_VAE = {**SD_VAE_FT_MSE, "block_out_channels": [8, 8, 16, 16], "norm_num_groups": 4,
            "layers_per_block": 1}


def build_models(quick: bool, device: torch.device, dtype: torch.dtype):
    """Random-weight models in the real architectures (tiny ones with ``quick``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from musetalk_core.models.face_detector import FaceDetector, _build_fan, _build_s3fd
    from musetalk_core.models.face_parser import FaceParser
    from musetalk_core.models.unet import MuseTalkUNet
    from musetalk_core.models.vae import DiffusersLatentVAE
    from musetalk_core.models.whisper import WhisperDims, WhisperEncoder
    from musetalk_core.pipeline import LipSyncModels

    torch.manual_seed(0)
    unet = MuseTalkUNet(UNet2DConditionModel(**(TINY_UNET if quick else MUSETALK_JSON)), "v1.5")
    vae = DiffusersLatentVAE(AutoencoderKL(**(TINY_VAE if quick else SD_VAE_FT_MSE)).eval())
    whisper = WhisperEncoder(WhisperDims(ffn=64) if quick else WhisperDims())
    detector = FaceDetector(_build_s3fd(), _build_fan(4))
    parser = FaceParser()
    mods = [unet, whisper, detector, parser]
    for m in mods:
        m.eval().to(device, dtype)
    vae_module = getattr(vae, "vae", None) or getattr(vae, "model", None)
    if isinstance(vae_module, torch.nn.Module):
        vae_module.to(device, dtype)
    return LipSyncModels(unet=unet, vae=vae, whisper=whisper, detector=detector, parser=parser)


def load_clip(n: int):
    """uint8 frames ``[n, 512, 512, 3]``, POSE_KEYPOINT list and 16 kHz speech for ``n`` frames."""
    from musetalk_core.pipeline import landmarks_to_pose

    seconds = n / 25 + 0.2
    if (MEDIA / "talk_25fps_512x512.mp4").exists():
        from musetalk_core.video_io import open_video

        with open_video(MEDIA / "talk_25fps_512x512.mp4") as r:
            frames, _ = next(r.chunks(n))
        lm = np.load(MEDIA / "talk_25fps_512x512.landmarks.npz")["landmarks"][:n, 0]
        import wave

        with wave.open(str(MEDIA / "speech_16k_mono.wav")) as w:
            pcm = np.frombuffer(w.readframes(int(16000 * seconds)), np.int16)
        wave_t = torch.from_numpy(pcm.astype(np.float32) / 32768)
    else:
        g = torch.Generator().manual_seed(0)
        frames = (torch.rand(n, 3, 32, 32, generator=g) * 255)
        frames = torch.nn.functional.interpolate(frames, size=512, mode="bilinear")
        frames = frames.permute(0, 2, 3, 1).round().to(torch.uint8)
        base = np.stack(np.meshgrid(np.linspace(150, 350, 17), [300.0]), -1).reshape(-1, 2)
        lm = np.tile(np.concatenate([base, np.full((51, 2), 260.0)])[None], (n, 1, 1))
        lm[:, 29] = (256, 250)
        wave_t = torch.randn(int(16000 * seconds), generator=g) * 0.1
    pose = landmarks_to_pose(lm, 512, 512)
    return frames, pose, {"waveform": wave_t[None, None], "sample_rate": 16000}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def peak_mb(device: torch.device) -> str:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        cuda = torch.cuda.max_memory_allocated(device) / 2**20
        return f"peak RSS {rss:.0f} MB, peak CUDA {cuda:.0f} MB"
    return f"peak RSS {rss:.0f} MB"


def row(stage: str, batch: int, frames: int, seconds: float) -> None:
    ms = 1000 * seconds / max(frames, 1)
    fps = frames / seconds if seconds > 0 else float("inf")
    print(f"{stage:<24} batch {batch:>3}  {ms:10.1f} ms/frame  {fps:8.3f} frames/s")


def set_layout(models, dtype: torch.dtype, channels_last: bool) -> None:
    """Cast the UNet and VAE weights to ``dtype`` and pick their CPU memory format."""
    models.unet.channels_last = channels_last
    models.unet.to(dtype=dtype)
    models.vae.channels_last = channels_last
    models.vae.vae.to(dtype=dtype)


def reference_style(models, frames, pose, feats, n: int, batch: int, device) -> dict:
    """REF's per-frame pipeline shape: fp32 NCHW, every frame encoded, parsed and blended anew.

    Returns seconds per frame for a new clip (crop + 2 encodes + UNet + decode + parse + blend
    for every frame, nothing cached) and for the cached case (the same source frames with the
    next audio: encodes and masks reused, REF's avatar mode; UNet + decode + blend).
    """
    from musetalk_core import blend, inpaint
    from musetalk_core.faces import crop_faces
    from musetalk_core.runtime import default_runtime

    set_layout(models, torch.float32, channels_last=False)
    for m in (models.parser,):
        m.to(dtype=torch.float32)
    rt = default_runtime(device=device, dtype=torch.float32, progress=lambda *a: None)
    per_batch = []

    def one_pass(first: int) -> None:
        for a in range(0, n, batch):
            z = min(n, a + batch)
            idx = torch.arange(a, z)
            if first == 0:  # new clip: fresh faces, so nothing is cached
                fb = crop_faces(frames[a:z].float() / 255, rt, pose_keypoints=pose[a:z],
                                version="v1.5")
                per_batch.append(fb)
            fb = per_batch[a // batch]
            gen = inpaint.inpaint(fb, feats, models.unet, models.vae, rt,
                                  source_index=torch.arange(z - a), frame_indices=idx + first,
                                  batch_size=batch)
            blend.blend_faces(frames[a:z].float() / 255, gen, runtime=rt, parser=models.parser,
                              batch_size=batch)

    _, t_new = timed(lambda: one_pass(0), device)
    row("REF-style, new clip", batch, n, t_new)
    _, t_cached = timed(lambda: one_pass(n), device)
    row("REF-style, cached", batch, n, t_cached)
    return {"new": t_new / n, "cached": t_cached / n}


def model_gflop(quick: bool) -> dict[str, float]:
    """GFLOP per frame (2 per multiply-add, convolutions and matmuls) of the VAE encoder
    (x2: masked and reference), the UNet and the VAE decoder, counted on meta tensors."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    out = {}
    with torch.device("meta"):
        vae = AutoencoderKL(**(TINY_VAE if quick else SD_VAE_FT_MSE))
        unet = UNet2DConditionModel(**(TINY_UNET if quick else MUSETALK_JSON))
        calls = {
            "encode": lambda: vae.encoder(torch.empty(2, 3, 256, 256)),
            "UNet": lambda: unet(torch.empty(1, 8, 32, 32), torch.zeros(1),
                                 encoder_hidden_states=torch.empty(1, 50, 384)),
            "decode": lambda: vae.decoder(torch.empty(1, 4, 32, 32)),
        }
        for stage, call in calls.items():
            with FlopCounterMode(display=False) as counter:
                call()
            out[stage] = counter.get_total_flops() / 1e9
    return out


def compute_floor(results: dict, batch: int, quick: bool, target_new: float,
                  target_cached: float) -> None:
    """Print the FLOPs, the throughput reached and the floor they imply on this device."""
    gflop = model_gflop(quick)
    keys = {"encode": "encode", "UNet": "unet", "decode": "decode"}
    rates = {st: gflop[st] / results[(keys[st], batch)] for st in gflop
             if results.get((keys[st], batch))}
    if len(rates) < 3:
        return
    best = max(rates.values())
    print("model maths per frame: " + ", ".join(
        f"{st} {gflop[st]:.1f} GFLOP at {rates[st]:.0f} GFLOP/s" for st in gflop))
    new = sum(gflop.values()) / best
    cached = (gflop["UNet"] + gflop["decode"]) / best
    print(f"floor at the best throughput reached here ({best:.0f} GFLOP/s), model maths only: "
          f"{new:.2f} s/frame new clip (3x target {target_new:.2f}), {cached:.2f} s/frame "
          f"cached (3x target {target_cached:.2f})")


def run(args: argparse.Namespace) -> dict:
    from musetalk_core import blend, crop, inpaint, pipeline
    from musetalk_core.audio import extract_features
    from musetalk_core.faces import crop_faces
    from musetalk_core.runtime import default_runtime

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    from musetalk_core.cli import _dtype

    dtype = _dtype(args.dtype or "auto", device)
    torch.set_grad_enabled(False)
    n = 2 if args.quick else args.frames
    batches = [2] if args.quick else [int(b) for b in args.batches.split(",")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {device} ({name}, {torch.get_num_threads()} threads), dtype {dtype}, "
          f"torch {torch.__version__}, "
          f"{'tiny' if args.quick else 'full-size'} random-weight models, {n} frames 512x512")
    models, t_load = timed(lambda: build_models(args.quick, device, torch.float32), device)
    print(f"models built in {t_load:.1f} s; {peak_mb(device)}")
    frames, pose, speech = load_clip(n)
    rt32 = default_runtime(device=device, dtype=torch.float32, progress=lambda *a: None)
    feats = extract_features(speech, models.whisper, Fraction(25), rt32)
    ref_batch = 2 if args.quick else 8
    print(f"-- reference-style baseline (fp32, NCHW, batch {ref_batch}, nothing cached)")
    baseline = reference_style(models, frames, pose, feats, n, ref_batch, device)
    print(f"-- ours ({dtype}, {'channels_last' if device.type == 'cpu' else 'NCHW'}, "
          "cached encodes and masks)")
    set_layout(models, dtype, channels_last=True)
    for m in (models.whisper, models.detector, models.parser):
        m.to(dtype=dtype)
    rt = default_runtime(device=device, dtype=dtype, progress=lambda *a: None)
    results: dict = {"baseline": baseline}

    feats, t = timed(lambda: extract_features(speech, models.whisper, Fraction(25), rt), device)
    row("audio features", 1, n, t)
    results["audio"] = t / n
    faces = crop_faces(frames.float() / 255, rt, pose_keypoints=pose, version="v1.5")

    for b in batches:
        print(f"-- batch {b}")
        k = min(b, n)
        side = 128 if args.quick else 512  # quick: detect on a small copy (CI time)
        chunk = torch.nn.functional.interpolate(
            frames[:k].permute(0, 3, 1, 2).float(), size=side, mode="area").round().to(
            torch.uint8).permute(0, 2, 3, 1).contiguous().to(device)
        boxes = [torch.tensor([[150.0, 100.0, 370.0, 400.0, 1.0]]) * side / 512] * k
        _, t = timed(lambda c=chunk, bx=boxes: (models.detector.detect(c),
                                                models.detector.landmarks(c, bx)), device)
        row("detection (S3FD+FAN)", b, k, t)
        _, t = timed(lambda k=k: crop.crop_resize(frames[:k], faces.boxes[:k],
                                                  faces.has_face[:k]), device)
        row("crop", b, k, t)
        masked, full = inpaint.crops_to_pixels(faces.crops[:k], device, dtype)
        lat, t = timed(lambda m=masked, f=full: models.vae.encode(torch.cat([m, f])), device)
        row("encode (masked+ref)", b, k, t)
        results[("encode", b)] = t / k
        aud = torch.randn(k, 50, 384, device=device, dtype=dtype)
        sample = torch.cat([lat[:k], lat[k:]], 1).to(dtype)
        out, t = timed(lambda s=sample, a=aud: models.unet(s, a), device)
        row("UNet", b, k, t)
        results[("unet", b)] = t / k
        _, t = timed(lambda o=out: models.vae.decode(o), device)
        row("decode", b, k, t)
        results[("decode", b)] = t / k
        crops512 = torch.rand(k, 3, 512, 512, device=device, dtype=dtype)
        _, t = timed(lambda c=crops512, b=b: models.parser.parse(c, batch_size=b), device)
        row("parsing (BiSeNet 512)", b, k, t)
        gen = inpaint.inpaint(faces, feats, models.unet, models.vae, rt,
                              source_index=torch.arange(k), batch_size=b)
        fr = frames[:k].float() / 255
        blend_rt = default_runtime(device=device, dtype=dtype, progress=lambda *a: None)
        def blend_once(g=gen, f=fr, r=blend_rt, b=b):
            return blend.blend_faces(f, g, runtime=r, parser=models.parser, batch_size=b)

        _, t = timed(blend_once, device)
        row("blend (parse, cold)", b, k, t)
        _, t = timed(blend_once, device)
        row("blend (cached masks)", b, k, t)

        settings = pipeline.LipSyncSettings(batch_size=b, chunk_size=max(b, 8))
        proc = pipeline.LipSyncProcessor(models, settings, feats, rt, (512, 512),
                                         pose_keypoints=pose)

        def clip_pass(p=proc, first=0, step=settings.chunk_size):
            for a in range(0, n, step):
                z = min(n, a + step)
                p.process(frames[a:z], torch.arange(a, z), torch.arange(first + a, first + z))

        _, t = timed(clip_pass, device)
        row("end to end, new clip", b, n, t)
        results[("e2e_new", b)] = t / n
        _, t = timed(lambda: clip_pass(first=n), device)  # same frames, next audio
        row("end to end, cached", b, n, t)
        results[("e2e_cached", b)] = t / n
        print(f"   {peak_mb(device)}")
    ref_new, ref_cached = 4.4, 2.5
    best_new = min(v for k, v in results.items() if isinstance(k, tuple) and k[0] == "e2e_new")
    best_cached = min(v for k, v in results.items()
                      if isinstance(k, tuple) and k[0] == "e2e_cached")
    print(f"target (REF on 2 cores, fp32, batch 8): {ref_new} s/frame new clip, {ref_cached} "
          f"s/frame cached; ours best: {best_new:.2f} s/frame new ({ref_new / best_new:.1f}x), "
          f"{best_cached:.2f} s/frame cached ({ref_cached / best_cached:.1f}x)")
    for case, key in (("new clip", "e2e_new"), ("cached", "e2e_cached")):
        base = baseline["new" if key == "e2e_new" else "cached"]
        ours = results.get((key, ref_batch), min(v for k, v in results.items()
                                                 if isinstance(k, tuple) and k[0] == key))
        print(f"speed-up on this machine, {case}: REF-style {base:.2f} s/frame -> ours "
              f"{ours:.2f} s/frame = {base / ours:.1f}x (target 3x)")
    floor_batch = ref_batch if ("decode", ref_batch) in results else batches[0]
    compute_floor(results, floor_batch, args.quick, baseline["new"] / 3, baseline["cached"] / 3)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny models, 2 frames (CI)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--batches", default="1,8,16")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None)
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
