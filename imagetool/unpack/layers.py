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

import hashlib
import os
import threading
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from imagetool.errors import DigestError, UnpackError

CHUNK = 1 << 20
ZSTD_MAX_WINDOW = 1 << 27   # 128 MiB: zstd's own default limit; refuses --long=31 style bombs

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


class _GzipReader:
    """Multi-member gzip with bounded output per call (max_length), without gzip.GzipFile's
    per-call overhead and redundant CRC (the diff_id covers the content). Zero padding after
    the last member is accepted; other trailing bytes are corruption; EOF inside a member is
    truncation (EOFError)."""

    def __init__(self, raw):
        self._raw = raw
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._pending = b""

    def read(self, n: int) -> bytes:
        while True:
            if self._d.eof:
                rest = self._d.unused_data.lstrip(b"\0")
                while not rest:
                    chunk = self._raw.read(CHUNK)
                    if not chunk:
                        return b""
                    rest = chunk.lstrip(b"\0")
                if rest[:2] != b"\x1f\x8b":
                    raise OSError("trailing garbage after the gzip data")
                self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._pending = rest
            src = self._d.unconsumed_tail or self._pending
            self._pending = b""
            if not src:
                src = self._raw.read(CHUNK)
                if not src:
                    raise EOFError("gzip member truncated")
            data = self._d.decompress(src, n)
            if data:
                return data

    def close(self) -> None:
        pass


_MAGIC, _FHD, _BLOCK, _SKIPPABLE = range(4)


class _ZstdFrames:
    """Follows the zstd frame and block headers in the compressed bytes, without decoding them,
    to tell a complete stream (it ends between two frames) from a truncated one.

    zstandard's stream_reader silently stops at a truncated frame; this costs a few Python
    operations per block (a block is at most 128 KiB of output). Bad frame magic raises OSError."""

    __slots__ = ("_state", "_need", "_carry", "_skip", "_checksum")

    def __init__(self):
        self._state, self._need, self._carry, self._skip, self._checksum = _MAGIC, 4, b"", 0, False

    def complete(self) -> bool:
        return self._state == _MAGIC and not self._skip and not self._carry

    def feed(self, data) -> None:
        pos, n = 0, len(data)
        while pos < n:
            if self._skip:
                k = min(self._skip, n - pos)
                pos += k
                self._skip -= k
                continue
            take = self._need - len(self._carry)
            hdr = self._carry + data[pos:pos + take]
            pos += take
            if len(hdr) < self._need:
                self._carry = bytes(hdr)
                return
            self._carry = b""
            self._header(hdr)

    def _header(self, h) -> None:
        state = self._state
        if state == _BLOCK:
            v = int.from_bytes(h, "little")
            btype = (v >> 1) & 3
            if btype == 3:
                raise OSError("reserved zstd block type")
            self._skip = 1 if btype == 1 else v >> 3
            if v & 1:                         # last block of the frame (then its checksum)
                self._skip += 4 if self._checksum else 0
                self._state, self._need = _MAGIC, 4
        elif state == _MAGIC:
            m = int.from_bytes(h, "little")
            if m == 0xFD2FB528:
                self._state, self._need = _FHD, 1
            elif m & 0xFFFFFFF0 == 0x184D2A50:
                self._state, self._need = _SKIPPABLE, 4
            else:
                raise OSError("not a zstd frame (bad magic number)")
        elif state == _FHD:
            d = h[0]
            if d & 0x08:
                raise OSError("zstd frame header has its reserved bit set")
            single = (d >> 5) & 1
            self._checksum = bool(d & 0x04)
            self._skip = (1 - single) + (0, 1, 2, 4)[d & 3] + (single, 2, 4, 8)[d >> 6]
            self._state, self._need = _BLOCK, 3
        else:                                 # skippable frame: its length, then its content
            self._skip = int.from_bytes(h, "little")
            self._state, self._need = _MAGIC, 4


class _ZstdSource:
    """The compressed blob as zstandard reads it: every chunk goes through _ZstdFrames."""

    __slots__ = ("_raw", "frames", "eof", "error")

    def __init__(self, raw):
        self._raw, self.frames, self.eof, self.error = raw, _ZstdFrames(), False, None

    def read(self, n: int = CHUNK) -> bytes:
        if self.error is not None or self.eof:
            return b""
        data = self._raw.read(max(n, CHUNK))
        if not data:
            self.eof = True
            return b""
        try:
            self.frames.feed(data)
        except OSError as e:        # raised from inside zstandard's C code: hand it over by hand
            self.error = e
            return b""
        return data


class _ZstdReader:
    """Multi-frame zstd decompression with bounded memory that notices truncation.

    zstandard's stream_reader reads the blob CHUNK bytes at a time and returns at most `n`
    bytes per call (bounded output whatever the ratio); _ZstdFrames tells a clean end from a
    truncated frame, which the stream_reader does not. Trailing non-zstd bytes are corruption."""

    def __init__(self, raw, dctx):
        self._src = _ZstdSource(raw)
        self._r = dctx.stream_reader(self._src, read_size=CHUNK, read_across_frames=True,
                                         closefd=False)

    def read(self, n: int) -> bytes:
        data = self._r.read(n)
        src = self._src
        if src.error is not None:
            raise src.error
        if not data:
            if not src.eof:               # the reader stopped before the blob's end
                raise OSError("zstd data ends early or carries trailing bytes")
            if not src.frames.complete():
                raise EOFError("zstd frame truncated")
        return data

    def close(self) -> None:
        self._r.close()


class LayerStream:
    """Uncompressed, hashed, size-limited view of a layer blob (see module docstring)."""

    def __init__(self, raw: BinaryIO, media_type: str, diff_id=None, limits: Limits | None = None,
                 name: str = "layer"):
        self.name = name
        self.compression = compression_of(media_type)
        self.limits = limits or Limits()
        self.expected = str(diff_id) if diff_id is not None else None
        algorithm = self.expected.partition(":")[0] if self.expected else "sha256"
        if algorithm not in ("sha256", "sha512"):
            raise UnpackError(f"{name}: unsupported diff_id algorithm {algorithm!r}")
        self._hash = hashlib.new(algorithm)
        self.bytes = 0
        self._left = b""          # the rest of a chunk a short read() did not take
        self._done = False        # the helper thread delivered the end or an error
        self._thread = None
        self._error: BaseException | None = None
        self._stop = threading.Event()
        if self.compression == "gzip":
            self._src = _GzipReader(raw)
        elif self.compression == "zstd":
            import zstandard

            self._src = _ZstdReader(raw, zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW))
        else:
            self._src = raw

    def read(self, n: int = -1) -> bytes:
        """At most `n` bytes (CHUNK when n < 0) of the uncompressed stream; b"" at its end.

        The blob is read, decompressed, counted and hashed CHUNK by CHUNK on a helper thread
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

    PREFETCH = 16              # chunks: up to 16 MiB decoded ahead (absorbs small-file vs large-file phases)

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
        except EOFError:
            raise UnpackError(f"{self.name}: truncated {self.compression} data (the blob ends early)") from None
        except (OSError, zlib.error) as e:
            raise UnpackError(f"{self.name}: corrupt {self.compression or 'tar'} data: {e}") from None
        except Exception as e:  # zstandard.ZstdError has no common base we can import lazily
            if type(e).__name__ == "ZstdError":
                raise UnpackError(f"{self.name}: corrupt zstd data: {e}") from None
            raise
        if data:
            data = bytes(data)
            self.bytes += len(data)
            if self.bytes > self.limits.max_bytes:
                raise UnpackError(f"{self.name}: expands past the limit of {self.limits.max_bytes} bytes",
                                  hint="raise IMAGETOOL_MAX_LAYER_BYTES if the image is trusted")
        return data

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
