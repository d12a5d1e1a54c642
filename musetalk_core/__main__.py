"""``python -m musetalk_core``: the command-line main job (see :mod:`musetalk_core.cli`)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
