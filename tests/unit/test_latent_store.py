"""LatentStore: the chunked pipeline's bounded, least-recently-used memo of source latents."""

from __future__ import annotations

import torch

from musetalk_core.pipeline import LatentStore


def _latents(value: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((4, 32, 32), value), torch.full((4, 32, 32), -value)


def test_keeps_copies_and_evicts_the_least_recently_used():
    store = LatentStore(2)
    for s in (10, 11):
        masked, full = _latents(float(s))
        store.write(s, masked, full)
        masked.zero_()  # the store holds its own copy
    got_m, got_f = torch.empty(4, 32, 32), torch.empty(4, 32, 32)
    assert store.read(10, got_m, got_f)  # 10 is now the most recently used
    assert torch.equal(got_m, _latents(10.0)[0]) and torch.equal(got_f, _latents(10.0)[1])
    store.write(12, *_latents(12.0))  # evicts 11, the least recently used
    assert len(store) == 2
    assert not store.read(11, got_m, got_f)
    assert store.read(12, got_m, got_f) and float(got_m[0, 0, 0]) == 12.0
    assert store.read(10, got_m, got_f) and float(got_f[0, 0, 0]) == -10.0


def test_rewrite_updates_in_place_and_zero_capacity_keeps_nothing():
    store = LatentStore(3)
    store.write(5, *_latents(1.0))
    store.write(5, *_latents(2.0))
    got_m, got_f = torch.empty(4, 32, 32), torch.empty(4, 32, 32)
    assert len(store) == 1 and store.read(5, got_m, got_f) and float(got_m[1, 2, 3]) == 2.0
    empty = LatentStore(0)
    empty.write(5, *_latents(1.0))
    assert len(empty) == 0 and not empty.read(5, got_m, got_f)
