// MuseTalk web extension: crop preview with live bbox_shift / extra_margin, model status with
// downloads on the loader nodes, and the current stage on long-running nodes.
//
// Everything here is optional: each hook is wrapped so a failure only logs a warning, the DOM
// widgets are never serialised (not in the API prompt, not in widgets_values), and the nodes run
// the same with this folder removed.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { bboxShiftRange, cropBox, effectiveShift, maskTop, smoothBoxes } from "./crop_rule.js";

const EXT = "musetalk.web";
const CROP_NODE = "MuseTalkFaceCrop";
const PREVIEW_WIDGET = "musetalk_crop_preview";
const STATUS_WIDGET = "musetalk_model_status";
const COLORS = { box: "#ffff00", mask: "rgba(255, 0, 96, 0.35)", lm: "#00ff66", noFace: "#ff3030" };

function warn(what, err) {
  console.warn(`[MuseTalk] ${what} failed; the node still works without the preview`, err);
}

function safe(what, fn) {
  return function (...args) {
    try {
      return fn.apply(this, args);
    } catch (err) {
      warn(what, err);
      return undefined;
    }
  };
}

function widgetValue(node, name, fallback) {
  const w = node.widgets?.find((x) => x.name === name);
  return w === undefined || w.value === undefined ? fallback : w.value;
}

function hideWidgetFromSaves(widget) {
  if (!widget) return widget;
  widget.serialize = false; // not in widgets_values (saved workflows stay positional)
  widget.options = widget.options || {};
  widget.options.serialize = false; // not in the API prompt
  return widget;
}

// ------------------------------------------------------------------------------ crop payload

/** The node's `ui.musetalk_crop` in one shape, whatever variant of key names it used. */
export function normalizeCropPayload(raw) {
  const p = Array.isArray(raw) ? raw[0] : raw;
  if (!p || typeof p !== "object") return null;
  const size = p.frame_size || p.size || p.source_size || [p.width, p.height];
  // frame_size / source_size are (height, width) in the core; width/height are explicit.
  let width = p.width;
  let height = p.height;
  if ((width === undefined || height === undefined) && Array.isArray(size)) {
    [height, width] = p.frame_size || p.source_size ? size : [size[1], size[0]];
  }
  // per frame: 68 [x, y] pairs, or 136 flat ints (x0, y0, x1, y1, ...), or [] / null (no face)
  const landmarks = (p.landmarks || []).map((lm) => {
    if (!lm || !lm.length) return null;
    if (lm.length === 68) return lm;
    if (lm.length !== 136) return null;
    const pts = [];
    for (let i = 0; i < 136; i += 2) pts.push([lm[i], lm[i + 1]]);
    return pts;
  });
  const hasFace = (p.has_face || landmarks.map((lm) => !!lm)).map(Boolean);
  const frames = (p.frames || p.images || []).map((f, i) => ({
    index: f.index ?? i,
    url: api.apiURL("/view?" + new URLSearchParams({
      filename: f.filename, subfolder: f.subfolder || "", type: f.type || "temp",
    })),
  }));
  return {
    version: String(p.version || "v15") === "v1" ? "v1" : "v15",
    sentVersion: String(p.version || "v1.5"),
    bboxShift: Number(p.bbox_shift ?? 0),
    extraMargin: Number(p.extra_margin ?? 10),
    smooth: Number(p.smooth_boxes ?? 0),
    width: Number(width),
    height: Number(height),
    landmarks,
    hasFace,
    fallback: p.boxes || null,
    range: p.bbox_shift_range || p.range || bboxShiftRange(landmarks),
    frames,
  };
}

function stopsOf(payload) {
  if (payload.frames.length) return payload.frames.map((f) => f.index);
  return payload.landmarks.map((_, i) => i);
}

function boxFor(payload, frame, shift, margin) {
  const lm = payload.landmarks[frame];
  if (!lm || !payload.hasFace[frame]) return null;
  const fb = payload.fallback && payload.fallback[frame];
  return cropBox(lm, {
    version: payload.version, bboxShift: shift, extraMargin: margin, height: payload.height,
    width: payload.width, fallback: fb && fb.length === 4 ? fb : null,
  });
}

/** The box of ``frame`` with the node's smoothing: the causal filter runs over every frame up
 * to it, as the core does (cached per rule settings, so moving the slider stays cheap). */
function smoothedBoxFor(state, payload, frame, shift, margin, strength) {
  if (!(strength > 0)) return boxFor(payload, frame, shift, margin);
  const key = `${payload.version}|${shift}|${margin}|${strength}|${payload.width}x${payload.height}`;
  if (state.smoothKey !== key || state.smoothPayload !== payload) {
    const raw = payload.landmarks.map((_, i) => boxFor(payload, i, shift, margin));
    state.smoothed = smoothBoxes(raw, strength, payload.height, payload.width);
    state.smoothKey = key;
    state.smoothPayload = payload;
  }
  return state.smoothed[frame] ?? null;
}

// ------------------------------------------------------------------------------ crop widget

function buildCropElement() {
  const root = document.createElement("div");
  root.className = "musetalk-crop";
  root.style.cssText = "display:flex;flex-direction:column;gap:4px;width:100%;height:100%;"
    + "box-sizing:border-box;font:11px sans-serif;color:#ddd;overflow:hidden";
  const hint = document.createElement("div");
  hint.textContent = "Run the graph once to preview the crop (landmarks, box, masked half).";
  hint.style.cssText = "padding:6px;opacity:.8";
  const canvas = document.createElement("canvas");
  canvas.width = 1;
  canvas.height = 1;
  canvas.style.cssText = "flex:1 1 auto;min-height:0;width:100%;object-fit:contain;display:none;"
    + "background:#111";
  const strip = document.createElement("canvas");
  strip.height = 6;
  strip.width = 200;
  strip.style.cssText = "width:100%;height:6px;display:none";
  strip.title = "frames: green = face found, red = no face";
  const row = document.createElement("div");
  row.style.cssText = "display:none;align-items:center;gap:6px";
  const slider = document.createElement("input");
  slider.type = "range";
  slider.min = "0";
  slider.step = "1";
  slider.style.cssText = "flex:1 1 auto";
  slider.title = "preview frame";
  const label = document.createElement("span");
  label.style.cssText = "min-width:90px;text-align:right";
  row.append(slider, label);
  const info = document.createElement("div");
  info.style.cssText = "display:none;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;"
    + "line-height:16px;min-height:16px";
  root.append(hint, canvas, strip, row, info);
  return { root, hint, canvas, strip, row, slider, label, info };
}

function loadImage(state, url) {
  let img = state.images.get(url);
  if (!img) {
    img = new Image();
    img.onload = () => {
      state.key = null; // redraw with the picture
      app.graph?.setDirtyCanvas(true, true);
    };
    img.src = url;
    state.images.set(url, img);
  }
  return img;
}

function drawStrip(ui, payload, frame) {
  const n = payload.hasFace.length;
  const ctx = ui.strip.getContext("2d");
  ui.strip.width = Math.max(1, Math.min(n, 1000));
  const w = ui.strip.width;
  for (let x = 0; x < w; x++) {
    const i = Math.min(n - 1, Math.floor((x * n) / w));
    ctx.fillStyle = payload.hasFace[i] ? "#2e7d32" : COLORS.noFace;
    ctx.fillRect(x, 0, 1, 6);
  }
  ctx.fillStyle = "#fff";
  ctx.fillRect(Math.floor((frame * w) / Math.max(1, n)), 0, Math.max(1, w / 200), 6);
}

function drawCrop(node, force) {
  const state = node.__musetalk;
  const payload = state?.payload;
  if (!payload) return;
  const ui = state.ui;
  const stops = stopsOf(payload);
  const pos = Math.max(0, Math.min(stops.length - 1, Number(ui.slider.value) || 0));
  const frame = stops[pos] ?? 0;
  const shift = Number(widgetValue(node, "bbox_shift", payload.bboxShift));
  const margin = Number(widgetValue(node, "extra_margin", payload.extraMargin));
  const strength = Number(widgetValue(node, "smooth_boxes", payload.smooth)) || 0;
  // the node's version widget decides the rule (the payload's is what the last run used)
  payload.version = String(widgetValue(node, "version", payload.sentVersion)) === "v1" ? "v1" : "v15";
  const key = `${frame}|${payload.version}|${shift}|${margin}|${strength}|`
    + `${payload.width}x${payload.height}`;
  if (!force && key === state.key) return;
  state.key = key;

  const { canvas } = ui;
  if (canvas.width !== payload.width || canvas.height !== payload.height) {
    canvas.width = payload.width;
    canvas.height = payload.height;
  }
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#111";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const picture = payload.frames.find((f) => f.index === frame);
  if (picture) {
    const img = loadImage(state, picture.url);
    if (img.complete && img.naturalWidth) ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
    state.imageReady = img.complete && img.naturalWidth > 0;
  } else {
    state.imageReady = false;
  }
  const lm = payload.landmarks[frame];
  const box = smoothedBoxFor(state, payload, frame, shift, margin, strength);
  const line = Math.max(2, Math.round(canvas.width / 256));
  if (box) {
    const top = Math.round(maskTop(box));
    ctx.fillStyle = COLORS.mask;
    ctx.fillRect(box[0], top, box[2] - box[0], box[3] - top);
  }
  if (lm && payload.hasFace[frame]) {
    ctx.fillStyle = COLORS.lm;
    for (const [x, y] of lm) ctx.fillRect(Math.round(x) - 1, Math.round(y) - 1, 3, 3);
  }
  if (box) {
    ctx.strokeStyle = COLORS.box;
    ctx.lineWidth = line;
    // integer rectangle with an even line width: crisp pixels of exactly the box colour
    ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
  } else {
    ctx.strokeStyle = COLORS.noFace;
    ctx.lineWidth = line * 2;
    ctx.beginPath();
    ctx.moveTo(0, 0);
    ctx.lineTo(canvas.width, canvas.height);
    ctx.moveTo(canvas.width, 0);
    ctx.lineTo(0, canvas.height);
    ctx.stroke();
  }
  state.box = box;
  state.frame = frame;
  canvas.dataset.box = box ? box.join(",") : "";
  canvas.dataset.frame = String(frame);
  canvas.dataset.shift = String(effectiveShift(payload.version, shift));
  canvas.dataset.margin = String(margin);
  canvas.dataset.smooth = String(strength);
  ui.label.textContent = `frame ${frame + 1}/${payload.hasFace.length}`
    + (payload.hasFace[frame] ? "" : " (no face)");
  const range = payload.range ? `bbox_shift range ${payload.range[0]}..${payload.range[1]}` : "";
  const which = (payload.version === "v1"
    ? `v1 · bbox_shift ${shift}` : `v1.5 · extra_margin ${margin} (bbox_shift not used)`)
    + (strength > 0 ? ` · smoothed ${strength}` : "");
  ui.info.textContent = `${which} · ${range}` + (box ? ` · box ${box.join(", ")}` : " · no face");
  ui.info.title = ui.info.textContent;
  drawStrip(ui, payload, frame);
}

function showCropPayload(node, raw) {
  const payload = normalizeCropPayload(raw);
  if (!payload || !payload.width || !payload.height) return;
  const state = node.__musetalk;
  const ui = state.ui;
  const stops = stopsOf(payload);
  state.payload = payload;
  ui.slider.max = String(Math.max(0, stops.length - 1));
  const first = stops.findIndex((i) => payload.hasFace[i]);
  ui.slider.value = String(first >= 0 ? first : 0);
  ui.hint.style.display = "none";
  for (const el of [ui.canvas, ui.strip]) el.style.display = "block";
  ui.row.style.display = "flex";
  ui.info.style.display = "block";
  drawCrop(node, true);
  node.setDirtyCanvas?.(true, true);
}

function setupCropNode(node) {
  const ui = buildCropElement();
  node.__musetalk = { ui, payload: null, key: null, images: new Map(), box: null };
  const widget = node.addDOMWidget(PREVIEW_WIDGET, "musetalk_preview", ui.root, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => 220,
    onDraw: safe("crop preview redraw", () => drawCrop(node, false)),
  });
  hideWidgetFromSaves(widget);
  ui.slider.addEventListener("input", safe("frame slider", () => drawCrop(node, true)));
  for (const name of ["bbox_shift", "extra_margin", "version", "smooth_boxes"]) {
    const w = node.widgets?.find((x) => x.name === name);
    if (!w) continue;
    const original = w.callback;
    w.callback = function (...args) {
      const r = original?.apply(this, args);
      safe("crop preview redraw", () => drawCrop(node, true))();
      return r;
    };
  }
  const size = node.computeSize?.();
  if (size) node.setSize([Math.max(node.size[0], 320), Math.max(node.size[1], size[1])]);
}

// ------------------------------------------------------------------------------ model status

const modelStatus = { data: null, pending: null, listeners: new Set() };

async function fetchModelStatus() {
  if (!modelStatus.pending) {
    modelStatus.pending = api.fetchApi("/musetalk/models")
      .then((r) => (r.ok ? r.json() : null))
      .then((data) => {
        modelStatus.data = data;
        for (const fn of modelStatus.listeners) safe("model status", fn)();
        return data;
      })
      .finally(() => { modelStatus.pending = null; });
  }
  return modelStatus.pending;
}

function formatBytes(n) {
  if (n === null || n === undefined) return "";
  return n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : `${(n / 1e6).toFixed(1)} MB`;
}

function renderStatus(node, el) {
  const data = modelStatus.data;
  const keys = data?.nodes?.[node.comfyClass || node.type];
  el.replaceChildren();
  if (!data || !keys) {
    el.textContent = data ? "" : "model status: loading…";
    return;
  }
  const byName = Object.fromEntries(data.models.map((m) => [m.name, m]));
  for (const key of keys) {
    const m = byName[key];
    if (!m) continue;
    const row = document.createElement("div");
    row.dataset.model = key;
    row.dataset.present = String(m.present);
    row.style.cssText = "display:flex;gap:6px;align-items:center;white-space:nowrap";
    const mark = document.createElement("span");
    mark.textContent = m.present ? "✔" : "✘";
    mark.style.color = m.present ? "#6c6" : "#f66";
    const path = document.createElement("span");
    path.textContent = m.path + (m.present ? ` (${formatBytes(m.size)})` : "");
    path.title = `${m.source} · ${m.licence}`;
    path.style.cssText = "flex:1 1 auto;overflow:hidden;text-overflow:ellipsis";
    row.append(mark, path);
    const job = m.download;
    if (!m.present) {
      if (job && job.state === "running") {
        const prog = document.createElement("span");
        prog.textContent = `${formatBytes(job.done)} / ${formatBytes(job.total)}`;
        row.append(prog);
      } else {
        const button = document.createElement("button");
        button.textContent = "Download";
        button.title = `download ${m.file} (${formatBytes(m.expected_size || m.max_bytes)}) `
          + `from ${m.source} into ${m.target_folder}`;
        button.style.cssText = "font-size:10px;padding:0 4px";
        button.addEventListener("click", safe("download", () => startDownload(key)));
        row.append(button);
        if (job && job.state === "error") {
          row.title = job.error;
          mark.textContent = "⚠";
        }
      }
    }
    el.append(row);
  }
}

async function startDownload(name) {
  const r = await api.fetchApi("/musetalk/download", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name }),
  });
  if (!r.ok) console.warn("[MuseTalk] download refused", await r.text());
  await fetchModelStatus();
}

function setupLoaderNode(node) {
  const el = document.createElement("div");
  el.className = "musetalk-model-status";
  el.style.cssText = "font:11px sans-serif;color:#ddd;overflow:auto;width:100%;height:100%";
  const widget = node.addDOMWidget(STATUS_WIDGET, "musetalk_status", el, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => 20 + 16 * (modelStatus.data?.nodes?.[node.comfyClass]?.length || 1),
  });
  hideWidgetFromSaves(widget);
  const render = () => renderStatus(node, el);
  modelStatus.listeners.add(render);
  const onRemoved = node.onRemoved;
  node.onRemoved = function (...args) {
    modelStatus.listeners.delete(render);
    return onRemoved?.apply(this, args);
  };
  render();
  fetchModelStatus().catch((err) => warn("model status", err));
}

// ------------------------------------------------------------------------------ progress

function drawProgress(node, ctx) {
  const p = node.__musetalkProgress;
  if (!p) return;
  const text = `${p.stage} ${p.done}/${p.total}`;
  const w = node.size[0];
  ctx.save();
  ctx.fillStyle = "rgba(0,0,0,0.6)";
  ctx.fillRect(0, -4, w, 4);
  ctx.fillStyle = "#4caf50";
  ctx.fillRect(0, -4, (w * p.done) / Math.max(1, p.total), 4);
  ctx.font = "11px sans-serif";
  ctx.fillStyle = "#cfc";
  ctx.textAlign = "right";
  ctx.fillText(text, w - 6, -10);
  ctx.restore();
}

function clearProgress() {
  for (const node of app.graph?._nodes || []) {
    if (node.__musetalkProgress) {
      node.__musetalkProgress = null;
      node.setDirtyCanvas?.(true, true);
    }
  }
}

// ------------------------------------------------------------------------------ registration

app.registerExtension({
  name: EXT,

  async setup() {
    try {
      api.addEventListener("musetalk.progress", safe("progress", (e) => {
        const d = e.detail || {};
        const node = d.node != null ? app.graph?.getNodeById(d.node) : null;
        if (!node) return;
        node.__musetalkProgress = { stage: d.stage, done: d.done, total: d.total };
        window.__musetalkProgressEvents = (window.__musetalkProgressEvents || 0) + 1;
        node.setDirtyCanvas?.(true, true);
      }));
      for (const ev of ["execution_success", "execution_error", "execution_interrupted"]) {
        api.addEventListener(ev, safe("progress", clearProgress));
      }
      api.addEventListener("musetalk.download", safe("download event", (e) => {
        const d = e.detail || {};
        const m = modelStatus.data?.models?.find((x) => x.name === d.name);
        if (m) m.download = { ...(m.download || {}), ...d };
        if (d.state === "running") {
          for (const fn of modelStatus.listeners) safe("model status", fn)();
        } else {
          fetchModelStatus().catch((err) => warn("model status", err));
        }
      }));
    } catch (err) {
      warn("setup", err);
    }
    window.__musetalkWebLoaded = true;
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    try {
      const name = nodeData?.name || "";
      if (!name.startsWith("MuseTalk")) return;
      const proto = nodeType.prototype;
      const onDrawForeground = proto.onDrawForeground;
      proto.onDrawForeground = function (ctx, ...rest) {
        const r = onDrawForeground?.apply(this, [ctx, ...rest]);
        safe("progress", drawProgress)(this, ctx);
        return r;
      };
      const onNodeCreated = proto.onNodeCreated;
      if (name === CROP_NODE) {
        proto.onNodeCreated = function (...args) {
          const r = onNodeCreated?.apply(this, args);
          safe("crop preview", setupCropNode)(this);
          return r;
        };
        const onExecuted = proto.onExecuted;
        proto.onExecuted = function (output, ...rest) {
          const r = onExecuted?.apply(this, [output, ...rest]);
          if (output?.musetalk_crop) safe("crop preview", showCropPayload)(this, output.musetalk_crop);
          return r;
        };
      } else if (/Loader$/.test(name)) {
        proto.onNodeCreated = function (...args) {
          const r = onNodeCreated?.apply(this, args);
          safe("model status", setupLoaderNode)(this);
          return r;
        };
        const onExecuted = proto.onExecuted;
        proto.onExecuted = function (...args) {
          const r = onExecuted?.apply(this, args);
          fetchModelStatus().catch((err) => warn("model status", err));
          return r;
        };
      }
    } catch (err) {
      warn("registering node hooks", err);
    }
  },
});
