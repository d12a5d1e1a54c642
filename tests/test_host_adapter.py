"""The adapter outside the host, and with a stand-in ``folder_paths`` like the real one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FAKES = Path(__file__).resolve().parent / "fakes"


def test_adapter_absent_outside_host(pack):
    host = pack.nodes._host
    assert host.IN_HOST is False and host.HAS_V3 is False
    assert host.model_files() == [] and host.model_folder_paths() == []
    assert host.resolve_model_path("musetalk/unet.pth") is None
    rt = host.runtime()
    assert rt.device == torch.device("cpu")
    rt.step(1, 2, "test")  # progress and interrupt checks are harmless no-ops


def test_errors_for_names_the_node(pack):
    host = pack.nodes._host
    core_errors = pack.musetalk_core.errors
    with pytest.raises(core_errors.AudioError) as info, host.errors_for("MuseTalk Audio Features"):
        raise core_errors.AudioError("audio is empty (0 samples)", input_name="audio",
                                     fix="connect speech")
    assert str(info.value) == ("[MuseTalk Audio Features] input 'audio': audio is empty "
                               "(0 samples). Fix: connect speech")


def test_errors_for_wraps_unexpected_errors(pack):
    host = pack.nodes._host
    with pytest.raises(pack.musetalk_core.errors.MuseTalkError) as info, \
            host.errors_for("MuseTalk Blend"):
        {}["missing"]
    assert str(info.value).startswith("[MuseTalk Blend] unexpected KeyError")
    assert "Fix:" in str(info.value)
    assert isinstance(info.value.__cause__, KeyError)


def test_errors_for_lets_out_of_memory_through(pack):
    host = pack.nodes._host
    with pytest.raises(torch.OutOfMemoryError), host.errors_for("MuseTalk Inpaint"):
        raise torch.OutOfMemoryError("CUDA out of memory")


REGISTER = r"""
import importlib.util, json, os, sys
import folder_paths  # the stand-in, first on the path
extra = os.environ["EXTRA_MUSETALK"]
# the host applies extra_model_paths.yaml before custom nodes load
folder_paths.add_model_folder_path("musetalk", extra)
spec = importlib.util.spec_from_file_location(
    "custom_nodes_x_musetalk_pack", {init!r}, submodule_search_locations=[{root!r}])
mod = importlib.util.module_from_spec(spec); sys.modules[spec.name] = mod
spec.loader.exec_module(mod)
host = mod.nodes._host
# importing twice (a reload) must not register the folder twice
host.register_model_folders()
out = {{
  "in_host": host.IN_HOST,
  "paths": folder_paths.get_folder_paths("musetalk"),
  "files": host.model_files(),
  "resolved": host.resolve_model_path("musetalkV15/unet.pth"),
  "resolved_extra": host.resolve_model_path("musetalk/pytorch_model.bin"),
  "whisper_dirs": host.model_dirs(marker="config.json"),
  "calls": folder_paths.add_calls,
}}
errs = []
for bad in ["../../etc/passwd", "/etc/passwd", "musetalk/../../../x", "a\x00b"]:
    try:
        host.resolve_model_path(bad)
        errs.append(None)
    except Exception as e:
        errs.append(type(e).__name__ + ": " + str(e))
out["traversal"] = errs
print(json.dumps(out))
"""


def test_model_folder_registration_keeps_yaml_paths(tmp_path):
    base = tmp_path / "ComfyUI"
    default = base / "models" / "musetalk"
    extra = tmp_path / "nas" / "musetalk"
    (default / "musetalkV15").mkdir(parents=True)
    (default / "musetalkV15" / "unet.pth").write_bytes(b"x")
    (extra / "musetalk").mkdir(parents=True)
    (extra / "musetalk" / "pytorch_model.bin").write_bytes(b"x")
    (extra / "whisper").mkdir()
    (extra / "whisper" / "config.json").write_text("{}")
    (tmp_path / "etc").mkdir()
    env = dict(os.environ, PYTHONPATH=str(FAKES), FAKE_COMFY_BASE=str(base),
               EXTRA_MUSETALK=str(extra))
    code = REGISTER.format(init=str(ROOT / "__init__.py"), root=str(ROOT))
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["in_host"] is True
    # the YAML path stays first; ours is appended once
    assert out["paths"] == [str(extra), str(default)]
    assert [c for c in out["calls"] if c[0] == "musetalk"] == [
        ["musetalk", str(extra), False], ["musetalk", str(default), False]]
    assert "musetalkV15/unet.pth" in out["files"]
    assert "musetalk/pytorch_model.bin" in out["files"]
    assert out["resolved"] == str((default / "musetalkV15" / "unet.pth").resolve())
    assert out["resolved_extra"] == str((extra / "musetalk" / "pytorch_model.bin").resolve())
    assert out["whisper_dirs"] == ["whisper"]
    assert all(e and e.startswith("InputError") and "Fix: pick a file from the list" in e
               for e in out["traversal"]), out["traversal"]
