"""Loader nodes: dropdowns on a fresh install, missing files, downloads, caching, dtype (M1, M2,
M11, M12, H5, S5), with a stand-in ``folder_paths`` on a temp models tree."""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import os
import threading
from pathlib import Path

import pytest
import torch

from tests.models._tiny import save_unet, tiny_unet, write_config

FAKE = Path(__file__).resolve().parents[1] / "fakes" / "folder_paths.py"


@pytest.fixture
def host(pack, tmp_path, monkeypatch):
    """``_host`` with a stand-in folder_paths rooted at ``tmp_path``; returns the models dir."""
    monkeypatch.setenv("FAKE_COMFY_BASE", str(tmp_path))
    spec = importlib.util.spec_from_file_location("_fake_folder_paths", FAKE)
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    h = pack.nodes._host
    monkeypatch.setattr(h, "folder_paths", fake)
    fake.add_model_folder_path("musetalk", str(tmp_path / "models" / "musetalk"))
    pack.nodes.loader_nodes._CACHE.clear()
    return tmp_path / "models" / "musetalk"


def _node(pack, node_id):
    return next(d for d in pack.nodes.loader_nodes.NODES if d.node_id == node_id)


def test_fresh_install_dropdowns_offer_registry_names(pack, host):
    for node_id, name, default in [
        ("MuseTalkModelLoader", "unet_name", "musetalkV15/unet.pth"),
        ("MuseTalkWhisperLoader", "whisper_name", "whisper"),
        ("MuseTalkFaceDetectorLoader", "detector_name", "face_alignment/s3fd-619a316812.pth"),
        ("MuseTalkFaceDetectorLoader", "landmarks_name",
         "face_alignment/2DFAN4-11f355bf06.pth.tar"),
        ("MuseTalkFaceParserLoader", "parser_name", "face-parse-bisent/79999_iter.pth"),
    ]:
        spec = next(i for i in _node(pack, node_id).inputs if i.name == name)
        assert default in spec.choices() and spec.default == default
    for d in pack.nodes.loader_nodes.NODES:
        assert all(i.tooltip for i in d.inputs)


@pytest.mark.parametrize("node_id, kwargs, text", [
    ("MuseTalkModelLoader", {"unet_name": "musetalkV15/unet.pth", "version": "auto",
                             "dtype": "auto"}, "unet.pth, musetalk.json"),
    ("MuseTalkWhisperLoader", {"whisper_name": "whisper/tiny.pt", "dtype": "auto"}, "tiny.pt"),
    ("MuseTalkFaceDetectorLoader", {"detector_name": "face_alignment/s3fd-619a316812.pth",
                                    "landmarks_name": "face_alignment/2DFAN4-11f355bf06.pth.tar"},
     "s3fd-619a316812.pth"),
    ("MuseTalkFaceParserLoader", {"parser_name": "face-parse-bisent/79999_iter.pth"},
     "79999_iter.pth"),
])
def test_missing_file_with_download_off(pack, host, node_id, kwargs, text):
    with pytest.raises(pack.musetalk_core.errors.WeightsError) as err:
        _node(pack, node_id).call(download=False, **kwargs)
    msg = str(err.value)
    assert f"no {text}" in msg and str(host) in msg and "turn 'download' on" in msg
    assert "Fix:" in msg and ("HF " in msg or "https://" in msg)


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "musetalk/../../../x",
                                  "a\x00b"])
def test_traversal_names_are_refused(pack, host, name):
    with pytest.raises(pack.musetalk_core.errors.InputError, match="is not a file in"):
        _node(pack, "MuseTalkModelLoader").call(unet_name=name, version="auto", dtype="auto",
                                                download=False)


def test_model_loader_loads_caches_and_reloads_replaced_files(pack, host):
    unet = tiny_unet()
    path = save_unet(unet, str(host / "musetalk" / "pytorch_model.bin"))
    write_config(str(host / "musetalk"))
    node = _node(pack, "MuseTalkModelLoader")
    args = {"unet_name": "musetalk/pytorch_model.bin", "version": "auto", "dtype": "auto"}
    model = node.call(download=False, **args).values[0]
    assert model.version == "v1" and model.dtype == torch.float32
    fp1 = node.fingerprint(**args, download=False)
    assert node.call(download=True, **args).values[0] is model  # same file: no reload
    os.utime(path, ns=(1, 1))  # replaced on disk (new mtime)
    assert node.fingerprint(**args, download=False) != fp1
    reloaded = node.call(download=False, **args).values[0]
    assert reloaded is not model
    assert node.call(download=False, **{**args, "version": "v1.5"}).values[0].version == "v1.5"


def test_truncated_unet_is_a_clear_error(pack, host):
    path = save_unet(tiny_unet(), str(host / "musetalkV15" / "unet.pth"))
    write_config(str(host / "musetalkV15"))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(pack.musetalk_core.errors.WeightsError, match="incomplete or corrupt"):
        _node(pack, "MuseTalkModelLoader").call(unet_name="musetalkV15/unet.pth",
                                                version="auto", dtype="auto", download=False)


def test_missing_unet_downloads_with_its_config(pack, host, tmp_path, monkeypatch):
    files = tmp_path / "served"
    save_unet(tiny_unet(), str(files / "unet.pth"))
    write_config(str(files))

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(files), **k)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    reg = pack.musetalk_core.weights.registry
    blob = (files / "unet.pth").read_bytes()
    test_files = tuple(
        reg.WeightFile(f.key, f.folder, f.rel, f"{base}/{f.filename}", None,
                       len(blob) if f.filename == "unet.pth" else None, 10**8,
                       hashlib.sha256(blob).hexdigest() if f.filename == "unet.pth" else None,
                       f.licence)
        for f in reg.FILES if f.key in ("unet_v15", "unet_v15_config"))
    monkeypatch.setattr(reg, "FILES", test_files)
    try:
        model = _node(pack, "MuseTalkModelLoader").call(
            unet_name="musetalkV15/unet.pth", version="auto", dtype="fp32",
            download=True).values[0]
    finally:
        server.shutdown()
        server.server_close()
    assert model.version == "v1.5"
    assert (host / "musetalkV15" / "unet.pth").read_bytes() == blob
    assert (host / "musetalkV15" / "musetalk.json").exists()


def test_dtype_choice_and_fallbacks(pack, monkeypatch, caplog):
    h = pack.nodes._host
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert h.choose_dtype("auto", cpu) == (torch.float32, None)
    assert h.choose_dtype("fp16", cpu) == (torch.float16, None)  # the probe decides later
    monkeypatch.setattr(h, "supports_dtype", lambda d, dev: d != torch.bfloat16)
    dtype, warning = h.choose_dtype("bf16", cuda)
    assert dtype == torch.float16 and "bf16 not supported on cuda; using fp16" in warning
    monkeypatch.setattr(h, "supports_dtype", lambda d, dev: d == torch.float32)
    assert h.choose_dtype("bf16", cuda)[0] == torch.float32


def test_fp16_unet_on_cpu_runs_or_falls_back(pack, host):
    save_unet(tiny_unet(), str(host / "musetalkV15" / "unet.pth"), dtype=torch.float16)
    write_config(str(host / "musetalkV15"))
    model = _node(pack, "MuseTalkModelLoader").call(unet_name="musetalkV15/unet.pth",
                                                    version="auto", dtype="fp16",
                                                    download=False).values[0]
    assert model.dtype in (torch.float16, torch.float32)
    auto = _node(pack, "MuseTalkModelLoader").call(unet_name="musetalkV15/unet.pth",
                                                   version="auto", dtype="auto",
                                                   download=False).values[0]
    assert auto.dtype == torch.float32  # fp16 file, CPU, auto: upcast (M11)


def test_attach_patcher_is_a_no_op_outside_the_host(pack):
    m = torch.nn.Linear(2, 2)
    assert pack.nodes._host.attach_patcher(m, torch.device("cpu"), torch.device("cpu")) is m
    assert not hasattr(m, "comfy_patcher")


def test_whisper_folder_needs_only_its_own_files(pack, host):
    """Choosing the HF whisper folder never asks for openai's tiny.pt that may sit beside it."""
    folder = host / "whisper"
    folder.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        (folder / name).write_bytes(b"{}")
    path = pack.nodes.loader_nodes.resolve("whisper", "whisper_name", False, folder_ok=True)
    assert path == str(folder.resolve())
    # with a file of the folder missing, only that file is asked for
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(pack.musetalk_core.errors.WeightsError, match="no preprocessor_config.json"):
        pack.nodes.loader_nodes.resolve("whisper", "whisper_name", False, folder_ok=True)


def test_parser_and_detector_loaders_honour_dtype(pack, host):
    """The face parser and face detector loaders take the same dtype choice as the others."""
    from tests.tiny_models import write_tiny_face_detector, write_tiny_parser

    models = host.parent
    write_tiny_parser(models)
    write_tiny_face_detector(models)
    parser_node = _node(pack, "MuseTalkFaceParserLoader")
    names = {i.name for i in parser_node.inputs}
    assert "dtype" in names
    fp32 = parser_node.call(parser_name="face-parse-bisent/79999_iter.pth", dtype="fp32",
                            download=False).values[0]
    bf16 = parser_node.call(parser_name="face-parse-bisent/79999_iter.pth", dtype="bf16",
                            download=False).values[0]
    assert next(fp32.parameters()).dtype == torch.float32
    assert next(bf16.parameters()).dtype == torch.bfloat16
    rgb = torch.rand(2, 3, 64, 64)
    agree = (fp32.parse(rgb) == bf16.parse(rgb)).float().mean()
    assert agree > 0.8, float(agree)

    det_node = _node(pack, "MuseTalkFaceDetectorLoader")
    det = det_node.call(detector_name="face_alignment/s3fd-619a316812.pth",
                        landmarks_name="face_alignment/2DFAN4-11f355bf06.pth.tar",
                        dtype="bf16", download=False).values[0]
    assert det.dtype == torch.bfloat16
    boxes = det.detect(torch.randint(0, 255, (2, 64, 64, 3), dtype=torch.uint8))
    assert len(boxes) == 2
    fast = det_node.call(detector_name="face_alignment/s3fd-619a316812.pth",
                         landmarks_name="face_alignment/2DFAN4-11f355bf06.pth.tar",
                         dtype="bf16", download=False, detect_max_side=640).values[0]
    assert fast.detect_max_side == 640 and det.detect_max_side == 1920 and fast is not det
