"""Shared helpers for host tests: load the API workflows and adapt them to the test machine.

Adaptations (each keeps the shipped graph and only adds core nodes or a test-only face source):

* **Face source.** Tiny random detector weights find no faces, so a TEST-ONLY node
  (``tests/host/fixtures/musetalk_test_pose``) reads the shared media's ground-truth
  ``.landmarks.npz`` and feeds POSE_KEYPOINT into every Face Crop / Lip Sync node's
  ``pose_keypoints``. The detector stays connected (keypoints win when both are given), so the
  detector loader still runs.
* **Length.** The CPU test machine cannot afford 200 frames through a VAE, so core
  ``ImageFromBatch`` keeps the first ``frames`` frames of Get Video Components / Repeat Image Batch
  and core ``TrimAudioDuration`` keeps the first ``seconds`` of every Load Audio.
"""

from __future__ import annotations

import copy
import json
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
API = ROOT / "workflows" / "api"
POSE_NODE = "MuseTalkTestPoseFromLandmarks"
FACE_NODES = ("MuseTalkFaceCrop", "MuseTalkLipSync", "MuseTalkLipSyncVideo")
OUR_PREFIX = "MuseTalk"


def load(name: str) -> dict[str, Any]:
    return json.loads((API / f"{name}.json").read_text())


def _rewire(prompt: dict, old: list, new: list) -> None:
    for node_id, node in prompt.items():
        if node_id == new[0]:
            continue
        for key, value in node["inputs"].items():
            if value == old:
                node["inputs"][key] = list(new)


def adapt(prompt: dict, *, landmarks: str, frames: int, seconds: float,
          image: str | None = None) -> dict:
    """A copy of ``prompt`` with the test face source, ``frames`` frames and ``seconds`` of audio.

    ``image`` replaces every Load Image file (a still is one frame: its keypoints repeat).
    """
    p = copy.deepcopy(prompt)
    for node_id, node in list(p.items()):
        kind = node["class_type"]
        if kind == "LoadImage" and image:
            node["inputs"]["image"] = image
        if kind in ("GetVideoComponents", "RepeatImageBatch"):
            new = f"9{node_id}1"
            _rewire(p, [node_id, 0], [new, 0])
            p[new] = {"class_type": "ImageFromBatch",
                      "inputs": {"image": [node_id, 0], "batch_index": 0, "length": frames}}
        if kind == "RepeatImageBatch":
            node["inputs"]["amount"] = frames
        if kind == "LoadAudio":
            new = f"9{node_id}2"
            _rewire(p, [node_id, 0], [new, 0])
            p[new] = {"class_type": "TrimAudioDuration",
                      "inputs": {"audio": [node_id, 0], "start_index": 0.0,
                                 "duration": float(seconds)}}
    pose = "990"
    still = any(n["class_type"] == "LoadImage" for n in p.values()) and not any(
        n["class_type"] == "RepeatImageBatch" for n in p.values())
    p[pose] = {"class_type": POSE_NODE,
               "inputs": {"landmarks": landmarks, "start": 0, "count": 1 if still else frames}}
    for node in p.values():
        if node["class_type"] in FACE_NODES:
            node["inputs"]["pose_keypoints"] = [pose, 0]
    return p


def node_ids(prompt: dict, class_type: str) -> list[str]:
    return [i for i, n in prompt.items() if n["class_type"] == class_type]


def expected_frames(seconds: float, fps: Fraction, sample_rate: int = 16000) -> int:
    """floor(n_samples * fps / sr) for TrimAudioDuration's ``round(seconds * sr)`` samples."""
    n = int(round(seconds * sample_rate))
    return math.floor(Fraction(n) * fps / sample_rate)


def saved_video(host, result: dict, save_id: str) -> Path:
    out = result["history"]["outputs"][save_id]["images"][0]
    return host.base / "output" / out["subfolder"] / out["filename"]


def probe(path: Path) -> dict[str, Any]:
    """Decoded frame count, stream rate, duration and audio presence (PyAV)."""
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = sum(1 for _ in c.decode(v))
        rate = v.average_rate
        duration = float(c.duration / av.time_base) if c.duration else None
    with av.open(str(path)) as c:
        audio = [s for s in c.streams if s.type == "audio"]
        audio_seconds = None
        if audio:
            a = audio[0]
            audio_seconds = (float(a.duration * a.time_base) if a.duration else None)
    return {"frames": frames, "rate": rate, "duration": duration, "audio": bool(audio),
            "audio_seconds": audio_seconds}


def cached_nodes(result: dict) -> set[str]:
    for msg in result["messages"]:
        if msg["type"] == "execution_cached":
            return set(msg["data"]["nodes"])
    return set()


def executed_nodes(result: dict) -> set[str]:
    return {m["data"]["node"] for m in result["messages"]
            if m["type"] == "executing" and m["data"].get("node")}
