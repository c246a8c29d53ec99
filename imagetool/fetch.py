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
"""

from __future__ import annotations

import http.client
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


def fetch_blob(store, client, desc: Descriptor, progress: Progress | None = None,
               cancel: threading.Event | None = None) -> bool:
    """Make `desc` present in the store; True when bytes were downloaded, False when it was there.

    `cancel`, when set by another thread, stops the download at the next chunk (Cancelled)."""
    progress = progress or NullProgress()
    digest = desc.digest
    if store.has(digest):
        progress.blob_done(str(digest), EXISTS)
        return False
    for attempt in range(2):
        with store.ingest(digest, desc.size) as w:
            if w.exists:
                progress.blob_done(str(digest), EXISTS)
                return False
            resumed = w.offset > 0
            _download(client, desc, w, progress, cancel)
            try:
                w.commit()
            except DigestMismatch as e:  # the store removed the partial
                if resumed and attempt == 0:
                    progress.blob_advance(str(digest), -w.offset)
                    continue
                raise DigestError(f"blob {digest} of {client.ref.name} from {client.host} is corrupt: "
                                  f"{e}") from None
            except SizeMismatch as e:
                raise DigestError(f"blob {digest} of {client.ref.name} from {client.host}: {e}") from None
        progress.blob_done(str(digest), DOWNLOADED)
        return True
    raise AssertionError("unreachable")  # pragma: no cover


def _download(client, desc: Descriptor, w, progress: Progress, cancel) -> None:
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
