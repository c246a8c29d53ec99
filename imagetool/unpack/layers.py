"""Open a layer blob as its uncompressed tar stream, counting and hashing it against the diff_id.

Contract: `LayerStream(raw, media_type, diff_id, limits)` is a read-only stream of the
uncompressed tar. The media type decides the decompressor (plain tar, gzip, zstd; OCI and Docker
names; anything else raises UnpackError before a byte is read). Every byte read is hashed and
counted; passing `limits.max_bytes` raises UnpackError. `finish()` drains the stream to EOF (tar
readers stop at the end-of-archive blocks, the digest covers everything) and raises DigestError
when the hash is not the config's diff_id. Truncated or corrupt compressed data raises UnpackError.
Reading, decompressing and hashing run on one helper thread, a few MiB ahead of the caller;
`close()` stops it (always call it, also after errors) before the caller closes `raw`.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from imagetool import compression
from imagetool.errors import DigestError, UnpackError

TYPE_CHECKING = False  # typing is not imported at run time (`run` loads this module for Limits)
if TYPE_CHECKING:
    from typing import BinaryIO

CHUNK = 256 << 10   # decoded bytes per chunk: below 1 MiB the buffers stay in cache and glibc's free lists
                    # (1 MiB ones are fresh mmaps, page-faulted at every use: busybox ~10%, zstd ~8% slower)

def compression_of(media_type: str) -> str | None:
    """"gzip", "zstd" or None (plain tar) for a layer media type (OCI and Docker names).

    Unknown media types raise (ManifestError, from imagetool.mediatypes: the one table of them)."""
    from imagetool.mediatypes import layer_compression

    return layer_compression(media_type)


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    try:
        return int(v) if v else default
    except ValueError:
        raise UnpackError(f"{name}={v!r} is not an integer") from None


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one layer may expand to (decompression and tar bombs)."""

    max_bytes: int = 64 << 30        # uncompressed tar bytes per layer
    max_entries: int = 2_000_000     # tar members per layer

    @classmethod
    def from_env(cls) -> "Limits":
        """IMAGETOOL_MAX_LAYER_BYTES / IMAGETOOL_MAX_LAYER_ENTRIES override the defaults."""
        d = cls()
        return cls(_env_int("IMAGETOOL_MAX_LAYER_BYTES", d.max_bytes),
                   _env_int("IMAGETOOL_MAX_LAYER_ENTRIES", d.max_entries))


class LayerStream:
    """Uncompressed, hashed, size-limited view of a layer blob (see module docstring)."""

    def __init__(self, raw: BinaryIO, media_type: str, diff_id=None, limits: Limits | None = None,
                 name: str = "layer", prefetch: int | None = None):
        self.name = name
        self.compression = compression_of(media_type)
        self.limits = limits or Limits()
        self.expected = str(diff_id) if diff_id is not None else None
        algorithm = self.expected.partition(":")[0] if self.expected else "sha256"
        if algorithm not in ("sha256", "sha512"):
            raise UnpackError(f"{name}: unsupported diff_id algorithm {algorithm!r}")
        import hashlib   # here: `run` of a present image loads this module but hashes no layer (OpenSSL ~3 ms)

        self._hash = hashlib.new(algorithm)
        self.bytes = 0
        self._left = b""          # the rest of a chunk a short read() did not take
        self._done = False        # the helper thread delivered the end or an error
        self._thread = None
        self._error: BaseException | None = None
        self._stop = threading.Event()
        if prefetch is not None:
            self.PREFETCH = max(1, prefetch)
        self._src = compression.decompressing(raw, self.compression, name, CHUNK) if self.compression else raw

    def read(self, n: int = -1) -> bytes:
        """At most `n` bytes (CHUNK when n < 0) of the uncompressed stream; b"" at its end.

        The blob is read, decompressed, counted and hashed chunk by chunk on a helper thread
        (zlib, zstandard and hashlib release the GIL, so this overlaps the caller's tar parsing
        and file writes on another core), at most PREFETCH chunks ahead: memory stays bounded.
        Errors arrive in stream order, after the data that preceded them."""
        if n is None or n < 0:
            n = CHUNK
        data = self._left
        if not data:
            if self._done:
                if self._error is not None:
                    raise self._error
                return b""
            if self._thread is None:
                self._start()
            data = self._q.get()
            if data.__class__ is not bytes:        # an exception, or None at the end
                self._done = True
                self._thread.join()
                if data is None:
                    return b""
                self._error = data
                raise data
        if len(data) > n:
            self._left = data[n:]
            return data[:n]
        self._left = b""
        return data

    PREFETCH = 32              # chunks: up to 8 MiB decoded ahead (absorbs small-file vs large-file phases)

    def start(self) -> None:
        """Start decoding now, before the first read() (the caller has other work meanwhile)."""
        if self._thread is None and not self._done:
            self._start()

    def _start(self) -> None:
        import queue

        self._q = queue.Queue(self.PREFETCH)
        self._thread = threading.Thread(target=self._produce, name="imagetool-layer-read", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        """Helper thread: read, decompress, count and hash; hand chunks (then None, or the
        error) to read(). Gives up as soon as close() sets _stop."""
        q, stop, update = self._q, self._stop, self._hash.update
        while not stop.is_set():
            try:
                item = self._read_chunk() or None
                if item is not None:
                    update(item)
            except Exception as e:     # handed to the reader, raised there in stream order
                item = e
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except Exception:      # queue.Full: the reader is busy (or gone: stop is set)
                    continue
            if item.__class__ is not bytes:
                return

    def _read_chunk(self) -> bytes:
        try:
            data = self._src.read(CHUNK)
        except compression.Corrupt as e:        # Truncated included
            raise UnpackError(f"{self.name}: {e.detail}") from None
        except OSError as e:                    # reading the blob itself
            raise UnpackError(f"{self.name}: cannot read the blob: {e}") from None
        if data:
            data = bytes(data)
            self.bytes += len(data)
            if self.bytes > self.limits.max_bytes:
                raise UnpackError(f"{self.name}: expands past the limit of {self.limits.max_bytes} bytes",
                                  hint="raise IMAGETOOL_MAX_LAYER_BYTES if the image is trusted")
        return data

    def ready(self) -> bool:
        """Would read() return without waiting (data decoded, the end, or an error)?"""
        return bool(self._left) or self._done or (self._thread is not None and not self._q.empty())

    def finish(self) -> str:
        """Drain to EOF and check the diff_id; returns "<alg>:<hex>" of the uncompressed stream."""
        while self.read(CHUNK):
            pass
        got = f"{self._hash.name}:{self._hash.hexdigest()}"
        if self.expected is not None and got != self.expected:
            raise DigestError(f"{self.name}: uncompressed content is {got}, the image config says {self.expected}",
                              hint="the blob or the image config is corrupt; pull the image again")
        return got

    def close(self) -> None:
        """Stop the helper thread (it is waited for: nothing reads the blob after this returns)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        close = getattr(self._src, "close", None)
        if close is not None and self._src is not None:
            close()
