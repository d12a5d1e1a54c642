"""The web extension in a real browser (Debian Chromium driven by Playwright) on the real host.

Recipe: comfyui-host.md section 11. Skips without ``COMFYUI_PATH`` (conftest), without
``/usr/bin/chromium`` or without the ``playwright`` package (``pip install playwright``; never
``playwright install``). The host runs with only this pack whitelisted and seeded user settings.

The Face Crop preview is fed the payload the node sends (``ui.musetalk_crop``) built from the real
landmarks of ``talk_25fps_512x512`` and real frames of that clip (a real node run needs the face
detector's weights, which tiny random checkpoints cannot replace). The test checks what is painted
(pixels), that the box follows ``bbox_shift`` changed by a real mouse click and by code and equals
``musetalk_core.crop.crop_boxes``, the frame slider, that the DOM widgets stay out of the prompt and
of ``widgets_values``, the model-status widget against ``GET /musetalk/models``, and the progress
event; screenshots go to ``$MUSETALK_ARTIFACTS`` (default: the test's tmp folder).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from .conftest import COMFYUI_PATH, PACK_FOLDER, start_host

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CLIP = "talk_25fps_512x512"
SHOWN = (0, 10, 20, 30)  # frames saved as pictures for the preview
N_FRAMES = 40
NO_FACE = (12, 13, 14)

pytestmark = [
    pytest.mark.host,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium not installed"),
]


@pytest.fixture(scope="module")
def web_host(host_base, tmp_path_factory):
    """The host with seeded settings (no template dialog, no minimap) and no model files."""
    if not COMFYUI_PATH:
        pytest.skip("set COMFYUI_PATH")
    settings = host_base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True,
                                    "Comfy.Minimap.Visible": False}))
    with start_host(host_base, ["--whitelist-custom-nodes", PACK_FOLDER],
                    "browser_server.log", ready_node="MuseTalkFaceCrop") as h:
        yield h


@pytest.fixture(scope="module")
def clip(web_host, media):
    """The payload the node would send for the first frames of the clip, and its pictures."""
    import av

    data = np.load(media / f"{CLIP}.landmarks.npz")
    lm = data["landmarks"][:N_FRAMES, 0].astype(np.float32)
    has = np.ones(N_FRAMES, bool)
    has[list(NO_FACE)] = False
    frames = []
    with av.open(str(media / f"{CLIP}.mp4")) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in SHOWN:
                name = f"musetalk_web_test_{i:03d}.png"
                frame.to_image().save(web_host.base / "input" / name)
                frames.append({"index": i, "filename": name, "subfolder": "", "type": "input"})
            if i >= max(SHOWN):
                break
    ints = np.trunc(lm).astype(np.int64)
    payload = {
        "version": "v1", "bbox_shift": 0, "extra_margin": 10,
        "width": int(data["width"]), "height": int(data["height"]),
        "has_face": [int(v) for v in has],
        "landmarks": [ints[i].reshape(-1).tolist() if has[i] else [] for i in range(N_FRAMES)],
        "bbox_shift_range": None, "frames": frames,
    }
    return {"payload": payload, "lm": lm, "has": has, "h": int(data["height"]),
            "w": int(data["width"])}


def core_box(clip, frame, version, shift, margin):
    import torch

    from musetalk_core.crop import crop_boxes

    boxes, ok, _ = crop_boxes(torch.from_numpy(np.trunc(clip["lm"][frame:frame + 1])),
                              torch.tensor([bool(clip["has"][frame])]), version=version,
                              height=clip["h"], width=clip["w"], bbox_shift=shift,
                              extra_margin=margin)
    return boxes[0].tolist() if bool(ok[0]) else None


def core_smoothed_box(clip, frame, version, margin, strength):
    import torch

    from musetalk_core.crop import crop_boxes, smooth_boxes

    boxes, ok, _ = crop_boxes(torch.from_numpy(np.trunc(clip["lm"])),
                              torch.from_numpy(clip["has"]), version=version, height=clip["h"],
                              width=clip["w"], extra_margin=margin)
    return smooth_boxes(boxes, ok, strength, clip["h"], clip["w"])[frame].tolist()


@pytest.fixture
def page(web_host, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        pg = context.new_page()
        # only our files' errors count (the host bundle has known noise, section 11.7)
        pg.on("pageerror", lambda e: errors.append(f"{e}\n{e.stack}")
              if f"/extensions/{PACK_FOLDER}/" in (e.stack or "") else None)
        pg.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning")
              and "MuseTalk" in m.text else None)
        pg.goto(web_host.url)
        pg.wait_for_function("""() => !!window.app?.graph
            && !!window.app.extensionManager?.workflow?.activeWorkflow
            && window.__musetalkWebLoaded === true""", timeout=60_000)
        pg.musetalk_errors = errors
        yield pg
        context.close()
        browser.close()


def _artifacts(tmp_path: Path) -> Path:
    out = Path(os.environ.get("MUSETALK_ARTIFACTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    return out


ADD_NODES = """() => {
  app.graph.clear();
  const crop = LiteGraph.createNode("MuseTalkFaceCrop");
  crop.pos = [60, 60];
  app.graph.add(crop);
  const loader = LiteGraph.createNode("MuseTalkFaceParserLoader");
  loader.pos = [520, 60];
  app.graph.add(loader);
  crop.setSize([420, 640]);
  app.canvas.ds.offset = [0, 0];
  app.canvas.ds.scale = 1;
  app.graph.setDirtyCanvas(true, true);
  window.__crop = crop;
  window.__loader = loader;
  return [crop.id, loader.id];
}"""

STATE = """() => {
  const n = window.__crop, c = n.__musetalk.ui.canvas;
  return {box: c.dataset.box, frame: c.dataset.frame, shift: c.dataset.shift,
          ready: !!n.__musetalk.imageReady,
          value: n.widgets.find(w => w.name === "bbox_shift").value,
          info: n.__musetalk.ui.info.textContent, label: n.__musetalk.ui.label.textContent};
}"""


def _wait_box(page, cond: str) -> dict:
    page.wait_for_function(f"""() => {{ const n = window.__crop;
        const c = n && n.__musetalk && n.__musetalk.ui.canvas; return !!c && ({cond}); }}""",
                           timeout=15_000)
    return page.evaluate(STATE)


def test_crop_preview_live_in_browser(web_host, clip, page, tmp_path):
    out = _artifacts(tmp_path)
    page.evaluate(ADD_NODES)
    page.evaluate("""p => { window.__crop.widgets.find(w => w.name === "version").value = "v1";
        window.__crop.onExecuted({musetalk_crop: [p], text: ['test']}); }""", clip["payload"])
    st = _wait_box(page, "c.dataset.box !== undefined && n.__musetalk.imageReady")
    # default frame: the first with a face (frame 0), bbox_shift 0
    assert st["frame"] == "0"
    assert [int(v) for v in st["box"].split(",")] == core_box(clip, 0, "v1", 0, 10)

    # what was painted: the box's top edge has exactly the box colour, the mask tints the lower half
    x1, y1, x2, y2 = core_box(clip, 0, "v1", 0, 10)
    px = page.evaluate("""([x, y, mx, my]) => {
        const ctx = window.__crop.__musetalk.ui.canvas.getContext('2d');
        return [Array.from(ctx.getImageData(x, y, 1, 1).data),
                Array.from(ctx.getImageData(mx, my, 1, 1).data)]; }""",
                       [(x1 + x2) // 2, y1, (x1 + x2) // 2 + 7, y2 - 3])
    assert px[0][:3] == [255, 255, 0]
    assert px[1][0] > px[1][1]  # magenta-tinted mask over the face's lower half

    page.screenshot(path=str(out / "crop_preview_initial.png"))

    # a real mouse click on the bbox_shift number widget's right arrow
    pos = page.evaluate("""() => { const n = window.__crop;
        const w = n.widgets.find(w => w.name === "bbox_shift");
        const width = w.width || n.size[0];
        return app.canvasPosToClientPos([n.pos[0] + width - 20, n.pos[1] + w.y + 10]); }""")
    for _ in range(3):
        page.mouse.click(pos[0], pos[1])
    st = _wait_box(page, "n.widgets.find(w => w.name === 'bbox_shift').value !== 0"
                         " && c.dataset.shift === String(n.widgets.find("
                         "w => w.name === 'bbox_shift').value)")
    shift = int(st["value"])
    assert shift > 0
    assert [int(v) for v in st["box"].split(",")] == core_box(clip, 0, "v1", shift, 10)

    # programmatic change (no callback): redrawn on the next canvas frame
    page.evaluate("""() => { window.__crop.widgets.find(w => w.name === "bbox_shift").value = -7;
        app.graph.setDirtyCanvas(true, true); }""")
    st = _wait_box(page, "c.dataset.shift === '-7'")
    assert [int(v) for v in st["box"].split(",")] == core_box(clip, 0, "v1", -7, 10)

    # frame slider: third picture (frame 20); then a frame without a face is marked in the strip
    page.evaluate("""() => { const s = window.__crop.__musetalk.ui.slider; s.value = '2';
        s.dispatchEvent(new Event('input')); }""")
    st = _wait_box(page, "c.dataset.frame === '20' && n.__musetalk.imageReady")
    assert [int(v) for v in st["box"].split(",")] == core_box(clip, 20, "v1", -7, 10)
    strip = page.evaluate("""(i) => { const s = window.__crop.__musetalk.ui.strip;
        return Array.from(s.getContext('2d').getImageData(
            Math.floor(i * s.width / 40) , 2, 1, 1).data); }""", NO_FACE[1])
    assert strip[0] > 200 and strip[1] < 80  # red: no face

    # the preview widget is in neither the API prompt nor widgets_values
    prompt = page.evaluate("""async () => { const p = await app.graphToPrompt();
        const id = String(window.__crop.id);
        return {inputs: Object.keys(p.output[id].inputs),
                values: p.workflow.nodes.find(n => String(n.id) === id).widgets_values,
                widgets: window.__crop.widgets.map(w => w.name)}; }""")
    assert "musetalk_crop_preview" not in prompt["inputs"]
    assert "bbox_shift" in prompt["inputs"] and prompt["inputs"].count("bbox_shift") == 1
    real = [w for w in prompt["widgets"] if w != "musetalk_crop_preview"]
    assert len(prompt["values"]) == len(real)

    page.screenshot(path=str(out / "crop_preview_frame20.png"))

    # switching the node to v1.5: bbox_shift no longer applies, extra_margin extends the chin
    page.evaluate("""() => { window.__crop.widgets.find(w => w.name === "version").value = "v1.5";
        app.graph.setDirtyCanvas(true, true); }""")
    st = _wait_box(page, "c.dataset.shift === '0'")
    assert [int(v) for v in st["box"].split(",")] == core_box(clip, 20, "v1.5", -7, 10)

    # smooth_boxes: the causal filter over frames 0..20, equal to the core's
    page.evaluate("""() => { window.__crop.widgets.find(w => w.name === "smooth_boxes").value = 0.5;
        app.graph.setDirtyCanvas(true, true); }""")
    st = _wait_box(page, "c.dataset.smooth === '0.5'")
    assert [int(v) for v in st["box"].split(",")] == core_smoothed_box(clip, 20, "v1.5", 10, 0.5)
    assert core_smoothed_box(clip, 20, "v1.5", 10, 0.5) != core_box(clip, 20, "v1.5", -7, 10)
    assert page.musetalk_errors == []


def test_model_status_and_progress_in_browser(web_host, page, tmp_path):
    out = _artifacts(tmp_path)
    page.evaluate(ADD_NODES)
    status = web_host.get("/musetalk/models?name=face_parser")["models"][0]
    assert status["present"] is False
    page.wait_for_function("""() => !!window.__loader.__musetalk_rows || document.querySelector(
        '.musetalk-model-status [data-model="face_parser"]')""", timeout=15_000)
    row = page.evaluate("""() => { const r = document.querySelector(
        '.musetalk-model-status [data-model="face_parser"]');
        return {present: r.dataset.present, text: r.textContent,
                button: !!r.querySelector('button')}; }""")
    assert row["present"] == "false" and row["button"]
    assert status["path"] in row["text"]

    # a progress event for the node shows the stage on it
    page.evaluate("""() => { const api = window.comfyAPI.api.api;
        api.dispatchEvent(new CustomEvent('musetalk.progress', {detail:
            {node: String(window.__crop.id), stage: 'detecting faces', done: 3, total: 8}})); }""")
    page.wait_for_function("() => window.__crop.__musetalkProgress?.done === 3", timeout=5_000)
    page.screenshot(path=str(out / "model_status_progress.png"))
    assert page.musetalk_errors == []
