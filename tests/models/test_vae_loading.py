"""The VAE adapters: diffusers folder and single files (diffusers and LDM keys), host VAE (M9)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from musetalk_core.errors import WeightsError
from musetalk_core.models.vae import (
    DiffusersLatentVAE,
    HostLatentVAE,
    is_ldm_vae,
    ldm_to_diffusers,
    load_vae,
)
from musetalk_core.types import LATENT_SCALE, LatentVAE

TINY_VAE = {
    "block_out_channels": [8, 16],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 32,
}


@pytest.fixture(scope="module")
def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL.from_config(TINY_VAE).eval()


@pytest.fixture(scope="module")
def pixels():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _save_folder(vae, folder: Path) -> Path:
    vae.save_pretrained(folder, safe_serialization=True)
    return folder


def test_folder_and_single_files_give_identical_outputs(tmp_path, tiny_vae, pixels):
    from safetensors.torch import save_file

    folder = _save_folder(tiny_vae, tmp_path / "sd-vae-ft-mse")
    single = tmp_path / "single" / "vae.safetensors"
    single.parent.mkdir()
    save_file({k: v.contiguous() for k, v in tiny_vae.state_dict().items()}, str(single))
    bin_file = tmp_path / "single" / "vae.bin"
    torch.save(tiny_vae.state_dict(), bin_file)
    cfg = dict(TINY_VAE)
    vaes = [load_vae(str(folder)), load_vae(str(single), config=cfg),
            load_vae(str(bin_file), config=cfg)]
    assert all(isinstance(v, LatentVAE) for v in vaes)
    lat = [v.encode(pixels) for v in vaes]
    assert lat[0].shape == (2, 4, 16, 16)  # two blocks: downsample 2 (the real one: 8)
    assert all(torch.equal(lat[0], x) for x in lat[1:])
    img = [v.decode(lat[0]) for v in vaes]
    assert img[0].shape == (2, 3, 32, 32) and img[0].min() >= 0 and img[0].max() <= 1
    assert all(torch.equal(img[0], x) for x in img[1:])


def test_scaling_and_posterior_mean(tmp_path, tiny_vae, pixels):
    vae = load_vae(str(_save_folder(tiny_vae, tmp_path / "v")))
    with torch.no_grad():
        mean = tiny_vae.encode(pixels * 2 - 1).latent_dist.mean
        ref = (tiny_vae.decode(mean).sample / 2 + 0.5).clamp(0, 1)
    lat = vae.encode(pixels)
    # equal up to float rounding: on CPU ours runs channels_last (another summation order)
    torch.testing.assert_close(lat, mean * LATENT_SCALE, rtol=1e-5, atol=1e-5)
    assert torch.equal(vae.encode(pixels), lat)  # deterministic
    assert torch.allclose(vae.decode(lat), ref, atol=1e-5)


def _comfy_converter():
    """ComfyUI's own diffusers->LDM VAE key converter: an independent cross-check."""
    if not os.environ.get("COMFYUI_PATH"):
        pytest.skip("set COMFYUI_PATH to a ComfyUI checkout for this cross-check")
    path = Path(os.environ["COMFYUI_PATH"]) / "comfy" / "diffusers_convert.py"
    if not path.exists():
        pytest.skip("ComfyUI checkout not found at COMFYUI_PATH")
    spec = importlib.util.spec_from_file_location("_comfy_diffusers_convert", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.convert_vae_state_dict


def test_ldm_single_file_matches_diffusers(tmp_path, tiny_vae, pixels):
    from safetensors.torch import save_file

    ldm = _comfy_converter()({k: v.clone() for k, v in tiny_vae.state_dict().items()})
    assert is_ldm_vae(ldm)
    back = ldm_to_diffusers(ldm)
    ref = tiny_vae.state_dict()
    assert set(back) == set(ref)
    assert all(torch.equal(back[k], ref[k]) for k in ref)
    path = tmp_path / "vae" / "vae-ft-mse-840000-ema-pruned.safetensors"
    path.parent.mkdir()
    save_file({"first_stage_model." + k: v.contiguous() for k, v in ldm.items()}, str(path))
    (path.parent / "config.json").write_text(json.dumps(TINY_VAE))
    folder = load_vae(str(_save_folder(tiny_vae, tmp_path / "folder")))
    assert torch.equal(load_vae(str(path)).encode(pixels), folder.encode(pixels))


def test_wrong_vaes_are_refused(tmp_path):
    from diffusers import AutoencoderKL

    sixteen = AutoencoderKL.from_config({**TINY_VAE, "latent_channels": 16})
    folder = _save_folder(sixteen, tmp_path / "flux")
    with pytest.raises(WeightsError, match="16 latent channels"):
        load_vae(str(folder))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="no config.json"):
        load_vae(str(tmp_path / "empty"))


class _StubHostVAE:
    """The host VAE's contract (comfyui-host.md 2.2): IMAGE in, unscaled latents out."""

    def __init__(self, vae, channels=4):
        self.vae = vae
        self.latent_channels = channels
        self.calls = []

    def encode(self, image):
        assert image.ndim == 4 and image.shape[-1] == 3 and image.dtype == torch.float32
        self.calls.append(("encode", tuple(image.shape)))
        with torch.no_grad():
            return self.vae.encode(image.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean

    def decode(self, latents):
        self.calls.append(("decode", tuple(latents.shape)))
        with torch.no_grad():
            x = self.vae.decode(latents).sample
        return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)


def test_host_vae_adapter_scales_and_transposes(tmp_path, tiny_vae, pixels):
    stub = _StubHostVAE(tiny_vae)
    host = HostLatentVAE(stub)
    core = DiffusersLatentVAE(tiny_vae)
    assert isinstance(host, LatentVAE)
    lat = host.encode(pixels)
    assert stub.calls[0] == ("encode", (2, 32, 32, 3))
    assert torch.allclose(lat, core.encode(pixels), atol=1e-6)
    img = host.decode(lat)
    assert img.shape == (2, 3, 32, 32)
    assert torch.allclose(img, core.decode(lat), atol=1e-5)


def test_host_vae_with_16_channels_is_refused(tiny_vae):
    with pytest.raises(WeightsError) as err:
        HostLatentVAE(_StubHostVAE(tiny_vae, channels=16))
    assert "16 latent channels" in str(err.value) and "sd-vae-ft-mse" in str(err.value)
    assert "input 'vae'" in str(err.value)
