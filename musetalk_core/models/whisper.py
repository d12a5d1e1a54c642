"""Whisper-tiny's audio encoder, written for MuseTalk: five hidden states per 50 Hz step.

One network, two file formats (musetalk.md 1.3):

* openai-whisper ``tiny.pt``: a dict with ``dims`` and ``model_state_dict`` (keys
  ``encoder.blocks.N.attn.query`` ...; the decoder's keys are ignored);
* a Hugging Face whisper folder: ``config.json`` plus ``model.safetensors`` (preferred, as
  ``from_pretrained`` does) or ``pytorch_model.bin`` (keys ``encoder.layers.N.self_attn.q_proj``
  ...; an extra ``model.`` prefix is accepted).

:class:`WhisperEncoder` returns what REF stacks from Hugging Face's
``encoder(..., output_hidden_states=True).hidden_states`` (musetalk.md 3.2 step 4, pitfall 7):
``[input after the positional embedding, after block 1, ..., after block N-1,
final LayerNorm(after block N)]``, i.e. ``[B, 1500, 5, 384]`` for whisper-tiny.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from ..checkpoint import read_checkpoint, state_dict_of
from ..errors import InputError, WeightsError

log = logging.getLogger(__name__)

__all__ = ["WhisperDims", "WhisperEncoder", "load_whisper", "TINY_WIDTH", "TINY_LAYERS"]

TINY_WIDTH = 384
TINY_LAYERS = 4
N_MELS = 80
_FIX = "use openai/whisper-tiny (tiny.pt or the Hugging Face whisper-tiny folder)"
_KNOWN_SIZES = {(384, 4): "tiny", (512, 6): "base", (768, 12): "small", (1024, 24): "medium",
                (1280, 32): "large"}


@dataclass(frozen=True)
class WhisperDims:
    """Encoder dimensions, read from the checkpoint (openai ``dims`` or HF ``config.json``)."""

    n_mels: int = N_MELS
    n_ctx: int = 1500
    width: int = TINY_WIDTH
    heads: int = 6
    layers: int = TINY_LAYERS
    ffn: int = 4 * TINY_WIDTH

    @property
    def mel_frames(self) -> int:
        """Mel frames per encoder call (conv2 has stride 2): 3000 for whisper-tiny."""
        return 2 * self.n_ctx


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width, bias=False)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        shape = (b, t, self.heads, d // self.heads)
        q = self.query(x).view(shape).transpose(1, 2)
        k = self.key(x).view(shape).transpose(1, 2)
        v = self.value(x).view(shape).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head_dim), as whisper
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class _Block(nn.Module):
    """Pre-LayerNorm residual block: self-attention, then a GELU MLP."""

    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.attn_ln = nn.LayerNorm(dims.width)
        self.attn = _Attention(dims.width, dims.heads)
        self.mlp_ln = nn.LayerNorm(dims.width)
        self.fc1 = nn.Linear(dims.width, dims.ffn)
        self.fc2 = nn.Linear(dims.ffn, dims.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x))
        x = x + self.fc2(F.gelu(self.fc1(self.mlp_ln(x))))
        if x.dtype == torch.float16:  # as Hugging Face's encoder layer does in fp16
            bound = torch.finfo(x.dtype).max - 1000
            x = x.clamp(-bound, bound)
        return x


class WhisperEncoder(nn.Module):
    """Whisper's audio encoder returning REF's stack of hidden states.

    ``forward(mel)``: ``mel`` float ``[B, n_mels, 2 * n_ctx]`` (whisper's normalised log-mel,
    ``[B, 80, 3000]`` for tiny) -> ``[B, n_ctx, layers + 1, width]`` (``[B, 1500, 5, 384]``),
    in the module's dtype.
    """

    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.dims = dims
        self.conv1 = nn.Conv1d(dims.n_mels, dims.width, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dims.width, dims.width, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", torch.zeros(dims.n_ctx, dims.width))
        self.blocks = nn.ModuleList(_Block(dims) for _ in range(dims.layers))
        self.ln_post = nn.LayerNorm(dims.width)

    @property
    def n_states(self) -> int:
        """Hidden states per step (5 for whisper-tiny)."""
        return self.dims.layers + 1

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.ndim != 3 or mel.shape[1:] != (self.dims.n_mels, self.dims.mel_frames):
            raise InputError(
                f"whisper encoder input is {list(mel.shape)}; expected [batch, "
                f"{self.dims.n_mels}, {self.dims.mel_frames}]", input_name="mel",
                fix="pass 30 s log-mel pieces from musetalk_core.audio")
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.positional_embedding.to(x.dtype)
        states = [x]
        for i, block in enumerate(self.blocks):
            x = block(x)
            states.append(self.ln_post(x) if i == len(self.blocks) - 1 else x)
        return torch.stack(states, dim=2)


# --------------------------------------------------------------------------- key mapping

_HF_BLOCK = {
    "self_attn.q_proj": "attn.query", "self_attn.k_proj": "attn.key",
    "self_attn.v_proj": "attn.value", "self_attn.out_proj": "attn.out",
    "self_attn_layer_norm": "attn_ln", "final_layer_norm": "mlp_ln", "fc1": "fc1", "fc2": "fc2",
}
_OPENAI_BLOCK = {
    "attn.query": "attn.query", "attn.key": "attn.key", "attn.value": "attn.value",
    "attn.out": "attn.out", "attn_ln": "attn_ln", "mlp_ln": "mlp_ln", "mlp.0": "fc1",
    "mlp.2": "fc2",
}
_HF_RE = re.compile(r"^encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_OPENAI_RE = re.compile(r"^encoder\.blocks\.(\d+)\.(.+)\.(weight|bias)$")


def _map_keys(sd: dict[str, torch.Tensor], shown: str) -> dict[str, torch.Tensor]:
    """Encoder tensors renamed to :class:`WhisperEncoder`'s keys (either source format)."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        if not key.startswith("encoder."):
            continue  # decoder, projection heads: not used
        m = _HF_RE.match(key) or _OPENAI_RE.match(key)
        if m:
            table = _HF_BLOCK if m.re is _HF_RE else _OPENAI_BLOCK
            name = table.get(m.group(2))
            if name is None:
                unknown.append(key)
                continue
            out[f"blocks.{m.group(1)}.{name}.{m.group(3)}"] = value
            continue
        rest = key[len("encoder."):]
        rest = {"embed_positions.weight": "positional_embedding",
                "layer_norm.weight": "ln_post.weight", "layer_norm.bias": "ln_post.bias"}.get(
                    rest, rest)
        out[rest] = value
    if not out:
        raise WeightsError(f"{shown} holds no whisper encoder weights (no 'encoder.*' keys)",
                           fix=_FIX)
    if unknown:
        log.debug("ignoring unknown whisper keys: %s", unknown)
    return out


def _strip_model_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if any(k.startswith("model.encoder.") for k in sd):
        return {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    return sd


def _dims_from_shapes(sd: dict[str, torch.Tensor], heads: int | None, shown: str) -> WhisperDims:
    try:
        conv1 = sd["conv1.weight"]
        pos = sd["positional_embedding"]
        ffn = sd["blocks.0.fc1.weight"].shape[0]
    except KeyError as err:
        raise WeightsError(f"{shown} is not a whisper encoder (no {err.args[0]!r})",
                           fix=_FIX) from None
    layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    width = int(conv1.shape[0])
    if heads is None:
        heads = 6 if width == TINY_WIDTH else max(1, width // 64)
        log.info("%s carries no config; assuming %d attention heads", shown, heads)
    return WhisperDims(n_mels=int(conv1.shape[1]), n_ctx=int(pos.shape[0]), width=width,
                       heads=int(heads), layers=layers, ffn=int(ffn))


def _check_dims(dims: WhisperDims, shown: str, require_tiny: bool) -> None:
    if dims.n_mels != N_MELS:
        raise WeightsError(
            f"{shown} expects {dims.n_mels} mel bins (num_mel_bins); MuseTalk's whisper-tiny "
            f"uses {N_MELS}", fix=_FIX)
    if dims.width % dims.heads:
        raise WeightsError(f"{shown}: width {dims.width} is not divisible by {dims.heads} heads",
                           fix=_FIX)
    if require_tiny and (dims.width, dims.layers) != (TINY_WIDTH, TINY_LAYERS):
        size = _KNOWN_SIZES.get((dims.width, dims.layers))
        what = f"whisper-{size}" if size else "not whisper-tiny"
        raise WeightsError(
            f"{shown} is {what} (width {dims.width}, {dims.layers} layers); MuseTalk uses "
            f"whisper-tiny ({TINY_WIDTH}, {TINY_LAYERS})", fix=_FIX)


# --------------------------------------------------------------------------- loading


def _read_json(path: str, shown: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"{shown} is unreadable ({err})",
                           fix="replace it with the file from openai/whisper-tiny") from err
    if not isinstance(data, dict):
        raise WeightsError(f"{shown} is not a JSON object",
                           fix="replace it with the file from openai/whisper-tiny")
    return data


def _hf_folder(folder: str, weights: str | None = None,
               ) -> tuple[dict[str, torch.Tensor], WhisperDims]:
    name = os.path.basename(os.path.normpath(folder)) or folder
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise WeightsError(
            f"whisper folder '{name}' has no config.json",
            fix="add config.json from openai/whisper-tiny to that folder, or pick tiny.pt")
    cfg = _read_json(config_path, f"{name}/config.json")
    pre_path = os.path.join(folder, "preprocessor_config.json")
    if os.path.isfile(pre_path):
        pre = _read_json(pre_path, f"{name}/preprocessor_config.json")
        if int(pre.get("feature_size", N_MELS)) != N_MELS:
            raise WeightsError(
                f"{name}/preprocessor_config.json has feature_size {pre['feature_size']} "
                f"(mel bins); MuseTalk's whisper-tiny uses {N_MELS}", fix=_FIX)
    for candidate in ("model.safetensors", "pytorch_model.bin"):
        if weights is None and os.path.isfile(os.path.join(folder, candidate)):
            weights = candidate
    if weights is None:
        raise WeightsError(f"whisper folder '{name}' has no model.safetensors or "
                           "pytorch_model.bin", fix=f"download them: {_FIX}")
    if weights == "model.safetensors" and os.path.isfile(
            os.path.join(folder, "pytorch_model.bin")):
        log.info("%s holds model.safetensors and pytorch_model.bin; using model.safetensors "
                 "(as from_pretrained does)", name)
    shown = f"{name}/{weights}"
    raw = read_checkpoint(os.path.join(folder, weights), display_name=shown,
                          fix=f"download it again: {_FIX}")
    sd = _map_keys(_strip_model_prefix(state_dict_of(raw, shown=shown)), shown)
    try:
        dims = WhisperDims(n_mels=int(cfg["num_mel_bins"]), n_ctx=int(cfg["max_source_positions"]),
                           width=int(cfg["d_model"]), heads=int(cfg["encoder_attention_heads"]),
                           layers=int(cfg["encoder_layers"]), ffn=int(cfg["encoder_ffn_dim"]))
    except (KeyError, TypeError, ValueError) as err:
        raise WeightsError(f"{name}/config.json is not a whisper config (field {err})",
                           fix="replace it with config.json from openai/whisper-tiny") from None
    return sd, dims


def _single_file(path: str) -> tuple[dict[str, torch.Tensor], WhisperDims]:
    shown = os.path.basename(path)
    raw = read_checkpoint(path, display_name=shown, fix=f"download it again: {_FIX}")
    heads = None
    if isinstance(raw, dict) and isinstance(raw.get("dims"), dict):  # openai-whisper
        d = raw["dims"]
        heads = d.get("n_audio_head")
        if int(d.get("n_mels", N_MELS)) != N_MELS:
            raise WeightsError(f"{shown} expects {d['n_mels']} mel bins (dims.n_mels); "
                               f"MuseTalk's whisper-tiny uses {N_MELS}", fix=_FIX)
    sd = _map_keys(_strip_model_prefix(state_dict_of(raw, shown=shown)), shown)
    dims = _dims_from_shapes(sd, heads, shown)
    if isinstance(raw, dict) and isinstance(raw.get("dims"), dict):
        d = raw["dims"]
        stated = (d.get("n_audio_state"), d.get("n_audio_layer"), d.get("n_audio_ctx"))
        if stated != (dims.width, dims.layers, dims.n_ctx):
            raise WeightsError(f"{shown}: dims {stated} (width, layers, ctx) do not match its "
                               f"weights {(dims.width, dims.layers, dims.n_ctx)}",
                               fix=f"download it again: {_FIX}")
    return sd, dims


def load_whisper(
    path_or_dir: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    require_tiny: bool = True,
) -> WhisperEncoder:
    """Load whisper's encoder from openai ``tiny.pt`` or a Hugging Face whisper folder.

    Args:
        path_or_dir: an openai-whisper ``.pt`` file, a Hugging Face whisper folder, or a weight
            file inside one (its ``config.json`` is then used).
        device, dtype: where and in which dtype the encoder lives.
        require_tiny: refuse widths/depths other than whisper-tiny's (384, 4 layers); MuseTalk's
            UNet was trained on those features. Tests of tiny random models turn it off.

    Raises:
        WeightsError: missing, corrupt or unsafe files; another whisper size; 128 mel bins;
            missing or mismatched keys.
    """
    if os.path.isdir(path_or_dir):
        sd, dims = _hf_folder(path_or_dir)
        shown = os.path.basename(os.path.normpath(path_or_dir))
    else:
        folder = os.path.dirname(path_or_dir)
        is_hf_weight = os.path.basename(path_or_dir) in ("model.safetensors", "pytorch_model.bin")
        if is_hf_weight and os.path.isfile(os.path.join(folder, "config.json")):
            sd, dims = _hf_folder(folder, os.path.basename(path_or_dir))
        else:
            sd, dims = _single_file(path_or_dir)
        shown = os.path.basename(path_or_dir)
    _check_dims(dims, shown, require_tiny)
    model = WhisperEncoder(dims)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        log.debug("whisper key mismatch in %s: missing %s, unexpected %s", shown, missing,
                  unexpected)
        raise WeightsError(
            f"{shown} does not match whisper's encoder ({len(missing)} missing keys, e.g. "
            f"{missing[:5]}; {len(unexpected)} unexpected, e.g. {unexpected[:5]})", fix=_FIX)
    for key, value in expected.items():
        if sd[key].shape != value.shape:
            raise WeightsError(f"{shown}: tensor '{key}' is {list(sd[key].shape)}, expected "
                               f"{list(value.shape)}", fix=_FIX)
    model.load_state_dict({k: v.float() for k, v in sd.items()})
    model.eval().requires_grad_(False)
    log.info("loaded whisper encoder from %s (width %d, %d layers, %d heads)", shown, dims.width,
             dims.layers, dims.heads)
    return model.to(device=device, dtype=dtype)
