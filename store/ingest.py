"""Ingest: write one blob resumably, verifying it before it becomes visible under blobs/.

Lifecycle of `with store.ingest(expected, size) as w:`

1. enter: take the store's shared GC lock, then the per-digest lock `ingest/<hex>.lock`
   (exclusive, blocking: a second writer of the same digest waits here; the lock file is
   removed by its holder on exit, so ingest/ holds only partials).
2. if `blobs/<alg>/<hex>` exists: `w.exists` is True, `w.offset` is its size; do nothing else.
3. otherwise open `ingest/<hex>.partial` and re-hash what it holds: `w.offset` says where to
   resume (this is how a writer killed by SIGKILL is recovered).
4. `w.write(chunk)` appends and hashes; `w.reset()` truncates to 0 (the source ignored Range).
5. `w.commit()` checks size and digest, fsyncs, makes the file 0444 and renames it into blobs/.
   DigestMismatch removes the partial; SizeMismatch for a short blob keeps it (resumable).
6. leave without commit: the partial stays for the next attempt (GC removes it when old);
   an empty partial is removed.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import ExitStack

from store import blobs
from store.atomic import fsync_dir
from store.digest import Digest
from store.errors import DigestMismatch, SizeMismatch, StoreError
from store.layout import Layout
from store.locking import SHARED

_CHUNK = 1 << 20


class IngestWriter:
    """One resumable write of the blob `expected` (use it as a context manager)."""

    def __init__(self, layout: Layout, expected: Digest, size: int | None = None):
        if not isinstance(expected, Digest):
            raise StoreError(f"ingest needs a Digest, not {type(expected).__name__}")
        if size is not None and (not isinstance(size, int) or size < 0):
            raise StoreError(f"ingest of {expected}: invalid size {size!r}")
        self.layout = layout
        self.expected = expected
        self.size = size
        self.exists = False
        self.offset = 0
        self.committed = False
        self._fd: int | None = None
        self._hash = expected.hasher()
        self._stack = ExitStack()

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> "IngestWriter":
        try:
            self._stack.enter_context(SHARED.hold(self.layout.gc_lock))
            self._lock()
            self._open()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()  # closes the partial, then releases the digest lock and the GC lock
        self._fd = None

    def _lock(self) -> None:
        """Take ingest/<hex>.lock exclusively. The holder unlinks it when done, so after flock
        returns we check the path still names the file we locked (else retry on the new one)."""
        self.layout.ingest_dir.mkdir(parents=True, exist_ok=True)
        path = self.layout.ingest_lock(self.expected)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    same = os.stat(path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                break
            os.close(fd)
        self._stack.callback(os.close, fd)
        self._stack.callback(_unlink_quietly, path)  # runs before the close: still ours

    def _open(self) -> None:
        blob = self.layout.blob(self.expected)
        if os.path.isfile(blob):
            have = os.stat(blob).st_size
            if self.size is not None and have != self.size:
                raise SizeMismatch(f"blob {self.expected} is stored with {have} bytes but "
                                   f"{self.size} bytes were expected")
            self.exists = True
            self.offset = have
            return
        partial = self.layout.partial(self.expected)
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._stack.callback(os.close, fd)
        self._stack.callback(self._drop_if_empty, partial)
        self._fd = fd
        # Recover the hash state: the partial's bytes are the prefix written so far.
        n = 0
        while True:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                break
            self._hash.update(chunk)
            n += len(chunk)
        self.offset = n
        if self.size is not None and n > self.size:  # not a prefix of the blob we want
            self.reset()

    def _drop_if_empty(self, partial) -> None:
        if not self.committed and self.offset == 0:
            _unlink_quietly(partial)  # nothing to resume: leave no empty partial behind

    # -- writing -------------------------------------------------------------------------------
    def _need_open(self, what: str) -> int:
        if self.exists:
            raise StoreError(f"cannot {what}: blob {self.expected} already exists (check w.exists)")
        if self._fd is None:
            raise StoreError(f"cannot {what}: the ingest of {self.expected} is not open")
        return self._fd

    def write(self, chunk: bytes) -> int:
        """Append `chunk` to the partial, hashing it. Raises SizeMismatch (and discards the
        partial) when the blob would grow beyond the expected size."""
        fd = self._need_open("write")
        if self.size is not None and self.offset + len(chunk) > self.size:
            got = self.offset + len(chunk)
            self.reset()
            raise SizeMismatch(f"blob {self.expected}: received at least {got} bytes but "
                               f"{self.size} were expected; partial download discarded")
        view = memoryview(chunk)
        while view:
            written = os.pwrite(fd, view, self.offset)
            self._hash.update(view[:written])
            self.offset += written
            view = view[written:]
        return len(chunk)

    def reset(self) -> None:
        """Forget everything written so far (for a source that cannot resume)."""
        fd = self._need_open("reset")
        os.ftruncate(fd, 0)
        self._hash = self.expected.hasher()
        self.offset = 0

    def commit(self) -> Digest:
        """Verify and publish the blob. Idempotent when the blob already exists."""
        if self.exists:
            return self.expected
        fd = self._need_open("commit")
        if self.size is not None and self.offset != self.size:
            raise SizeMismatch(f"blob {self.expected}: have {self.offset} bytes but {self.size} "
                               f"were expected; the partial download is kept for resuming")
        actual = Digest(self.expected.algorithm, self._hash.hexdigest())
        partial = self.layout.partial(self.expected)
        if actual != self.expected:
            os.unlink(partial)
            raise DigestMismatch(f"downloaded content for {self.expected} hashes to {actual} "
                                 f"({self.offset} bytes); discarded")
        os.fchmod(fd, blobs.BLOB_MODE)
        os.fsync(fd)
        dest = self.layout.blob(self.expected)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(partial, dest)  # point of no return: the verified blob is visible
        fsync_dir(dest.parent)
        fsync_dir(partial.parent)
        self.exists = True
        self.committed = True
        return self.expected


def _unlink_quietly(path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
