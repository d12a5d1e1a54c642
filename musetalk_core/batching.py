"""Batch size from free memory, and out-of-memory back-off (robustness.md H7).

:func:`auto_batch_size` turns the runtime's free-memory query into a batch size with a
conservative per-frame estimate; :func:`run_batched` walks ``n`` items in batches and, when a batch
raises one of ``runtime.oom_exceptions``, halves the batch and resumes from the failed batch. Work
functions must write their results into preallocated slots (``out[start:stop] = ...``), so a
failed half-done batch leaves nothing behind that a retry could duplicate.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable

import torch

from .errors import OutOfMemoryError
from .runtime import Runtime

log = logging.getLogger(__name__)

CPU_BATCH = 8
"""Batch size on a device whose free memory is unknown (CPU): REF's default."""

MAX_BATCH = 64

INPAINT_BYTES_PER_FRAME_FP32 = 480 * 2**20
"""Peak working memory of one output frame through UNet + VAE decode at fp32.

The decoder's last up-blocks hold several ``[256, 256, 256]`` activations (64 MiB each at fp32);
480 MiB is a measured-then-rounded-up bound, so the automatic batch leaves headroom.
"""


def per_frame_bytes(dtype: torch.dtype | None) -> int:
    """The inpaint per-frame estimate scaled to ``dtype``'s element size."""
    size = torch.empty((), dtype=dtype or torch.float32).element_size()
    return INPAINT_BYTES_PER_FRAME_FP32 * size // 4


def auto_batch_size(
    runtime: Runtime,
    n_items: int,
    bytes_per_item: int,
    *,
    requested: int = 0,
    fraction: float = 0.6,
) -> int:
    """The batch size to start with.

    Args:
        runtime: gives ``device`` and ``free_memory``.
        n_items: items to process (the batch never exceeds it).
        bytes_per_item: peak working memory of one item.
        requested: a user's batch size (> 0) or 0 for automatic.
        fraction: share of the free memory the batch may use.

    Returns:
        ``1 <= batch <= max(1, n_items)``. A requested size is clamped to ``n_items`` and the
        memory estimate (with a log line when clamped).
    """
    n = max(1, int(n_items))
    free = runtime.free_memory(runtime.device)
    fit = None if free is None else max(1, int(free * fraction) // max(1, bytes_per_item))
    if requested and requested > 0:
        batch = min(int(requested), n)
        if fit is not None and batch > fit:
            log.info("batch_size %d lowered to %d to fit %.1f GB free", batch, fit, free / 1e9)
            batch = fit
        return max(1, batch)
    batch = CPU_BATCH if fit is None else min(fit, MAX_BATCH)
    return max(1, min(batch, n))


def _empty_cache(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_batched(
    n_items: int,
    batch_size: int,
    work: Callable[[int, int], None],
    runtime: Runtime,
    stage: str,
) -> int:
    """Call ``work(start, stop)`` over ``0..n_items`` in batches, halving on out-of-memory.

    ``runtime.step(done, n_items, stage)`` runs after each batch (progress and interruption).
    After an out-of-memory error the same ``start`` is retried at half the batch; once a smaller
    batch succeeds, one warning line names the sizes. At batch 1 the error becomes
    :class:`OutOfMemoryError`.

    Returns:
        the batch size in use at the end (callers may keep it for the next stage or chunk).
    """
    batch = max(1, int(batch_size))
    failed_at: int | None = None
    start = 0
    while start < n_items:
        stop = min(n_items, start + batch)
        try:
            work(start, stop)
        except runtime.oom_exceptions as err:
            _empty_cache(runtime.device)
            if batch == 1:
                free = runtime.free_memory(runtime.device)
                free_txt = f"free {free / 1e9:.1f} GB" if free is not None else "free unknown"
                raise OutOfMemoryError(
                    f"out of {'GPU' if runtime.device.type != 'cpu' else 'device'} memory even "
                    f"at batch size 1 ({free_txt}) during {stage}",
                    input_name="batch_size",
                    fix="close other GPU apps, use fp16, or start ComfyUI with --lowvram",
                ) from err
            failed_at = failed_at or batch
            batch = max(1, batch // 2)
            continue
        if failed_at is not None:
            log.warning("out of memory at batch %d; continuing at %d (%s)", failed_at, batch,
                        stage)
            failed_at = None
        start = stop
        runtime.step(start, n_items, stage)
    return batch
