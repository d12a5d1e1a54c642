"""Checkpoints never run code (S1-S4), and names never leave the model folders (S5)."""

from __future__ import annotations

import argparse
import json
import os
import struct
import time

import pytest
import torch

from musetalk_core.errors import WeightsError  # noqa: E402
from musetalk_core.models.unet import load_unet  # noqa: E402
from musetalk_core.models.vae import load_vae  # noqa: E402
from tests.models._tiny import save_unet, tiny_unet, write_config


class _Evil:
    """Unpickling this calls ``os.system`` to create a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _loaders():
    from musetalk_core.models.face_detector import load_face_detector
    from musetalk_core.models.face_parser import load_face_parser
    from musetalk_core.models.whisper import load_whisper

    return {
        "musetalk/pytorch_model.bin": lambda p: load_unet(p),
        "musetalkV15/unet.pth": lambda p: load_unet(p),
        "whisper/tiny.pt": lambda p: load_whisper(p),
        "face-parse-bisent/79999_iter.pth": lambda p: load_face_parser(p),
        "face_alignment/s3fd-619a316812.pth": lambda p: load_face_detector(p, p),
        "face_alignment/2DFAN4-11f355bf06.pth.tar": lambda p: load_face_detector(p, p),
        "vae/diffusion_pytorch_model.bin": lambda p: load_vae(p),
    }


@pytest.mark.parametrize("slot", list(_loaders()))
def test_code_carrying_pickle_is_refused_in_every_slot(tmp_path, slot):
    marker = tmp_path / "pwned"
    path = tmp_path / slot
    path.parent.mkdir(parents=True, exist_ok=True)
    write_config(str(path.parent))
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Evil(str(marker))}, path)
    with pytest.raises(WeightsError) as err:
        _loaders()[slot](str(path))
    assert "contains code that would run when loaded" in str(err.value)
    assert "system" in str(err.value)
    assert not marker.exists()


def test_namespace_global_is_refused(tmp_path):
    path = save_unet(tiny_unet(), str(tmp_path / "musetalkV15" / "unet.pth"))
    write_config(os.path.dirname(path))
    sd = torch.load(path, weights_only=True)
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(WeightsError) as err:
        load_unet(path)
    assert "argparse.Namespace" in str(err.value) and "safetensors" in str(err.value)


def test_torchscript_in_a_state_dict_slot_is_refused(tmp_path):
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    for rel in ("musetalkV15/unet.pth", "face_alignment/s3fd-619a316812.pth"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_config(str(path.parent))
        torch.jit.save(scripted, str(path))
        with pytest.raises(WeightsError, match="TorchScript program, not weights"):
            _loaders()[rel](str(path))


def _raw_safetensors(path, header: bytes, header_len: int | None = None, data: bytes = b""):
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header) if header_len is None else header_len))
        f.write(header)
        f.write(data)


@pytest.mark.parametrize("case", ["huge_length", "past_end", "bad_offsets", "bad_json"])
def test_malformed_safetensors_are_refused_quickly(tmp_path, case):
    path = tmp_path / "musetalkV15" / "unet.safetensors"
    path.parent.mkdir()
    write_config(str(path.parent))
    good = {"conv_in.weight": {"dtype": "F32", "shape": [1000, 1000],
                               "data_offsets": [0, 4_000_000]}}
    if case == "huge_length":
        _raw_safetensors(path, b"{}", header_len=2**62)
    elif case == "past_end":
        _raw_safetensors(path, b"{}", header_len=10_000)
    elif case == "bad_offsets":
        _raw_safetensors(path, json.dumps(good).encode(), data=b"\0" * 64)
    else:
        _raw_safetensors(path, b"{not json", data=b"\0" * 8)
    t0 = time.perf_counter()
    with pytest.raises(WeightsError, match="not a valid safetensors file"):
        load_unet(str(path))
    assert time.perf_counter() - t0 < 2


def test_resolver_refuses_traversal(pack, tmp_path, monkeypatch):
    import importlib.util
    from pathlib import Path

    monkeypatch.setenv("FAKE_COMFY_BASE", str(tmp_path))
    fake_path = Path(__file__).resolve().parents[1] / "fakes" / "folder_paths.py"
    spec = importlib.util.spec_from_file_location("_fake_fp_safety", fake_path)
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    host = pack.nodes._host
    monkeypatch.setattr(host, "folder_paths", fake)
    root = tmp_path / "models" / "musetalk"
    (root / "whisper").mkdir(parents=True)
    fake.add_model_folder_path("musetalk", str(root))
    (tmp_path / "secret.txt").write_text("x")
    for name in ["../../secret.txt", "/etc/passwd", "musetalk/../../../x", "whisper/../..",
                 "a\x00b", "..\\..\\secret.txt"]:
        with pytest.raises(pack.musetalk_core.errors.InputError, match="is not a file in"):
            host.resolve_model_path(name, "musetalk", allow_dir=True)
