"""The MuseTalk UNet loads from every real file format for both versions (M2-M5, M8, M11)."""

from __future__ import annotations

import math
import os

import pytest
import torch

from musetalk_core.errors import InputError, WeightsError  # noqa: E402
from musetalk_core.models.unet import MuseTalkUNet, load_unet, positional_encoding  # noqa: E402
from musetalk_core.weights.hashing import file_sha256  # noqa: E402
from tests.models._tiny import TINY_UNET_CONFIG, save_unet, tiny_unet, write_config

FILES = {"v1": "musetalk/pytorch_model.bin", "v1.5": "musetalkV15/unet.pth"}


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 8, 16, 16, generator=g), torch.randn(2, 50, 384, generator=g)


def _release(tmp_path, unet, version="v1.5", fmt=None, **kw):
    rel = FILES[version]
    if fmt:
        rel = os.path.splitext(rel)[0] + fmt
    path = save_unet(unet, str(tmp_path / rel), **kw)
    write_config(os.path.dirname(path))
    return path


@pytest.mark.parametrize("version", ["v1", "v1.5"])
def test_every_format_gives_identical_outputs(tmp_path, unet, inputs, version):
    outs = []
    for fmt in (".bin", ".pth", ".safetensors"):
        path = _release(tmp_path / fmt[1:], unet, version, fmt=fmt)
        model = load_unet(path)
        assert isinstance(model, MuseTalkUNet) and model.version == version
        with torch.no_grad():
            outs.append(model(*inputs))
    assert outs[0].shape == (2, 4, 16, 16)
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    # the same as diffusers' own UNet called the REF way: timestep 0, PE added to the audio
    with torch.no_grad():
        ref = unet(inputs[0], torch.tensor([0]), encoder_hidden_states=inputs[1]
                   + positional_encoding()[:, :50]).sample
    # equal up to float rounding: on CPU ours runs channels_last (another summation order)
    torch.testing.assert_close(outs[0], ref, rtol=1e-5, atol=1e-5)


def test_positional_encoding_follows_the_formula():
    pe = positional_encoding()
    assert pe.shape == (1, 5000, 384) and pe.dtype == torch.float32
    for pos, k in [(0, 0), (1, 0), (49, 5), (4999, 191), (17, 100)]:
        div = math.exp(2 * k * (-math.log(10000.0) / 384))
        assert pe[0, pos, 2 * k].item() == pytest.approx(math.sin(pos * div), abs=1e-5)
        assert pe[0, pos, 2 * k + 1].item() == pytest.approx(math.cos(pos * div), abs=1e-5)


def test_pe_belongs_to_the_model_and_is_cast_with_it(tmp_path, unet):
    model = load_unet(_release(tmp_path, unet), dtype=torch.float16)
    assert model.pe.dtype == torch.float16 and model.pe.shape == (1, 5000, 384)
    assert torch.equal(model.pe, positional_encoding().half())
    assert "pe" not in model.state_dict()  # not a weight: never expected in checkpoints


@pytest.mark.parametrize("prefix", ["module.", "unet.", "model."])
def test_prefixed_keys_are_bit_equal(tmp_path, unet, inputs, prefix):
    plain = load_unet(_release(tmp_path / "a", unet))
    pre = load_unet(_release(tmp_path / "b", unet, fmt=".safetensors", prefix=prefix))
    with torch.no_grad():
        assert torch.equal(plain(*inputs), pre(*inputs))


def test_version_defaults_from_folder_and_can_be_set(tmp_path, unet):
    p1 = _release(tmp_path, unet, "v1")
    p15 = _release(tmp_path, unet, "v1.5")
    assert load_unet(p1).version == "v1"
    assert load_unet(p15, version="auto").version == "v1.5"
    assert load_unet(p1, version="v1.5").version == "v1.5"  # unknown file: the setting wins
    with pytest.raises(InputError, match="unknown version"):
        load_unet(p1, version="v2")


def test_known_release_of_the_other_version_is_refused(tmp_path, unet):
    path = _release(tmp_path, unet, "v1")  # a "v1.5 release" placed in musetalk/
    releases = {file_sha256(path): "v1.5"}
    with pytest.raises(WeightsError) as err:
        load_unet(path, version="v1", releases=releases)
    assert "is the released v1.5 UNet but version is v1" in str(err.value)
    assert "set version to v1.5" in str(err.value)
    assert load_unet(path, version="auto", releases=releases).version == "v1.5"


def test_sd15_unet_is_identified_before_building(tmp_path):
    sd_unet = tiny_unet(in_channels=4, cross_attention_dim=768)
    path = save_unet(sd_unet, str(tmp_path / "musetalkV15" / "unet.safetensors"))
    write_config(str(tmp_path / "musetalkV15"))
    with pytest.raises(WeightsError, match="Stable Diffusion 1.x UNet"):
        load_unet(path)
    ldm = save_unet(sd_unet, str(tmp_path / "sd" / "v1-5.safetensors"),
                    prefix="model.diffusion_model.")
    with pytest.raises(WeightsError) as err:
        load_unet(ldm)
    assert "Stable Diffusion 1.x" in str(err.value) and "musetalkV15/unet.pth" in str(err.value)


def test_missing_keys_are_listed_briefly(tmp_path, unet):
    path = _release(tmp_path, unet)
    sd = torch.load(path, weights_only=True)
    for k in [k for k in sd if "up_blocks" in k]:
        del sd[k]
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(WeightsError) as err:
        load_unet(path)
    msg = str(err.value)
    assert "missing keys" in msg and "and " in msg and "more" in msg
    assert "1 unexpected keys ('extra.weight')" in msg
    assert msg.count("up_blocks") <= 5


def test_missing_config_and_alternate_name(tmp_path, unet, inputs):
    path = save_unet(unet, str(tmp_path / "musetalk" / "pytorch_model.bin"))
    with pytest.raises(WeightsError) as err:
        load_unet(path)
    assert "musetalk.json not found beside musetalk/pytorch_model.bin" in str(err.value)
    assert "TMElyralab/MuseTalk" in str(err.value)
    write_config(str(tmp_path / "musetalk"), name="musetalk_musetalk.json")
    assert load_unet(path).version == "v1"


def test_config_weight_mismatch_names_key_and_shapes(tmp_path, unet):
    path = _release(tmp_path, unet)
    write_config(os.path.dirname(path), {**TINY_UNET_CONFIG, "cross_attention_dim": 256})
    with pytest.raises(WeightsError) as err:
        load_unet(path)
    msg = str(err.value)
    assert ("'down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight' is [32, 384] "
            "in the weights but [32, 256] in the config") in msg


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_and_empty_files(tmp_path, unet, suffix):
    path = _release(tmp_path, unet, fmt=suffix)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(WeightsError, match="musetalkV15/unet"):
        load_unet(path)
    open(path, "wb").close()
    with pytest.raises(WeightsError, match="empty"):
        load_unet(path)


def test_fp16_file_upcasts_to_fp32(tmp_path, unet, inputs):
    ref = load_unet(_release(tmp_path / "a", unet))
    half = load_unet(_release(tmp_path / "b", unet, dtype=torch.float16), dtype=torch.float32)
    assert half.dtype == torch.float32
    rounded = tiny_unet()
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.half().float())
    exact = load_unet(_release(tmp_path / "c", rounded))
    with torch.no_grad():
        a, b, c = ref(*inputs), half(*inputs), exact(*inputs)
    assert torch.equal(b, c)  # upcast on load, computed in fp32
    # random weights amplify the fp16 rounding; the real model is calmer (M11: within 1e-3)
    assert (a - b).abs().mean().item() < 1e-3 and (a - b).abs().max().item() < 5e-3


def test_forward_validates_shapes(tmp_path, unet):
    model = load_unet(_release(tmp_path, unet))
    with pytest.raises(InputError, match="sample"):
        model(torch.zeros(1, 4, 8, 8), torch.zeros(1, 50, 384))
    with pytest.raises(InputError, match="audio"):
        model(torch.zeros(1, 8, 8, 8), torch.zeros(1, 50, 80))
