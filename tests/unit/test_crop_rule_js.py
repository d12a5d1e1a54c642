"""The web extension's crop rule (``web/crop_rule.js``) equals the Python core's, box for box.

The JS module is run with Node.js (skipped where ``node`` is absent) over the real landmarks of the
shared media and over random landmark sets, for both versions and many shifts and margins; every
box and every bbox_shift range must equal the Python result exactly.
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
    fallback: c.fallback }));
  const ranges = job.clips.map((clip) => bboxShiftRange(clip.map((i) => i < 0 ? null
    : job.landmarks[i])));
  process.stdout.write(JSON.stringify({ boxes, ranges }));
});
"""


def _python_rule():
    """The core's crop rule if it exists yet, else a transcription of musetalk.md 4.2."""
    try:
        from musetalk_core import faces
    except ImportError:
        faces = None
    fn = getattr(faces, "crop_box", None) if faces is not None else None
    if fn is not None:
        return fn, getattr(faces, "bbox_shift_range", None)
    return _spec_box, None


def _spec_box(lm, *, version, bbox_shift, extra_margin, height, fallback=None):
    """musetalk.md 4.2, step by step."""
    lm = np.asarray(lm).astype(np.int64).copy()
    if version == "v1" and bbox_shift != 0:
        lm[29, 1] += bbox_shift
    yc = lm[29, 1]
    y2 = int(lm[:, 1].max())
    y1 = int(max(0, yc - (y2 - yc)))
    x1, x2 = int(lm[:, 0].min()), int(lm[:, 0].max())
    box = [x1, y1, x2, y2]
    if y2 - y1 <= 0 or x2 - x1 <= 0 or x1 < 0:
        if fallback is None:
            return None
        box = [int(v) for v in fallback]
    if version != "v1":
        box[3] = min(box[3] + extra_margin, height)
    return box


def _spec_range(clip):
    lms = [np.asarray(lm).astype(np.int64) for lm in clip if lm is not None]
    if not lms:
        return None
    minus = np.mean([lm[30, 1] - lm[29, 1] for lm in lms])
    plus = np.mean([lm[29, 1] - lm[28, 1] for lm in lms])
    return [-int(minus), int(plus)]


def _run_js(job: dict) -> dict:
    code = RUNNER % json.dumps(RULE.as_uri())
    out = subprocess.run([NODE, "--input-type=module", "-e", code], input=json.dumps(job),
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def _real_landmarks() -> list[tuple[np.ndarray, int]]:
    """(int landmarks [68,2], frame height) for every face of every shared-media file."""
    media = ROOT.parent / "shared" / "media"
    found = []
    for path in sorted(media.glob("*.landmarks.npz")):
        data = np.load(path)
        lms, height = data["landmarks"], int(data["height"])
        for frame in lms:
            for face in frame:
                if not np.isnan(face).any():
                    found.append((face.astype(np.int64), height))
    return found


def _random_landmarks(rng: np.random.Generator, n: int) -> list[tuple[np.ndarray, int]]:
    """Random faces, including degenerate ones (off the left edge, flat, at the top)."""
    out = []
    for i in range(n):
        height = int(rng.integers(64, 1200))
        cx, cy = rng.integers(-20, 600), rng.integers(0, height)
        scale = rng.integers(0, 200) if i % 7 else 0
        lm = np.stack([cx + rng.integers(-scale - 1, scale + 1, 68),
                       cy + rng.integers(-scale - 1, scale + 1, 68)], axis=1)
        out.append((lm.astype(np.int64), height))
    return out


@pytest.mark.skipif(NODE is None, reason="Node.js (node) is not installed")
def test_js_crop_rule_equals_python():
    box_fn, range_fn = _python_rule()
    rng = np.random.default_rng(8)
    faces = _real_landmarks()
    # Every real face (hundreds): sample so the test stays fast but covers every clip.
    if len(faces) > 600:
        keep = np.linspace(0, len(faces) - 1, 600).round().astype(int)
        faces = [faces[i] for i in keep]
    faces += _random_landmarks(rng, 400)
    landmarks = [lm.tolist() for lm, _ in faces]
    cases, expected = [], []
    for i, (lm, height) in enumerate(faces):
        fallback = [int(v) for v in sorted(rng.integers(0, 500, 2))] * 2 if i % 3 == 0 else None
        if fallback is not None:
            fallback = [fallback[0], fallback[1], fallback[0] + 40, fallback[1] + 50]
        for version in ("v1", "v15"):
            for shift in (-40, -17, -3, 0, 5, 12, 40):
                for margin in ((0, 10, 37) if version == "v15" else (10,)):
                    kw = dict(version=version, bbox_shift=shift, extra_margin=margin,
                              height=height, fallback=fallback)
                    cases.append({"lm": i, "version": version, "shift": shift, "margin": margin,
                                  "height": height, "fallback": fallback})
                    expected.append(box_fn(lm, **kw))
    clips = [list(range(0, 200)), [0, -1, 5, -1, 9], [-1, -1], list(range(300, 700, 3))]
    clips = [[i if i < len(faces) else -1 for i in clip] for clip in clips]
    got = _run_js({"landmarks": landmarks, "cases": cases, "clips": clips})

    assert len(got["boxes"]) == len(expected) > 10_000
    mismatches = [(c, e, g) for c, e, g in zip(cases, expected, got["boxes"], strict=True)
                  if (None if e is None else [int(v) for v in e]) != g]
    assert mismatches[:5] == []
    ranges = [(_spec_range if range_fn is None else range_fn)(
        [None if i < 0 else faces[i][0] for i in clip]) for clip in clips]
    assert got["ranges"] == [None if r is None else [int(v) for v in r] for r in ranges]
    assert got["ranges"][2] is None


@pytest.mark.skipif(NODE is None, reason="Node.js (node) is not installed")
def test_js_rule_shift_moves_only_the_top_edge_for_v1():
    lm = _real_landmarks()[0][0] if _real_landmarks() else _random_landmarks(
        np.random.default_rng(1), 1)[0][0]
    cases = [{"lm": 0, "version": "v1", "shift": s, "margin": 0, "height": 512,
              "fallback": None} for s in (0, 10)]
    cases.append({"lm": 0, "version": "v15", "shift": 10, "margin": 0, "height": 512,
                  "fallback": None})
    got = _run_js({"landmarks": [lm.tolist()], "cases": cases, "clips": []})["boxes"]
    a, b, c = got
    assert a[0] == b[0] and a[2] == b[2] and a[3] == b[3]
    assert b[1] == a[1] + 20  # yc moves by 10, y1 = 2*yc - y2 moves by 20
    assert c == a  # v1.5 ignores bbox_shift
