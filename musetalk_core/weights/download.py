"""Fetch a registered model file into a model folder: resumable, capped, verified, atomic.

The file is written to ``<name>.part`` in its target folder. A later attempt resumes with an HTTP
``Range`` request from the ``.part`` size (a server that ignores it restarts from zero). Only a
complete file whose size and sha256 (where published) match is renamed to its final name. A
cross-process lock (``<name>.lock``) makes concurrent downloads of one file wait for each other.

Hub files are fetched with plain HTTPS from their ``resolve`` URL (``HF_ENDPOINT`` and
``HF_TOKEN`` are honoured; ``HF_HUB_OFFLINE=1`` refuses hub downloads); the transport
(``urlopen``) is injectable for tests.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import logging
import os
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import DownloadError
from .hashing import file_sha256
from .registry import HF_ENDPOINT, WeightFile

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
SPACE_MARGIN = 64 * 1024 * 1024
ProgressFn = Callable[[int, int, str], None]
UrlOpen = Callable[..., Any]


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


class _CutError(Exception):
    """The transfer stopped early; the ``.part`` is kept for resuming."""


class _Lock:
    """An exclusive cross-process lock on ``path`` (fcntl on POSIX, msvcrt on Windows).

    The lock file is removed on release, so a finished or failed download leaves nothing behind.
    A waiter that wakes up holding the lock of a file already removed (its inode is no longer at
    ``path``) opens ``path`` again, so two processes never both hold "the" lock.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> _Lock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                import fcntl
            except ImportError:  # pragma: no cover - Windows: files in use cannot be removed
                self.fd = fd
                self._lock_windows()
                return self
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return self
            os.close(fd)  # the holder before us removed it: lock the new file instead

    def _lock_windows(self) -> None:  # pragma: no cover - Windows
        import msvcrt

        while True:
            try:
                msvcrt.locking(self.fd, msvcrt.LK_LOCK, 1)
                return
            except OSError:
                time.sleep(0.5)

    def __exit__(self, *exc: object) -> None:
        if self.fd is None:
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            os.close(self.fd)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # still holding the lock: waiters notice (see above)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
        self.fd = None


def _writable_dir(root: str, subdir: str) -> str | None:
    target = os.path.join(root, *subdir.split("/")) if subdir else root
    try:
        os.makedirs(target, exist_ok=True)
    except OSError:
        return None
    return target if os.access(target, os.W_OK | os.X_OK) else None


def choose_folder(wf: WeightFile, roots: Sequence[str]) -> str:
    """The first registered folder where ``wf`` can be written (D7); its target directory."""
    for root in roots:
        target = _writable_dir(root, wf.subdir)
        if target is not None:
            if root != roots[0]:
                log.info("downloading %s into %s (earlier folders are not writable)", wf.rel, root)
            return target
    shown = roots[0] if roots else f"models/{wf.folder}"
    raise DownloadError(
        f"cannot write to {shown} (read-only) to download {wf.rel}",
        fix=f"make it writable, add a writable '{wf.folder}' path in extra_model_paths.yaml, or "
            f"download {wf.manual or wf.url} by hand into {shown}/{wf.subdir}")


def _check_space(wf: WeightFile, folder: str, have: int, free_bytes: Callable[[str], int]) -> None:
    need = (wf.size or wf.max_bytes) - have
    free = free_bytes(folder)
    if need > 0 and free < need + SPACE_MARGIN:
        raise DownloadError(
            f"downloading {wf.rel} needs {_gb(need)} in {folder}, {_gb(free)} free",
            fix="free space, or add a folder on a larger disk in extra_model_paths.yaml")


def _is_hub(url: str) -> bool:
    return url.startswith(HF_ENDPOINT) or "huggingface.co/" in url


def _hub_url(url: str) -> str:
    endpoint = os.environ.get("HF_ENDPOINT")
    if endpoint and url.startswith(HF_ENDPOINT):
        return endpoint.rstrip("/") + url[len(HF_ENDPOINT):]
    return url


def _offline_error(wf: WeightFile, folder: str, reason: str) -> DownloadError:
    return DownloadError(
        f"cannot download {wf.rel}: no network ({reason})",
        fix=f"put {wf.filename} from {wf.manual or wf.url} into {folder} (or a '{wf.folder}' "
            "folder of extra_model_paths.yaml)")


def _request(url: str, offset: int) -> urllib.request.Request:
    headers = {"User-Agent": "musetalk-lipsync", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    token = os.environ.get("HF_TOKEN")
    if token and _is_hub(url):
        headers["Authorization"] = f"Bearer {token}"  # never logged
    return urllib.request.Request(url, headers=headers)


def _looks_like_html(first: bytes) -> bool:
    head = first[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml"))


def _stream(
    wf: WeightFile, url: str, part: str, folder: str, urlopen: UrlOpen, timeout: float,
    progress: ProgressFn | None,
) -> None:
    """One attempt: append to ``part`` from its size. Raises ``_CutError`` to retry."""
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    if wf.size is not None and offset >= wf.size:
        if offset == wf.size:
            return
        os.remove(part)
        offset = 0
    try:
        resp = urlopen(_request(url, offset), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # our range is past the end: start again
            os.remove(part)
            raise _CutError("range not satisfiable; restarting") from err
        raise
    with contextlib.closing(resp):
        status = getattr(resp, "status", 200)
        if offset and status != 206:
            log.info("%s ignored the resume request; restarting %s from zero", url, wf.rel)
            offset = 0
        ctype = (resp.headers.get("Content-Type") or "").lower()
        if "text/html" in ctype:
            raise _html_error(wf, folder)
        mode = "ab" if offset else "wb"
        got = offset
        first = offset == 0
        try:
            with open(part, mode) as out:
                while True:
                    chunk = resp.read(CHUNK)
                    if not chunk:
                        break
                    if first:
                        first = False
                        if _looks_like_html(chunk):
                            out.close()
                            os.remove(part)
                            raise _html_error(wf, folder)
                    if got + len(chunk) > wf.max_bytes:
                        out.close()
                        os.remove(part)
                        raise DownloadError(
                            f"received more than the expected {_gb(wf.max_bytes)} for {wf.rel}; "
                            "aborted", fix=f"download {wf.manual or url} by hand into {folder}")
                    out.write(chunk)
                    got += len(chunk)
                    if progress is not None:
                        progress(got, wf.size or wf.max_bytes, f"download {wf.filename}")
        except OSError as err:
            if err.errno == errno.ENOSPC:
                with contextlib.suppress(OSError):
                    os.remove(part)
                raise DownloadError(
                    f"disk full while downloading {wf.rel} into {folder}",
                    fix="free space, or add a folder on a larger disk in "
                        "extra_model_paths.yaml") from err
            raise _CutError(f"connection lost: {err}") from err
        except (http.client.HTTPException, TimeoutError) as err:
            raise _CutError(f"connection lost: {type(err).__name__}") from err
        length = resp.headers.get("Content-Length")
        if length is not None and got - offset < int(length):
            raise _CutError(f"connection closed at {_gb(got)}")
        if wf.size is not None and got < wf.size:
            raise _CutError(f"connection closed at {_gb(got)} of {_gb(wf.size)}")


def _html_error(wf: WeightFile, folder: str) -> DownloadError:
    return DownloadError(
        f"the source returned a web page instead of {wf.filename} (a quota or login page?)",
        fix=f"download it by hand from {wf.manual or wf.url} into {folder}")


def _verify(wf: WeightFile, part: str, folder: str) -> None:
    size = os.path.getsize(part)
    if wf.size is not None and size != wf.size:
        os.remove(part)
        raise DownloadError(f"the downloaded {wf.rel} has {size} bytes, expected {wf.size}; "
                            "the file was deleted",
                            fix=f"retry; if it repeats, download {wf.url} by hand into {folder}")
    if wf.sha256:
        digest = file_sha256(part)
        if digest != wf.sha256:
            os.remove(part)
            raise DownloadError(
                f"sha256 of the downloaded {wf.filename} is {digest[:12]}…, expected "
                f"{wf.sha256[:12]}…; the file was deleted",
                fix=f"retry; if it repeats, the source changed: download it by hand from "
                    f"{wf.manual or wf.url} into {folder}")


def _status_error(wf: WeightFile, err: urllib.error.HTTPError, url: str,
                  folder: str) -> DownloadError:
    if err.code in (401, 403):
        return DownloadError(
            f"{wf.source} returned {err.code}: this repo needs a login or licence acceptance",
            fix=f"accept it on its page and log in with huggingface-cli (or set HF_TOKEN), or "
                f"download it by hand into {folder}")
    return DownloadError(f"{url} returned {err.code} for {wf.rel}",
                         fix=f"retry later, or download it by hand into {folder}")


def download(
    wf: WeightFile,
    roots: Sequence[str],
    *,
    urlopen: UrlOpen | None = None,
    progress: ProgressFn | None = None,
    retries: int = 3,
    timeout: float = 30.0,
    free_bytes: Callable[[str], int] | None = None,
) -> str:
    """Download ``wf`` into the first writable of ``roots`` (its folder type's registered dirs).

    Args:
        wf: the registered file.
        roots: the folder type's registered directories, in the host's order.
        urlopen: transport (``urllib.request.urlopen`` signature); injectable for tests.
        progress: ``(bytes_done, bytes_total, stage)``; may raise to interrupt (the ``.part``
            stays for resuming).
        retries: attempts per URL after a cut connection (each resumes).
        timeout: connect/read timeout in seconds (fails fast when offline).
        free_bytes: free-space query (default ``shutil.disk_usage``).

    Returns:
        The final path, complete and verified.

    Raises:
        DownloadError: offline, HTTP errors, web pages, oversize, checksum mismatch, disk full,
            read-only folders; each names the file, the folder and the source.
    """
    urlopen = urlopen or urllib.request.urlopen
    free_bytes = free_bytes or (lambda p: shutil.disk_usage(p).free)
    folder = choose_folder(wf, roots)
    final = os.path.join(folder, wf.filename)
    part = final + ".part"
    urls = [_hub_url(u) if _is_hub(u) else u for u in (wf.url, *wf.mirrors)]
    with _Lock(final + ".lock"):
        if os.path.isfile(final):  # another process finished it while we waited
            return final
        have = os.path.getsize(part) if os.path.exists(part) else 0
        _check_space(wf, folder, have, free_bytes)
        log.info("downloading %s (%s) from %s into %s", wf.rel,
                 _gb(wf.size or wf.max_bytes), wf.source, folder)
        not_found: list[str] = []
        for url in urls:
            if _is_hub(url) and os.environ.get("HF_HUB_OFFLINE", "").strip() in ("1", "true",
                                                                                  "yes"):
                raise _offline_error(wf, folder, "HF_HUB_OFFLINE is set")
            reason = ""
            for attempt in range(max(1, retries)):
                try:
                    _stream(wf, url, part, folder, urlopen, timeout, progress)
                    _verify(wf, part, folder)
                    os.replace(part, final)
                    log.info("downloaded %s (%d bytes) to %s", wf.rel, os.path.getsize(final),
                             final)
                    return final
                except _CutError as cut:
                    reason = str(cut)
                    log.warning("download of %s interrupted (%s); attempt %d of %d", wf.rel,
                                reason, attempt + 1, retries)
                except urllib.error.HTTPError as err:
                    if err.code == 404:
                        not_found.append(url)
                        break
                    if err.code in (401, 403) or err.code < 500:
                        raise _status_error(wf, err, url, folder) from None
                    reason = f"HTTP {err.code}"
                except urllib.error.URLError as err:
                    raise _offline_error(wf, folder, _reason(err.reason)) from None
                except (ConnectionRefusedError, socket.gaierror) as err:
                    raise _offline_error(wf, folder, _reason(err)) from None
            else:
                have = os.path.getsize(part) if os.path.exists(part) else 0
                total = f" of {_gb(wf.size)}" if wf.size else ""
                raise DownloadError(
                    f"download of {wf.rel} stopped at {_gb(have)}{total} ({reason})",
                    fix=f"run again to resume, or download {wf.manual or url} by hand into "
                        f"{folder}")
        raise DownloadError(
            f"{wf.source} returned 404 (moved or removed)",
            fix=f"download it by hand from {', '.join([wf.manual] if wf.manual else not_found)} "
                f"into {folder}")


def _reason(err: object) -> str:
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, socket.gaierror):
        return "name lookup failed"
    if isinstance(err, (TimeoutError, socket.timeout)):
        return "timed out"
    return str(err)


def ensure(wf: WeightFile, roots: Sequence[str], **kwargs: Any) -> str:
    """The path of ``wf`` in the first root that has it, downloading it if none does."""
    for root in roots:
        path = wf.target(root)
        if os.path.isfile(path):
            return path
    return download(wf, roots, **kwargs)


