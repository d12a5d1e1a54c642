"""Run the real ComfyUI with this pack, headless, for host tests.

Set ``COMFYUI_PATH`` to a ComfyUI checkout (see ``comfyui-host.md`` section 10 for a recipe) and,
if its Python is not ``$COMFYUI_PATH/venv/bin/python``, ``COMFYUI_PYTHON``. Without
``COMFYUI_PATH`` every host test skips.

The fixture starts ComfyUI once per session on a free loopback port with ``--base-directory`` set
to a temporary folder holding ``custom_nodes/<pack>`` (a link to this checkout), the test media in
``input/``, and ``models/`` filled with tiny random checkpoints in the real file formats (declared
through ``--extra-model-paths-config``, as users do).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
PACK_FOLDER = "musetalk-lipsync"
TEST_POSE_FOLDER = "musetalk_test_pose"
"""A TEST-ONLY node folder (``tests/host/fixtures``), never part of the pack: it turns the
shared media's ``.landmarks.npz`` into POSE_KEYPOINT (tiny random detectors find no faces)."""

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    """Without ``COMFYUI_PATH`` every test in this folder skips cleanly."""
    if COMFYUI_PATH:
        return
    skip = pytest.mark.skip(reason="set COMFYUI_PATH to a ComfyUI checkout to run host tests")
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Host:
    """A running ComfyUI: HTTP helpers and a websocket prompt runner."""

    def __init__(self, base: Path, port: int, proc: subprocess.Popen, log_path: Path):
        self.base, self.port, self.proc, self.log_path = base, port, proc, log_path
        self.url = f"http://127.0.0.1:{port}"
        self.client_id = uuid.uuid4().hex

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, timeout: float = 30) -> object:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def post(self, path: str, data: dict, timeout: float = 30) -> tuple[int, object]:
        req = urllib.request.Request(self.url + path, data=json.dumps(data).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body = r.read()
                return r.status, (json.loads(body) if body else None)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def run_prompt(self, prompt: dict, timeout: float = 600, on_message=None) -> dict:
        """Queue ``prompt`` and collect websocket messages until it ends.

        Returns ``{"prompt_id", "status" ('success'|'error'|'interrupted'), "messages",
        "history"}``. ``on_message(msg, host)`` is called for every JSON message.
        """
        import websocket

        ws = websocket.create_connection(
            f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}", timeout=timeout)
        try:
            code, body = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
            if code != 200:
                return {"prompt_id": None, "status": "rejected", "code": code, "body": body,
                        "messages": [], "history": None}
            pid = body["prompt_id"]
            messages, status, deadline = [], None, time.time() + timeout
            while status is None and time.time() < deadline:
                raw = ws.recv()
                if isinstance(raw, bytes):
                    continue
                msg = json.loads(raw)
                data = msg.get("data", {})
                if data.get("prompt_id") not in (None, pid):
                    continue
                messages.append(msg)
                if on_message is not None:
                    on_message(msg, self)
                kind = msg.get("type")
                if kind == "execution_success":
                    status = "success"
                elif kind == "execution_error":
                    status = "error"
                elif kind == "execution_interrupted":
                    status = "interrupted"
            history = self.get(f"/history/{pid}").get(pid)
            # the worker stores the history just after the final message: wait for it
            while history is None and status in ("success", "error", "interrupted") \
                    and time.time() < deadline:
                time.sleep(0.2)
                history = self.get(f"/history/{pid}").get(pid)
            return {"prompt_id": pid, "status": status or "timeout", "messages": messages,
                    "history": history}
        finally:
            ws.close()


@contextlib.contextmanager
def start_host(base: Path, args: list[str], log_name: str, *, ready_node: str):
    """Start ComfyUI on a free loopback port with ``--base-directory base`` and ``args``; yield a
    :class:`Host` once ``/object_info/<ready_node>`` answers; stop it afterwards."""
    port = _free_port()
    log_path = base / log_name
    cmd = [_python(), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--disable-auto-launch", "--base-directory", str(base),
           "--disable-all-custom-nodes", "--database-url", "sqlite:///:memory:", *args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=COMFYUI_PATH, stdout=log, stderr=subprocess.STDOUT)
    h = Host(base, port, proc, log_path)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"ComfyUI exited early:\n{h.log()[-4000:]}")
            try:
                h.get(f"/object_info/{ready_node}", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError,
                    json.JSONDecodeError):
                time.sleep(0.5)
        else:
            pytest.fail(f"ComfyUI did not answer in 120 s:\n{h.log()[-4000:]}")
        yield h
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _python() -> str:
    explicit = os.environ.get("COMFYUI_PYTHON")
    if explicit:
        return explicit
    return str(Path(COMFYUI_PATH) / "venv" / "bin" / "python")


@pytest.fixture(scope="session")
def host_base(tmp_path_factory) -> Path:
    """The host's base directory: custom_nodes (our pack), input (media), models (tiny)."""
    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    os.symlink(ROOT, base / "custom_nodes" / PACK_FOLDER)
    shutil.copytree(HERE / "fixtures" / TEST_POSE_FOLDER, base / "custom_nodes" / TEST_POSE_FOLDER,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (base / "input").mkdir()
    media = Path(os.environ.get("MUSETALK_TEST_MEDIA", ROOT.parent / "shared" / "media"))
    if media.is_dir():
        for f in media.iterdir():
            if f.suffix in {".mp4", ".wav", ".png", ".jpg", ".npz"}:
                shutil.copy(f, base / "input" / f.name)
    return base


@pytest.fixture(scope="session")
def host_models(tmp_path_factory) -> Path:
    """A models tree with tiny random checkpoints in the real formats."""
    models = tmp_path_factory.mktemp("tiny_models")
    from tiny_models import build_models_tree  # tests/tiny_models.py

    build_models_tree(models)
    return models


@pytest.fixture(scope="session")
def host(host_base, host_models, tmp_path_factory):
    """A running ComfyUI with the pack loaded; stopped at the end of the session."""
    cfg = tmp_path_factory.mktemp("cfg") / "extra_model_paths.yaml"
    cfg.write_text(
        "musetalk_tests:\n"
        f"    base_path: {host_models}\n"
        "    musetalk: musetalk\n"
        "    vae: vae\n"
    )
    extra = ["--extra-model-paths-config", str(cfg), "--whitelist-custom-nodes", PACK_FOLDER,
             TEST_POSE_FOLDER]
    with start_host(host_base, extra, "server.log", ready_node="MuseTalkModelLoader") as h:
        yield h
