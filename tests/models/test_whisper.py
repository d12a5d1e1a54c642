"""Whisper encoder: both real file formats, cross-checked with transformers and openai-whisper."""

from __future__ import annotations

import json
import os

import pytest
import torch

from musetalk_core.errors import InputError, WeightsError
from musetalk_core.models.whisper import WhisperEncoder, load_whisper

N_CTX = 40  # tiny context: mel input of 80 frames


def _hf_config(d_model=64, layers=2, heads=4, ffn=256, n_mels=80, n_ctx=N_CTX):
    from transformers import WhisperConfig

    return WhisperConfig(d_model=d_model, encoder_layers=layers, decoder_layers=1,
                         encoder_attention_heads=heads, decoder_attention_heads=heads,
                         encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, num_mel_bins=n_mels,
                         max_source_positions=n_ctx, max_target_positions=16, vocab_size=64,
                         pad_token_id=1, bos_token_id=2, eos_token_id=3,
                         decoder_start_token_id=2, suppress_tokens=[], begin_suppress_tokens=[])


def _hf_model(**kw):
    from transformers import WhisperModel

    torch.manual_seed(1)
    model = WhisperModel(_hf_config(**kw)).eval()
    with torch.no_grad():  # make biases and norms non-trivial
        for name, p in model.encoder.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


# The openai-whisper names of Hugging Face's encoder keys (musetalk.md 1.3).
_BLOCK = {"self_attn.q_proj": "attn.query", "self_attn.k_proj": "attn.key",
          "self_attn.v_proj": "attn.value", "self_attn.out_proj": "attn.out",
          "self_attn_layer_norm": "attn_ln", "fc1": "mlp.0", "fc2": "mlp.2",
          "final_layer_norm": "mlp_ln"}


def _to_openai(model) -> dict:
    """The same weights as an openai-whisper checkpoint dict (``tiny.pt`` layout)."""
    sd = {}
    for key, value in model.state_dict().items():
        if not key.startswith("encoder."):
            sd[key.replace("decoder.", "decoder.blocks_hf.")] = value  # decoder: ignored
            continue
        rest = key[len("encoder."):]
        if rest.startswith("layers."):
            _, n, tail = rest.split(".", 2)
            mod, kind = tail.rsplit(".", 1)
            rest = f"blocks.{n}.{_BLOCK[mod]}.{kind}"
        elif rest == "embed_positions.weight":
            rest = "positional_embedding"
        elif rest.startswith("layer_norm."):
            rest = rest.replace("layer_norm.", "ln_post.")
        sd["encoder." + rest] = value.clone()
    c = model.config
    dims = {"n_mels": c.num_mel_bins, "n_audio_ctx": c.max_source_positions,
            "n_audio_state": c.d_model, "n_audio_head": c.encoder_attention_heads,
            "n_audio_layer": c.encoder_layers, "n_vocab": c.vocab_size, "n_text_ctx": 16,
            "n_text_state": c.d_model, "n_text_head": c.decoder_attention_heads,
            "n_text_layer": c.decoder_layers}
    return {"dims": dims, "model_state_dict": sd}


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    model = _hf_model()
    root = tmp_path_factory.mktemp("whisper")
    folder = root / "whisper-tiny-hf"
    model.save_pretrained(folder)
    pt = root / "tiny.pt"
    torch.save(_to_openai(model), pt)
    mel = torch.randn(2, 80, 2 * N_CTX)
    return model, folder, pt, mel


def test_both_formats_give_identical_features(formats):
    model, folder, pt, mel = formats
    assert (folder / "model.safetensors").exists()
    a = load_whisper(str(folder), require_tiny=False)
    b = load_whisper(str(pt), require_tiny=False)
    fa, fb = a(mel), b(mel)
    assert fa.shape == (2, N_CTX, 3, 64)
    assert torch.equal(fa, fb)


def test_matches_transformers_hidden_states(formats):
    model, folder, _pt, mel = formats
    ours = load_whisper(str(folder), require_tiny=False)(mel)
    with torch.no_grad():
        out = model.encoder(mel, output_hidden_states=True)
    hs = out.hidden_states
    assert len(hs) == 3
    # REF's stack: inputs, block outputs, and the final LayerNorm applied to the last block.
    ref = list(hs[:-1]) + [out.last_hidden_state]
    for i, h in enumerate(ref):
        torch.testing.assert_close(ours[:, :, i], h, atol=2e-5, rtol=1e-4)
    assert not torch.allclose(ours[:, :, -1], ours[:, :, -2])  # the last state is post-LN


def test_matches_openai_whisper_audio_encoder(formats):
    whisper_model = pytest.importorskip("whisper.model")
    _model, _folder, pt, mel = formats
    ckpt = torch.load(pt, weights_only=True)
    d = ckpt["dims"]
    enc = whisper_model.AudioEncoder(d["n_mels"], d["n_audio_ctx"], d["n_audio_state"],
                                     d["n_audio_head"], d["n_audio_layer"])
    enc.load_state_dict({k[len("encoder."):]: v for k, v in ckpt["model_state_dict"].items()
                         if k.startswith("encoder.")})
    states = []
    hooks = [b.register_forward_hook(lambda _m, _i, o: states.append(o)) for b in enc.blocks]
    with torch.no_grad():
        final = enc(mel)
    for h in hooks:
        h.remove()
    ours = load_whisper(str(pt), require_tiny=False)(mel)
    torch.testing.assert_close(ours[:, :, 1], states[0], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(ours[:, :, 2], enc.ln_post(states[1]), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(ours[:, :, 2], final, atol=2e-5, rtol=1e-4)


def test_safetensors_preferred_and_model_prefix(formats, tmp_path, caplog):
    model, folder, _pt, mel = formats
    from safetensors.torch import save_file

    other = tmp_path / "hf"
    other.mkdir()
    (other / "config.json").write_text((folder / "config.json").read_text())
    sd = {"model." + k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(other / "model.safetensors"))
    torch.save({k: torch.zeros_like(v) for k, v in model.state_dict().items()},
               other / "pytorch_model.bin")
    with caplog.at_level("INFO"):
        enc = load_whisper(str(other), require_tiny=False)
    assert "using model.safetensors" in caplog.text
    ref = load_whisper(str(folder), require_tiny=False)
    assert torch.equal(enc(mel), ref(mel))
    # a weight file inside a folder loads with the folder's config
    enc2 = load_whisper(str(other / "pytorch_model.bin"), require_tiny=False)
    assert enc2.conv1.weight.abs().sum() == 0


def test_tiny_sized_checkpoint_loads_by_default_and_dtype(tmp_path):
    model = _hf_model(d_model=384, layers=4, heads=6, ffn=32, n_ctx=8)
    model.save_pretrained(tmp_path / "w")
    enc = load_whisper(str(tmp_path / "w"), dtype=torch.float16)
    assert enc.conv1.weight.dtype == torch.float16
    assert enc.n_states == 5 and enc.dims.heads == 6


@pytest.mark.parametrize("fmt", ["hf", "pt"])
def test_whisper_base_refused(tmp_path, fmt):
    model = _hf_model(d_model=512, layers=6, heads=8, ffn=16, n_ctx=4)
    if fmt == "hf":
        model.save_pretrained(tmp_path / "whisper-base")
        path = tmp_path / "whisper-base"
    else:
        path = tmp_path / "base.pt"
        torch.save(_to_openai(model), path)
    with pytest.raises(WeightsError) as err:
        load_whisper(str(path))
    msg = str(err.value)
    assert "whisper-base (width 512, 6 layers)" in msg and "whisper-tiny (384, 4)" in msg
    assert "Fix:" in msg


def test_folder_errors(formats, tmp_path):
    _model, folder, _pt, _mel = formats
    broken = tmp_path / "nocfg"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(WeightsError, match="has no config.json.*Fix: add config.json"):
        load_whisper(str(broken), require_tiny=False)

    mels = tmp_path / "mel128"
    mels.mkdir()
    for name in os.listdir(folder):
        (mels / name).write_bytes((folder / name).read_bytes())
    (mels / "preprocessor_config.json").write_text(json.dumps({"feature_size": 128}))
    with pytest.raises(WeightsError, match="feature_size 128"):
        load_whisper(str(mels), require_tiny=False)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_mel_bins"] = 128
    (mels / "preprocessor_config.json").unlink()
    (mels / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="128 mel bins"):
        load_whisper(str(mels), require_tiny=False)


def test_truncated_and_wrong_files(formats, tmp_path):
    _model, folder, pt, _mel = formats
    cut = tmp_path / "tiny.pt"
    data = pt.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="incomplete or corrupt"):
        load_whisper(str(cut), require_tiny=False)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text((folder / "config.json").read_text())
    st = (folder / "model.safetensors").read_bytes()
    (hf / "model.safetensors").write_bytes(st[: len(st) // 2])
    with pytest.raises(WeightsError, match="safetensors"):
        load_whisper(str(hf), require_tiny=False)
    other = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(3)}, other)
    with pytest.raises(WeightsError, match="no whisper encoder weights"):
        load_whisper(str(other), require_tiny=False)


def test_missing_key_is_reported(formats, tmp_path):
    _model, _folder, pt, _mel = formats
    ckpt = torch.load(pt, weights_only=True)
    del ckpt["model_state_dict"]["encoder.blocks.1.attn.out.bias"]
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    with pytest.raises(WeightsError, match="blocks.1.attn.out.bias"):
        load_whisper(str(bad), require_tiny=False)


def test_wrong_mel_shape_is_an_input_error():
    enc = WhisperEncoder(load_dims := __import__(
        "musetalk_core.models.whisper", fromlist=["WhisperDims"]).WhisperDims(
            n_ctx=4, width=16, heads=2, layers=1, ffn=8))
    assert enc.dims is load_dims
    with pytest.raises(InputError, match=r"expected \[batch, 80, 8\]"):
        enc(torch.zeros(1, 80, 9))
