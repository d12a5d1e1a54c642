// MuseTalk's crop box from 68 face landmarks (musetalk.md 4.2), in plain JavaScript.
//
// A pure ES module with no imports and no side effects: the web extension uses it to redraw the
// crop box while the user moves bbox_shift / extra_margin, and tests/unit/test_crop_rule_js.py
// runs it with Node.js and compares it with the Python core, value for value.
//
// Landmarks are 68 [x, y] integer pairs in source pixels (iBUG-68 order; 28, 29, 30 are the nose
// bridge). Boxes are [x1, y1, x2, y2] in source pixels, half-open like numpy slices.

/** The bbox_shift actually applied: REF forces 0 for v1.5. */
export function effectiveShift(version, bboxShift) {
  return String(version) === "v1" ? Math.trunc(Number(bboxShift) || 0) : 0;
}

/**
 * The crop box of one frame, as musetalk_core.crop.crop_boxes computes it.
 * @param {number[][]} lm 68 [x, y] landmarks (truncated toward zero like numpy astype(int32)).
 * @param {{version: string, bboxShift?: number, extraMargin?: number, height: number,
 *          width: number, fallback?: number[]|null}} opts fallback is the detector's box
 *          (float), used when the landmark box is degenerate (rule step 4); without one the
 *          landmarks' extents clipped to the frame are used (keypoint input).
 * @returns {number[]|null} [x1, y1, x2, y2] clipped to the frame, or null when it is empty.
 */
export function cropBox(lm, opts) {
  const version = String(opts.version);
  const shift = effectiveShift(version, opts.bboxShift);
  const width = Math.trunc(opts.width);
  const height = Math.trunc(opts.height);
  const ys0 = lm.map((p) => Math.trunc(p[1]));
  const ys = ys0.slice();
  const xs = lm.map((p) => Math.trunc(p[0]));
  if (shift !== 0) ys[29] += shift; // in place: the shifted point takes part in the max below
  const yc = ys[29];
  const y2 = Math.max(...ys);
  const y1 = Math.max(0, yc - (y2 - yc));
  const x1 = Math.min(...xs);
  const x2 = Math.max(...xs);
  let box = [x1, y1, x2, y2];
  if (y2 - y1 <= 0 || x2 - x1 <= 0 || x1 < 0) {
    if (opts.fallback) {
      box = opts.fallback.map((v) => Math.trunc(Math.max(0, v)));
    } else {
      const lim = [width, height, width, height];
      box = [Math.min(...xs), Math.min(...ys0), Math.max(...xs), Math.max(...ys0)]
        .map((v, i) => Math.min(Math.max(0, v), lim[i]));
    }
  }
  if (version !== "v1") {
    const margin = Math.trunc(Number(opts.extraMargin) || 0);
    box[3] = Math.min(box[3] + margin, height);
  }
  const lim = [width, height, width, height];
  box = box.map((v, i) => Math.min(Math.max(0, v), lim[i]));
  if (!(box[2] > box[0] && box[3] > box[1])) return null;
  return box;
}

/**
 * The usable bbox_shift range over a clip, as REF prints it:
 * [-int(mean(lm30.y - lm29.y)), int(mean(lm29.y - lm28.y))] over the frames with a face.
 * @param {(number[][]|null)[]} frames landmarks per frame (null: no face).
 * @returns {number[]|null} [low, high], or null when no frame has a face.
 */
export function bboxShiftRange(frames) {
  let minus = 0;
  let plus = 0;
  let n = 0;
  for (const lm of frames) {
    if (!lm) continue;
    minus += Math.trunc(lm[30][1]) - Math.trunc(lm[29][1]);
    plus += Math.trunc(lm[29][1]) - Math.trunc(lm[28][1]);
    n += 1;
  }
  if (n === 0) return null;
  return [-Math.trunc(minus / n) || 0, Math.trunc(plus / n) || 0];
}

/** The mask line: MuseTalk masks the lower half of the 256x256 crop (rows 128..255). */
export function maskTop(box) {
  return box[1] + (box[3] - box[1]) / 2;
}

/** numpy's round: halves go to the even neighbour. */
function roundHalfEven(x) {
  return Math.abs(x % 1) === 0.5 ? 2 * Math.round(x / 2) : Math.round(x);
}

/**
 * Causal box smoothing, as musetalk_core.crop.smooth_boxes (the Face Crop node's smooth_boxes):
 * a double exponential (Holt) filter per coordinate within each run of face frames, level gain
 * alpha = 1 - 0.85 * strength and trend gain alpha / 4; a frame without a box ends the run.
 * Float64 throughout, rounded half to even and clipped like the core, so boxes are equal.
 * @param {(number[]|null)[]} boxes per frame [x1, y1, x2, y2], or null (no face).
 * @param {number} strength 0..1 (0: the boxes unchanged).
 * @returns {(number[]|null)[]} smoothed boxes (new arrays).
 */
export function smoothBoxes(boxes, strength, height, width) {
  if (!(Number(strength) > 0)) return boxes.map((b) => (b ? b.slice() : null));
  const alpha = 1.0 - 0.85 * Number(strength);
  const beta = alpha / 4.0;
  const h = Math.trunc(height);
  const w = Math.trunc(width);
  let level = null;
  let trend = null;
  return boxes.map((b) => {
    if (!b) {
      level = trend = null;
      return null;
    }
    if (level === null) {
      level = b.slice();
      trend = [0, 0, 0, 0];
    } else {
      const prev = level;
      level = b.map((v, k) => alpha * v + (1.0 - alpha) * (prev[k] + trend[k]));
      trend = trend.map((t, k) => beta * (level[k] - prev[k]) + (1.0 - beta) * t);
    }
    const lim = [w, h, w, h];
    const r = level.map((v, k) => Math.min(Math.max(roundHalfEven(v), 0), lim[k]));
    r[2] = Math.min(Math.max(r[2], r[0] + 1), w);
    r[3] = Math.min(Math.max(r[3], r[1] + 1), h);
    r[0] = Math.min(r[0], r[2] - 1);
    r[1] = Math.min(r[1], r[3] - 1);
    return r;
  });
}
