"""Length policies (robustness.md section 5, T1-T3): the source index of every output frame."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from musetalk_core import timeline
from musetalk_core.errors import InputError


def _list(t: torch.Tensor) -> list[int]:
    assert t.dtype == torch.int64
    return t.tolist()


def test_pingpong_is_refs_cycle_with_both_ends_repeated():
    assert _list(timeline.source_index(3, 10, "pingpong")) == [0, 1, 2, 2, 1, 0, 0, 1, 2, 2]


def test_t1_sixty_seconds_on_eight_second_clip():
    n_src, n_audio = 200, 1500
    cycle = list(range(200)) + list(range(199, -1, -1))
    assert _list(timeline.source_index(n_src, n_audio, "pingpong")) == [
        cycle[i % 400] for i in range(1500)]
    assert _list(timeline.source_index(n_src, n_audio, "loop")) == [i % 200 for i in range(1500)]
    assert _list(timeline.source_index(n_src, n_audio, "hold_last")) == [
        min(i, 199) for i in range(1500)]
    assert _list(timeline.source_index(n_src, n_audio, "trim")) == list(range(200))


def test_loop_and_hold_last_small():
    assert _list(timeline.source_index(3, 7, "loop")) == [0, 1, 2, 0, 1, 2, 0]
    assert _list(timeline.source_index(3, 6, "hold_last")) == [0, 1, 2, 2, 2, 2]


@pytest.mark.parametrize("policy", timeline.POLICIES)
def test_t2_video_longer_than_audio_is_truncated(policy):
    assert _list(timeline.source_index(200, 25, policy)) == list(range(25))
    assert "truncated to 25 of 200" in timeline.describe(200, 25, policy)


@pytest.mark.parametrize("policy", timeline.POLICIES)
def test_t3_near_equal_lengths(policy):
    assert _list(timeline.source_index(240, 239, policy)) == list(range(239))
    assert _list(timeline.source_index(200, 200, policy)) == list(range(200))


@pytest.mark.parametrize("policy", timeline.POLICIES)
def test_still_image_repeats_under_every_policy(policy):
    idx = timeline.source_index(1, 50, policy)
    assert _list(idx) == [0] * 50
    assert timeline.output_length(1, 50, policy) == 50


def test_trim_length_is_the_minimum():
    assert timeline.output_length(200, 1500, "trim") == 200
    assert timeline.output_length(200, 1500, "pingpong") == 1500
    assert timeline.output_length(200, 20, "trim") == 20


def test_samples_for_frames_within_one_sample():
    assert timeline.samples_for(200, Fraction(25), 16000) == 128000
    n = timeline.samples_for(239, Fraction(30000, 1001), 16000)
    assert abs(n - 239 * 1001 / 30000 * 16000) <= 0.5
    assert timeline.samples_for(3, 25.0, 44100) == 5292


def test_bad_inputs_name_the_input():
    with pytest.raises(InputError, match="length_policy"):
        timeline.source_index(3, 3, "bounce")
    with pytest.raises(InputError, match="'audio'"):
        timeline.source_index(3, 0)
    with pytest.raises(InputError, match="'images'"):
        timeline.source_index(0, 3)
