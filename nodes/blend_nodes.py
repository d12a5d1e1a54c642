"""MuseTalk Blend: paste the generated faces back into the original frames (musetalk.md 5)."""

from __future__ import annotations

import logging
import time
from typing import Any

from ..musetalk_core import blend
from ..musetalk_core.faces import check_frames
from ..musetalk_core.masks import MODES
from . import _host, web_routes
from ._spec import (
    COMBO,
    FLOAT,
    IMAGE,
    INT,
    MASK,
    MUSETALK_FACE_PARSER,
    MUSETALK_FACES,
    In,
    NodeDef,
    Out,
    Result,
)

log = logging.getLogger(__name__)


def _run(frames: Any, faces: Any, parser: Any = None, mode: str = "auto",
         left_cheek_width: int = 90, right_cheek_width: int = 90, feather: float = 0.05,
         batch_size: int = 16) -> Result:
    frames = check_frames(frames, "frames")
    t0 = time.perf_counter()
    images, mask = blend.blend_faces(
        frames, faces, runtime=_host.runtime(), parser=parser, mode=mode or "auto",
        left_cheek_width=int(90 if left_cheek_width is None else left_cheek_width),
        right_cheek_width=int(90 if right_cheek_width is None else right_cheek_width),
        feather=float(0.05 if feather is None else feather),
        batch_size=int(batch_size or 16))
    dt = time.perf_counter() - t0
    log.info("MuseTalk Blend: %d frames in %.1f s (%.1f frames/s)", images.shape[0], dt,
             images.shape[0] / dt if dt > 0 else 0.0)
    return Result((images, mask), {"images": web_routes.blend_preview_images(images, mask)})


BLEND = NodeDef(
    node_id="MuseTalkBlend",
    display_name="MuseTalk Blend",
    description=(
        "Pastes the generated faces back into the original frames the way the reference does: "
        "a face-parsing mask of the lower face on a 1.5x square around each face, feathered, "
        "then alpha-blended. Pixels outside the mask stay exactly as they were; frames without "
        "a face pass through untouched. Parsing masks are remembered, so a new audio clip only "
        "re-blends."
    ),
    inputs=(
        In("frames", IMAGE, "The ORIGINAL frames the faces were cropped from (the same IMAGE "
           "connected to MuseTalk Face Crop)."),
        In("faces", MUSETALK_FACES, "Generated faces from MuseTalk Inpaint (one per output "
           "frame)."),
        In("parser", MUSETALK_FACE_PARSER, "BiSeNet from MuseTalk Face Parser Loader. Without "
           "it a feathered lower-face ellipse is used instead of a parsing mask.",
           optional=True),
        In("mode", COMBO, "Which face region is replaced. auto: the version's reference default "
           "(jaw for v1.5, raw for v1). jaw: lower face and jaw line, nose kept. raw: skin and "
           "lips. neck: raw plus the neck. ellipse: an ellipse in the face box (no parser "
           "needed).", default="auto", options=("auto", *MODES)),
        In("left_cheek_width", INT, "jaw mode: width in 512-space pixels of the left cheek band "
           "that is eroded (trimmed) instead of dilated; larger keeps more of the original "
           "cheek. Reference: 90.", default=90, min=0, max=256, step=1),
        In("right_cheek_width", INT, "jaw mode: the same for the right cheek. Reference: 90.",
           default=90, min=0, max=256, step=1),
        In("feather", FLOAT, "Blur of the mask edge as a fraction of the crop size (Gaussian "
           "kernel int(f*size//2*2)+1). Reference: 0.05 (normal), 0.1 (realtime).",
           default=0.05, min=0.0, max=0.3, step=0.005),
        In("batch_size", INT, "Faces parsed and blended per batch; lower it if memory is short.",
           default=16, min=1, max=256, step=1),
    ),
    outputs=(
        Out(IMAGE, "frames", "The lip-synced frames, one per generated face, at the original "
            "size."),
        Out(MASK, "mask", "Blend alpha per frame, full-frame [N, H, W]: 0 exactly where the "
            "output equals the input, up to 1 where the generated face shows."),
    ),
    run=_run,
)

NODES: list[NodeDef] = [BLEND]
