"""Atomic file writes: temp file `imagetool-*` in the target's directory, fsync, rename, fsync dir."""

from __future__ import annotations

import os
from pathlib import Path

from store.layout import TEMP_PREFIX


def fsync_dir(path: Path | str) -> None:
    """Make a rename or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path | str, data: bytes, mode: int = 0o644, temp_dir: Path | str | None = None) -> None:
    """Replace `path` with `data` so that readers see either the old or the new file, never a mix.

    The temp file lives in `temp_dir` (default: next to `path`; it must be on the same filesystem)
    and is removed on every failure path."""
    import tempfile  # here, not at the top: read-only commands never load it (~2 ms)

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".tmp", dir=temp_dir or path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)  # point of no return: readers now see the new content
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)
