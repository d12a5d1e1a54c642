"""MuseTalk lipsync nodes (declarations only; the work is in musetalk_core)."""

from __future__ import annotations

from ._spec import NodeDef

NODES: list[NodeDef] = []
