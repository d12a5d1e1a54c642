"""Web routes (robustness.md S8) through aiohttp's test client, plus the host's web helpers.

The routes run in a real aiohttp application (mirrored under ``/api`` like the host does) with a
stand-in downloader, so no network is touched. Skips where aiohttp is not installed.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402


@pytest.fixture
def routes(pack, tmp_path, monkeypatch):
    """The routes module with a ModelService over tmp folders and a gated fake downloader."""
    wr = pack.nodes.web_routes
    models = tmp_path / "models"
    roots = {"musetalk": [str(models / "musetalk"), str(tmp_path / "elsewhere")],
             "vae": [str(models / "vae")]}
    calls, events, gate = [], [], threading.Event()

    def fake_download(wf, rts, progress):
        calls.append((wf.key, list(rts)))
        progress(5, 10, "download")
        gate.wait(10)
        path = wf.target(rts[0])
        import os

        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"x" * 10)
        return path

    service = wr.ModelService(roots=lambda folder: roots.get(folder, []),
                              models_dir=lambda: str(models), download=fake_download,
                              send=lambda name, data: events.append((name, data)))
    monkeypatch.setattr(wr, "SERVICE", service)
    wr.test_state = {"models": models, "calls": calls, "events": events, "gate": gate,
                     "service": service, "root": tmp_path}
    return wr


def _app(wr) -> web.Application:
    app = web.Application()
    for method, path, handler in wr.ROUTES:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, "/api" + path, handler)
    return app


def _with_client(wr, body):
    async def main():
        async with TestClient(TestServer(_app(wr))) as client:
            return await body(client)

    return asyncio.run(main())


def test_status_lists_registry_with_relative_paths(routes, pack):
    st = routes.test_state
    unet = st["models"] / "musetalk" / "musetalkV15" / "unet.pth"
    unet.parent.mkdir(parents=True)
    unet.write_bytes(b"1234")
    # a file found only in the second (extra) folder is shown without its absolute path
    extra = st["root"] / "elsewhere" / "whisper" / "tiny.pt"
    extra.parent.mkdir(parents=True)
    extra.write_bytes(b"12")

    async def body(client):
        r = await client.get("/musetalk/models")
        r2 = await client.get("/api/musetalk/models?name=unet_v15")
        return r.status, await r.json(), r2.status, await r2.json()

    code, data, code2, one = _with_client(routes, body)
    assert code == 200 and code2 == 200
    by = {m["name"]: m for m in data["models"]}
    registry = pack.musetalk_core.weights.registry
    assert set(by) == set(registry.BY_KEY)
    assert by["unet_v15"]["present"] is True and by["unet_v15"]["size"] == 4
    assert by["unet_v15"]["path"] == "musetalk/musetalkV15/unet.pth"
    assert by["unet_v15"]["target_folder"] == "musetalk/musetalkV15"
    assert by["unet_v1"]["present"] is False and by["unet_v1"]["size"] is None
    assert by["unet_v1"]["path"] == "musetalk/musetalk/pytorch_model.bin"
    assert by["vae"]["path"] == "vae/sd-vae-ft-mse/diffusion_pytorch_model.safetensors"
    assert by["whisper_tiny_pt"]["present"] is True
    assert by["whisper_tiny_pt"]["path"] == "<musetalk path 2>/whisper/tiny.pt"
    text = json.dumps(data)
    assert str(st["root"]) not in text  # no absolute path leaks
    assert [m["name"] for m in one["models"]] == ["unet_v15"]
    assert set(data["nodes"]["MuseTalkModelLoader"]) <= set(registry.BY_KEY)


@pytest.mark.parametrize("query", ["../../etc/passwd", "/etc/passwd", "unet_v15/../x", ""])
def test_status_refuses_non_registry_names(routes, query):
    async def body(client):
        r = await client.get("/musetalk/models", params={"name": query})
        return r.status, await r.json()

    code, data = _with_client(routes, body)
    assert code == 400 and data == {"error": "unknown model"}


@pytest.mark.parametrize(("payload", "ctype", "code", "msg"), [
    ({"name": "unet_v15", "url": "http://evil/x"}, "application/json", 400, "url and path"),
    ({"name": "unet_v15", "path": "/etc/x"}, "application/json", 400, "url and path"),
    ({"url": "http://evil/x"}, "application/json", 400, "url and path"),
    ({"name": "../../etc/passwd"}, "application/json", 400, "unknown model"),
    ({"name": "nope"}, "application/json", 400, "unknown model"),
    ({"name": 3}, "application/json", 400, "unknown model"),
    ({"name": "vae", "force": True}, "application/json", 400, "unexpected field"),
    (["vae"], "application/json", 400, "send {"),
    ({"name": "vae"}, "text/plain", 415, "JSON"),
    ({"name": "vae"}, "application/x-www-form-urlencoded", 415, "JSON"),
])
def test_download_refuses_bad_requests(routes, payload, ctype, code, msg):
    async def body(client):
        r = await client.post("/musetalk/download", data=json.dumps(payload),
                              headers={"Content-Type": ctype})
        return r.status, await r.json()

    got, data = _with_client(routes, body)
    assert got == code and msg in data["error"]
    assert routes.test_state["calls"] == []


def test_download_runs_off_the_loop_and_is_deduplicated(routes):
    st = routes.test_state

    async def body(client):
        t0 = time.perf_counter()
        first = await client.post("/musetalk/download", json={"name": "face_parser"})
        # while the (blocked) download runs, the loop still answers, and repeats join it
        results = await asyncio.gather(*[
            client.post("/api/musetalk/download", json={"name": "face_parser"})
            for _ in range(50)])
        status = await (await client.get("/musetalk/models?name=face_parser")).json()
        elapsed = time.perf_counter() - t0
        st["gate"].set()
        for _ in range(200):
            if st["service"].jobs["face_parser"]["state"] != "running":
                break
            await asyncio.sleep(0.02)
        after = await (await client.post("/musetalk/download",
                                         json={"name": "face_parser"})).json()
        return (first.status, await first.json(), [r.status for r in results],
                [await r.json() for r in results], status, elapsed, after)

    code, first, codes, bodies, status, elapsed, after = _with_client(routes, body)
    assert code == 202 and first["state"] == "started"
    assert set(codes) == {202} and {b["state"] for b in bodies} == {"running"}
    assert elapsed < 5  # the gate (10 s) was never waited on by the loop
    assert len(st["calls"]) == 1
    key, roots = st["calls"][0]
    assert key == "face_parser" and roots == [str(st["models"] / "musetalk"),
                                              str(st["root"] / "elsewhere")]
    assert status["models"][0]["download"]["state"] == "running"
    assert after == {"name": "face_parser", "state": "present"}
    names = {e[0] for e in st["events"]}
    assert names == {"musetalk.download"}
    assert st["events"][-1][1]["state"] == "done"


def test_download_error_is_reported_not_raised(routes, pack):
    st = routes.test_state
    err_cls = pack.musetalk_core.errors.DownloadError

    def failing(wf, roots, progress):
        raise err_cls("cannot download x: no network", fix="put it there by hand")

    st["service"].download = failing
    out = st["service"].start("s3fd")
    assert out["state"] == "started"
    for _ in range(100):
        if st["service"].jobs["s3fd"]["state"] != "running":
            break
        time.sleep(0.02)
    job = st["service"].jobs["s3fd"]
    assert job["state"] == "error" and "no network" in job["error"]
    assert st["events"][-1][1]["state"] == "error"
    # a failed job can be retried
    st["service"].download = lambda wf, roots, progress: wf.target(roots[0])
    assert st["service"].start("s3fd")["state"] == "started"


def test_host_helpers_are_noops_outside_host(pack, tmp_path, monkeypatch):
    host = pack.nodes._host
    assert host.register_routes(pack.nodes.web_routes.ROUTES) == 0
    host.send_event("musetalk.progress", {"x": 1})  # no host: nothing happens, no error
    assert host.executing_node_id() is None
    assert host.save_preview_images([[[[0, 0, 0]]]]) == []


def test_save_preview_images_downscales_into_temp(pack, tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    host = pack.nodes._host
    monkeypatch.setattr(host, "temp_directory", lambda: str(tmp_path))
    frames = np.zeros((3, 512, 256, 3), np.uint8)
    frames[1, :, :, 0] = 255
    saved = host.save_preview_images(frames, max_side=128)
    assert [s["type"] for s in saved] == ["temp"] * 3
    img = Image.open(tmp_path / saved[1]["filename"])
    assert img.size == (64, 128)
    r, g, b = img.convert("RGB").getpixel((10, 10))
    assert r > 240 and g < 15 and b < 15


def test_progress_sends_the_executing_node(pack, monkeypatch):
    host = pack.nodes._host
    sent = []

    class Bar:
        def __init__(self, total):
            self.total = total

        def update_absolute(self, v, total):
            pass

    monkeypatch.setattr(host, "comfy_utils", type("U", (), {"ProgressBar": Bar}))
    monkeypatch.setattr(host, "send_event", lambda name, data, **kw: sent.append((name, data)))
    monkeypatch.setattr(host, "executing_node_id", lambda: "7")
    progress = host._progress_fn()
    progress(0, 10, "detecting faces")
    for i in range(1, 10):
        progress(i, 10, "detecting faces")  # throttled
    progress(10, 10, "detecting faces")
    progress(1, 4, "inpainting")
    assert sent[0] == ("musetalk.progress",
                       {"node": "7", "stage": "detecting faces", "done": 0, "total": 10})
    assert ("musetalk.progress", {"node": "7", "stage": "detecting faces", "done": 10,
                                  "total": 10}) in sent
    assert sent[-1][1]["stage"] == "inpainting"
    assert len(sent) < 8


def test_preview_indices_keep_the_first_face(pack):
    wr = pack.nodes.web_routes
    assert wr.preview_indices(0) == []
    assert wr.preview_indices(3, count=8) == [0, 1, 2]
    idx = wr.preview_indices(100, [0] * 37 + [1] * 63, count=5)
    assert len(idx) == 5 and 37 in idx and idx == sorted(idx)


def test_crop_and_blend_previews_are_saved(pack, tmp_path, monkeypatch):
    import torch
    from PIL import Image

    host, wr = pack.nodes._host, pack.nodes.web_routes
    monkeypatch.setattr(host, "temp_directory", lambda: str(tmp_path))
    frames = torch.zeros(10, 64, 48, 3)
    frames[..., 1] = 1.0  # green
    crop = wr.crop_preview_frames(frames, [0, 0, 1] + [1] * 7, count=4)
    assert 2 in [c["index"] for c in crop] and all(c["type"] == "temp" for c in crop)
    mask = torch.zeros(10, 64, 48)
    mask[:, 32:] = 1.0
    blend = wr.blend_preview_images(frames, mask, count=2)
    assert len(blend) == 2
    img = Image.open(tmp_path / blend[0]["filename"]).convert("RGB")
    top, bottom = img.getpixel((20, 5)), img.getpixel((20, 60))
    assert top[1] > 240 and top[0] < 15  # untouched green
    assert bottom[0] > 100 and bottom[1] < 150  # tinted where the mask is
    assert wr.blend_preview_images(None, None) == []  # never raises
