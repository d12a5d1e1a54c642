"""Shared fixtures: the pack loaded the way the host loads it, and the shared test media."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MEDIA = Path(os.environ.get("MUSETALK_TEST_MEDIA", ROOT.parent / "shared" / "media"))
PACK_MODULE = "musetalk_pack"


def load_pack(name: str = PACK_MODULE):
    """Import the pack's root ``__init__.py`` as package ``name`` (what ComfyUI does)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def pack():
    """The pack as the host imports it (no ComfyUI present: classic mappings)."""
    return load_pack()


@pytest.fixture(scope="session")
def media() -> Path:
    """The shared real media folder; tests using it skip cleanly where it is absent."""
    if not (MEDIA / "talk_25fps_512x512.mp4").exists():
        pytest.skip(f"shared test media not found at {MEDIA}")
    return MEDIA


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
    yield
