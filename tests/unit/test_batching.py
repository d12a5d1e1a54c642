"""Automatic batch size and the out-of-memory back-off (robustness.md H7)."""

from __future__ import annotations

import logging

import pytest
import torch

from musetalk_core import batching
from musetalk_core.errors import OutOfMemoryError
from musetalk_core.runtime import Runtime


class FakeOOMError(RuntimeError):
    """Stands in for the host's OOM exception type."""


def _runtime(free=None, steps=None):
    def progress(done, total, stage):
        if steps is not None:
            steps.append((done, total, stage))

    return Runtime(free_memory=lambda d: free, oom_exceptions=(FakeOOMError,), progress=progress)


def test_auto_batch_cpu_default_and_clamps():
    rt = _runtime(free=None)
    assert batching.auto_batch_size(rt, 100, 10) == batching.CPU_BATCH
    assert batching.auto_batch_size(rt, 3, 10) == 3
    assert batching.auto_batch_size(rt, 100, 10, requested=10**9) == 100


def test_auto_batch_follows_free_memory():
    per = batching.per_frame_bytes(torch.float16)
    assert per == batching.INPAINT_BYTES_PER_FRAME_FP32 // 2
    rt = _runtime(free=10 * per)
    assert batching.auto_batch_size(rt, 100, per) == 6  # 60 % of the free memory
    assert batching.auto_batch_size(rt, 100, per, requested=16) == 6
    assert batching.auto_batch_size(_runtime(free=0), 100, per) == 1
    assert batching.auto_batch_size(_runtime(free=10**15), 1000, per) == batching.MAX_BATCH


def test_back_off_resumes_from_the_failed_batch(caplog):
    calls, done = [], torch.zeros(37, dtype=torch.int64)
    steps: list = []

    def work(start, stop):
        calls.append((start, stop))
        if len(calls) == 3 and stop - start > 4:
            raise FakeOOMError("boom")
        if len(calls) == 4 and stop - start > 4:
            raise FakeOOMError("boom again")
        done[start:stop] += 1

    with caplog.at_level(logging.WARNING, logger="musetalk_core.batching"):
        final = batching.run_batched(37, 16, work, _runtime(steps=steps), "UNet")
    assert final == 4
    assert done.tolist() == [1] * 37  # nothing duplicated, nothing skipped
    assert calls[:5] == [(0, 16), (16, 32), (32, 37), (32, 37), (32, 36)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["out of memory at batch 16; continuing at 4 (UNet)"]
    assert steps[-1] == (37, 37, "UNet")


def test_oom_at_batch_one_is_a_clear_error():
    def work(start, stop):
        raise FakeOOMError("CUDA out of memory")

    with pytest.raises(OutOfMemoryError) as err:
        batching.run_batched(5, 2, work, _runtime(free=int(1.5e9)), "VAE decode")
    msg = str(err.value)
    assert "even at batch size 1 (free 1.5 GB)" in msg
    assert "Fix: close other GPU apps, use fp16, or start ComfyUI with --lowvram" in msg
    assert isinstance(err.value.__cause__, FakeOOMError)


def test_other_errors_pass_through():
    def work(start, stop):
        raise ValueError("not memory")

    with pytest.raises(ValueError):
        batching.run_batched(5, 2, work, _runtime(), "x")
