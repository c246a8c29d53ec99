"""The one gzip/zstd module: detect a compression by its magic bytes, read and write it as a stream.

Contract:
- `sniff(head)` -> "gzip" | "zstd" | None; `unsupported(head)` names a compression recognised but
  not read (bzip2, xz). MAGIC_LEN bytes of the head are enough for both.
- `decompressing(raw, kind, label, chunk)` -> a reader whose `read(n)` returns at most n bytes
  (whatever the ratio: a decompression bomb never costs more memory than n) and b"" at a clean
  end; `raw` is anything with `read(n)`, read `chunk` bytes (default CHUNK) at a time. Concatenated gzip members and zstd frames (and skippable frames)
  are read through, as `gzip -d` and `zstd -d` do; zero padding after the last gzip member is
  accepted; anything else after the end is corruption. zstd windows above ZSTD_MAX_WINDOW are
  refused. Errors: `Truncated` (the input ends inside a member or frame) and `Corrupt` (its base:
  anything else wrong), whose str() starts with `label` and whose `.detail` does not.
- `compressor(kind, level)` -> an object with `compress(data) -> bytes` and `flush() -> bytes`.
- zstandard is imported only when zstd is actually read or written.
- gzip is inflated by zlib-ng (the `zlib-ng` distribution: zlib's API, 2.5-4x faster inflate
  here) when it is installed, else by the standard library's zlib; the output is the same bytes
  (the diff_id checks it). Compression always uses the standard library's zlib, so what imagetool
  writes does not depend on which is installed.
"""

from __future__ import annotations

import zlib

CHUNK = 1 << 20
MAGIC_LEN = 6
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_OTHER = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}
#: zstd windows larger than this are refused (a decompression-memory bomb): 128 MiB is zstd's
#: own default limit (--long=27), far above what image tools write.
ZSTD_MAX_WINDOW = 1 << 27


class Corrupt(Exception):
    """The compressed stream is damaged (or, as Truncated, cut short)."""

    def __init__(self, label: str, detail: str):
        super().__init__(f"{label}: {detail}")
        self.label, self.detail = label, detail


class Truncated(Corrupt):
    """The compressed stream ends inside a gzip member or a zstd frame."""


def sniff(head: bytes) -> str | None:
    """"gzip", "zstd" or None (not compressed, or not a compression imagetool reads)."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return None


def unsupported(head: bytes) -> str | None:
    """The name of a compression imagetool recognises but does not read (bzip2, xz)."""
    for magic, name in _OTHER.items():
        if head.startswith(magic):
            return name
    return None


def decompressing(raw, kind: str, label: str = "stream", chunk: int = CHUNK) -> "_Reader":
    """A bounded reader of the decompressed bytes of `raw` (see the module docstring)."""
    if kind == "gzip":
        return _Reader(_GzipReader(raw, chunk), kind, label)
    if kind == "zstd":
        import zstandard

        return _Reader(_ZstdReader(raw, zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW), chunk),
                       kind, label)
    raise ValueError(f"unknown compression {kind!r}")


def compressor(kind: str, level: int | None = None):
    """A streaming compressor: `compress(data)` then `flush()` once at the end."""
    if kind == "gzip":
        return zlib.compressobj(6 if level is None else level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    if kind == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3 if level is None else level).compressobj()
    raise ValueError(f"unknown compression {kind!r}")


def _inflate():
    """The zlib module gzip is inflated with: zlib-ng's when installed (see the module docstring)."""
    global _INFLATE
    if _INFLATE is None:
        try:
            from zlib_ng import zlib_ng as z
        except ImportError:
            z = zlib
        _INFLATE = z
    return _INFLATE


_INFLATE = None


class _Reader:
    """One error vocabulary over the two decoders."""

    __slots__ = ("_r", "kind", "label")

    def __init__(self, r, kind: str, label: str):
        self._r, self.kind, self.label = r, kind, label

    def read(self, n: int = CHUNK) -> bytes:
        if n is None or n < 0:
            n = CHUNK
        try:
            return self._r.read(n)
        except EOFError:
            raise Truncated(self.label, f"truncated {self.kind} data (the stream ends early)") from None
        except (OSError, zlib.error, _inflate().error) as e:
            raise Corrupt(self.label, f"corrupt {self.kind} data: {e}") from None
        except Exception as e:  # zstandard.ZstdError: no common base we can name without importing it
            if type(e).__name__ == "ZstdError":
                raise Corrupt(self.label, f"corrupt zstd data: {e}") from None
            raise

    def close(self) -> None:
        self._r.close()


class _GzipReader:
    """Multi-member gzip with bounded output per call (max_length), without gzip.GzipFile's
    per-call overhead and redundant CRC (the diff_id covers the content). Zero padding after
    the last member is accepted; other trailing bytes are corruption; EOF inside a member is
    truncation (EOFError)."""

    def __init__(self, raw, chunk: int = CHUNK):
        self._raw = raw
        self._chunk = chunk      # compressed bytes read at a time (the unconsumed tail is copied per call)
        self._z = _inflate()
        self._d = self._z.decompressobj(16 + zlib.MAX_WBITS)
        self._pending = b""

    def read(self, n: int) -> bytes:
        while True:
            if self._d.eof:
                rest = self._d.unused_data.lstrip(b"\0")
                while not rest:
                    chunk = self._raw.read(self._chunk)
                    if not chunk:
                        return b""
                    rest = chunk.lstrip(b"\0")
                if not rest.startswith(GZIP_MAGIC):
                    raise OSError("trailing garbage after the gzip data")
                self._d = self._z.decompressobj(16 + zlib.MAX_WBITS)
                self._pending = rest
            src = self._d.unconsumed_tail or self._pending
            self._pending = b""
            if not src:
                src = self._raw.read(self._chunk)
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

    __slots__ = ("_raw", "frames", "eof", "error", "_chunk")

    def __init__(self, raw, chunk: int = CHUNK):
        self._raw, self.frames, self.eof, self.error, self._chunk = raw, _ZstdFrames(), False, None, chunk

    def read(self, n: int = CHUNK) -> bytes:
        if self.error is not None or self.eof:
            return b""
        data = self._raw.read(max(n, self._chunk))
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

    def __init__(self, raw, dctx, chunk: int = CHUNK):
        self._src = _ZstdSource(raw, chunk)
        self._r = dctx.stream_reader(self._src, read_size=chunk, read_across_frames=True,
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
