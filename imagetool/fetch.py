"""The one glue from a registry blob stream into the store's ingest, resuming where it stopped.

Contract of `fetch_blob(store, client, desc)`:
- Inside `store.ingest(digest, size)` (an exclusive per-digest lock: a second process pulling the
  same blob waits there and then finds it committed, so each blob is downloaded once).
- A partial left by an earlier attempt or a killed process is resumed with `Range: bytes=<offset>-`;
  a server that answers 200 instead of 206 makes the writer start over (`w.reset()`).
- A dropped connection or stalled read is retried with backoff, resuming from `w.offset`; the
  budget (`Policy.attempts`) counts consecutive failures that made no progress.
- Nothing unverified becomes visible: `w.commit()` checks size and digest. When a resumed
  download does not verify, it is fetched once more from the start; otherwise → DigestError.
- `tap` (a BlobTap) is the tee to an unpacker: it is told where the bytes land (the ingest
  partial, read from byte 0 — a resumed download included — or the stored blob) and how far they
  are written; its reader gives them in order and its end only after `w.commit()` verified the
  blob. A restart from byte 0 (200 to a Range, a resumed partial that did not verify) or any
  failure breaks the tap (TapBroken): the unpacker gives up and the caller unpacks from the blob.
"""

from __future__ import annotations

import http.client
import os
import threading
import time

from store import Descriptor
from store.errors import DigestMismatch, SizeMismatch

from imagetool.errors import DigestError, TransportError
from imagetool.progress import NullProgress, Progress

DOWNLOADED = "Pull complete"
EXISTS = "Already exists"

_NETWORK_ERRORS = (http.client.HTTPException, ConnectionError, TimeoutError, OSError)


class _Short(Exception):
    """The body ended before the blob was complete."""


class Cancelled(Exception):
    """Another download of the same pull failed; this one stops (its partial stays resumable)."""


class TapBroken(Exception):
    """The download a BlobTap follows failed or restarted from byte 0."""


class BlobTap:
    """The tee from one blob's download to a reader (an unpacker), through the file it lands in.

    Writer side (fetch_blob only): attach(path, offset, final), advance(offset), commit(),
    fail(why). Reader side: `read(n)` returns the next bytes in order, blocks while the writer is
    behind, returns b"" only after commit (the blob's size and digest verified) and raises
    TapBroken after a failure; `abort()` (the reader gave up) wakes a blocked read; `close()`.
    The bytes are read back from the partial (page cache) with pread, so the download never waits
    for the reader and nothing is held in memory."""

    def __init__(self, label: str = "blob"):
        self.label = label
        self._cond = threading.Condition()
        self._fd: int | None = None
        self._avail = 0
        self._pos = 0
        self._final = False
        self._error: str | None = None
        self._closed = False

    # -- writer side
    def attach(self, path, offset: int, final: bool = False) -> None:
        with self._cond:
            if self._closed or self._error is not None:
                return
            if self._fd is not None:       # a second attempt: what was read may not be the blob's
                self._break("the download restarted")
                return
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            self._avail, self._final = offset, final
            self._cond.notify_all()

    def advance(self, offset: int) -> None:
        with self._cond:
            self._avail = offset
            self._cond.notify_all()

    def commit(self) -> None:
        with self._cond:
            self._final = True
            self._cond.notify_all()

    def fail(self, why: str) -> None:
        with self._cond:
            if not self._final:
                self._break(why)

    def _break(self, why: str) -> None:
        if self._error is None:
            self._error = why
        self._cond.notify_all()

    # -- reader side
    def read(self, n: int = 1 << 20) -> bytes:
        if n is None or n < 0:
            n = 1 << 20
        with self._cond:
            while True:
                if self._error is not None:
                    raise TapBroken(f"{self.label}: {self._error}")
                if self._fd is not None and (self._avail > self._pos or self._final):
                    break
                self._cond.wait()
            fd, pos, take = self._fd, self._pos, min(n, self._avail - self._pos)
        if take <= 0:
            return b""                      # final and everything read: the verified end
        data = os.pread(fd, take, pos)
        if len(data) != take:
            raise TapBroken(f"{self.label}: the download's file shrank under the reader")
        self._pos = pos + take
        return data

    def abort(self) -> None:
        with self._cond:
            self._break("the reader gave up")

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._break("closed")
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> "BlobTap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def fetch_blob(store, client, desc: Descriptor, progress: Progress | None = None,
               cancel: threading.Event | None = None, tap: BlobTap | None = None) -> bool:
    """Make `desc` present in the store; True when bytes were downloaded, False when it was there.

    `cancel`, when set by another thread, stops the download at the next chunk (Cancelled).
    `tap` follows the bytes (see the module docstring); it is broken when this raises."""
    try:
        return _fetch(store, client, desc, progress or NullProgress(), cancel, tap)
    except BaseException as e:
        if tap is not None:
            tap.fail(f"the download failed: {type(e).__name__}: {e}")
        raise


def _fetch(store, client, desc: Descriptor, progress: Progress, cancel, tap) -> bool:
    digest = desc.digest
    if store.has(digest):
        if tap is not None:
            tap.attach(store.path(digest), desc.size, final=True)
        progress.blob_done(str(digest), EXISTS)
        return False
    for attempt in range(2):
        with store.ingest(digest, desc.size) as w:
            if w.exists:
                if tap is not None:
                    tap.attach(store.path(digest), desc.size, final=True)
                progress.blob_done(str(digest), EXISTS)
                return False
            resumed = w.offset > 0
            if tap is not None:
                tap.attach(store.layout.partial(digest), w.offset)
            _download(client, desc, w, progress, cancel, tap)
            try:
                w.commit()
                if tap is not None:
                    tap.commit()
            except DigestMismatch as e:  # the store removed the partial
                if resumed and attempt == 0:
                    progress.blob_advance(str(digest), -w.offset)
                    if tap is not None:
                        tap.fail("the resumed partial did not verify; downloading again")
                    continue
                raise DigestError(f"blob {digest} of {client.ref.name} from {client.host} is corrupt: "
                                  f"{e}") from None
            except SizeMismatch as e:
                raise DigestError(f"blob {digest} of {client.ref.name} from {client.host}: {e}") from None
        progress.blob_done(str(digest), DOWNLOADED)
        return True
    raise AssertionError("unreachable")  # pragma: no cover


def _download(client, desc: Descriptor, w, progress: Progress, cancel, tap=None) -> None:
    """Fill the ingest writer up to desc.size, resuming with Range across failures."""
    digest = str(desc.digest)
    policy = client.transport.policy
    failures = 0
    announced = False
    while True:
        before = w.offset
        try:
            with client.blob_stream(desc.digest, w.offset) as s:
                if s.start != w.offset:  # 200 to a Range request: start over
                    progress.blob_advance(digest, -w.offset)
                    w.reset()
                    if tap is not None:
                        tap.fail("the server ignored Range; downloading again from byte 0")
                if not announced:
                    progress.blob_start(digest, desc.size, w.offset)
                    announced = True
                for chunk in s.chunks():
                    if cancel is not None and cancel.is_set():
                        raise Cancelled(digest)
                    try:
                        w.write(chunk)
                    except SizeMismatch as e:
                        raise DigestError(f"blob {digest} of {client.ref.name} from {client.host}: "
                                          f"{e}") from None
                    if tap is not None:
                        tap.advance(w.offset)
                    progress.blob_advance(digest, len(chunk))
            if w.offset < desc.size:
                raise _Short()
            return
        except (_Short, *_NETWORK_ERRORS) as e:
            if isinstance(e, TransportError) and not getattr(e, "retryable", False):
                raise
            failures = 1 if w.offset > before else failures + 1
            if failures >= policy.attempts:
                why = "the connection ended early" if isinstance(e, _Short) else _why(e)
                raise TransportError(f"downloading blob {digest} from {client.host} failed after "
                                     f"{failures} attempts ({w.offset} of {desc.size} bytes): {why}") from None
            time.sleep(policy.delay(failures))


def _why(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:200] or type(e).__name__
