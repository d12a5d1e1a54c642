"""What the caller hands the core: devices, dtype, progress, interruption and memory queries.

The core never picks a device itself. Inside ComfyUI the adapter (``nodes/_host.py``) builds a
:class:`Runtime` from ``comfy.model_management`` and ``comfy.utils.ProgressBar``; outside the host
(CLI, scripts, tests) :func:`default_runtime` gives a CPU (or explicit device) runtime whose
progress goes to the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, str], None]
"""``progress(done, total, stage)``: called after each unit of work; may raise to interrupt."""


def _no_progress(done: int, total: int, stage: str) -> None:
    return None


def _no_interrupt() -> None:
    return None


def _no_load(modules: Sequence[Any]) -> None:
    return None


@dataclass(frozen=True)
class Runtime:
    """Execution context of one core call.

    Attributes:
        device: where models run and batches are computed.
        intermediate_device: where results that outlive a batch are kept (CPU in the host's
            default mode), so a long clip never sits on the GPU.
        dtype: compute dtype for models, or ``None`` to follow each model's own dtype.
        progress: ``(done, total, stage) -> None``; the host's progress bar. It may raise the host's
            interrupt exception.
        check_interrupt: raises if the user asked to stop; called at least once per batch.
        load_models: makes the given modules resident on ``device`` right before compute (in the
            host through each module's ``comfy_patcher`` and ``load_models_gpu``, so the host can
            offload them; outside it a plain ``.to(device)``).
        free_memory: returns free bytes on ``device`` (``None``: unknown).
        oom_exceptions: exception types that mean "out of device memory".
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    intermediate_device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype | None = None
    progress: ProgressFn = _no_progress
    check_interrupt: Callable[[], None] = _no_interrupt
    load_models: Callable[[Sequence[Any]], None] = _no_load
    free_memory: Callable[[torch.device], int | None] = lambda device: None
    oom_exceptions: tuple[type[BaseException], ...] = (torch.OutOfMemoryError,)

    def step(self, done: int, total: int, stage: str) -> None:
        """Report progress and honour interruption; call once per batch or chunk."""
        self.check_interrupt()
        self.progress(done, total, stage)


def _log_progress(done: int, total: int, stage: str) -> None:
    log.debug("%s: %d/%d", stage, done, total)


def default_runtime(
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    progress: ProgressFn | None = None,
) -> Runtime:
    """A runtime for use outside the host: explicit device (default CPU), log progress."""
    dev = torch.device(device) if device is not None else torch.device("cpu")

    def free(d: torch.device) -> int | None:
        if d.type == "cuda" and torch.cuda.is_available():
            return int(torch.cuda.mem_get_info(d)[0])
        return None

    def load(modules: Sequence[Any]) -> None:
        for m in modules:
            if isinstance(m, torch.nn.Module):
                m.to(dev)

    return Runtime(
        device=dev,
        intermediate_device=torch.device("cpu"),
        dtype=dtype,
        progress=progress or _log_progress,
        load_models=load,
        free_memory=free,
    )
