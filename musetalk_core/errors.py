"""The pack's one exception tree.

Every message says three things: what is wrong, which input it concerns and how to fix it.
The core names the input; the host adapter (``nodes/_host.py``) adds the node's display name, so
the user reads::

    [MuseTalk Lip Sync] input 'audio': audio is empty (0 samples). Fix: connect speech

Outside the host (the CLI, scripts, tests) the node is simply absent from the text.
"""

from __future__ import annotations

__all__ = [
    "AudioError",
    "DownloadError",
    "FaceError",
    "InputError",
        "MuseTalkError",
    "OutOfMemoryError",
    "ReferenceSelectionError",
    "RunInterruptedError",
    "WeightsError",
]


class MuseTalkError(Exception):
    """Base class of every error the pack raises on purpose.

    Args:
        problem: what is wrong, with the offending value or count (no trailing full stop needed).
        input_name: the node input or CLI option the problem concerns, if any.
        fix: one concrete action for the user (a value to set, a file and folder, a node to
            connect).
        node: the node's display name; normally set later by the host adapter.
    """

    def __init__(
        self,
        problem: str,
        *,
        input_name: str | None = None,
        fix: str | None = None,
        node: str | None = None,
    ) -> None:
        self.problem = problem.rstrip().rstrip(".")
        self.input_name = input_name
        self.fix = fix.rstrip() if fix else None
        self.node = node
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """The full user-facing text: ``[node] input 'x': problem. Fix: action``."""
        parts = []
        if self.node:
            parts.append(f"[{self.node}] ")
        if self.input_name:
            parts.append(f"input '{self.input_name}': ")
        parts.append(f"{self.problem}.")
        if self.fix:
            parts.append(f" Fix: {self.fix}")
        return "".join(parts)

    def for_node(self, node: str) -> MuseTalkError:
        """Attach the node's display name (first one wins) and return ``self``."""
        if self.node is None:
            self.node = node
            self.args = (self.message,)
        return self

    def __str__(self) -> str:
        return self.message


class WeightsError(MuseTalkError):
    """A model file is missing, corrupt, unsafe, of the wrong model or of the wrong version."""


class DownloadError(WeightsError):
    """A model file could not be downloaded or verified."""


class AudioError(MuseTalkError):
    """The audio is empty, malformed, non-finite, too short, or its batch holds several clips."""


class FaceError(MuseTalkError):
    """No face where one is needed, or a face choice that cannot be honoured."""


class ReferenceSelectionError(MuseTalkError):
    """The reference frames cannot be chosen as asked (bad mode, K or frame index)."""


class InputError(MuseTalkError):
    """An input breaks its layout, dtype, shape or range contract."""


class OutOfMemoryError(MuseTalkError):
    """Out of device memory even at the smallest batch size."""


class RunInterruptedError(MuseTalkError):
    """The user interrupted the run (outside the host; the host uses its own exception)."""
