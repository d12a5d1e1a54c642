"""The real host lists every node of the contract with its wire types; the pack loads cleanly."""

from __future__ import annotations

import pytest

# product.md "Node contract": id -> (input types that must appear, output types in order)
CONTRACT = {
    "MuseTalkModelLoader": (set(), ["MUSETALK_MODEL"]),
    "MuseTalkWhisperLoader": (set(), ["MUSETALK_WHISPER"]),
    "MuseTalkFaceDetectorLoader": (set(), ["MUSETALK_FACE_DETECTOR"]),
    "MuseTalkFaceParserLoader": (set(), ["MUSETALK_FACE_PARSER"]),
    "MuseTalkAudioFeatures": ({"AUDIO", "MUSETALK_WHISPER", "FLOAT"}, ["MUSETALK_AUDIO", "INT"]),
    "MuseTalkFaceCrop": ({"IMAGE", "MUSETALK_FACE_DETECTOR", "POSE_KEYPOINT"},
                         ["MUSETALK_FACES", "IMAGE", "MASK"]),
    "MuseTalkReferenceSelect": ({"MUSETALK_FACES"}, ["MUSETALK_REFERENCES"]),
    "MuseTalkInpaint": ({"MUSETALK_MODEL", "VAE", "MUSETALK_FACES", "MUSETALK_AUDIO",
                         "MUSETALK_REFERENCES"}, ["MUSETALK_FACES", "IMAGE"]),
    "MuseTalkBlend": ({"IMAGE", "MUSETALK_FACES", "MUSETALK_FACE_PARSER"}, ["IMAGE", "MASK"]),
    "MuseTalkLipSync": ({"IMAGE", "AUDIO", "MUSETALK_MODEL", "VAE", "MUSETALK_WHISPER"},
                        ["IMAGE", "AUDIO", "MASK"]),
    "MuseTalkLipSyncVideo": ({"VIDEO", "AUDIO", "MUSETALK_MODEL", "VAE"}, ["VIDEO"]),
}


def _input_types(info: dict) -> set[str]:
    types = set()
    for section in ("required", "optional"):
        for spec in info["input"].get(section, {}).values():
            t = spec[0]
            types.add("COMBO" if isinstance(t, list) else t)
    return types


def test_pack_imports_without_failure(host):
    log = host.log()
    assert "IMPORT FAILED" not in "\n".join(
        line for line in log.splitlines() if "musetalk" in line.lower())
    assert "custom_nodes/musetalk-lipsync" in log


@pytest.mark.parametrize("node_id", sorted(CONTRACT))
def test_object_info_lists_node_with_types(host, node_id):
    info = host.get(f"/object_info/{node_id}")[node_id]
    needed_inputs, outputs = CONTRACT[node_id]
    assert needed_inputs <= _input_types(info), (node_id, _input_types(info))
    assert info["output"][: len(outputs)] == outputs
    assert info["category"].startswith("MuseTalk")
    # every input carries a tooltip
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            opts = spec[1] if len(spec) > 1 else {}
            assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_model_folder_is_registered(host):
    folders = host.get("/models")
    assert "musetalk" in folders
    files = host.get("/models/musetalk")
    assert any(f.endswith("unet.pth") or f.endswith("pytorch_model.bin") for f in files)
