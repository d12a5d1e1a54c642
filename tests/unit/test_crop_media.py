"""Face crop on the real clips, with their ground-truth landmarks fed as POSE_KEYPOINT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from musetalk_core.errors import FaceError
from musetalk_core.faces import crop_faces
from musetalk_core.runtime import default_runtime

RT = default_runtime()


def pose_from_npz(path, n=None, *, reverse_odd=False, order=None):
    """POSE_KEYPOINT as DWPose emits it (70 points: 68 + two eye points), from an npz."""
    d = np.load(path)
    lm, nf = d["landmarks"], d["n_faces"]
    out = []
    for f in range(len(lm) if n is None else n):
        people = []
        slots = list(range(nf[f])) if order is None else order
        for k in slots:
            pts = np.concatenate([lm[f, k], np.ones((68, 1))], 1)
            eyes = np.array([[*lm[f, k, 36:42].mean(0), 1.0], [*lm[f, k, 42:48].mean(0), 1.0]])
            people.append({"pose_keypoints_2d": [0.0] * 54,
                           "face_keypoints_2d": np.concatenate([pts, eyes]).reshape(-1).tolist()})
        if reverse_odd and f % 2:
            people = people[::-1]
        out.append({"people": people, "canvas_width": int(d["width"]),
                    "canvas_height": int(d["height"])})
    return out


def read_frames(path, n):
    import av

    frames = []
    with av.open(str(path)) as c:
        for i, fr in enumerate(c.decode(video=0)):
            if i >= n:
                break
            frames.append(torch.from_numpy(fr.to_ndarray(format="rgb24")))
    return torch.stack(frames).float() / 255


def read_image(path):
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1]))[None].float() / 255


def ref_box(lm, version, shift, margin, h):
    """REF's rule written out independently in numpy (musetalk.md 4.2)."""
    li = lm.astype(np.int32)
    if shift:
        li[29, 1] += shift
    yc = li[29, 1]
    y2 = li[:, 1].max()
    y1 = int(max(0, yc - (y2 - yc)))
    box = [li[:, 0].min(), y1, li[:, 0].max(), y2]
    if version == "v1.5":
        box[3] = min(box[3] + margin, h)
    return [int(v) for v in box]


N = 12


@pytest.fixture(scope="module")
def talk(media):
    npz = media / "talk_25fps_512x512.landmarks.npz"
    return read_frames(media / "talk_25fps_512x512.mp4", N), npz


@pytest.mark.parametrize("version,shift,margin", [("v1", 0, 0), ("v1", 5, 0), ("v1", -7, 0),
                                                  ("v1.5", 0, 10), ("v1.5", 0, 40)])
def test_real_clip_boxes_equal_formula_and_mouth_in_lower_half(talk, version, shift, margin):
    import cv2

    frames, npz = talk
    gt = np.load(npz)["landmarks"][:N, 0]
    faces = crop_faces(frames, RT, pose_keypoints=pose_from_npz(npz, N), version=version,
                       bbox_shift=shift, extra_margin=margin or 10)
    assert faces.has_face.all() and faces.crops.shape == (N, 256, 256, 3)
    for f in range(N):
        box = ref_box(gt[f].copy(), version, shift if version == "v1" else 0, margin, 512)
        assert faces.boxes[f].tolist() == box
        x1, y1, x2, y2 = box
        # the mouth (inner-lip 62 top, 66 bottom) projects into the masked lower half
        for p in (62, 66):
            row = (gt[f, p, 1] - y1) * 256 / (y2 - y1)
            assert 128 <= row < 256
        # the crop is REF's: Lanczos of the BGR uint8 region, back to RGB
        u8 = (frames[f] * 255).round().to(torch.uint8).numpy()
        ref = cv2.resize(np.ascontiguousarray(u8[y1:y2, x1:x2, ::-1]), (256, 256),
                         interpolation=cv2.INTER_LANCZOS4)[..., ::-1]
        if f < 3:
            assert np.array_equal(faces.crops[f].numpy(), ref)
    rng = faces.info["bbox_shift_range"]
    assert rng[0] < 0 < rng[1]
    assert any("bbox_shift usable range" in t for t in faces.info["text"])


def test_missing_faces_each_policy(talk):
    frames, npz = talk
    pose = pose_from_npz(npz, N)
    for f in (4, 5, 6):
        pose[f]["people"] = []
    faces = crop_faces(frames, RT, pose_keypoints=pose)
    assert faces.has_face.tolist() == [f not in (4, 5, 6) for f in range(N)]
    assert faces.crops[4:7].sum() == 0 and faces.boxes[4:7].abs().sum() == 0
    assert "3 frames without a face: 4-6" in faces.info["text"]
    assert faces.info["missing_frames"] == "4-6"
    held = crop_faces(frames, RT, pose_keypoints=pose, on_missing_face="hold_last")
    assert held.has_face.all()
    for f in (4, 5, 6):
        assert held.boxes[f].tolist() == held.boxes[3].tolist()
    with pytest.raises(FaceError, match="frame 4") as err:
        crop_faces(frames, RT, pose_keypoints=pose, on_missing_face="error")
    assert "on_missing_face" in str(err.value)


def test_coffee_has_no_face_under_every_policy(media):
    img = read_image(media / "no_face_coffee_600x400.png").expand(3, -1, -1, -1)
    pose = [{"people": [], "canvas_width": 600, "canvas_height": 400}] * 3
    for policy in ("passthrough", "hold_last", "error"):
        with pytest.raises(FaceError, match="no face found in any of the 3 frames"):
            crop_faces(img, RT, pose_keypoints=pose, on_missing_face=policy)


def test_two_faces_tracked_without_switching_and_face_index(media):
    n = 10
    frames = read_frames(media / "two_faces_25fps_768x384.mp4", n)
    npz = media / "two_faces_25fps_768x384.landmarks.npz"
    gt = np.load(npz)["landmarks"][:n]
    pose = pose_from_npz(npz, n, reverse_odd=True)  # order shuffled: tracking must hold
    auto = crop_faces(frames, RT, pose_keypoints=pose)
    chosen = auto.info["face_choice"]["chosen"]
    for idx in (0, 1):
        faces = crop_faces(frames, RT, pose_keypoints=pose, face_index=idx)
        for f in range(n):
            assert faces.boxes[f].tolist() == ref_box(gt[f, idx].copy(), "v1.5", 0, 10, 384)
        if idx == chosen:
            assert torch.equal(faces.boxes, auto.boxes)
    assert any("2 faces" in t for t in auto.info["text"])
    with pytest.raises(FaceError, match="only 2 faces found; face_index must be 0 or 1"):
        crop_faces(frames, RT, pose_keypoints=pose, face_index=2)


def test_astronaut_picks_her_face_not_the_patch(media):
    img = read_image(media / "portrait_astronaut_512x512.png")
    npz = media / "portrait_astronaut_512x512.landmarks.npz"
    faces = crop_faces(img, RT, pose_keypoints=pose_from_npz(npz))  # patch listed first
    x1, y1, x2, y2 = faces.boxes[0].tolist()
    assert 170 <= x1 < x2 <= 275 and y2 < 200
    assert any("rejected" in r for r in faces.info["face_choice"]["rejected"])


class StubDetector:
    """Both astronaut boxes at equal score, patch first; landmarks from the npz."""

    def __init__(self, npz):
        d = np.load(npz)
        self.lm = d["landmarks"][0, :2]
        self.boxes = d["boxes"][0, :2]
        self.calls = []

    def detect(self, frames):
        self.calls.append(frames.shape[0])
        row = torch.tensor(np.concatenate([self.boxes, np.full((2, 1), 0.99)], 1),
                           dtype=torch.float32)
        return [row.clone() for _ in range(frames.shape[0])]

    def landmarks(self, frames, boxes):
        out = []
        for b in boxes:
            for r in b:
                j = int(np.argmin(np.abs(self.boxes - r[:4].numpy()).sum(1)))
                out.append(torch.from_numpy(self.lm[j]))
        return torch.stack(out) if out else torch.zeros(0, 68, 2)


def test_detector_path_picks_her_face(media):
    img = read_image(media / "portrait_astronaut_512x512.png").expand(3, -1, -1, -1)
    stub = StubDetector(media / "portrait_astronaut_512x512.landmarks.npz")
    faces = crop_faces(img, RT, detector=stub, version="v1")
    assert faces.has_face.all()
    gt = np.load(media / "portrait_astronaut_512x512.landmarks.npz")["landmarks"][0, 1]
    assert faces.boxes[0].tolist() == ref_box(gt.copy(), "v1", 0, 0, 512)
    assert sum(stub.calls) == 3
