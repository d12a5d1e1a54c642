"""The shared workflows in the real host: they validate, run end to end on the real media with the
tiny checkpoints, and write a video whose length follows the speech exactly.

Each API twin in ``workflows/api`` is adapted by ``_prompts.adapt`` (test face source from the
media's landmarks, a few frames and a fraction of a second of speech: see that module), queued
through ``POST /prompt`` (which validates every shipped widget value: the adaptation only adds
nodes) and checked: success, frame count = floor(audio_samples * fps / sr), duration, an audio
stream, progress messages from our nodes.
"""

from __future__ import annotations

import json
import sys
from fractions import Fraction

import pytest
from host._prompts import (
    OUR_PREFIX,
    adapt,
    expected_frames,
    load,
    node_ids,
    probe,
    saved_video,
)

# name -> (landmarks file, frames kept, seconds of speech, output fps)
CASES = {
    "dub_a_clip": ("talk_25fps_512x512.landmarks.npz", 8, 0.32, Fraction(25)),
    "talking_portrait": ("portrait_video_frame_512x512.landmarks.npz", 1, 0.28, Fraction(25)),
    "generator_chain": ("portrait_astronaut_512x512.landmarks.npz", 6, 0.375, Fraction(16)),
    "v15_sis_jaw": ("talk_29_97fps_512x512.landmarks.npz", 8, 0.32, Fraction(30000, 1001)),
    "long_clip_streaming": ("talk_25fps_512x512.landmarks.npz", 8, 0.32, Fraction(25)),
}


@pytest.fixture(scope="module")
def media_in_input(host):
    if not (host.base / "input" / "talk_25fps_512x512.mp4").exists():
        pytest.skip("shared test media not found")
    return host


def test_workflow_templates_are_listed(host):
    listed = host.get("/workflow_templates")
    assert sorted(listed.get("musetalk-lipsync", [])) == sorted(CASES)


def test_core_node_table_matches_host(host):
    """scripts/build_workflows.py's copy of the core nodes equals the host's /object_info."""
    import importlib.util

    from host._prompts import ROOT

    spec = importlib.util.spec_from_file_location("build_workflows",
                                                  ROOT / "scripts" / "build_workflows.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("build_workflows", mod)
    spec.loader.exec_module(mod)
    for name, node in mod.CORE_NODES.items():
        info = host.get(f"/object_info/{name}")[name]
        order = info["input_order"].get("required", []) + info["input_order"].get("optional", [])
        assert [p.name for p in node.inputs] == order, name
        for port in node.inputs:
            section = "optional" if port.optional else "required"
            declared = info["input"][section][port.name][0]
            kind = "COMBO" if isinstance(declared, list) else declared
            assert kind == port.type, (name, port.name, kind)
            if port.options is not None:
                opts = declared if isinstance(declared, list) else \
                    info["input"][section][port.name][1]["options"]
                assert list(port.options) == list(opts), (name, port.name)
        assert [t for _, t in node.outputs] == info["output"], name


@pytest.mark.parametrize("name", sorted(CASES))
def test_workflow_runs_end_to_end(media_in_input, name):
    host = media_in_input
    landmarks, frames, seconds, fps = CASES[name]
    prompt = adapt(load(name), landmarks=landmarks, frames=frames, seconds=seconds)
    result = host.run_prompt(prompt, timeout=900)
    errors = [m for m in result["messages"] if m["type"] == "execution_error"]
    assert result["status"] == "success", json.dumps(errors)[:3000] or result["status"]

    video = saved_video(host, result, node_ids(prompt, "SaveVideo")[0])
    info = probe(video)
    n = expected_frames(seconds, fps)
    assert info["frames"] == n, (info, n)
    assert info["audio"], "the saved video has no audio stream"
    assert info["duration"] == pytest.approx(n / float(fps), abs=0.07)

    ours = {i for i, node in prompt.items() if node["class_type"].startswith(OUR_PREFIX)}
    progressed = {m["data"]["node"] for m in result["messages"] if m["type"] == "progress"}
    assert progressed & ours, "no progress message from any MuseTalk node"
    if name == "v15_sis_jaw":  # preview outputs: crops, generated crops, mask image
        outs = result["history"]["outputs"]
        for preview in node_ids(prompt, "PreviewImage"):
            assert outs[preview]["images"], preview
