"""Open a layer blob as its uncompressed tar stream, counting and hashing it against the diff_id.

Contract: `LayerStream(raw, media_type, diff_id, limits)` is a read-only stream of the
uncompressed tar. The media type decides the decompressor (plain tar, gzip, zstd; OCI and Docker
names; anything else raises UnpackError before a byte is read). Every byte read is hashed and
counted; passing `limits.max_bytes` raises UnpackError. `finish()` drains the stream to EOF (tar
readers stop at the end-of-archive blocks, the digest covers everything) and raises DigestError
when the hash is not the config's diff_id. Truncated or corrupt compressed data raises UnpackError.
"""

from __future__ import annotations

import hashlib
import os
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


class _ZstdReader:
    """Multi-frame zstd decompression with bounded memory that notices truncation.

    (zstandard's stream_reader silently stops at a truncated frame.) Input is fed in small
    pieces so one call can expand to at most ZSTD_FEED * 32768 bytes (a 128 KiB block per
    4 input bytes is zstd's worst case)."""

    ZSTD_FEED = 2048

    def __init__(self, raw, dctx):
        self._raw = raw
        self._dctx = dctx
        self._obj = dctx.decompressobj()
        self._buf = b""           # compressed bytes read from raw
        self._pos = 0             # how much of _buf was fed
        self._out = bytearray()
        self._started = False     # a frame has begun (bytes fed since the last frame end)
        self._eof = False

    def read(self, n: int) -> bytes:
        while len(self._out) < n and not self._eof:
            if self._pos >= len(self._buf):
                self._buf, self._pos = self._raw.read(CHUNK), 0
                if not self._buf:
                    if self._started:
                        raise EOFError("zstd frame truncated")
                    self._eof = True
                    break
            end = self._pos + self.ZSTD_FEED
            piece = self._buf[self._pos:end]
            self._pos = end
            self._started = True
            self._out += self._obj.decompress(piece)
            if self._obj.eof:     # frame complete: the rest belongs to the next frame
                rest = self._obj.unused_data
                self._obj = self._dctx.decompressobj()
                self._started = False
                self._buf, self._pos = rest + self._buf[self._pos:], 0
        if len(self._out) <= n:
            data = bytes(self._out)
            self._out.clear()
        else:
            data = bytes(self._out[:n])
            del self._out[:n]
        return data

    def close(self) -> None:
        pass


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
        if self.compression == "gzip":
            self._src = _GzipReader(raw)
        elif self.compression == "zstd":
            import zstandard

            self._src = _ZstdReader(raw, zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW))
        else:
            self._src = raw

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = CHUNK
        try:
            data = self._src.read(n)
        except EOFError:
            raise UnpackError(f"{self.name}: truncated {self.compression} data (the blob ends early)") from None
        except (OSError, zlib.error) as e:
            raise UnpackError(f"{self.name}: corrupt {self.compression or 'tar'} data: {e}") from None
        except Exception as e:  # zstandard.ZstdError has no common base we can import lazily
            if type(e).__name__ == "ZstdError":
                raise UnpackError(f"{self.name}: corrupt zstd data: {e}") from None
            raise
        if data:
            self.bytes += len(data)
            if self.bytes > self.limits.max_bytes:
                raise UnpackError(f"{self.name}: expands past the limit of {self.limits.max_bytes} bytes",
                                  hint="raise IMAGETOOL_MAX_LAYER_BYTES if the image is trusted")
            self._hash.update(data)
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
        close = getattr(self._src, "close", None)
        if close is not None and self._src is not None:
            close()
