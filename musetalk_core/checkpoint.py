"""Reading checkpoint files safely: safetensors, or ``torch.load(weights_only=True)``; never code.

Every loader of the pack reads its files through :func:`read_checkpoint`, which

* refuses a pickle that would run code, naming the callable it would have called,
* refuses TorchScript archives in a state-dict slot,
* turns truncated or corrupt files into a clear :class:`WeightsError` with byte counts,
* rejects malformed safetensors headers before allocating anything large.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

import torch

from .errors import WeightsError

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar", ".pkl")
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def _display(path: str, display_name: str | None) -> str:
    return display_name or os.path.basename(path)


def is_torchscript(path: str) -> bool:
    """True if ``path`` is a TorchScript archive (a zip with compiled code inside)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for n in names)


def _check_safetensors_header(path: str, shown: str, fix: str) -> None:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightsError(f"{shown} is not a valid safetensors file (only {size} bytes)",
                               fix=fix)
        (n,) = struct.unpack("<Q", head)
        if n > MAX_SAFETENSORS_HEADER or n + 8 > size:
            raise WeightsError(
                f"{shown} is not a valid safetensors file (header of {n} bytes in a file of "
                f"{size} bytes: truncated or corrupt)", fix=fix)
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise WeightsError(f"{shown} is not a valid safetensors file (unreadable header)",
                               fix=fix) from err
    data_len = size - 8 - n
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        offsets = meta.get("data_offsets") if isinstance(meta, dict) else None
        if not offsets or len(offsets) != 2 or not 0 <= offsets[0] <= offsets[1] <= data_len:
            raise WeightsError(
                f"{shown} is not a valid safetensors file (tensor '{key}' lies outside the "
                f"file's {data_len} data bytes: truncated or corrupt)", fix=fix)


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+) (?:was not an allowed global|whose module)")


def _unsafe_global(message: str) -> str | None:
    """The callable a refused pickle names (torch's message wording varies across versions)."""
    m = _GLOBAL_RE.search(message)
    return m.group(1) if m else None


def read_checkpoint(
    path: str,
    *,
    display_name: str | None = None,
    fix: str = "download it again, or use a .safetensors copy",
) -> Any:
    """Load a checkpoint file without ever executing code from it.

    Args:
        path: the file (``.safetensors``, or a torch pickle/zip such as ``.bin``/``.pth``/``.pt``).
        display_name: how to name the file in errors (``musetalk/pytorch_model.bin``).
        fix: the fix to suggest when the file is unreadable (where to get a good copy).

    Returns:
        For safetensors, a ``dict[str, Tensor]`` on the CPU; for torch files, the unpickled
        object (tensors, dicts, lists, numbers and strings only).

    Raises:
        WeightsError: missing, empty, truncated, corrupt, TorchScript, or code-carrying files.
    """
    shown = _display(path, display_name)
    if not os.path.exists(path):
        raise WeightsError(f"{shown} is listed but no longer exists (broken link or removed)",
                           fix="refresh the node list (press R) and pick again, or re-download")
    size = os.path.getsize(path)
    if size == 0:
        raise WeightsError(f"{shown} is empty (0 bytes)", fix=f"delete it and {fix}")
    if path.endswith((".safetensors", ".sft")):
        _check_safetensors_header(path, shown, f"delete it and {fix}")
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as err:  # safetensors raises its own SafetensorError
            raise WeightsError(f"{shown} is not a valid safetensors file ({err})",
                               fix=f"delete it and {fix}") from err
    if is_torchscript(path):
        raise WeightsError(
            f"{shown} is a TorchScript program, not weights; refused (it would run code)",
            fix=f"replace it with the state-dict file: {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        name = _unsafe_global(str(err))
        if name:
            raise WeightsError(
                f"{shown} contains code that would run when loaded (it calls '{name}'); "
                "not loaded", fix=f"{fix}; or convert it to safetensors in an environment you "
                "trust") from None
        raise WeightsError(f"{shown} is incomplete or corrupt ({size} bytes, unreadable)",
                           fix=f"delete it and {fix}") from err
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise WeightsError(f"{shown} is incomplete or corrupt ({size} bytes, unreadable: "
                           f"{str(err).splitlines()[0][:120]})",
                           fix=f"delete it and {fix}") from err


def state_dict_of(obj: Any, *, shown: str, keys: tuple[str, ...] = (
        "state_dict", "model_state_dict", "model", "module", "net")) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a loaded checkpoint (unwrapping the usual container keys)."""
    seen = 0
    while isinstance(obj, Mapping) and seen < 3:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        inner = next((obj[k] for k in keys if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            break
        obj, seen = inner, seen + 1
    if isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise WeightsError(f"{shown} holds no weights (found {type(obj).__name__})",
                       fix="pick the model's weight file")


def strip_prefixes(sd: dict[str, torch.Tensor], prefixes: tuple[str, ...] = (
        "module.", "unet.", "model.")) -> dict[str, torch.Tensor]:
    """Remove one wrapper prefix shared by every key (re-uploads add ``module.`` and friends)."""
    for prefix in prefixes:
        if sd and all(k.startswith(prefix) for k in sd):
            log.info("stripping key prefix %r from %d tensors", prefix, len(sd))
            return {k[len(prefix):]: v for k, v in sd.items()}
    return sd
