"""Host-neutral node declarations.

Each node module declares its nodes as :class:`NodeDef` values: inputs, outputs, tooltips and a
plain ``run`` function. The adapter (``nodes/_host.py``) turns them into ComfyUI classes: V3
``io.ComfyNode`` subclasses where the host has ``comfy_api.latest``, classic V1 classes otherwise.
Keeping the declaration free of host imports means node modules import, and their ``run`` functions
can be tested, without ComfyUI.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# Core wire types of the host, and the pack's own.
IMAGE, MASK, AUDIO, VIDEO, VAE = "IMAGE", "MASK", "AUDIO", "VIDEO", "VAE"
INT, FLOAT, BOOLEAN, STRING, COMBO = "INT", "FLOAT", "BOOLEAN", "STRING", "COMBO"
POSE_KEYPOINT = "POSE_KEYPOINT"
MUSETALK_MODEL = "MUSETALK_MODEL"
MUSETALK_WHISPER = "MUSETALK_WHISPER"
MUSETALK_FACE_DETECTOR = "MUSETALK_FACE_DETECTOR"
MUSETALK_FACE_PARSER = "MUSETALK_FACE_PARSER"
MUSETALK_AUDIO = "MUSETALK_AUDIO"
MUSETALK_FACES = "MUSETALK_FACES"
MUSETALK_REFERENCES = "MUSETALK_REFERENCES"

WIDGET_TYPES = frozenset({INT, FLOAT, BOOLEAN, STRING, COMBO})
CATEGORY = "MuseTalk"


@dataclass(frozen=True)
class In:
    """One node input.

    ``options`` is only for COMBO: a list, or a zero-argument callable evaluated each time the host
    asks for the node's definition (file lists that change while the host runs).
    """

    name: str
    type: str
    tooltip: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    options: Sequence[str] | Callable[[], Sequence[str]] | None = None
    optional: bool = False
    multiline: bool = False
    slider: bool = False

    def choices(self) -> list[str]:
        opts = self.options() if callable(self.options) else self.options
        return list(opts or [])


@dataclass(frozen=True)
class Out:
    """One node output."""

    type: str
    name: str
    tooltip: str


@dataclass(frozen=True)
class Result:
    """What a ``run`` function returns: one value per output, plus an optional UI dict."""

    values: tuple[Any, ...]
    ui: dict[str, Any] | None = None


@dataclass(frozen=True)
class NodeDef:
    """A node: its stable id, labels, inputs, outputs and the function that runs it.

    ``run(**inputs)`` gets every input by name (optional ones missing are ``None``) and returns a
    :class:`Result` or a plain tuple. ``fingerprint(**inputs)``, when given, decides re-execution
    (the host's ``IS_CHANGED``): loaders use it to notice a model file replaced on disk.
    """

    node_id: str
    display_name: str
    description: str
    inputs: tuple[In, ...]
    outputs: tuple[Out, ...]
    run: Callable[..., Result | tuple[Any, ...]]
    category: str = CATEGORY
    output_node: bool = False
    fingerprint: Callable[..., Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def call(self, **kwargs: Any) -> Result:
        """Run with every declared input present (missing optional ones become ``None``)."""
        args = {i.name: kwargs.get(i.name) for i in self.inputs}
        unknown = set(kwargs) - set(args)
        if unknown:
            raise TypeError(f"{self.node_id} got unknown inputs {sorted(unknown)}")
        out = self.run(**args)
        return out if isinstance(out, Result) else Result(tuple(out))
