"""fcntl.flock helpers: per-file exclusive/shared locks, and the store-wide GC lock.

flock locks belong to an open file description, so two opens in one process (or two threads)
exclude each other just like two processes do. Lock files are never deleted while a lock may
be held on them (see gc.py for the one safe moment)."""

from __future__ import annotations

import _thread
import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

TYPE_CHECKING = False  # annotations only: not loaded at run time
if TYPE_CHECKING:
    from collections.abc import Iterator


@contextmanager
def flocked(path: Path | str, exclusive: bool = True) -> Iterator[int]:
    """Hold an flock on `path` (created if missing) for the duration of the `with`; yields the fd."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield fd
    finally:
        os.close(fd)  # closing the last fd of the description releases the lock


class SharedLocks:
    """Process-wide, reentrant, thread-safe shared flocks keyed by lock path.

    The first holder in a process takes LOCK_SH; nested or concurrent holders in the same process
    only bump a count, so a thread never waits on a GC that is itself waiting for this process.
    A forked child does not inherit the bookkeeping (it re-acquires on its own)."""

    def __init__(self) -> None:
        self._mutex = _thread.allocate_lock()   # threading.Lock, without loading threading (~0.5 ms)
        self._held: dict[str, tuple[int, int, int]] = {}  # path -> (pid, fd, count)

    def held(self, path: Path | str) -> bool:
        with self._mutex:
            entry = self._held.get(str(path))
            return entry is not None and entry[0] == os.getpid()

    def acquire(self, path: Path | str) -> None:
        key = str(path)
        with self._mutex:
            entry = self._held.get(key)
            if entry is not None and entry[0] == os.getpid():
                self._held[key] = (entry[0], entry[1], entry[2] + 1)
                return
            fd = os.open(key, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
            except BaseException:
                os.close(fd)
                raise
            self._held[key] = (os.getpid(), fd, 1)

    def release(self, path: Path | str) -> None:
        key = str(path)
        with self._mutex:
            pid, fd, count = self._held[key]
            if count > 1:
                self._held[key] = (pid, fd, count - 1)
                return
            del self._held[key]
            os.close(fd)

    @contextmanager
    def hold(self, path: Path | str) -> Iterator[None]:
        self.acquire(path)
        try:
            yield
        finally:
            self.release(path)


SHARED = SharedLocks()
