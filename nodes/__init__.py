"""Thin node classes: each validates its inputs, converts host types, calls ``musetalk_core`` and
converts back. Nodes are declared host-neutrally (``_spec.NodeDef``); ``_host`` registers them.

Importing this package loads no model library (diffusers, whisper, face_alignment, cv2, ...):
node modules import those lazily inside their ``run`` functions.
"""

from __future__ import annotations

from . import (
    audio_nodes,
    blend_nodes,
    face_nodes,
    inpaint_nodes,
    lipsync_nodes,
    loader_nodes,
    video_nodes,
)
from ._spec import NodeDef

_MODULES = (loader_nodes, audio_nodes, face_nodes, inpaint_nodes, blend_nodes, lipsync_nodes,
            video_nodes)


def node_defs() -> list[NodeDef]:
    """Every node the pack registers, in menu order; ids are unique."""
    defs = [d for m in _MODULES for d in m.NODES]
    ids = [d.node_id for d in defs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise RuntimeError(f"duplicate MuseTalk node ids: {dupes}")
    return defs
