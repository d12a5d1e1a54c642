"""Build the shared workflows: UI format (``workflows/*.json``) and API twins (``workflows/api``).

One description per workflow (nodes, widget values by input name, links by input name) gives
both formats, so the twins cannot drift. Widget order for our nodes comes from the pack's own
``NodeDef`` declarations; for the core nodes from :data:`CORE_NODES`, a copy of what the host
(ComfyUI 0.3.64) reports in ``/object_info`` (the host tests compare the two).

Run from the repository root::

    python scripts/build_workflows.py          # write the files
    python scripts/build_workflows.py --check  # exit 1 if a file is stale
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT_UI = ROOT / "workflows"
OUT_API = ROOT / "workflows" / "api"

WIDGET_TYPES = {"INT", "FLOAT", "BOOLEAN", "STRING", "COMBO"}
SEED_NAMES = ("seed", "noise_seed")
"""INT inputs the frontend gives an extra ``control_after_generate`` widget value."""
VIRTUAL = {"MarkdownNote", "Note"}
"""Frontend-only nodes: in the UI file, never in the API prompt."""


@dataclass(frozen=True)
class Port:
    name: str
    type: str
    optional: bool = False
    options: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES


@dataclass(frozen=True)
class NodeSpec:
    """What a workflow needs to know about a node type: inputs in order, outputs."""

    inputs: tuple[Port, ...]
    outputs: tuple[tuple[str, str], ...]
    ui_tail: tuple[Any, ...] = ()
    """Extra trailing UI widget values the frontend adds (upload widgets)."""
    display: str | None = None


CORE_NODES: dict[str, NodeSpec] = {
    "LoadVideo": NodeSpec((Port("file", "COMBO"),), (("VIDEO", "VIDEO"),), ui_tail=("image",)),
    "GetVideoComponents": NodeSpec(
        (Port("video", "VIDEO"),), (("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT"))),
    "CreateVideo": NodeSpec(
        (Port("images", "IMAGE"), Port("fps", "FLOAT", min=1.0, max=120.0),
         Port("audio", "AUDIO", optional=True)), (("VIDEO", "VIDEO"),)),
    "SaveVideo": NodeSpec(
        (Port("video", "VIDEO"), Port("filename_prefix", "STRING"),
         Port("format", "COMBO", options=("auto", "mp4")),
         Port("codec", "COMBO", options=("auto", "h264"))), ()),
    "LoadAudio": NodeSpec((Port("audio", "COMBO"),), (("AUDIO", "AUDIO"),),
                          ui_tail=(None, None)),
    "LoadImage": NodeSpec((Port("image", "COMBO"),), (("IMAGE", "IMAGE"), ("MASK", "MASK")),
                          ui_tail=("image",)),
    "VAELoader": NodeSpec((Port("vae_name", "COMBO"),), (("VAE", "VAE"),)),
    "PreviewImage": NodeSpec((Port("images", "IMAGE"),), ()),
    "MaskToImage": NodeSpec((Port("mask", "MASK"),), (("IMAGE", "IMAGE"),)),
    "RepeatImageBatch": NodeSpec((Port("image", "IMAGE"), Port("amount", "INT", min=1, max=4096)),
                                 (("IMAGE", "IMAGE"),)),
}
"""Core nodes used by the workflows (``/object_info`` of ComfyUI 0.3.64). COMBO options that
depend on the user's files (inputs, models) are left open (``None``)."""


def load_pack() -> Any:
    """The pack imported as a package, the way the host imports it (no path changes)."""
    name = "musetalk_pack"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def pack_specs() -> dict[str, NodeSpec]:
    """Our nodes as :class:`NodeSpec` (from their ``NodeDef`` declarations)."""
    specs = {}
    for d in load_pack().nodes.node_defs():
        ports = tuple(Port(i.name, i.type, i.optional,
                           tuple(i.choices()) if i.type == "COMBO" else None, i.min, i.max)
                      for i in d.inputs)
        specs[d.node_id] = NodeSpec(ports, tuple((o.name, o.type) for o in d.outputs),
                                    display=d.display_name)
    return specs


def all_specs() -> dict[str, NodeSpec]:
    return {**CORE_NODES, **pack_specs()}


# --------------------------------------------------------------------------- descriptions


@dataclass
class N:
    """One node of a workflow description.

    ``widgets``: widget values by input name (every widget must be given). ``links``: input
    name -> (source node id, output slot). ``col``/``row`` place it on a grid.
    """

    id: int
    type: str
    widgets: dict[str, Any] = field(default_factory=dict)
    links: dict[str, tuple[int, int]] = field(default_factory=dict)
    col: int = 0
    row: int = 0
    title: str | None = None
    text: str | None = None  # MarkdownNote / Note
    size: tuple[int, int] | None = None


@dataclass
class Workflow:
    name: str
    nodes: list[N]
    groups: list[tuple[str, list[int]]] = field(default_factory=list)


COL_W, ROW_H = 380, 250
MODELS = {
    "unet15": "musetalkV15/unet.pth",
    "whisper": "whisper",
    "s3fd": "face_alignment/s3fd-619a316812.pth",
    "fan": "face_alignment/2DFAN4-11f355bf06.pth.tar",
    "parser": "face-parse-bisent/79999_iter.pth",
    "vae": "sd-vae-ft-mse/diffusion_pytorch_model.safetensors",
}
CLIP_25 = "talk_25fps_512x512.mp4"
CLIP_2997 = "talk_29_97fps_512x512.mp4"
SPEECH = "speech_16k_mono.wav"
STILL = "portrait_video_frame_512x512.jpg"
PORTRAIT = "portrait_astronaut_512x512.png"

MODELS_NOTE = (
    "### Models\n"
    "Put the MuseTalk files in `ComfyUI/models/musetalk/` (`musetalkV15/unet.pth` + "
    "`musetalk.json`, `musetalk/pytorch_model.bin` for v1, `whisper/` (HF whisper-tiny) or "
    "`whisper/tiny.pt`, `face_alignment/`, `face-parse-bisent/79999_iter.pth`) and sd-vae-ft-mse "
    "in `ComfyUI/models/vae/sd-vae-ft-mse/`. With **download** on, the loaders fetch missing "
    "files (verified) on the first run. Press **R** to refresh the lists after copying files.")


def _loaders(ids: dict[str, int], col: int, row0: int, *, detector: bool = True,
             parser: bool = True, version: str = "auto") -> list[N]:
    nodes = [
        N(ids["model"], "MuseTalkModelLoader", {"unet_name": MODELS["unet15"], "version": version,
                                                 "dtype": "auto", "download": True}, col=col,
          row=row0),
        N(ids["vae"], "VAELoader", {"vae_name": MODELS["vae"]}, col=col, row=row0 + 1,
          title="Load VAE (sd-vae-ft-mse)"),
        N(ids["whisper"], "MuseTalkWhisperLoader", {"whisper_name": MODELS["whisper"],
                                                     "dtype": "auto", "download": True},
          col=col, row=row0 + 2),
    ]
    if detector:
        nodes.append(N(ids["detector"], "MuseTalkFaceDetectorLoader",
                       {"detector_name": MODELS["s3fd"], "landmarks_name": MODELS["fan"],
                        "dtype": "auto", "download": True, "detect_max_side": 1920},
                       col=col, row=row0 + 3))
    if parser:
        nodes.append(N(ids["parser"], "MuseTalkFaceParserLoader",
                       {"parser_name": MODELS["parser"], "dtype": "auto",
                        "download": True}, col=col,
                       row=row0 + 4))
    return nodes


def dub_a_clip() -> Workflow:
    loaders = _loaders({"model": 8, "vae": 9, "whisper": 4, "detector": 6, "parser": 11}, 0, 2)
    return Workflow("dub_a_clip", [
        N(1, "LoadVideo", {"file": CLIP_25}, col=0, row=0, title="Load Video (the clip to dub)"),
        N(3, "LoadAudio", {"audio": SPEECH}, col=0, row=1, title="Load Audio (the new speech)"),
        *loaders,
        N(2, "GetVideoComponents", links={"video": (1, 0)}, col=1, row=0),
        N(5, "MuseTalkAudioFeatures", {"fps": 25.0},
          {"audio": (3, 0), "whisper": (4, 0), "fps": (2, 2)}, col=2, row=1),
        N(7, "MuseTalkFaceCrop", {"version": "v1.5", "bbox_shift": 0, "extra_margin": 10,
                                  "face_index": -1, "on_missing_face": "passthrough",
                                  "smooth_boxes": 0.0},
          {"frames": (2, 0), "detector": (6, 0)}, col=2, row=3),
        N(16, "MuseTalkReferenceSelect", {"mode": "same_frame", "k": 0, "seed": 0, "frame": 0},
          {"faces": (7, 0)}, col=3, row=4),
        N(10, "MuseTalkInpaint", {"length_policy": "pingpong", "batch_size": 0,
                                   "silence_gate_db": 0.0},
          {"model": (8, 0), "vae": (9, 0), "faces": (7, 0), "audio": (5, 0),
           "references": (16, 0)}, col=4, row=2),
        N(12, "MuseTalkBlend", {"mode": "auto", "left_cheek_width": 90, "right_cheek_width": 90,
                                "feather": 0.05, "batch_size": 16},
          {"frames": (2, 0), "faces": (10, 0), "parser": (11, 0)}, col=5, row=2),
        N(13, "CreateVideo", {"fps": 25.0}, {"images": (12, 0), "fps": (2, 2), "audio": (3, 0)},
          col=6, row=1),
        N(14, "SaveVideo", {"filename_prefix": "musetalk/dub", "format": "auto",
                            "codec": "auto"}, {"video": (13, 0)}, col=6, row=2,
          size=(360, 420)),
        N(15, "MarkdownNote", col=1, row=1, size=(360, 460), text=(
            "## Dub a clip\n"
            "1. **Load Video**: pick your clip (one face, frontal works best).\n"
            "2. **Load Audio**: pick the new speech (any sample rate, mono or stereo). The "
            "output lasts as long as the speech; a shorter clip is walked back and forth "
            "(Inpaint's `length_policy`).\n"
            "3. Queue. The result is in `output/musetalk/`.\n\n"
            "**Re-sync the clip's own speech instead:** connect Get Video Components' `audio` "
            "to Audio Features and Create Video, and delete Load Audio.\n\n"
            "**v1 instead of v1.5:** Model Loader `musetalk/pytorch_model.bin`, Face Crop "
            "`version` v1 (then `bbox_shift` moves the mouth line).\n\n"
            "Change only the audio and re-queue: face crops and their latents are reused, "
            "only Audio Features, Inpaint and Blend run again.")),
        N(17, "MarkdownNote", col=0, row=7, size=(360, 260), text=MODELS_NOTE),
    ], groups=[("Models", [8, 9, 4, 6, 11])])


def talking_portrait() -> Workflow:
    loaders = _loaders({"model": 3, "vae": 4, "whisper": 5, "detector": 6, "parser": 7}, 0, 2)
    return Workflow("talking_portrait", [
        N(1, "LoadImage", {"image": STILL}, col=0, row=0, title="Load Image (the portrait)",
          size=(320, 320)),
        N(2, "LoadAudio", {"audio": SPEECH}, col=1, row=0, title="Load Audio (the speech)"),
        *loaders,
        N(8, "MuseTalkLipSync", {"fps": 25.0, "bbox_shift": 0, "extra_margin": 10,
                                 "length_policy": "pingpong", "parsing_mode": "auto",
                                 "batch_size": 0, "face_index": -1,
                                 "on_missing_face": "passthrough", "smooth_boxes": 0.0,
                                 "silence_gate_db": 0.0},
          {"audio": (2, 0), "model": (3, 0), "vae": (4, 0), "whisper": (5, 0),
           "images": (1, 0), "detector": (6, 0), "parser": (7, 0)}, col=2, row=2,
          size=(360, 420)),
        N(9, "CreateVideo", {"fps": 25.0}, {"images": (8, 0), "fps": (8, 3), "audio": (8, 1)},
          col=3, row=1),
        N(10, "SaveVideo", {"filename_prefix": "musetalk/portrait", "format": "auto",
                            "codec": "auto"}, {"video": (9, 0)}, col=3, row=2, size=(360, 420)),
        N(11, "MarkdownNote", col=2, row=0, size=(360, 300), text=(
            "## Talking portrait\n"
            "1. **Load Image**: a frontal portrait with the mouth visible (at least about 256 px "
            "of face for a sharp mouth).\n"
            "2. **Load Audio**: the speech. The video lasts as long as the speech.\n"
            "3. `fps` on MuseTalk Lip Sync sets the output frame rate (25 is MuseTalk's "
            "training rate).\n\n"
            "Only the mouth moves: MuseTalk redraws the lower face of each frame; head motion "
            "comes from the source frames.")),
        N(12, "MarkdownNote", col=0, row=7, size=(360, 260), text=MODELS_NOTE),
    ], groups=[("Models", [3, 4, 5, 6, 7])])


def generator_chain() -> Workflow:
    loaders = _loaders({"model": 4, "vae": 5, "whisper": 6, "detector": 7, "parser": 8}, 0, 2)
    return Workflow("generator_chain", [
        N(1, "LoadImage", {"image": PORTRAIT}, col=0, row=0, size=(320, 320),
          title="Load Image (stands in for a generator)"),
        N(2, "RepeatImageBatch", {"amount": 48}, {"image": (1, 0)}, col=1, row=0,
          title="Repeat Image Batch (stands in for a generator)"),
        N(3, "LoadAudio", {"audio": SPEECH}, col=1, row=1, title="Load Audio (speech or TTS)"),
        *loaders,
        N(9, "MuseTalkLipSync", {"fps": 16.0, "bbox_shift": 0, "extra_margin": 10,
                                 "length_policy": "pingpong", "parsing_mode": "auto",
                                 "batch_size": 0, "face_index": -1,
                                 "on_missing_face": "passthrough", "smooth_boxes": 0.0,
                                 "silence_gate_db": 0.0},
          {"audio": (3, 0), "model": (4, 0), "vae": (5, 0), "whisper": (6, 0),
           "images": (2, 0), "detector": (7, 0), "parser": (8, 0)}, col=2, row=2,
          size=(360, 420)),
        N(10, "CreateVideo", {"fps": 16.0}, {"images": (9, 0), "fps": (9, 3), "audio": (9, 1)},
          col=3, row=1),
        N(11, "SaveVideo", {"filename_prefix": "musetalk/generated", "format": "auto",
                            "codec": "auto"}, {"video": (10, 0)}, col=3, row=2,
          size=(360, 420)),
        N(12, "MarkdownNote", col=2, row=0, size=(360, 380), text=(
            "## Lip-sync a generated clip\n"
            "**Load Image + Repeat Image Batch stand in for your video generator** so this "
            "runs without other packs. Replace them with the generator's frames: the `IMAGE` "
            "output of MuseV, of Wan's / AnimateDiff's VAE Decode, or any node that yields an "
            "`IMAGE` batch, into MuseTalk Lip Sync's `images`.\n\n"
            "Set `fps` on MuseTalk Lip Sync to the generator's frame rate (Wan 2.x: 16, "
            "MuseV: 12, AnimateDiff: 8). The output lasts as long as the speech; a shorter "
            "clip is walked back and forth (`length_policy`).\n\n"
            "Speech can come from a TTS node instead of Load Audio (any `AUDIO`).")),
        N(13, "MarkdownNote", col=0, row=7, size=(360, 260), text=MODELS_NOTE),
    ], groups=[("Models", [4, 5, 6, 7, 8])])


def v15_sis_jaw() -> Workflow:
    loaders = _loaders({"model": 9, "vae": 10, "whisper": 4, "detector": 6, "parser": 12}, 0, 2,
                       version="v1.5")
    return Workflow("v15_sis_jaw", [
        N(1, "LoadVideo", {"file": CLIP_2997}, col=0, row=0, title="Load Video (the clip)"),
        N(3, "LoadAudio", {"audio": SPEECH}, col=0, row=1, title="Load Audio (the speech)"),
        *loaders,
        N(2, "GetVideoComponents", links={"video": (1, 0)}, col=1, row=0),
        N(5, "MuseTalkAudioFeatures", {"fps": 29.97},
          {"audio": (3, 0), "whisper": (4, 0), "fps": (2, 2)}, col=2, row=1),
        N(7, "MuseTalkFaceCrop", {"version": "v1.5", "bbox_shift": 0, "extra_margin": 10,
                                  "face_index": -1, "on_missing_face": "passthrough",
                                  "smooth_boxes": 0.0},
          {"frames": (2, 0), "detector": (6, 0)}, col=2, row=3),
        N(8, "MuseTalkReferenceSelect", {"mode": "sis", "k": 0, "seed": 0, "frame": 0},
          {"faces": (7, 0)}, col=3, row=4),
        N(11, "MuseTalkInpaint", {"length_policy": "pingpong", "batch_size": 0,
                                   "silence_gate_db": 0.0},
          {"model": (9, 0), "vae": (10, 0), "faces": (7, 0), "audio": (5, 0),
           "references": (8, 0)}, col=4, row=2),
        N(13, "MuseTalkBlend", {"mode": "jaw", "left_cheek_width": 90, "right_cheek_width": 90,
                                "feather": 0.05, "batch_size": 16},
          {"frames": (2, 0), "faces": (11, 0), "parser": (12, 0)}, col=5, row=2),
        N(14, "PreviewImage", links={"images": (7, 1)}, col=3, row=5, size=(300, 300),
          title="Preview: source face crops"),
        N(15, "PreviewImage", links={"images": (11, 1)}, col=4, row=4, size=(300, 300),
          title="Preview: generated crops"),
        N(16, "MaskToImage", links={"mask": (13, 1)}, col=5, row=4),
        N(17, "PreviewImage", links={"images": (16, 0)}, col=5, row=5, size=(300, 300),
          title="Preview: blend mask"),
        N(18, "CreateVideo", {"fps": 29.97}, {"images": (13, 0), "fps": (2, 2), "audio": (3, 0)},
          col=6, row=1),
        N(19, "SaveVideo", {"filename_prefix": "musetalk/v15_sis_jaw", "format": "auto",
                            "codec": "auto"}, {"video": (18, 0)}, col=6, row=2,
          size=(360, 420)),
        N(20, "MarkdownNote", col=1, row=1, size=(360, 520), text=(
            "## v1.5 with SIS references and the jaw blend\n"
            "- **Reference Select `sis`** (Selective Information Sampling, as in MuseTalk's "
            "training): each frame's reference is a frame with the same head pose but a "
            "different mouth, so the source's own lip motion does not leak into the result. "
            "`k` 0 = automatic; the same `seed` gives the same choice. `same_frame` is the "
            "reference code's behaviour.\n"
            "- **Blend `jaw`**: the lower face and jaw line are replaced, the nose kept; "
            "`left/right_cheek_width` keep more of the original cheeks.\n"
            "- The previews show the source crops (check the box covers chin to nose), the "
            "generated crops, and the blend mask (white = generated pixels).\n\n"
            "Frame rate: 29.97 fps clips are handled exactly (30000/1001); `fps` comes from Get "
            "Video Components.")),
        N(21, "MarkdownNote", col=0, row=7, size=(360, 260), text=MODELS_NOTE),
    ], groups=[("Models", [9, 10, 4, 6, 12])])


def long_clip_streaming() -> Workflow:
    loaders = _loaders({"model": 3, "vae": 4, "whisper": 5, "detector": 6, "parser": 7}, 0, 2)
    return Workflow("long_clip_streaming", [
        N(1, "LoadVideo", {"file": CLIP_25}, col=0, row=0, title="Load Video (any length)"),
        N(2, "LoadAudio", {"audio": SPEECH}, col=1, row=0, title="Load Audio (the speech)"),
        *loaders,
        N(8, "MuseTalkLipSyncVideo", {"frames_per_chunk": 32, "bbox_shift": 0,
                                      "extra_margin": 10, "length_policy": "pingpong",
                                      "parsing_mode": "auto", "batch_size": 0,
                                      "face_index": -1, "on_missing_face": "passthrough",
                                      "smooth_boxes": 0.0, "silence_gate_db": 0.0},
          {"video": (1, 0), "audio": (2, 0), "model": (3, 0), "vae": (4, 0),
           "whisper": (5, 0), "detector": (6, 0), "parser": (7, 0)}, col=2, row=2,
          size=(360, 420)),
        N(9, "SaveVideo", {"filename_prefix": "musetalk/long_clip", "format": "auto",
                           "codec": "auto"}, {"video": (8, 0)}, col=3, row=2, size=(360, 420)),
        N(10, "MarkdownNote", col=2, row=0, size=(360, 380), text=(
            "## Long clips in bounded memory\n"
            "**MuseTalk Lip Sync (video)** takes the VIDEO itself, not its frames: it decodes, "
            "lip-syncs and encodes `frames_per_chunk` frames at a time, so a ten-minute clip "
            "needs about the same RAM as a ten-second one. Do not put Get Video Components in "
            "front of it (that decodes the whole clip into memory).\n\n"
            "The output lasts as long as the speech (a shorter clip is walked back and forth: "
            "`length_policy`); the speech is muxed in. Save Video keeps the result without "
            "re-encoding it.\n\n"
            "Lower `frames_per_chunk` if memory is tight; the face is tracked across chunks, "
            "so the chunk size does not change the result.")),
        N(11, "MarkdownNote", col=0, row=7, size=(360, 260), text=MODELS_NOTE),
    ], groups=[("Models", [3, 4, 5, 6, 7])])


WORKFLOWS = (dub_a_clip, talking_portrait, generator_chain, v15_sis_jaw, long_clip_streaming)


# --------------------------------------------------------------------------- rendering


def _order(wf: Workflow) -> dict[int, int]:
    """Topological execution order (ties by id), as the frontend stores it in ``order``."""
    deps = {n.id: {src for src, _ in n.links.values()} for n in wf.nodes}
    order: dict[int, int] = {}
    while len(order) < len(deps):
        ready = sorted(i for i, d in deps.items() if i not in order and d <= set(order))
        if not ready:
            raise ValueError(f"{wf.name}: the graph has a cycle")
        for i in ready:
            order[i] = len(order)
    return order


def to_api(wf: Workflow, specs: dict[str, NodeSpec]) -> dict[str, Any]:
    prompt: dict[str, Any] = {}
    for n in sorted(wf.nodes, key=lambda n: n.id):
        if n.type in VIRTUAL:
            continue
        spec = specs[n.type]
        inputs: dict[str, Any] = {}
        for port in spec.inputs:
            if port.name in n.links:
                src, slot = n.links[port.name]
                inputs[port.name] = [str(src), slot]
            elif port.is_widget:
                inputs[port.name] = n.widgets[port.name]
        entry: dict[str, Any] = {"inputs": inputs, "class_type": n.type}
        entry["_meta"] = {"title": n.title or spec.display or n.type}
        prompt[str(n.id)] = entry
    return prompt


def to_ui(wf: Workflow, specs: dict[str, NodeSpec]) -> dict[str, Any]:
    order = _order(wf)
    links: list[list[Any]] = []
    out_links: dict[tuple[int, int], list[int]] = {}
    in_link: dict[tuple[int, str], int] = {}
    by_id = {n.id: n for n in wf.nodes}
    for n in sorted(wf.nodes, key=lambda n: (order[n.id], n.id)):
        if n.type in VIRTUAL:
            continue
        spec = specs[n.type]
        sockets = [p for p in spec.inputs if not p.is_widget or p.name in n.links]
        for to_slot, port in enumerate(sockets):
            if port.name not in n.links:
                continue
            src, slot = n.links[port.name]
            link_id = len(links) + 1
            links.append([link_id, src, slot, n.id, to_slot,
                          specs[by_id[src].type].outputs[slot][1]])
            out_links.setdefault((src, slot), []).append(link_id)
            in_link[(n.id, port.name)] = link_id
    nodes = []
    for n in sorted(wf.nodes, key=lambda n: n.id):
        pos = [n.col * COL_W, n.row * ROW_H]
        base: dict[str, Any] = {"id": n.id, "type": n.type, "pos": pos,
                                "size": list(n.size or (320, 130)), "flags": {},
                                "order": order[n.id], "mode": 0}
        if n.type in VIRTUAL:
            nodes.append({**base, "inputs": [], "outputs": [], "properties": {},
                          "widgets_values": [n.text], "color": "#432", "bgcolor": "#653"})
            continue
        spec = specs[n.type]
        inputs = []
        for port in spec.inputs:
            if port.is_widget and port.name not in n.links:
                continue
            item: dict[str, Any] = {"name": port.name, "type": port.type}
            if port.optional:
                item["shape"] = 7
            if port.is_widget:
                item["widget"] = {"name": port.name}
            item["link"] = in_link.get((n.id, port.name))
            inputs.append(item)
        outputs = [{"name": name, "type": typ, "links": out_links.get((n.id, slot)) or None,
                    "slot_index": slot} for slot, (name, typ) in enumerate(spec.outputs)]
        widgets: list[Any] = []
        for port in spec.inputs:
            if port.is_widget:
                widgets.append(n.widgets[port.name])
                if port.type == "INT" and port.name in SEED_NAMES:
                    widgets.append("fixed")
        widgets.extend(spec.ui_tail)
        node = {**base, "inputs": inputs, "outputs": outputs,
                "properties": {"Node name for S&R": n.type}, "widgets_values": widgets}
        if n.title or spec.display:
            node["title"] = n.title or spec.display
        nodes.append(node)
    groups = []
    for gid, (title, members) in enumerate(wf.groups, start=1):
        xs = [by_id[m].col * COL_W for m in members]
        ys = [by_id[m].row * ROW_H for m in members]
        groups.append({"id": gid, "title": title,
                       "bounding": [min(xs) - 20, min(ys) - 60, 360 + max(xs) - min(xs),
                                    ROW_H + max(ys) - min(ys) + 40],
                       "color": "#3f789e", "font_size": 24, "flags": {}})
    return {
        "last_node_id": max(n.id for n in wf.nodes),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": groups,
        "config": {},
        "extra": {"ds": {"scale": 0.7, "offset": [40, 40]}},
        "version": 0.4,
    }


def render() -> dict[Path, str]:
    """Every workflow file's path and its exact text."""
    specs = all_specs()
    files = {}
    for make in WORKFLOWS:
        wf = make()
        files[OUT_UI / f"{wf.name}.json"] = json.dumps(to_ui(wf, specs), indent=2) + "\n"
        files[OUT_API / f"{wf.name}.json"] = json.dumps(to_api(wf, specs), indent=2) + "\n"
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path, text in render().items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        sys.stdout.write(f"wrote {path.relative_to(ROOT)}\n")
    for path in stale:
        sys.stdout.write(f"stale: {path.relative_to(ROOT)} (run scripts/build_workflows.py)\n")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
