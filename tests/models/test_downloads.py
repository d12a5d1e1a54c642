"""Downloads against a local fake source on 127.0.0.1: resume, caps, checksums, errors (D1-D8)."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from musetalk_core.errors import DownloadError
from musetalk_core.weights import download as dl
from musetalk_core.weights.registry import FILES, WeightFile

PAYLOAD = bytes(range(256)) * 1024  # 256 KiB
PAYLOAD_SIZE = len(PAYLOAD)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Source:
    """Switches the handler reads; one instance per test."""

    def __init__(self) -> None:
        self.payload = PAYLOAD
        self.cut_at: int | None = None  # close the socket after N bytes (first request only)
        self.status = 200
        self.html = False
        self.ignore_range = False
        self.endless = False
        self.wrong = False
        self.ranges: list[str | None] = []


class _Handler(http.server.BaseHTTPRequestHandler):
    src: _Source

    def log_message(self, *args):  # keep pytest output quiet
        pass

    def do_GET(self):  # noqa: N802
        src = self.server.src
        rng = self.headers.get("Range")
        src.ranges.append(rng)
        if src.status != 200:
            self.send_response(src.status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if src.html:
            body = b"<!DOCTYPE html><html><body>Google Drive quota exceeded</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        data = bytearray(src.payload)
        if src.wrong:
            data[1000] ^= 0xFF
        start = 0
        if rng and not src.ignore_range:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if src.endless:
            self.end_headers()
            chunk = b"\0" * 65536
            try:
                while True:
                    self.wfile.write(chunk)
            except OSError:
                return
        body = bytes(data[start:])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if src.cut_at is not None:
            n = max(0, src.cut_at - start)
            src.cut_at = None
            self.wfile.write(body[:n])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


@pytest.fixture
def source():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.src = _Source()
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    server.src.url = f"http://127.0.0.1:{server.server_address[1]}/m/weights.bin"
    yield server.src
    server.shutdown()
    server.server_close()


def _wf(src, *, size=PAYLOAD_SIZE, sha=SHA, max_bytes=None, rel="sub/weights.bin", mirrors=()):
    return WeightFile("test", "musetalk", rel, src.url, None, size, max_bytes or len(PAYLOAD),
                      sha, "test", mirrors=mirrors)


def test_complete_download_is_verified_and_renamed(source, tmp_path):
    path = dl.download(_wf(source), [str(tmp_path)])
    assert path == str(tmp_path / "sub" / "weights.bin")
    assert Path(path).read_bytes() == PAYLOAD
    assert not os.path.exists(path + ".part")


def test_cut_connection_resumes_with_range(source, tmp_path):
    source.cut_at = 100_000
    path = dl.download(_wf(source), [str(tmp_path)])
    assert Path(path).read_bytes() == PAYLOAD
    assert source.ranges == [None, "bytes=100000-"]


def test_retries_exhausted_keep_the_part_and_name_the_fix(source, tmp_path):
    source.cut_at = 100_000
    with pytest.raises(DownloadError) as err:
        dl.download(_wf(source), [str(tmp_path)], retries=1)
    msg = str(err.value)
    assert "stopped at" in msg and "run again to resume" in msg and source.url in msg
    final = tmp_path / "sub" / "weights.bin"
    assert not final.exists()
    assert os.path.getsize(str(final) + ".part") == 100_000
    # the next run resumes from the part
    path = dl.download(_wf(source), [str(tmp_path)])
    assert Path(path).read_bytes() == PAYLOAD and source.ranges[-1] == "bytes=100000-"


def test_server_ignoring_range_restarts_from_zero(source, tmp_path):
    source.cut_at = 50_000
    source.ignore_range = True
    path = dl.download(_wf(source), [str(tmp_path)])
    assert Path(path).read_bytes() == PAYLOAD
    assert source.ranges[1] == "bytes=50000-"


def test_checksum_mismatch_deletes_everything(source, tmp_path):
    source.wrong = True
    with pytest.raises(DownloadError) as err:
        dl.download(_wf(source), [str(tmp_path)])
    assert "sha256 of the downloaded weights.bin" in str(err.value)
    assert "deleted" in str(err.value)
    assert os.listdir(tmp_path / "sub") == []


def test_html_page_is_refused(source, tmp_path):
    source.html = True
    with pytest.raises(DownloadError, match="web page instead of weights.bin"):
        dl.download(_wf(source, size=None, sha=None), [str(tmp_path)])
    assert not (tmp_path / "sub" / "weights.bin").exists()
    assert not (tmp_path / "sub" / "weights.bin.part").exists()


def test_endless_stream_stops_at_the_cap(source, tmp_path):
    source.endless = True
    with pytest.raises(DownloadError, match="received more than the expected"):
        dl.download(_wf(source, size=None, sha=None, max_bytes=300_000), [str(tmp_path)])
    assert os.listdir(tmp_path / "sub") == []


@pytest.mark.parametrize("status, text", [(404, "returned 404"), (401, "needs a login"),
                                          (403, "needs a login")])
def test_http_status_messages(source, tmp_path, status, text):
    source.status = status
    with pytest.raises(DownloadError, match=text):
        dl.download(_wf(source), [str(tmp_path)])


def test_404_tries_the_next_mirror(source, tmp_path):
    good = source.url
    wf = WeightFile("t", "musetalk", "w.bin", good.replace("/m/", "/gone/"), None, len(PAYLOAD),
                    len(PAYLOAD), SHA, "t", mirrors=(good,))
    calls = []

    def opener(req, timeout):
        calls.append(req.full_url)
        if "/gone/" in req.full_url:
            import urllib.error
            raise urllib.error.HTTPError(req.full_url, 404, "nf", {}, None)
        import urllib.request
        return urllib.request.urlopen(req, timeout=timeout)

    path = dl.download(wf, [str(tmp_path)], urlopen=opener)
    assert Path(path).read_bytes() == PAYLOAD and len(calls) == 2


def test_offline_fails_fast_naming_file_folder_and_source(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    wf = WeightFile("t", "musetalk", "whisper/tiny.pt", f"http://127.0.0.1:{port}/tiny.pt", None,
                    None, 1000, None, "MIT")
    t0 = time.perf_counter()
    with pytest.raises(DownloadError) as err:
        dl.download(wf, [str(tmp_path)])
    assert time.perf_counter() - t0 < 5
    msg = str(err.value)
    assert "cannot download whisper/tiny.pt: no network" in msg
    assert "tiny.pt" in msg and str(tmp_path / "whisper") in msg and wf.url in msg
    assert list((tmp_path / "whisper").iterdir()) == []  # no lock file or part left behind


def test_hf_offline_env_refuses_hub_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    wf = next(f for f in FILES if f.key == "unet_v15_config")
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE"):
        dl.download(wf, [str(tmp_path)], urlopen=lambda *a, **k: pytest.fail("network used"))


def test_disk_space_preflight(source, tmp_path):
    with pytest.raises(DownloadError, match="needs .* free"):
        dl.download(_wf(source), [str(tmp_path)], free_bytes=lambda p: 1000)
    assert source.ranges == []


def test_first_writable_folder_is_used(source, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    # a read-only folder (a seam: permissions do not apply to root)
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p).startswith(str(ro))
                        else real_access(p, m))
    rw = tmp_path / "rw"
    path = dl.download(_wf(source), [str(ro), str(rw)])
    assert path.startswith(str(rw))
    with pytest.raises(DownloadError, match="read-only"):
        dl.download(_wf(source, rel="other/x.bin"), [str(ro)])


def test_disk_full_mid_write_deletes_the_part(source, tmp_path, monkeypatch):
    import builtins
    import errno

    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            self.f.close()

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return Full(f) if str(path).endswith(".part") and "b" in mode and "w" in mode else f

    monkeypatch.setattr(builtins, "open", fake_open)
    with pytest.raises(DownloadError, match="disk full"):
        dl.download(_wf(source), [str(tmp_path)])
    monkeypatch.undo()
    assert not (tmp_path / "sub" / "weights.bin.part").exists()


def test_concurrent_downloads_share_one_transfer(source, tmp_path):
    results, errors = [], []

    def run():
        try:
            results.append(dl.download(_wf(source), [str(tmp_path)]))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert len(source.ranges) == 1  # the waiters found the finished file
    assert Path(results[0]).read_bytes() == PAYLOAD
    assert [p.name for p in Path(results[0]).parent.iterdir()] == ["weights.bin"]  # no .lock


def test_registry_is_consistent():
    keys = [f.key for f in FILES]
    assert len(keys) == len(set(keys))
    for f in FILES:
        assert f.folder in ("musetalk", "vae") and not f.rel.startswith("/") and ".." not in f.rel
        assert f.sha256 is None or (len(f.sha256) == 64 and f.sha256 == f.sha256.lower())
        assert f.size is None or f.max_bytes == f.size
        assert f.url.startswith("https://")
    tiny = next(f for f in FILES if f.key == "whisper_tiny_pt")
    assert tiny.sha256 in tiny.url  # openai's URL embeds the digest
