"""The pack's one door to ComfyUI.

This is the only module that imports ``folder_paths``, ``comfy.*``, ``comfy_api`` or ``server``.
Everything else in ``nodes/`` declares nodes with ``nodes/_spec.py`` and calls ``musetalk_core``;
this module

* registers the ``musetalk`` model folder with ``folder_paths`` (appending, so
  ``extra_model_paths.yaml`` entries stay first),
* lists and resolves model files inside the registered folders only,
* builds a :class:`musetalk_core.runtime.Runtime` from ``comfy.model_management`` and
  ``comfy.utils.ProgressBar`` (device, dtype, progress, interruption, memory),
* turns the core's errors into messages that name the node, and
* turns the node declarations into V3 (``comfy_api.latest``) classes, or classic V1 mappings on
  hosts without the V3 API.

Outside the host every host import is absent, :data:`IN_HOST` is False, and the helpers fall back
to host-free behaviour so node functions can still be called (tests, scripts).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..musetalk_core.errors import InputError, MuseTalkError
from ..musetalk_core.runtime import Runtime, default_runtime
from . import _spec

log = logging.getLogger(__name__)

try:  # the host's modules; absent outside ComfyUI
    import folder_paths
except ImportError:  # pragma: no cover - exercised by the no-host tests
    folder_paths = None

try:
    import comfy.model_management as model_management
    import comfy.utils as comfy_utils
except ImportError:
    model_management = None
    comfy_utils = None

try:
    from comfy_api.latest import ComfyExtension, io
except ImportError:
    ComfyExtension = None
    io = None

IN_HOST = folder_paths is not None
HAS_V3 = io is not None and ComfyExtension is not None

MODEL_FOLDER = "musetalk"
"""Our folder under ``ComfyUI/models``; extra_model_paths.yaml may add more paths for it."""


# --------------------------------------------------------------------------- model folders


def register_model_folders() -> None:
    """Register ``models/musetalk`` with the host, once, after any user-configured paths."""
    if folder_paths is None:
        return
    default = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    known = folder_paths.folder_names_and_paths.get(MODEL_FOLDER, ([], set()))[0]
    if os.path.normcase(os.path.abspath(default)) not in {
        os.path.normcase(os.path.abspath(p)) for p in known
    }:
        folder_paths.add_model_folder_path(MODEL_FOLDER, default)


def model_folder_paths(folder: str = MODEL_FOLDER) -> list[str]:
    """Every directory registered for ``folder`` (empty outside the host)."""
    if folder_paths is None:
        return []
    try:
        return list(folder_paths.get_folder_paths(folder))
    except KeyError:
        return []


def model_files(folder: str = MODEL_FOLDER) -> list[str]:
    """Relative file names in ``folder`` as the host lists them (empty outside the host)."""
    if folder_paths is None:
        return []
    try:
        return list(folder_paths.get_filename_list(folder))
    except KeyError:
        return []


def model_dirs(folder: str = MODEL_FOLDER, marker: str | None = None) -> list[str]:
    """Relative sub-folders of ``folder`` (for models stored as folders, e.g. HF whisper).

    With ``marker`` only folders holding that file are returned (``config.json``).
    """
    found: set[str] = set()
    for root in model_folder_paths(folder):
        if not os.path.isdir(root):
            continue
        for dirpath, _dirnames, filenames in os.walk(root, followlinks=True):
            if marker is None or marker in filenames:
                rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
                if rel != ".":
                    found.add(rel)
    return sorted(found)


def resolve_model_path(
    name: str, folder: str = MODEL_FOLDER, *, input_name: str = "file", allow_dir: bool = False
) -> str | None:
    """The absolute path of ``name`` inside the registered folders, or ``None`` if absent.

    Raises :class:`InputError` if ``name`` would leave the registered folders (``../``, an
    absolute path, a NUL byte): workflow file names resolve only inside the model folders.
    """
    if "\x00" in name or os.path.isabs(name) or name.replace("\\", "/").startswith("/"):
        raise InputError(
            f"'{name}' is not a file in models/{folder}",
            input_name=input_name,
            fix="pick a file from the list",
        )
    for root in model_folder_paths(folder):
        root_abs = os.path.realpath(root)
        candidate = os.path.realpath(os.path.join(root_abs, name.replace("\\", "/")))
        if os.path.commonpath([root_abs, candidate]) != root_abs:
            raise InputError(
                f"'{name}' is not a file in models/{folder}",
                input_name=input_name,
                fix="pick a file from the list",
            )
        if os.path.isfile(candidate) or (allow_dir and os.path.isdir(candidate)):
            return candidate
    return None


def temp_directory() -> str | None:
    """The host's temp folder (``None`` outside the host)."""
    return folder_paths.get_temp_directory() if folder_paths is not None else None


def video_from_file(path: str) -> Any:
    """A file-backed VIDEO value for ``path``.

    In the host: ``comfy_api.latest.InputImpl.VideoFromFile(path)``, so every VIDEO consumer
    (SaveVideo remuxes it, GetVideoComponents decodes it) sees the standard class. Outside the
    host: :class:`musetalk_core.streaming.FileVideo`, a minimal stand-in with
    ``get_stream_source``, ``get_dimensions``, ``get_duration``, ``save_to`` and
    ``get_components``.
    """
    try:
        from comfy_api.latest import InputImpl
    except ImportError:
        from ..musetalk_core.streaming import FileVideo

        return FileVideo(path)
    return InputImpl.VideoFromFile(path)


# --------------------------------------------------------------------------- runtime


def _progress_fn() -> Any:
    """A ``(done, total, stage)`` callback backed by one ProgressBar per stage.

    Each call also sends ``musetalk.progress`` (``{"node", "stage", "done", "total"}``) to the
    browser tab that queued the prompt, so the web extension can show the stage on the node; these
    events are throttled to about ten a second (stage changes and the last step always go out).
    """
    state: dict[str, Any] = {"bar": None, "key": None, "sent": 0.0}

    def progress(done: int, total: int, stage: str) -> None:
        if comfy_utils is None:
            return
        key = (stage, total)
        changed = state["key"] != key
        if changed:
            state["bar"], state["key"] = comfy_utils.ProgressBar(max(int(total), 1)), key
        state["bar"].update_absolute(int(done), max(int(total), 1))
        now = time.monotonic()
        if changed or int(done) >= int(total) or now - state["sent"] >= 0.1:
            state["sent"] = now
            send_event("musetalk.progress", {"node": executing_node_id(), "stage": str(stage),
                                             "done": int(done), "total": int(total)})

    return progress


def oom_exceptions() -> tuple[type[BaseException], ...]:
    """Exception types meaning "out of device memory" (never the bare ``Exception``)."""
    types: list[type[BaseException]] = [torch.OutOfMemoryError]
    host_oom = getattr(model_management, "OOM_EXCEPTION", None)
    if isinstance(host_oom, type) and host_oom is not Exception and host_oom not in types:
        types.append(host_oom)
    return tuple(types)


def runtime(dtype: torch.dtype | None = None) -> Runtime:
    """The execution context for one node run: the host's devices, progress and interruption."""
    if model_management is None:
        return default_runtime(dtype=dtype)

    device = model_management.get_torch_device()

    def load(modules: Sequence[Any]) -> None:
        patchers = [getattr(m, "comfy_patcher", None) for m in modules]
        if any(p is not None for p in patchers):
            model_management.load_models_gpu([p for p in patchers if p is not None])
        for m, p in zip(modules, patchers, strict=True):
            if p is None and isinstance(m, torch.nn.Module):
                m.to(device)

    def free(device: torch.device) -> int | None:
        return int(model_management.get_free_memory(device))

    return Runtime(
        device=device,
        intermediate_device=model_management.intermediate_device(),
        dtype=dtype,
        progress=_progress_fn(),
        check_interrupt=model_management.throw_exception_if_processing_interrupted,
        load_models=load,
        free_memory=free,
        oom_exceptions=oom_exceptions(),
    )


# --------------------------------------------------------------------------- errors


def _passes_through(err: BaseException) -> bool:
    """Errors the host handles itself: its interrupt, and out-of-memory (it adds a tip)."""
    interrupt = getattr(model_management, "InterruptProcessingException", None)
    if interrupt is not None and isinstance(err, interrupt):
        return True
    return isinstance(err, oom_exceptions())


@contextlib.contextmanager
def errors_for(node: str) -> Iterator[None]:
    """Name ``node`` in every error raised inside; wrap unexpected ones (none reach users bare)."""
    try:
        yield
    except MuseTalkError as err:
        err.for_node(node)
        raise
    except Exception as err:
        if _passes_through(err):
            raise
        raise MuseTalkError(
            f"unexpected {type(err).__name__}: {err}",
            fix="this is a bug in the MuseTalk pack; please report it with the console log",
            node=node,
        ) from err


# --------------------------------------------------------------------------- node classes


def _call(d: _spec.NodeDef, kwargs: dict[str, Any]) -> _spec.Result:
    with errors_for(d.display_name):
        return d.call(**kwargs)


_CUSTOM_TYPES: dict[str, Any] = {}


def _v3_type(type_name: str) -> Any:
    builtin = {
        _spec.IMAGE: io.Image,
        _spec.MASK: io.Mask,
        _spec.AUDIO: io.Audio,
        _spec.VIDEO: io.Video,
        _spec.VAE: io.Vae,
        _spec.INT: io.Int,
        _spec.FLOAT: io.Float,
        _spec.BOOLEAN: io.Boolean,
        _spec.STRING: io.String,
    }
    if type_name in builtin:
        return builtin[type_name]
    if type_name not in _CUSTOM_TYPES:
        _CUSTOM_TYPES[type_name] = io.Custom(type_name)
    return _CUSTOM_TYPES[type_name]


def _v3_input(spec: _spec.In) -> Any:
    common = {"optional": spec.optional, "tooltip": spec.tooltip}
    slider = io.NumberDisplay.slider if spec.slider else None
    if spec.type == _spec.INT:
        return io.Int.Input(spec.name, default=spec.default, min=spec.min, max=spec.max,
                            step=spec.step, display_mode=slider, **common)
    if spec.type == _spec.FLOAT:
        return io.Float.Input(spec.name, default=spec.default, min=spec.min, max=spec.max,
                              step=spec.step, display_mode=slider, **common)
    if spec.type == _spec.BOOLEAN:
        return io.Boolean.Input(spec.name, default=spec.default, **common)
    if spec.type == _spec.STRING:
        return io.String.Input(spec.name, default=spec.default, multiline=spec.multiline, **common)
    if spec.type == _spec.COMBO:
        return io.Combo.Input(spec.name, options=spec.choices(), default=spec.default, **common)
    return _v3_type(spec.type).Input(spec.name, **common)


def v3_node_class(d: _spec.NodeDef) -> type:
    """A V3 ``io.ComfyNode`` subclass for ``d``."""

    def define_schema(cls: type) -> Any:
        return io.Schema(
            node_id=d.node_id,
            display_name=d.display_name,
            category=d.category,
            description=d.description,
            inputs=[_v3_input(i) for i in d.inputs],
            outputs=[_v3_type(o.type).Output(display_name=o.name, tooltip=o.tooltip)
                     for o in d.outputs],
            is_output_node=d.output_node,
        )

    def execute(cls: type, **kwargs: Any) -> Any:
        result = _call(d, kwargs)
        return io.NodeOutput(*result.values, ui=result.ui)

    attrs: dict[str, Any] = {
        "define_schema": classmethod(define_schema),
        "execute": classmethod(execute),
        "__doc__": d.description,
    }
    if d.fingerprint is not None:
        fingerprint = d.fingerprint

        def fingerprint_inputs(cls: type, **kwargs: Any) -> Any:
            return fingerprint(**kwargs)

        attrs["fingerprint_inputs"] = classmethod(fingerprint_inputs)
    return type(d.node_id, (io.ComfyNode,), attrs)


def _v1_input(spec: _spec.In) -> tuple[Any, dict[str, Any]]:
    opts: dict[str, Any] = {"tooltip": spec.tooltip}
    for key in ("default", "min", "max", "step"):
        value = getattr(spec, key)
        if value is not None:
            opts[key] = value
    if spec.multiline:
        opts["multiline"] = True
    if spec.slider:
        opts["display"] = "slider"
    if spec.type == _spec.COMBO:
        return (spec.choices(), opts)
    return (spec.type, opts)


def v1_node_class(d: _spec.NodeDef) -> type:
    """A classic (V1) node class for ``d``, for hosts without ``comfy_api.latest``."""

    def input_types(cls: type) -> dict[str, Any]:
        required = {i.name: _v1_input(i) for i in d.inputs if not i.optional}
        optional = {i.name: _v1_input(i) for i in d.inputs if i.optional}
        return {"required": required, "optional": optional}

    def run(self: Any, **kwargs: Any) -> Any:
        result = _call(d, kwargs)
        if result.ui is not None:
            return {"ui": result.ui, "result": result.values}
        return result.values

    attrs: dict[str, Any] = {
        "INPUT_TYPES": classmethod(input_types),
        "RETURN_TYPES": tuple(o.type for o in d.outputs),
        "RETURN_NAMES": tuple(o.name for o in d.outputs),
        "OUTPUT_TOOLTIPS": tuple(o.tooltip for o in d.outputs),
        "FUNCTION": "run",
        "CATEGORY": d.category,
        "DESCRIPTION": d.description,
        "OUTPUT_NODE": d.output_node,
        "run": run,
    }
    if d.fingerprint is not None:
        fingerprint = d.fingerprint

        def is_changed(cls: type, **kwargs: Any) -> Any:
            return fingerprint(**kwargs)

        attrs["IS_CHANGED"] = classmethod(is_changed)
    return type(d.node_id, (), attrs)


def v1_mappings(defs: Sequence[_spec.NodeDef]) -> tuple[dict[str, type], dict[str, str]]:
    """``NODE_CLASS_MAPPINGS`` and ``NODE_DISPLAY_NAME_MAPPINGS`` for ``defs``."""
    classes = {d.node_id: v1_node_class(d) for d in defs}
    names = {d.node_id: d.display_name for d in defs}
    return classes, names


def v3_entrypoint(defs: Sequence[_spec.NodeDef]) -> Any:
    """A ``comfy_entrypoint`` coroutine function returning our ``ComfyExtension``."""

    class MuseTalkExtension(ComfyExtension):
        async def get_node_list(self) -> list[type]:
            return [v3_node_class(d) for d in defs]

    async def comfy_entrypoint() -> Any:
        return MuseTalkExtension()

    return comfy_entrypoint


# --------------------------------------------------------------------------- web extension


def _prompt_server() -> Any:
    """The host's ``PromptServer.instance`` (``None`` outside the host or before it exists)."""
    if not IN_HOST:
        return None
    try:
        from server import PromptServer
    except ImportError:
        return None
    return getattr(PromptServer, "instance", None)


def add_route(method: str, path: str, handler: Any) -> bool:
    """Register an aiohttp ``handler`` for ``method path`` on the host's server.

    The host mirrors every route under ``/api`` too. Returns False (and does nothing) outside
    the host.
    """
    server = _prompt_server()
    if server is None:
        return False
    server.routes.route(method.upper(), path)(handler)
    return True


def register_routes(routes: Sequence[tuple[str, str, Any]]) -> int:
    """Register ``(method, path, handler)`` routes; a failure is logged, never raised.

    Returns how many were registered (0 outside the host).
    """
    count = 0
    for method, path, handler in routes:
        try:
            count += bool(add_route(method, path, handler))
        except Exception as err:  # the nodes must load even if a route cannot
            log.warning("could not register %s %s: %s", method, path, err)
    return count


def send_event(name: str, data: dict[str, Any], *, broadcast: bool = False) -> None:
    """Send a websocket event to the tab that queued the prompt (every tab if ``broadcast``).

    A no-op outside the host; never raises (the web extension is optional).
    """
    server = _prompt_server()
    if server is None:
        return
    try:
        server.send_sync(name, data, None if broadcast else server.client_id)
    except Exception as err:  # pragma: no cover - defensive
        log.debug("could not send %s: %s", name, err)


def executing_node_id() -> str | None:
    """The id of the node the host is executing now (``None`` outside a node's execution)."""
    if not IN_HOST:
        return None
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:
        return None
    ctx = get_executing_context()
    return None if ctx is None else str(ctx.node_id)


def save_preview_images(frames: Any, *, max_side: int = 384, prefix: str = "musetalk_preview",
                        quality: int = 85) -> list[dict[str, str]]:
    """Save frames as small JPEG files in the host's temp folder, for the web extension.

    Args:
        frames: uint8 ``[N, H, W, 3]`` RGB (numpy or tensor) or float 0..1 ``[N, H, W, 3]``.
        max_side: frames are downscaled so their longer side is at most this many pixels.

    Returns:
        ``[{"filename", "subfolder", "type": "temp"}, ...]`` as ``/view`` expects; ``[]`` outside
        the host (nothing is written there).
    """
    folder = temp_directory()
    if folder is None or frames is None or len(frames) == 0:
        return []
    from PIL import Image

    batch = torch.as_tensor(frames)
    if batch.is_floating_point():
        batch = (batch.clamp(0, 1) * 255).round().to(torch.uint8)
    batch = batch[..., :3].cpu()
    h, w = int(batch.shape[1]), int(batch.shape[2])
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    os.makedirs(folder, exist_ok=True)
    tag = uuid.uuid4().hex[:10]
    saved = []
    for i, frame in enumerate(batch):
        img = Image.fromarray(frame.numpy())
        if size != (w, h):
            img = img.resize(size, Image.BILINEAR)
        name = f"{prefix}_{tag}_{i:03d}.jpg"
        img.save(os.path.join(folder, name), quality=quality)
        saved.append({"filename": name, "subfolder": "", "type": "temp"})
    return saved


# --------------------------------------------------------------------------- model placement

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def model_devices() -> tuple[torch.device, torch.device]:
    """``(load_device, offload_device)`` for the pack's models (CPU, CPU outside the host)."""
    if model_management is None:
        return torch.device("cpu"), torch.device("cpu")
    return model_management.get_torch_device(), model_management.unet_offload_device()


def supports_dtype(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether ``device`` computes in ``dtype`` (the host's capability queries where present)."""
    if dtype == torch.float32 or device.type == "cpu":
        return True  # CPU: the loader's one-batch probe decides
    if model_management is not None:
        query = (model_management.should_use_bf16 if dtype == torch.bfloat16
                 else model_management.should_use_fp16)
        return bool(query(device, prioritize_performance=False, manual_cast=True))
    if device.type == "cuda" and dtype == torch.bfloat16:
        return bool(torch.cuda.is_bf16_supported())
    return True


def choose_dtype(requested: str, device: torch.device) -> tuple[torch.dtype, str | None]:
    """The dtype for a loader's ``dtype`` input, and a warning when a fallback was taken.

    ``auto``: fp32 on CPU; elsewhere the host's choice (fp16 where it would use fp16, else bf16,
    else fp32). An explicit bf16 without support falls back to fp16 (or fp32), fp16 to fp32.
    """
    if requested == "auto":
        if device.type == "cpu":
            return torch.float32, None
        if model_management is not None:
            if model_management.should_use_fp16(device):
                return torch.float16, None
            if model_management.should_use_bf16(device):
                return torch.bfloat16, None
            return torch.float32, None
        return torch.float16, None
    dtype = DTYPES[requested]
    if supports_dtype(dtype, device):
        return dtype, None
    if dtype == torch.bfloat16 and supports_dtype(torch.float16, device):
        return torch.float16, f"bf16 not supported on {device}; using fp16. Fix: dtype auto"
    return torch.float32, f"{requested} not supported on {device}; using fp32. Fix: dtype auto"


def attach_patcher(module: Any, load_device: torch.device, offload_device: torch.device) -> Any:
    """Give ``module`` a host ``ModelPatcher`` (``module.comfy_patcher``) so the host can offload
    it; outside the host, or for non-modules, nothing happens. Returns ``module``."""
    if model_management is None or not isinstance(module, torch.nn.Module):
        return module
    import comfy.model_patcher

    size = sum(t.numel() * t.element_size()
               for t in list(module.parameters()) + list(module.buffers()))
    # The patcher writes bookkeeping attributes onto the module it manages (``device``,
    # ``model_lowvram``, ...); our models expose ``device`` as a read-only property, so the patcher
    # manages a plain holder whose only child is the module (moves and evictions reach it).
    holder = _patcher_holder(type(module))(module)
    module.comfy_patcher = comfy.model_patcher.ModelPatcher(
        holder, load_device=load_device, offload_device=offload_device, size=size)
    return module


_HOLDERS: dict[type, type] = {}


def _patcher_holder(cls: type) -> type:
    """A holder ``nn.Module`` class named like ``cls`` (the host logs "Requested to load
    <name>")."""
    if cls not in _HOLDERS:
        def __init__(self: Any, inner: torch.nn.Module) -> None:  # noqa: N807
            torch.nn.Module.__init__(self)
            self.inner = inner

        _HOLDERS[cls] = type(cls.__name__, (torch.nn.Module,), {"__init__": __init__})
    return _HOLDERS[cls]
