"""MuseTalk Lip Sync (video) in the real host: Load Video -> MuseTalkLipSyncVideo -> Save Video.

The shipped ``long_clip_streaming`` workflow, adapted by ``_prompts.adapt`` (test face source from
the media's landmarks; Load Audio trimmed by core TrimAudioDuration, which sets the length), with
a small ``frames_per_chunk`` so several chunks stream. Checks the saved file with PyAV (frame
count = floor(samples * fps / sr), fps exactly 25, an audio stream), progress messages from our
node, and that an interrupt mid-run leaves no file behind in the host's temp folder.
"""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
from host._prompts import adapt, expected_frames, load, node_ids, probe, saved_video

LANDMARKS = "talk_25fps_512x512.landmarks.npz"
NODE = "MuseTalkLipSyncVideo"


@pytest.fixture(scope="module")
def media_in_input(host):
    if not (host.base / "input" / "talk_25fps_512x512.mp4").exists():
        pytest.skip("shared test media not found")
    return host


def _prompt(seconds: float, chunk: int) -> tuple[dict, str]:
    n = expected_frames(seconds, Fraction(25))
    prompt = adapt(load("long_clip_streaming"), landmarks=LANDMARKS, frames=n, seconds=seconds)
    node = node_ids(prompt, NODE)[0]
    prompt[node]["inputs"]["frames_per_chunk"] = chunk
    return prompt, node


def _temp_files(host) -> set[str]:
    temp = host.base / "temp"
    return {str(p.relative_to(temp)) for p in temp.rglob("*")} if temp.exists() else set()


def test_streaming_workflow_saves_speech_length_video(media_in_input):
    host = media_in_input
    seconds = 0.3
    prompt, node = _prompt(seconds, chunk=3)
    result = host.run_prompt(prompt, timeout=900)
    errors = [m for m in result["messages"] if m["type"] == "execution_error"]
    assert result["status"] == "success", json.dumps(errors)[:3000] or result["status"]

    info = probe(saved_video(host, result, node_ids(prompt, "SaveVideo")[0]))
    n = expected_frames(seconds, Fraction(25))
    assert n == 7 and info["frames"] == n, info
    assert info["rate"] == Fraction(25) and isinstance(info["rate"], Fraction)
    assert info["audio"], "the saved video has no audio stream"
    ours = [m["data"] for m in result["messages"]
            if m["type"] == "progress" and m["data"]["node"] == node]
    assert ours and ours[-1]["value"] == ours[-1]["max"] == n, ours
    assert len(ours) >= 3  # 7 frames in chunks of 3: a step per chunk


def test_interrupt_leaves_no_temp_file(media_in_input):
    host = media_in_input
    prompt, node = _prompt(1.0, chunk=2)  # 25 frames in 13 chunks: time to interrupt
    before = _temp_files(host)
    out = host.base / "output"
    saved = set(out.rglob("*")) if out.exists() else set()
    sent = []

    def interrupt(msg, h):
        if not sent and msg["type"] == "progress" and msg["data"]["node"] == node:
            h.post("/interrupt", {})
            sent.append(msg["data"]["value"])

    result = host.run_prompt(prompt, timeout=900, on_message=interrupt)
    assert sent, "no progress from the node before it finished"
    assert result["status"] == "interrupted", result["status"]
    left = _temp_files(host) - before
    assert not left, f"files left in the host temp folder: {sorted(left)}"
    assert (set(out.rglob("*")) if out.exists() else set()) == saved, "a file was saved"
