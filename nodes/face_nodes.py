"""MuseTalk face nodes: Face Crop and Reference Select (declarations; the work is in the core).

``Result.ui`` of Face Crop carries ``text`` (report lines) and ``musetalk_crop``: a compact,
JSON-able payload for the web extension to redraw boxes client-side::

    {"version": "v1.5", "bbox_shift": 0, "extra_margin": 10, "width": W, "height": H,
     "has_face": [0/1 per frame],
     "landmarks": [[x0, y0, x1, y1, ... 136 ints] or [] per frame],   # truncated to ints
     "bbox_shift_range": [low, high] or None}

Landmarks are sent (not boxes) so the extension can recompute the REF box for another
``bbox_shift``/``extra_margin`` without re-running the node.
"""

from __future__ import annotations

from typing import Any

import torch

from . import _host, web_routes
from ._spec import (
    COMBO,
    FLOAT,
    IMAGE,
    INT,
    MASK,
    MUSETALK_FACE_DETECTOR,
    MUSETALK_FACES,
    MUSETALK_REFERENCES,
    POSE_KEYPOINT,
    In,
    NodeDef,
    Out,
    Result,
)

FACE_SELECTION = (
    In("face_index", INT, "-1: automatic (the largest plausible, steadiest face). 0, 1, "
       "...: the face counted left to right in the first frame with faces.", default=-1,
       min=-1, max=64, step=1),
    In("on_missing_face", COMBO, "Frames without a face: passthrough (left untouched and "
       "reported), hold_last (use the last face box) or error.", default="passthrough",
       options=("passthrough", "hold_last", "error")),
    In("smooth_boxes", FLOAT, "Temporal smoothing of the crop boxes (0 = off, matches the "
       "reference; 1 = strongest). Reduces jitter from noisy landmarks.", default=0.0,
       min=0.0, max=1.0, step=0.05),
)
"""Which face, frames without it, box smoothing: Face Crop's inputs, shared by MuseTalk Lip Sync."""

def _or(value: Any, default: Any) -> Any:
    """An input's value, or its default where a caller left it out (None)."""
    return default if value is None else value


def crop_payload(faces: Any) -> dict[str, Any]:
    """The compact ``musetalk_crop`` UI payload (ints only)."""
    # truncated toward zero like the crop rule (musetalk_core.crop.int_landmarks), so the web
    # extension's box equals the core's box exactly
    lm = torch.trunc(faces.landmarks.double()).to(torch.int64).reshape(len(faces), -1).tolist()
    has = [int(v) for v in faces.has_face.tolist()]
    return {
        "version": faces.version,
        "bbox_shift": int(faces.bbox_shift),
        "extra_margin": int(faces.extra_margin),
        "height": int(faces.source_size[0]),
        "width": int(faces.source_size[1]),
        "has_face": has,
        "landmarks": [row if h else [] for row, h in zip(lm, has, strict=True)],
        "bbox_shift_range": faces.info.get("bbox_shift_range"),
        "smooth_boxes": float(faces.info.get("smooth_boxes", 0.0)),
    }


def _face_crop(frames: Any, detector: Any = None, pose_keypoints: Any = None,
               version: str = "v1.5", bbox_shift: int = 0, extra_margin: int = 10,
               face_index: int = -1, on_missing_face: str = "passthrough",
               smooth_boxes: float = 0.0) -> Result:
    from ..musetalk_core.crop import box_mask
    from ..musetalk_core.faces import crop_faces

    rt = _host.runtime()
    faces = crop_faces(frames, rt, detector=detector, pose_keypoints=pose_keypoints,
                       version=_or(version, "v1.5"), bbox_shift=int(_or(bbox_shift, 0)),
                       extra_margin=int(_or(extra_margin, 10)),
                       face_index=int(_or(face_index, -1)),
                       on_missing_face=_or(on_missing_face, "passthrough"),
                       smooth=float(_or(smooth_boxes, 0.0)))
    preview = faces.crops.float() / 255.0
    h, w = faces.source_size
    mask = box_mask(faces.boxes, faces.has_face, h, w, device=rt.intermediate_device)
    text = list(faces.info.get("text", [])) or [f"{len(faces)} frames, every one with a face"]
    payload = crop_payload(faces)
    payload["frames"] = web_routes.crop_preview_frames(frames, faces.has_face)  # web preview
    ui = {"text": text, "musetalk_crop": [payload]}
    return Result((faces, preview, mask), ui)


def _reference_select(faces: Any, mode: str = "same_frame", k: int = 0, seed: int = 0,
                      frame: int = 0) -> Result:
    from ..musetalk_core.errors import InputError
    from ..musetalk_core.references import select_references
    from ..musetalk_core.types import MuseTalkFaces

    if not isinstance(faces, MuseTalkFaces):
        raise InputError(f"expected MUSETALK_FACES, got {type(faces).__name__}",
                         input_name="faces", fix="connect MuseTalk Face Crop's faces output")
    mode = _or(mode, "same_frame")
    refs = select_references(faces, mode, k=int(_or(k, 0)), seed=int(_or(seed, 0)),
                             frame=int(_or(frame, 0)))
    info = refs.info
    if mode == "sis":
        line = (f"SIS: K={info.get('k')} of {info.get('face_frames')} face frames, seed "
                f"{info.get('seed')}, {info.get('fallbacks', 0)} fallbacks")
    elif mode == "fixed_frame":
        line = f"every face frame uses frame {info.get('frame')} as its reference"
    else:
        line = "every frame is its own reference (REF inference)"
    return Result((refs,), {"text": [line]})


_SHIFT_TIP = (
    "v1 only: pixels to move the crop's centre line (landmark 29) down (positive) or up. "
    "Positive = the masked lower half starts lower = more mouth opening; negative = less. "
    "The usable range for this clip is reported in the node's text output and the log "
    "(REF's 'Manually adjust range'). Ignored for v1.5.")

FACE_CROP = NodeDef(
    node_id="MuseTalkFaceCrop",
    display_name="MuseTalk Face Crop",
    description=(
        "Finds one face per frame (with the face detector, or from DWPose keypoints as the "
        "reference does), follows it through the clip and cuts MuseTalk's 256x256 crops with the "
        "reference's box rule for v1 or v1.5. Reports frames without a face and the usable "
        "bbox_shift range."),
    inputs=(
        In("frames", IMAGE, "The video frames (IMAGE batch) to find the face in."),
        In("detector", MUSETALK_FACE_DETECTOR, "Face detector from MuseTalk Face Detector "
           "Loader. Optional when pose_keypoints is connected.", optional=True),
        In("pose_keypoints", POSE_KEYPOINT, "Keypoints from DWPose Estimator "
           "(comfyui_controlnet_aux) run on these frames: the reference's own landmark source. "
           "Used instead of the detector when connected.", optional=True),
        In("version", COMBO, "The MuseTalk weights' version: sets the crop rule (v1: "
           "bbox_shift; v1.5: extra_margin below the chin).", default="v1.5",
           options=("v1", "v1.5")),
        In("bbox_shift", INT, _SHIFT_TIP, default=0, min=-200, max=200, step=1),
        In("extra_margin", INT, "v1.5 only: pixels added below the chin (REF default 10, "
           "clamped to the frame). Ignored for v1.", default=10, min=0, max=256, step=1),
        *FACE_SELECTION,
    ),
    outputs=(
        Out(MUSETALK_FACES, "faces", "Boxes, landmarks, 256x256 crops and has-face flags for "
            "MuseTalk Inpaint and Blend."),
        Out(IMAGE, "crops", "The 256x256 face crops, as a preview."),
        Out(MASK, "face_mask", "1 inside each frame's crop box, full frame size."),
    ),
    run=_face_crop,
)

REFERENCE_SELECT = NodeDef(
    node_id="MuseTalkReferenceSelect",
    display_name="MuseTalk Reference Select",
    description=(
        "Chooses the reference image MuseTalk sees next to each masked frame. same_frame is the "
        "reference implementation's behaviour. sis (Selective Information Sampling, as in "
        "training) picks a frame with the same head pose but a different mouth shape, so the "
        "source's own lip motion does not leak into the result. fixed_frame uses one frame for "
        "all. Frames without a face always reference themselves."),
    inputs=(
        In("faces", MUSETALK_FACES, "Faces from MuseTalk Face Crop."),
        In("mode", COMBO, "same_frame (reference behaviour), sis (pose-aligned top-K frames "
           "intersected with lip-dissimilar top-K frames) or fixed_frame.",
           default="same_frame", options=("same_frame", "sis", "fixed_frame")),
        In("k", INT, "SIS set size K; 0 = automatic (51% of the frames with a face, as in "
           "training).", default=0, min=0, max=1_000_000, step=1),
        In("seed", INT, "SIS random seed: the same seed gives the same choice.", default=0,
           min=0, max=2**31 - 1, step=1),
        In("frame", INT, "fixed_frame: the frame used as every frame's reference.", default=0,
           min=0, max=1_000_000, step=1),
    ),
    outputs=(Out(MUSETALK_REFERENCES, "references", "The reference frame of every frame."),),
    run=_reference_select,
)

NODES: list[NodeDef] = [FACE_CROP, REFERENCE_SELECT]
