"""Server routes for the web extension: model status and registry-only downloads.

``GET /musetalk/models`` lists every file of the weights registry with its state (present or not,
where it is or would go, relative to the models folder, size); ``?name=<key>`` narrows it to one
key. ``POST /musetalk/download`` with the JSON body ``{"name": <registry key>}`` starts the same
download the loaders run (same code, same checksums) in a worker thread and answers at once;
progress arrives as ``musetalk.download`` websocket events. Only registry keys are accepted: a body
with ``url`` or ``path`` (or anything but ``name``) is refused, and an unknown name gets 400
"unknown model". Responses never hold file contents or absolute paths.

The host (``nodes/_host.py``) registers :data:`ROUTES`; this module imports neither the host nor
aiohttp at module level (handlers import ``aiohttp.web`` when called, i.e. inside the host).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..musetalk_core.errors import MuseTalkError
from ..musetalk_core.weights.registry import BY_KEY, FILES, WeightFile
from . import _host

log = logging.getLogger(__name__)

EVENT = "musetalk.download"
MAX_BODY = 4096

NODE_FILES: dict[str, tuple[str, ...]] = {
    "MuseTalkModelLoader": ("unet_v15", "unet_v15_config", "unet_v1", "unet_v1_config", "vae",
                            "vae_config"),
    "MuseTalkWhisperLoader": ("whisper_tiny_pt", "whisper_config", "whisper_weights",
                              "whisper_preprocessor"),
    "MuseTalkFaceDetectorLoader": ("s3fd", "fan2d"),
    "MuseTalkFaceParserLoader": ("face_parser",),
}
"""Registry keys each loader node reads (the model-status widget shows these)."""


def _default_roots(folder: str) -> list[str]:
    return _host.model_folder_paths(folder)


def _default_models_dir() -> str | None:
    roots = _host.model_folder_paths(_host.MODEL_FOLDER)
    return os.path.dirname(os.path.normpath(roots[0])) if roots else None


def _default_download(wf: WeightFile, roots: Sequence[str],
                      progress: Callable[[int, int, str], None]) -> str:
    from ..musetalk_core.weights.download import download

    return download(wf, roots, progress=progress)


class RequestError(Exception):
    """A request we refuse; ``status`` is the HTTP code, the message goes to the client."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ModelService:
    """Model status and de-duplicated background downloads, independent of the web framework.

    Args:
        roots: folder type -> its registered directories, in the host's order.
        models_dir: the host's ``models`` folder; shown paths are relative to it.
        download: ``(file, roots, progress) -> final path``; the weights downloader.
        send: ``(event, data) -> None``; websocket events to the browser.
    """

    def __init__(
        self,
        roots: Callable[[str], list[str]] = _default_roots,
        models_dir: Callable[[], str | None] = _default_models_dir,
        download: Callable[..., str] = _default_download,
        send: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.roots, self.models_dir, self.download = roots, models_dir, download
        self.send = send or (lambda name, data: _host.send_event(name, data, broadcast=True))
        self.jobs: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    # ------------------------------------------------------------------ status

    def _shown(self, root: str, wf: WeightFile, index: int) -> str:
        """``root/rel`` relative to the models folder, or a label for a folder outside it."""
        models = self.models_dir()
        target = os.path.normpath(wf.target(root))
        if models:
            base = os.path.normpath(models)
            if os.path.commonpath([base, target]) == base:
                return os.path.relpath(target, base).replace(os.sep, "/")
        return f"<{wf.folder} path {index + 1}>/{wf.rel}"

    def status(self, wf: WeightFile) -> dict[str, Any]:
        """One file's state: never file contents, never an absolute path."""
        roots = self.roots(wf.folder)
        found = None
        for i, root in enumerate(roots):
            if os.path.isfile(wf.target(root)):
                found = (i, root)
                break
        where = found if found is not None else ((0, roots[0]) if roots else None)
        shown = self._shown(where[1], wf, where[0]) if where else f"{wf.folder}/{wf.rel}"
        job = self.jobs.get(wf.key)
        return {
            "name": wf.key,
            "folder": wf.folder,
            "file": wf.rel,
            "present": found is not None,
            "path": shown,
            "target_folder": shown.rsplit("/", 1)[0],
            "size": os.path.getsize(wf.target(found[1])) if found else None,
            "expected_size": wf.size,
            "max_bytes": wf.max_bytes,
            "sha256_published": wf.sha256 is not None,
            "source": wf.source,
            "licence": wf.licence,
            "download": dict(job) if job else None,
        }

    def all_status(self, name: str | None = None) -> dict[str, Any]:
        """``{"models": [...], "nodes": NODE_FILES}``; ``name`` narrows to one registry key."""
        if name is not None:
            files = [_known(name)]
        else:
            files = list(FILES)
        return {"models": [self.status(wf) for wf in files],
                "nodes": {k: list(v) for k, v in NODE_FILES.items()}}

    # ------------------------------------------------------------------ downloads

    def start(self, name: str, loop: asyncio.AbstractEventLoop | None = None) -> dict[str, Any]:
        """Start downloading registry key ``name`` unless it is present or already running.

        Returns ``{"name", "state": "present"|"running"|"started", ...}`` at once; the work
        runs in the loop's default thread executor (or a plain thread without a loop).
        """
        wf = _known(name)
        with self.lock:
            job = self.jobs.get(name)
            if job is not None and job["state"] == "running":
                return {"name": name, "state": "running", "done": job["done"],
                        "total": job["total"]}
            if self.status(wf)["present"]:
                return {"name": name, "state": "present"}
            self.jobs[name] = {"state": "running", "done": 0, "total": wf.size or wf.max_bytes,
                               "error": None, "started": time.time()}
        if loop is not None:
            loop.run_in_executor(None, self._run, wf)
        else:
            threading.Thread(target=self._run, args=(wf,), daemon=True).start()
        return {"name": name, "state": "started", "total": wf.size or wf.max_bytes}

    def _run(self, wf: WeightFile) -> None:
        job = self.jobs[wf.key]
        last = [0.0]

        def progress(done: int, total: int, stage: str) -> None:
            job["done"], job["total"] = int(done), int(total)
            now = time.monotonic()
            if now - last[0] >= 0.25:
                last[0] = now
                self.send(EVENT, {"name": wf.key, "state": "running", "done": int(done),
                                  "total": int(total)})

        try:
            self.download(wf, self.roots(wf.folder), progress)
        except MuseTalkError as err:
            job.update(state="error", error=str(err))
        except Exception as err:  # reported to the page; the server keeps running
            log.exception("download of %s failed", wf.key)
            job.update(state="error", error=f"{type(err).__name__}: {err}")
        else:
            job.update(state="done", done=job["total"])
        self.send(EVENT, {"name": wf.key, "state": job["state"], "done": job["done"],
                          "total": job["total"], "error": job["error"]})


def _known(name: Any) -> WeightFile:
    if not isinstance(name, str) or name not in BY_KEY:
        raise RequestError("unknown model")
    return BY_KEY[name]


def parse_download_body(content_type: str, raw: bytes) -> str:
    """The registry key of a download request, or :class:`RequestError`.

    Only ``application/json`` bodies ``{"name": "<key>"}`` are accepted (a cross-site form or
    ``text/plain`` POST is refused); ``url``, ``path`` or any other field is refused.
    """
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise RequestError("send JSON (Content-Type: application/json)", status=415)
    if len(raw) > MAX_BODY:
        raise RequestError("request too large", status=413)
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise RequestError("body is not valid JSON") from None
    if not isinstance(body, dict):
        raise RequestError('send {"name": "<model name>"}')
    if "url" in body or "path" in body:
        raise RequestError("url and path are not accepted; send only the model's name")
    extra = sorted(set(body) - {"name"})
    if extra:
        raise RequestError(f"unexpected field(s): {', '.join(extra)}; send only the model's name")
    return _known(body.get("name")).key


SERVICE = ModelService()


def _json(data: Any, status: int = 200) -> Any:
    from aiohttp import web

    return web.json_response(data, status=status)


async def get_models(request: Any) -> Any:
    """``GET /musetalk/models[?name=<key>]``."""
    try:
        data = SERVICE.all_status(request.query.get("name"))
    except RequestError as err:
        return _json({"error": str(err)}, err.status)
    return _json(data)


async def post_download(request: Any) -> Any:
    """``POST /musetalk/download`` with ``{"name": <key>}``."""
    try:
        raw = await request.content.read(MAX_BODY + 1)
        name = parse_download_body(request.headers.get("Content-Type", ""), raw)
        result = SERVICE.start(name, asyncio.get_running_loop())
    except RequestError as err:
        return _json({"error": str(err)}, err.status)
    return _json(result, 200 if result["state"] == "present" else 202)


# --------------------------------------------------------------------------- node previews


def preview_indices(n: int, has_face: Any = None, count: int = 8) -> list[int]:
    """Up to ``count`` frame indices spread over ``n`` frames, always with the first face frame."""
    if n <= 0 or count <= 0:
        return []
    k = min(count, n)
    picks = {round(i * (n - 1) / max(1, k - 1)) for i in range(k)}
    if has_face is not None:
        flags = [bool(v) for v in has_face]
        first = next((i for i, v in enumerate(flags) if v), None)
        if first is not None and first not in picks:
            picks.discard(max(picks))
            picks.add(first)
    return sorted(picks)


def crop_preview_frames(frames: Any, has_face: Any = None, count: int = 8,
                        max_side: int = 384) -> list[dict[str, Any]]:
    """A few downscaled frames for the Face Crop preview: ``[{"index", "filename", ...}]``.

    ``frames``: IMAGE float 0..1 ``[N, H, W, 3]``. Empty outside the host; never raises.
    """
    try:
        idx = preview_indices(int(frames.shape[0]), has_face, count)
        saved = _host.save_preview_images(frames[idx], max_side=max_side,
                                          prefix="musetalk_crop")
        return [{"index": i, **f} for i, f in zip(idx, saved, strict=True)]
    except Exception as err:  # a preview must never fail the node
        log.warning("could not save the crop preview frames: %s", err)
        return []


def blend_preview_images(frames: Any, mask: Any, count: int = 4,
                         max_side: int = 512) -> list[dict[str, str]]:
    """Frames with the blend mask tinted magenta (``ui["images"]``: the host shows them).

    ``frames``: float 0..1 ``[N, H, W, 3]``; ``mask``: float 0..1 ``[N, H, W]``. Empty outside the
    host; never raises.
    """
    try:
        import torch

        idx = preview_indices(int(frames.shape[0]), None, count)
        f = frames[idx].float().cpu()
        m = mask[idx].float().cpu().clamp(0, 1)[..., None] * 0.55
        tint = torch.tensor([1.0, 0.0, 0.4])
        return _host.save_preview_images(f * (1 - m) + tint * m, max_side=max_side,
                                         prefix="musetalk_blend")
    except Exception as err:
        log.warning("could not save the blend preview: %s", err)
        return []


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/musetalk/models", get_models),
    ("POST", "/musetalk/download", post_download),
]
"""``(method, path, handler)`` for :func:`nodes._host.register_routes`."""
