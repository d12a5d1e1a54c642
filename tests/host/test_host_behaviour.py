"""Host behaviour with the dub workflow (robustness.md H1, H2, H3, H6, S5; no face -> error).

All runs use ``workflows/api/dub_a_clip.json`` adapted by ``_prompts.adapt`` (test face source,
8 frames, a fraction of a second of speech). Runs with different speech lengths differ only in
TrimAudioDuration's ``duration``: the same LoadAudio file, frames and models.
"""

from __future__ import annotations

import json
import time

import pytest
from host._prompts import (
    adapt,
    cached_nodes,
    executed_nodes,
    expected_frames,
    load,
    node_ids,
    probe,
    saved_video,
)

LANDMARKS = "talk_25fps_512x512.landmarks.npz"
UNET_LOADS = "Requested to load MuseTalkUNet"


@pytest.fixture(scope="module")
def dub(host):
    if not (host.base / "input" / "talk_25fps_512x512.mp4").exists():
        pytest.skip("shared test media not found")

    def make(seconds: float, **inpaint: object) -> dict:
        p = adapt(load("dub_a_clip"), landmarks=LANDMARKS, frames=8, seconds=seconds)
        for i in node_ids(p, "MuseTalkInpaint"):
            p[i]["inputs"].update(inpaint)
        return p

    return make


def _ok(result: dict) -> None:
    errors = [m for m in result["messages"] if m["type"] == "execution_error"]
    assert result["status"] == "success", json.dumps(errors)[:3000] or result["status"]


def _ids(prompt: dict, *types: str) -> set[str]:
    return {i for t in types for i in node_ids(prompt, t)}


def test_cache_requeue_audio_change_and_free(host, dub):
    """H2: an identical re-queue runs nothing. H3: new speech re-runs only the audio path, and
    the source crops are not VAE-encoded again. H6: /free unloads our UNet (it is a ModelPatcher
    in the host's list); the next run reloads it transparently."""
    first = dub(0.32)
    before = host.run_prompt(first)
    _ok(before)

    again = host.run_prompt(first)
    _ok(again)
    assert cached_nodes(again) == set(first), "H2: an identical re-queue must run nothing"
    save = node_ids(first, "SaveVideo")[0]
    # the host announces the cached output node while it re-sends its UI, but writes nothing
    assert executed_nodes(again) <= {save}
    assert not [m for m in again["messages"] if m["type"] == "progress"]
    assert saved_video(host, again, save) == saved_video(host, before, save)

    loads_before = host.log().count(UNET_LOADS)
    assert loads_before >= 1, "our UNet never went through the host's load_models_gpu"
    shorter = dub(0.24)
    log_mark = len(host.log())
    result = host.run_prompt(shorter)
    _ok(result)
    audio_path = _ids(shorter, "TrimAudioDuration", "MuseTalkAudioFeatures", "MuseTalkInpaint",
                      "MuseTalkBlend", "CreateVideo", "SaveVideo")
    assert executed_nodes(result) == audio_path, "H3: only the audio path may re-run"
    assert cached_nodes(result) == set(shorter) - audio_path
    inpaint_lines = [ln for ln in host.log()[log_mark:].splitlines()
                     if "MuseTalk Inpaint:" in ln and "encoded" in ln]
    assert inpaint_lines and "0 encoded" in inpaint_lines[-1], inpaint_lines
    assert host.log().count(UNET_LOADS) == loads_before, "the UNet stayed loaded between runs"
    info = probe(saved_video(host, result, node_ids(shorter, "SaveVideo")[0]))
    assert info["frames"] == expected_frames(0.24, 25)

    # H6: unload models only: loaders stay cached, the same modules are reloaded on use
    assert host.post("/free", {"unload_models": True})[0] == 200
    time.sleep(1.0)
    third = dub(0.2)
    result = host.run_prompt(third)
    _ok(result)
    assert _ids(third, "MuseTalkModelLoader", "VAELoader") <= cached_nodes(result)
    assert host.log().count(UNET_LOADS) == loads_before + 1, "/free did not unload our UNet"

    # the documented call: unload and free memory (drops the host's cache: everything re-runs)
    assert host.post("/free", {"unload_models": True, "free_memory": True})[0] == 200
    time.sleep(1.0)
    result = host.run_prompt(third)
    _ok(result)
    assert not cached_nodes(result) & _ids(third, "MuseTalkModelLoader", "MuseTalkInpaint")
    assert host.log().count(UNET_LOADS) == loads_before + 2
    info = probe(saved_video(host, result, node_ids(third, "SaveVideo")[0]))
    assert info["frames"] == expected_frames(0.2, 25)


def test_interrupt_mid_inpaint_then_next_run_succeeds(host, dub):
    """H1: /interrupt when Inpaint reports its first progress ends the run as interrupted (not an
    error); the identical prompt then runs to success, Inpaint included."""
    prompt = dub(0.36, batch_size=2)  # several UNet batches, so the interrupt lands mid-way
    inpaint = node_ids(prompt, "MuseTalkInpaint")[0]
    sent = []

    def on_message(msg, h):
        if (not sent and msg["type"] == "progress"
                and msg["data"].get("node") == inpaint):
            sent.append(msg["data"])
            h.post("/interrupt", {})

    result = host.run_prompt(prompt, on_message=on_message)
    assert sent, "Inpaint sent no progress message"
    assert result["status"] == "interrupted", result["status"]
    assert not [m for m in result["messages"] if m["type"] == "execution_error"]
    outputs = (result["history"] or {}).get("outputs", {})
    assert not outputs.get(node_ids(prompt, "SaveVideo")[0])

    again = host.run_prompt(prompt)
    _ok(again)
    assert inpaint in executed_nodes(again), "the interrupted node must not be cached"
    info = probe(saved_video(host, again, node_ids(prompt, "SaveVideo")[0]))
    assert info["frames"] == expected_frames(0.36, 25)


def test_no_face_error_names_node_and_fix(host):
    """A picture without any face: execution_error from our node, with the fix."""
    if not (host.base / "input" / "no_face_coffee_600x400.png").exists():
        pytest.skip("shared test media not found")
    prompt = adapt(load("talking_portrait"), landmarks="no_face_coffee_600x400.landmarks.npz",
                   frames=1, seconds=0.2, image="no_face_coffee_600x400.png")
    result = host.run_prompt(prompt)
    assert result["status"] == "error"
    err = next(m["data"] for m in result["messages"] if m["type"] == "execution_error")
    assert err["node_type"] == "MuseTalkLipSync"
    assert "[MuseTalk Lip Sync]" in err["exception_message"]
    assert "no face" in err["exception_message"]
    assert "Fix:" in err["exception_message"]


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "musetalk/../../../x",
                                  "whisper/..", "a\x00b", "..\\..\\x"])
def test_path_traversal_in_a_prompt_is_refused(host, name):
    """S5: a file name outside the dropdown never opens a file outside the model folders.

    Host fact (0.3.64): V3 combo inputs are declared as ``"COMBO"`` with the options in the
    input's dict, and ``execution.validate_inputs`` only checks values against list-typed
    combos, so the host does NOT reject these with ``value_not_in_list``; the pack's resolver
    is the guard. The run must end with our loader's error naming the input and the fix.
    """
    prompt = {
        "1": {"class_type": "MuseTalkModelLoader",
              "inputs": {"unet_name": name, "version": "auto", "dtype": "auto",
                         "download": False}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    result = host.run_prompt(prompt)
    if result["status"] == "rejected":  # a host that validates V3 combos refuses it up front
        assert result["code"] == 400
        return
    assert result["status"] == "error"
    err = next(m["data"] for m in result["messages"] if m["type"] == "execution_error")
    assert err["node_type"] == "MuseTalkModelLoader"
    message = err["exception_message"]
    assert "[MuseTalk Model Loader] input 'unet_name'" in message
    assert "Fix:" in message
    assert "unexpected" not in message
