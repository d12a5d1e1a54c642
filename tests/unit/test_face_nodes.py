"""Face Crop and Reference Select nodes, called the way the host calls them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch


def _nodes(pack):
    return {d.node_id: d for d in pack.nodes.face_nodes.NODES}


def _pose(lm, w, h):
    pts = np.concatenate([lm, np.ones((68, 1))], 1).reshape(-1).tolist()
    return {"people": [{"face_keypoints_2d": pts}], "canvas_width": w, "canvas_height": h}


@pytest.fixture(scope="module")
def still(media):
    import cv2

    bgr = cv2.imread(str(media / "portrait_video_frame_512x512.jpg"))
    img = torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1])).float()[None] / 255
    lm = np.load(media / "portrait_video_frame_512x512.landmarks.npz")["landmarks"][0, 0]
    return img, lm


def test_face_crop_node_outputs_and_ui(pack, still):
    img, lm = still
    frames = img.expand(4, -1, -1, -1).clone()
    pose = [_pose(lm, 512, 512)] * 3 + [{"people": [], "canvas_width": 512,
                                         "canvas_height": 512}]
    res = _nodes(pack)["MuseTalkFaceCrop"].call(frames=frames, pose_keypoints=pose,
                                                version="v1", bbox_shift=3, extra_margin=10,
                                                face_index=-1, on_missing_face="passthrough",
                                                smooth_boxes=0.0)
    faces, preview, mask = res.values
    assert preview.shape == (4, 256, 256, 3) and preview.dtype == torch.float32
    assert mask.shape == (4, 512, 512) and mask[3].sum() == 0
    x1, y1, x2, y2 = faces.boxes[0].tolist()
    assert mask[0].sum() == (x2 - x1) * (y2 - y1) and faces.bbox_shift == 3
    text = " ".join(res.ui["text"])
    assert "bbox_shift usable range" in text and "1 frame without a face: 3" in text
    payload = res.ui["musetalk_crop"][0]
    json.dumps(payload)
    assert payload["has_face"] == [1, 1, 1, 0] and payload["landmarks"][3] == []
    assert len(payload["landmarks"][0]) == 136 and all(isinstance(v, int)
                                                       for v in payload["landmarks"][0])
    assert payload["version"] == "v1" and payload["bbox_shift"] == 3


def test_face_crop_node_needs_a_source_and_valid_frames(pack, still):
    img, _ = still
    node = _nodes(pack)["MuseTalkFaceCrop"]
    errors = pack.musetalk_core.errors
    with pytest.raises(errors.InputError, match="neither a face detector nor pose keypoints"):
        node.call(frames=img, version="v1.5")
    with pytest.raises(errors.InputError, match="0 frames"):
        node.call(frames=torch.empty(0, 64, 64, 3), pose_keypoints=[], version="v1.5")
    with pytest.raises(errors.InputError, match="channels-first"):
        node.call(frames=img.permute(0, 3, 1, 2), pose_keypoints=[{}], version="v1.5")
    with pytest.raises(errors.InputError, match="bbox_shift 1000000 is out of range"):
        node.call(frames=img, pose_keypoints=[{}], version="v1", bbox_shift=10**6)


def test_face_crop_node_rgba_fp16_and_v15_ignores_shift(pack, still):
    img, lm = still
    rgba = torch.cat([img, torch.ones_like(img[..., :1])], -1).half()
    res = _nodes(pack)["MuseTalkFaceCrop"].call(frames=rgba, pose_keypoints=[_pose(lm, 512, 512)],
                                                version="v1.5", bbox_shift=9, extra_margin=10)
    faces = res.values[0]
    assert faces.bbox_shift == 0 and faces.extra_margin == 10
    assert any("ignored" in t for t in res.ui["text"])


def test_reference_select_node(pack, still):
    img, lm = still
    rng = np.random.default_rng(0)
    pose = [_pose(lm + rng.normal(0, 2, lm.shape), 512, 512) for _ in range(6)]
    faces = _nodes(pack)["MuseTalkFaceCrop"].call(frames=img.expand(6, -1, -1, -1),
                                                  pose_keypoints=pose).values[0]
    node = _nodes(pack)["MuseTalkReferenceSelect"]
    same = node.call(faces=faces, mode="same_frame").values[0]
    assert same.index.tolist() == list(range(6))
    sis = node.call(faces=faces, mode="sis", k=0, seed=1)
    assert (sis.values[0].index != torch.arange(6)).all() and "SIS" in sis.ui["text"][0]
    fixed = node.call(faces=faces, mode="fixed_frame", frame=2).values[0]
    assert fixed.index.tolist() == [2] * 6
    with pytest.raises(pack.musetalk_core.errors.InputError, match="MUSETALK_FACES"):
        node.call(faces="nope")
