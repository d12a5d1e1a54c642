"""MuseTalk lip sync, independent of any host.

All maths and models live here: audio features, face crops, reference selection, latent
inpainting, blend-back and the model loaders. Nothing here imports ComfyUI; the node pack's
adapter (``nodes/_host.py``) passes devices, progress and interruption in through
:class:`musetalk_core.runtime.Runtime`. Heavy libraries (diffusers, whisper, face_alignment, cv2)
are imported inside the functions that need them, so ``import musetalk_core`` is cheap.
"""

from .errors import (
    AudioError,
    DownloadError,
    FaceError,
    InputError,
    MuseTalkError,
    OutOfMemoryError,
    ReferenceSelectionError,
    RunInterruptedError,
    WeightsError,
)
from .runtime import Runtime, default_runtime

__version__ = "0.1.0"

__all__ = [
    "AudioError",
    "DownloadError",
    "FaceError",
    "InputError",
    "MuseTalkError",
    "OutOfMemoryError",
    "ReferenceSelectionError",
    "RunInterruptedError",
    "Runtime",
    "WeightsError",
    "__version__",
    "default_runtime",
]
