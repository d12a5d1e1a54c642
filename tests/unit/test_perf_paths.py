"""Speed paths change layout and precision, not results: channels_last and bf16 on CPU.

* channels_last (the default on CPU for the diffusers VAE and the MuseTalk UNet) equals the
  contiguous NCHW path within 1e-5 (absolute + relative) in fp32 on the tiny models.
* the tiny pipeline runs end to end in bf16 on CPU and stays close to fp32: bf16 keeps 8
  mantissa bits (relative step 2**-8, about 0.4 %), so after the UNet and the VAE decoder the
  uint8 crops differ by a few levels; we allow a mean of 4 and a 99th percentile of 24 levels
  (random tiny weights amplify rounding more than trained ones do).
* ``--dtype auto`` picks bf16 only on CPUs with native bf16 (flags or torch's probes).
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from benchmarks.pipeline import TINY_UNET, TINY_VAE, load_clip


def _tiny(seed: int = 0):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from musetalk_core.models.unet import MuseTalkUNet

    torch.manual_seed(seed)
    unet = MuseTalkUNet(UNet2DConditionModel(**TINY_UNET), "v1.5").eval()
    vae = AutoencoderKL(**TINY_VAE).eval()
    return unet, vae


def test_vae_channels_last_matches_contiguous():
    from musetalk_core.models.vae import DiffusersLatentVAE

    _, module = _tiny()
    ref = DiffusersLatentVAE(module, channels_last=False)
    g = torch.Generator().manual_seed(1)
    pixels = torch.rand(3, 3, 256, 256, generator=g)
    lat_ref = ref.encode(pixels)
    img_ref = ref.decode(lat_ref)
    assert next(module.decoder.parameters()).is_contiguous()
    fast = DiffusersLatentVAE(module)  # same weights, channels_last on CPU
    lat = fast.encode(pixels)
    img = fast.decode(lat_ref)
    conv = module.decoder.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    # 1e-5 absolute plus 1e-5 relative: only the summation order of the convolutions differs
    torch.testing.assert_close(lat, lat_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(img, img_ref, rtol=1e-5, atol=1e-5)
    assert img.dtype == torch.float32 and img.shape == (3, 3, 256, 256)


def test_unet_channels_last_matches_contiguous():
    unet, _ = _tiny()
    g = torch.Generator().manual_seed(2)
    sample = torch.randn(3, 8, 32, 32, generator=g)
    audio = torch.randn(3, 50, 384, generator=g)
    with torch.no_grad():
        unet.channels_last = False
        ref = unet(sample, audio)
        unet.channels_last = True
        out = unet(sample, audio)
    assert unet.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert out.shape == (3, 4, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def _run_chain(dtype: torch.dtype):
    from musetalk_core.audio import extract_features
    from musetalk_core.models.vae import DiffusersLatentVAE
    from musetalk_core.models.whisper import WhisperDims, WhisperEncoder
    from musetalk_core.pipeline import LipSyncModels, LipSyncProcessor, LipSyncSettings
    from musetalk_core.runtime import default_runtime

    unet, module = _tiny()
    torch.manual_seed(3)
    whisper = WhisperEncoder(WhisperDims(ffn=64)).eval()
    for m in (unet, module, whisper):
        m.to(dtype)
    models = LipSyncModels(unet=unet, vae=DiffusersLatentVAE(module), whisper=whisper)
    frames, pose, speech = load_clip(2)
    rt = default_runtime(device=torch.device("cpu"), dtype=dtype, progress=lambda *a: None)
    feats = extract_features(speech, whisper, Fraction(25), rt)
    proc = LipSyncProcessor(models, LipSyncSettings(batch_size=2, chunk_size=2), feats, rt,
                            (512, 512), pose_keypoints=pose)
    faces, local, _ = proc.faces_for(frames, torch.arange(2))
    from musetalk_core import inpaint

    gen = inpaint.inpaint(faces, feats, unet, models.vae, rt, source_index=local,
                          frame_indices=torch.arange(2), batch_size=2)
    images, mask = proc.process(frames, torch.arange(2), torch.arange(2))
    return feats, gen.crops, images, mask


def test_tiny_pipeline_runs_in_bf16_close_to_fp32():
    feats32, crops32, img32, mask32 = _run_chain(torch.float32)
    feats16, crops16, img16, mask16 = _run_chain(torch.bfloat16)
    assert feats16.features.dtype == torch.float32  # whisper features are stored fp32
    assert img16.dtype == torch.float32 and mask16.dtype == torch.float32
    assert crops16.dtype == torch.uint8 and crops16.shape == crops32.shape
    assert torch.isfinite(img16).all()
    rel = (feats16.features - feats32.features).norm() / feats32.features.norm()
    assert rel < 0.05
    diff = (crops16.float() - crops32.float()).abs()
    assert diff.mean() <= 4.0 and torch.quantile(diff.flatten()[::7], 0.99) <= 24.0
    assert torch.equal(mask16, mask32)  # the mask depends on geometry only (no parser here)
    outside = mask32 == 0
    assert torch.equal(img16[outside], img32[outside])  # untouched pixels stay exact
    inside = mask32 > 0.5
    assert (img16 - img32).abs()[inside].mean() <= 4.0 / 255


def test_auto_dtype_follows_cpu_bf16_support(monkeypatch, tmp_path):
    from musetalk_core import cli

    monkeypatch.setattr(cli, "cpu_has_native_bf16", lambda: True)
    assert cli._dtype("auto", torch.device("cpu")) == torch.bfloat16
    assert cli._dtype("auto", torch.device("cuda")) == torch.float16
    assert cli._dtype("fp32", torch.device("cpu")) == torch.float32
    monkeypatch.setattr(cli, "cpu_has_native_bf16", lambda: False)
    assert cli._dtype("auto", torch.device("cpu")) == torch.float32
    assert cli._dtype("bf16", torch.device("cpu")) == torch.bfloat16


@pytest.mark.parametrize("flags, expected", [("fpu avx512f avx512_bf16 sse", True),
                                             ("fpu amx_bf16 amx_tile", True),
                                             ("fpu avx512f avx512bw", False)])
def test_cpuinfo_fallback(monkeypatch, tmp_path, flags, expected):
    from musetalk_core import cli

    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.setattr(cli, "_cpuinfo_flags",
                        lambda path=str(info), f=cli._cpuinfo_flags: f(path))
    assert cli.cpu_has_native_bf16() is expected
    assert cli._cpuinfo_flags(str(tmp_path / "missing")) == set()
