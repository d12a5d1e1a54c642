"""sha256 of model files, cached by (path, size, mtime) so a multi-GB file is hashed once."""

from __future__ import annotations

import hashlib
import os

_CACHE: dict[tuple[str, int, int], str] = {}
_CHUNK = 4 * 1024 * 1024


def file_sha256(path: str) -> str:
    """Lower-case hex sha256 of ``path``; reuses the digest while size and mtime are unchanged."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
        _CACHE[key] = h.hexdigest()
    return _CACHE[key]
