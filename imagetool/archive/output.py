"""Where an archive goes: a path (temp file in the same directory, renamed at the end) or stdout."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

from imagetool.errors import ArchiveError


@contextlib.contextmanager
def output_fd(out: str):
    """Yield a writable fd. For a path the file appears (atomically, mode 0666 & ~umask) only when
    the `with` body succeeds; on failure the temp file is removed. "-" is stdout."""
    if out == "-":
        fd = sys.stdout.buffer.fileno()
        sys.stdout.flush()
        yield fd
        return
    dest = Path(out)
    parent = dest.parent if str(dest.parent) else Path(".")
    if dest.is_dir():
        raise ArchiveError(f"{out} is a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix="imagetool-", suffix=".tmp", dir=parent)
    except FileNotFoundError:
        raise ArchiveError(f"{out}: the directory {parent} does not exist") from None
    except OSError as e:
        raise ArchiveError(f"cannot write {out}: {e.strerror}") from None
    try:
        yield fd
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, dest)  # point of no return: the complete archive appears under its name
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
