"""MuseTalk blend: batched result vs a per-frame PIL+cv2 version of REF's get_image, and the
contract properties (mask semantics, pass-through, cache, validation, node, no mutation)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from musetalk_core import blend
from musetalk_core.errors import InputError
from musetalk_core.runtime import Runtime, default_runtime
from musetalk_core.types import MuseTalkFaces

cv2 = pytest.importorskip("cv2")
Image = pytest.importorskip("PIL.Image")

from tests.unit.test_blend_masks import ref_cone, synthetic_labels  # noqa: E402


def v15_box(lm: np.ndarray, height: int, margin: int = 10) -> tuple[int, int, int, int]:
    """musetalk.md 4.2 with bbox_shift 0 and the v1.5 margin."""
    p = lm.astype(np.int32)
    yc, y2 = int(p[29, 1]), int(p[:, 1].max())
    y1 = int(max(0, yc - (y2 - yc)))
    x1, x2 = int(p[:, 0].min()), int(p[:, 0].max())
    return x1, y1, x2, min(y2 + margin, height)


def make_faces(media, n_src: int = 3, index=(0, 1, 2, 1), no_face=(), seed: int = 0,
               shift=(0, 0)) -> tuple[torch.Tensor, MuseTalkFaces]:
    """Frames (smooth random 512x512) + generated faces with real landmark boxes."""
    d = np.load(media / "talk_25fps_512x512.landmarks.npz")
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n_src, 3, 64, 64, generator=g)
    frames = torch.nn.functional.interpolate(base, size=(512, 512), mode="bilinear")
    frames = (frames.permute(0, 2, 3, 1) * 255).round() / 255
    index = torch.tensor(index, dtype=torch.int64)
    boxes = []
    for s in index.tolist():
        x1, y1, x2, y2 = v15_box(d["landmarks"][s, 0], 512)
        boxes.append((x1 + shift[0], y1 + shift[1], x2 + shift[0], y2 + shift[1]))
    has = torch.tensor([i not in no_face for i in range(len(index))])
    boxes_t = torch.tensor(boxes, dtype=torch.int64) * has[:, None]
    crops = torch.randint(0, 256, (len(index), 256, 256, 3), dtype=torch.uint8, generator=g)
    faces = MuseTalkFaces(boxes=boxes_t, has_face=has, landmarks=torch.zeros(len(index), 68, 2),
                          crops=crops, source_size=(512, 512), version="v1.5", extra_margin=10,
                          source_index=index, generated=True)
    return frames, faces


class FakeParser:
    """Stands in for BiSeNet: the same synthetic label map for every crop; counts calls."""

    parser_id = "fake-parser"

    def __init__(self) -> None:
        self.labels = torch.from_numpy(synthetic_labels(3))
        self.calls = 0
        self.inputs: list[torch.Tensor] = []

    def parse(self, rgb: torch.Tensor) -> torch.Tensor:
        assert rgb.shape[1:] == (3, 512, 512)
        self.calls += rgb.shape[0]
        self.inputs.append(rgb.clone())
        return self.labels.expand(rgb.shape[0], 512, 512).clone()


def ref_get_image(frame_rgb_u8: np.ndarray, face_rgb_u8: np.ndarray, box, labels: np.ndarray,
                  mode: str, lw: int, rw: int, f: float) -> tuple[np.ndarray, ...]:
    """REF's blending.get_image per frame with PIL + cv2 (musetalk.md 5), labels given."""
    body = Image.fromarray(frame_rgb_u8)
    x, y, x1, y1 = box
    xc, yc = (x + x1) // 2, (y + y1) // 2
    s = int(max(x1 - x, y1 - y) // 2 * 1.5)
    xs, ys = xc - s, yc - s
    crop_box = (xs, ys, xc + s, yc + s)
    face_large = body.crop(crop_box)
    img512 = np.asarray(face_large.resize((512, 512), Image.BILINEAR))
    p = labels.copy()
    if mode == "jaw":
        skin = np.isin(p, [1]).astype(np.uint8) * 255
        d = cv2.dilate(skin, ref_cone(), iterations=1)
        e = cv2.erode(d, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (35, 3)), iterations=2)
        cheek = np.zeros((512, 512), np.uint8)
        cv2.rectangle(cheek, (0, 0), (256 - lw, 512), 255, -1)
        cv2.rectangle(cheek, (256 + rw, 0), (512, 512), 255, -1)
        fr = cv2.bitwise_or(cv2.bitwise_and(e, cheek), cv2.bitwise_and(d, ~cheek))
        p[(fr == 255) & ~np.isin(p, [10])] = 255
        p[np.isin(p, [11, 12, 13])] = 255
    else:
        p[np.isin(p, [1, 11, 12, 13])] = 255
    p[p != 255] = 0
    seg = Image.fromarray(p.astype(np.uint8)).resize(face_large.size)
    small = seg.crop((x - xs, y - ys, x1 - xs, y1 - ys))
    m = Image.new("L", face_large.size, 0)
    m.paste(small, (x - xs, y - ys, x1 - xs, y1 - ys))
    w, h = m.size
    top = int(h * 0.5)
    mm = Image.new("L", face_large.size, 0)
    mm.paste(m.crop((0, top, w, h)), (0, top))
    k = int(f * w // 2 * 2) + 1
    mask = cv2.GaussianBlur(np.array(mm), (k, k), 0)
    face = cv2.resize(face_rgb_u8, (x1 - x, y1 - y))  # INTER_LINEAR, REF's 256 -> box
    face_large.paste(Image.fromarray(face), (x - xs, y - ys, x1 - xs, y1 - ys))
    body.paste(face_large, crop_box[:2], Image.fromarray(mask))
    return np.asarray(body), mask[y - ys:y1 - ys, x - xs:x1 - xs], img512


@pytest.mark.parametrize("mode,lw,rw,f", [("jaw", 90, 90, 0.05), ("raw", 90, 90, 0.1),
                                          ("jaw", 60, 120, 0.05)])
def test_matches_per_frame_reference(media, mode, lw, rw, f):
    frames, faces = make_faces(media)
    parser = FakeParser()
    out, mask = blend.blend_faces(frames, faces, runtime=default_runtime(), parser=parser,
                                  mode=mode, left_cheek_width=lw, right_cheek_width=rw,
                                  feather=f, batch_size=3)
    assert out.shape == (4, 512, 512, 3) and mask.shape == (4, 512, 512)
    parsed = torch.cat(parser.inputs)
    assert parsed.shape[0] == 3  # rows 1 and 3 share source frame 1 and its box: parsed once
    labels = parser.labels.numpy()
    first512 = None
    for t in range(4):
        src = int(faces.index[t])
        box = tuple(int(v) for v in faces.boxes[t])
        fr = (frames[src].numpy() * 255).round().astype(np.uint8)
        ref_img, ref_alpha, ref512 = ref_get_image(fr, faces.crops[t].numpy(), box, labels,
                                                   mode, lw, rw, f)
        first512 = ref512 if first512 is None else first512
        x1, y1, x2, y2 = box
        ours_alpha = (mask[t, y1:y2, x1:x2].numpy() * 255).round()
        da = np.abs(ours_alpha - ref_alpha.astype(float))
        # mask: OpenCV's fixed-point blur against our float blur: <= 2 LSB (of 255)
        assert da.max() <= 2, da.max()
        diff = np.abs(out[t].numpy() * 255 - ref_img.astype(float))
        # pixels: REF rounds the composite to 8 bits (PIL paste), cv2 resize is 11-bit fixed
        # point and the alpha may differ by 2 LSB: at most 3 LSB, and rarely more than 1
        assert diff.max() <= 3.5, diff.max()
        assert (diff > 1.5).mean() < 0.01
    # the parser input is PIL's BILINEAR resize of the black-filled crop, exactly
    assert np.array_equal((parsed[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8),
                          first512)


def test_mask_semantics_and_passthrough(media):
    frames, faces = make_faces(media, index=(0, 1, 2, 0, 2), no_face=(2,))
    frames[0, :10, :10] = 1.05  # out-of-range values survive outside the mask
    frames[1, 500:, 500:] = -0.02
    frames[2, 0, 0, 0] = float("nan")  # NaN outside any box passes through
    out, mask = blend.blend_faces(frames, faces, runtime=default_runtime(), parser=FakeParser())
    src = frames[faces.index]
    same = (out == src) | (torch.isnan(out) & torch.isnan(src))
    assert bool(same[mask == 0].all())  # MASK 0 -> bit-equal
    assert bool((mask[~same.all(-1)] > 0).all())  # output differs -> MASK > 0
    assert torch.equal(out[2], src[2]) or bool(same[2].all())  # faceless row untouched
    assert float(mask[2].abs().sum()) == 0
    assert float(mask.max()) <= 1 and float(mask.min()) >= 0 and (mask > 0.99).any()
    for t in (0, 1, 3, 4):  # nothing changes above the box centre or outside the box
        x1, y1, x2, y2 = (int(v) for v in faces.boxes[t])
        rows = torch.nonzero(mask[t].sum(1)).flatten()
        cols = torch.nonzero(mask[t].sum(0)).flatten()
        assert rows.min() >= y1 and rows.max() < y2 and cols.min() >= x1 and cols.max() < x2


def test_ellipse_fallback_without_parser(media):
    frames, faces = make_faces(media)
    out, mask = blend.blend_faces(frames, faces, runtime=default_runtime(), parser=None)
    for t in range(4):
        x1, y1, x2, y2 = (int(v) for v in faces.boxes[t])
        xc, yc = (x1 + x2) // 2, (y1 + y2) // 2
        assert float(mask[t, yc + 20, xc]) > 0.99
        k = int(0.05 * (2 * int(max(x2 - x1, y2 - y1) // 2 * 1.5)) // 2 * 2) + 1
        assert float(mask[t, : yc - k // 2].sum()) == 0  # lower face (blur spreads k//2 up)
        assert float(mask[t, y2 - 3, x1 + 2]) < 0.2  # ellipse: box corners are kept
    assert bool((out == frames[faces.index])[mask == 0].all())


def test_cache_reuses_masks_across_clips(media):
    frames, faces = make_faces(media)
    parser = FakeParser()
    a, ma = blend.blend_faces(frames, faces, runtime=default_runtime(), parser=parser)
    assert parser.calls == 3
    # a new audio clip: new generated crops, the same shared cache
    crops2 = torch.randint(0, 256, faces.crops.shape, dtype=torch.uint8)
    faces2 = MuseTalkFaces(**{**faces.__dict__, "crops": crops2})
    b, mb = blend.blend_faces(frames, faces2, runtime=default_runtime(), parser=parser)
    assert parser.calls == 3 and torch.equal(ma, mb) and not torch.equal(a, b)
    blend.blend_faces(frames, faces, runtime=default_runtime(), parser=parser, mode="jaw",
                      left_cheek_width=40)
    assert parser.calls == 6  # jaw cheek widths are part of the key
    blend.blend_faces(frames, faces, runtime=default_runtime(), parser=parser, mode="raw")
    blend.blend_faces(frames, faces, runtime=default_runtime(), parser=parser, mode="raw",
                      left_cheek_width=40)
    assert parser.calls == 9  # raw ignores cheek widths
    frames2 = frames.clone()
    frames2[1, 300, 250] += 0.25  # another source picture -> parsed again (fingerprint)
    blend.blend_faces(frames2, faces, runtime=default_runtime(), parser=parser, mode="raw")
    assert parser.calls == 10


def test_batch_size_does_not_change_result(media):
    frames, faces = make_faces(media, index=(0, 1, 2, 2, 1, 0))
    a, ma = blend.blend_faces(frames, faces, runtime=default_runtime(), parser=FakeParser(),
                              batch_size=1)
    b, mb = blend.blend_faces(frames, faces, runtime=default_runtime(), parser=FakeParser(),
                              batch_size=6)
    assert (ma - mb).abs().max() <= 1 / 255 + 1e-6
    assert (a - b).abs().max() <= 2 / 255


def test_face_at_frame_edge(media):
    """F5: the expanded square reaches past the frame; nothing wraps or crashes."""
    frames, faces = make_faces(media, shift=(-130, 60))
    boxes = faces.boxes.clone()
    boxes[:, 0].clamp_(min=0)
    boxes[:, 3].clamp_(max=512)
    faces = MuseTalkFaces(**{**faces.__dict__, "boxes": boxes})
    parser = FakeParser()
    out, mask = blend.blend_faces(frames, faces, runtime=default_runtime(), parser=parser)
    assert out.shape == (4, 512, 512, 3)
    crop = torch.cat(parser.inputs)[0]
    assert float(crop[:, :, :40].abs().sum()) == 0  # out-of-frame part of the square is black
    assert bool((out == frames[faces.index])[mask == 0].all())


def test_validation_errors(media):
    frames, faces = make_faces(media)
    rt = default_runtime()
    with pytest.raises(InputError, match="768x384 but the faces were cropped from 512x512"):
        blend.blend_faces(torch.zeros(3, 384, 768, 3), faces, runtime=rt)
    with pytest.raises(InputError, match="source frame 2 but only 2 frames"):
        blend.blend_faces(frames[:2], faces, runtime=rt)
    src = MuseTalkFaces(**{**faces.__dict__, "generated": False})
    with pytest.raises(InputError, match="Inpaint"):
        blend.blend_faces(frames, src, runtime=rt)
    bad = frames.clone()
    x1, y1, x2, y2 = (int(v) for v in faces.boxes[2])
    bad[2, (y1 + y2) // 2, (x1 + x2) // 2, 1] = float("nan")
    with pytest.raises(InputError, match="NaN pixels inside the face box of frames 2"):
        blend.blend_faces(bad, faces, runtime=rt)
    with pytest.raises(InputError, match="mode"):
        blend.blend_faces(frames, faces, runtime=rt, mode="lips")


def test_progress_and_interrupt(media):
    frames, faces = make_faces(media)
    seen = []
    rt = Runtime(progress=lambda d, t, s: seen.append((d, t, s)))
    blend.blend_faces(frames, faces, runtime=rt, batch_size=2)
    assert seen == [(2, 4, "blend"), (4, 4, "blend")]

    class StopError(Exception):
        pass

    calls = []

    def check():
        calls.append(1)
        if len(calls) > 2:
            raise StopError

    with pytest.raises(StopError):
        blend.blend_faces(frames, faces, runtime=Runtime(check_interrupt=check), batch_size=1)


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def test_node_does_not_mutate_inputs_and_validates(pack, media):
    """H4: the cached FACES and IMAGE are bit-identical before and after a run."""
    node = next(n for n in pack.nodes.blend_nodes.NODES if n.node_id == "MuseTalkBlend")
    assert all(i.tooltip for i in node.inputs) and all(o.tooltip for o in node.outputs)
    frames, faces = make_faces(media)
    faces = pack.musetalk_core.types.MuseTalkFaces(**faces.__dict__)  # the pack's own class
    rgba = torch.cat([frames, torch.ones_like(frames[..., :1])], dim=-1)
    before = [_digest(rgba), _digest(faces.crops), _digest(faces.boxes),
              _digest(faces.source_index)]
    res = node.call(frames=rgba, faces=faces, parser=FakeParser(), left_cheek_width=70)
    res2 = node.call(frames=rgba, faces=faces, parser=FakeParser(), left_cheek_width=110)
    after = [_digest(rgba), _digest(faces.crops), _digest(faces.boxes),
             _digest(faces.source_index)]
    assert before == after
    images, mask = res.values
    assert images.shape == (4, 512, 512, 3) and images.dtype == torch.float32
    assert mask.shape == (4, 512, 512)
    assert not torch.equal(res.values[1], res2.values[1])
    errors = pack.musetalk_core.errors
    with pytest.raises(errors.InputError, match="channels-first"):
        node.call(frames=frames.permute(0, 3, 1, 2), faces=faces)
