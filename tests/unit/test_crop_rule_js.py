"""The web extension's crop rule (``web/crop_rule.js``) equals the Python core's, box for box.

The JS module is run with Node.js (skipped where ``node`` is absent) over the real landmarks of the
shared media and over random landmark sets, for both versions and many shifts and margins; every
box and every bbox_shift range must equal ``musetalk_core.crop`` exactly.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
RULE = ROOT / "web" / "crop_rule.js"
NODE = shutil.which("node")

RUNNER = r"""
import { cropBox, bboxShiftRange } from %s;
let raw = "";
process.stdin.on("data", (c) => (raw += c));
process.stdin.on("end", () => {
  const job = JSON.parse(raw);
  const boxes = job.cases.map((c) => cropBox(job.landmarks[c.lm], {
    version: c.version, bboxShift: c.shift, extraMargin: c.margin, height: c.height,
    width: c.width, fallback: c.fallback }));
  const ranges = job.clips.map((clip) => bboxShiftRange(clip.map((i) => i < 0 ? null
    : job.landmarks[i])));
  process.stdout.write(JSON.stringify({ boxes, ranges }));
});
"""


def _run_js(job: dict) -> dict:
    code = RUNNER % json.dumps(RULE.as_uri())
    out = subprocess.run([NODE, "--input-type=module", "-e", code], input=json.dumps(job),
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def _real_landmarks() -> list[tuple[np.ndarray, int, int]]:
    """(float landmarks [68,2], height, width) for every face of every shared-media file."""
    media = ROOT.parent / "shared" / "media"
    found = []
    for path in sorted(media.glob("*.landmarks.npz")):
        data = np.load(path)
        lms, height, width = data["landmarks"], int(data["height"]), int(data["width"])
        for frame in lms:
            for face in frame:
                if not np.isnan(face).any():
                    found.append((face.astype(np.float32), height, width))
    return found


SIZES = ((64, 96), (480, 640), (1200, 700))


def _random_landmarks(rng: np.random.Generator, n: int) -> list[tuple[np.ndarray, int, int]]:
    """Random faces, including degenerate ones (off the left edge, flat, past the bottom)."""
    out = []
    for i in range(n):
        height, width = SIZES[i % len(SIZES)]
        cx, cy = rng.integers(-20, width + 20), rng.integers(-10, height + 10)
        scale = rng.integers(0, 200) if i % 7 else 0
        lm = np.stack([cx + rng.uniform(-scale - 1, scale + 1, 68),
                       cy + rng.uniform(-scale - 1, scale + 1, 68)], axis=1)
        out.append((lm.astype(np.float32), height, width))
    return out


def _core_boxes(faces, fallbacks, version, shift, margin):
    """``musetalk_core.crop.crop_boxes`` per face, grouped by frame size; None where no box."""
    import torch

    from musetalk_core.crop import crop_boxes

    out: list = [None] * len(faces)
    groups: dict = {}
    for i, (_, h, w) in enumerate(faces):
        groups.setdefault((h, w, fallbacks[i] is None), []).append(i)
    for (h, w, no_fb), idx in groups.items():
        lm = torch.from_numpy(np.stack([faces[i][0] for i in idx]))
        det = None if no_fb else torch.tensor([fallbacks[i] for i in idx], dtype=torch.float32)
        boxes, ok, _ = crop_boxes(lm, torch.ones(len(idx), dtype=torch.bool), version=version,
                                  height=h, width=w, bbox_shift=shift, extra_margin=margin,
                                  det_boxes=det)
        for j, i in enumerate(idx):
            out[i] = boxes[j].tolist() if bool(ok[j]) else None
    return out


@pytest.mark.skipif(NODE is None, reason="Node.js (node) is not installed")
def test_js_crop_rule_equals_core():
    import torch

    from musetalk_core.crop import bbox_shift_range

    rng = np.random.default_rng(8)
    faces = _real_landmarks()
    if len(faces) > 600:  # every clip covered, test kept fast
        keep = np.linspace(0, len(faces) - 1, 600).round().astype(int)
        faces = [faces[i] for i in keep]
    faces += _random_landmarks(rng, 400)
    # a third get a (float, sometimes negative) detector box for the fallback
    fallbacks = []
    for i in range(len(faces)):
        if i % 3:
            fallbacks.append(None)
            continue
        x0, y0 = rng.uniform(-30, 300, 2)
        fallbacks.append([float(x0), float(y0), float(x0 + rng.uniform(-5, 90)),
                          float(y0 + rng.uniform(-5, 90))])
    landmarks = [lm.tolist() for lm, _, _ in faces]
    cases, expected = [], []
    for version in ("v1", "v1.5"):
        for shift in (-40, -17, -3, 0, 5, 12, 40):
            for margin in ((0, 10, 37) if version == "v1.5" else (10,)):
                expected += _core_boxes(faces, fallbacks, version, shift, margin)
                cases += [{"lm": i, "version": version, "shift": shift, "margin": margin,
                           "height": h, "width": w, "fallback": fallbacks[i]}
                          for i, (_, h, w) in enumerate(faces)]
    clips = [list(range(0, 200)), [0, -1, 5, -1, 9], [-1, -1], list(range(300, 700, 3))]
    got = _run_js({"landmarks": landmarks, "cases": cases, "clips": clips})

    assert len(got["boxes"]) == len(expected) > 10_000
    assert sum(e is None for e in expected) > 0  # degenerate cases are exercised
    mismatches = [(c, e, g) for c, e, g in zip(cases, expected, got["boxes"], strict=True)
                  if e != g]
    assert mismatches[:5] == []
    for clip, js_range in zip(clips, got["ranges"], strict=True):
        lm = torch.from_numpy(np.stack([faces[max(i, 0)][0] for i in clip]))
        has = torch.tensor([i >= 0 for i in clip])
        core = bbox_shift_range(lm, has)
        assert js_range == (None if core is None else list(core))
    assert got["ranges"][2] is None


@pytest.mark.skipif(NODE is None, reason="Node.js (node) is not installed")
def test_js_rule_shift_moves_only_the_top_edge_for_v1():
    faces = _real_landmarks() or _random_landmarks(np.random.default_rng(1), 1)
    lm = faces[0][0]
    base = {"lm": 0, "margin": 0, "height": 512, "width": 512, "fallback": None}
    cases = [{**base, "version": "v1", "shift": 0}, {**base, "version": "v1", "shift": 10},
             {**base, "version": "v1.5", "shift": 10}]
    a, b, c = _run_js({"landmarks": [lm.tolist()], "cases": cases, "clips": []})["boxes"]
    assert a[0] == b[0] and a[2] == b[2] and a[3] == b[3]
    assert b[1] == a[1] + 20  # yc moves by 10, y1 = 2*yc - y2 moves by 20
    assert c == a  # v1.5 ignores bbox_shift


@pytest.mark.skipif(NODE is None, reason="Node.js (node) is not installed")
def test_js_box_equals_core_for_every_shift_in_the_reported_range(media):
    """On each real clip, every bbox_shift of the range REF reports gives the core's box (v1)."""
    import torch

    from musetalk_core.crop import bbox_shift_range

    landmarks, cases, expected = [], [], []
    for path in sorted(media.glob("*.landmarks.npz")):
        data = np.load(path)
        lm = data["landmarks"][:, 0]
        has = ~np.isnan(lm).any(axis=(1, 2))
        if not has.any():
            continue
        lm = np.nan_to_num(lm).astype(np.float32)
        h, w = int(data["height"]), int(data["width"])
        lo, hi = bbox_shift_range(torch.from_numpy(lm), torch.from_numpy(has))
        frames = np.flatnonzero(has)[:: max(1, int(has.sum()) // 25)]
        first = len(landmarks)
        landmarks += [lm[i].tolist() for i in frames]
        faces = [(lm[i], h, w) for i in frames]
        for shift in range(lo, hi + 1):
            expected += _core_boxes(faces, [None] * len(faces), "v1", shift, 0)
            cases += [{"lm": first + j, "version": "v1", "shift": shift, "margin": 0,
                       "height": h, "width": w, "fallback": None} for j in range(len(faces))]
    got = _run_js({"landmarks": landmarks, "cases": cases, "clips": []})["boxes"]
    assert len(got) == len(expected) > 500
    assert [c for c, e, g in zip(cases, expected, got, strict=True) if e != g][:5] == []


SMOOTH_RUNNER = r"""
import { smoothBoxes } from %s;
let raw = "";
process.stdin.on("data", (c) => (raw += c));
process.stdin.on("end", () => {
  const job = JSON.parse(raw);
  const out = job.runs.map((r) => smoothBoxes(r.boxes, r.strength, r.height, r.width));
  process.stdout.write(JSON.stringify(out));
});
"""


@pytest.mark.skipif(NODE is None, reason="Node.js (node) is not installed")
def test_js_box_smoothing_equals_core():
    """The preview's smoothing (web/crop_rule.js smoothBoxes) equals crop.smooth_boxes."""
    import torch

    from musetalk_core.crop import smooth_boxes

    rng = np.random.default_rng(3)
    runs, expected = [], []
    for i, strength in enumerate((0.0, 0.05, 0.3, 0.5, 0.77, 1.0) * 4):
        height, width = SIZES[i % len(SIZES)]
        n = 120
        # a jittery, drifting face with gaps (a gap restarts the filter) and edge contacts
        centre = np.cumsum(rng.normal(0, 3, (n, 2)), 0) + [width / 2, height / 2]
        half = rng.uniform(5, 60) + rng.normal(0, 2, (n, 2))
        boxes = np.concatenate([centre - half, centre + half], 1).round()
        boxes = np.clip(boxes, 0, [width, height, width, height]).astype(np.int64)
        has = rng.random(n) > 0.1
        has[:3] = True
        core = smooth_boxes(torch.from_numpy(boxes), torch.from_numpy(has), strength, height,
                            width)
        expected.append([b if h else None for b, h in zip(core.tolist(), has, strict=True)])
        runs.append({"boxes": [b if h else None for b, h in zip(boxes.tolist(), has,
                                                                 strict=True)],
                     "strength": strength, "height": height, "width": width})
    code = SMOOTH_RUNNER % json.dumps(RULE.as_uri())
    out = subprocess.run([NODE, "--input-type=module", "-e", code],
                         input=json.dumps({"runs": runs}), capture_output=True, text=True,
                         timeout=60, check=True)
    got = json.loads(out.stdout)
    assert len(got) == len(expected) == 24
    for run, e, g in zip(runs, expected, got, strict=True):
        assert e == g, run["strength"]
    # smoothing did something on the jittery runs
    assert any(e != r["boxes"] for e, r in zip(expected, runs, strict=True))
