"""Whole-stream compression of archives and layers: detect by magic bytes, decompress as a stream."""

from __future__ import annotations

import zlib

MAGIC_LEN = 6
_GZIP = b"\x1f\x8b"
_ZSTD = b"\x28\xb5\x2f\xfd"
_OTHER = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}
#: zstd windows larger than this are refused (a decompression-memory bomb); 128 MiB is zstd's
#: --long=27 limit, far above what image tools write.
ZSTD_MAX_WINDOW = 1 << 27
_CHUNK = 1 << 20


class Corrupt(Exception):
    """The compressed stream is damaged or truncated."""


def sniff(head: bytes) -> str | None:
    """"gzip", "zstd" or None (not compressed, or not a compression imagetool reads)."""
    if head.startswith(_GZIP):
        return "gzip"
    if head.startswith(_ZSTD):
        return "zstd"
    return None


def unsupported(head: bytes) -> str | None:
    """The name of a compression imagetool recognises but does not read (bzip2, xz)."""
    for magic, name in _OTHER.items():
        if head.startswith(magic):
            return name
    return None


def decompressing(raw, kind: str, label: str = "stream"):
    """A reader (`.read(n)`) of the decompressed bytes of `raw` (anything with `.read(n)`).

    Raises Corrupt on damaged or truncated input. Concatenated gzip members and zstd frames are
    read through, like `gzip -d` and `zstd -d` do."""
    if kind == "gzip":
        return _Gunzip(raw, label)
    if kind == "zstd":
        return _Unzstd(raw, label)
    raise ValueError(f"unknown compression {kind!r}")


class _Gunzip:
    def __init__(self, raw, label: str):
        self.raw = raw
        self.label = label
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._in = b""
        self._pending = b""
        self._eof = False

    def read(self, n: int = _CHUNK) -> bytes:
        if n is None or n < 0:
            n = _CHUNK
        while not self._pending and not self._eof:
            if self._d.eof:
                self._next_member()
                continue
            if not self._in:
                self._in = self.raw.read(_CHUNK)
                if not self._in:
                    raise Corrupt(f"{self.label}: truncated gzip stream")
            try:
                self._pending = self._d.decompress(self._in, _CHUNK)
            except zlib.error as e:
                raise Corrupt(f"{self.label}: corrupt gzip stream ({e})") from None
            self._in = self._d.unconsumed_tail
        out, self._pending = self._pending[:n], self._pending[n:]
        return out

    def _next_member(self) -> None:
        """After one gzip member: another member follows, or only zero padding, or the end."""
        rest = self._d.unused_data + self._in
        self._in = b""
        while len(rest) < len(_GZIP):
            more = self.raw.read(_CHUNK)
            if not more:
                break
            rest += more
        if rest.startswith(_GZIP):
            self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            self._in = rest
            return
        while rest:
            if rest.strip(b"\0"):
                raise Corrupt(f"{self.label}: unexpected data after the end of the gzip stream")
            rest = self.raw.read(_CHUNK)
        self._eof = True


class _Unzstd:
    """zstd frames one after another. A decompressobj (not stream_reader, which ends silently on
    truncated input) fed small input slices, so one call's output stays bounded (a zstd block
    expands at most ~32768x: 32 KiB in, at most 1 GiB out, and real data is far below that)."""

    _SLICE = 32 << 10

    def __init__(self, raw, label: str):
        import zstandard

        self.raw = raw
        self.label = label
        self._zstd = zstandard
        self._dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
        self._in = b""
        self._pos = 0
        self._pending = b""
        self._ppos = 0
        self._eof = False
        self._d = None

    def read(self, n: int = _CHUNK) -> bytes:
        if n is None or n < 0:
            n = _CHUNK
        if self._ppos < len(self._pending):  # leftovers of a large decompressed piece first
            out = self._pending[self._ppos:self._ppos + n]
            self._ppos += len(out)
            return out
        out: list[bytes] = []
        have = 0
        while have < n and not self._eof:
            if self._pos >= len(self._in):
                self._in, self._pos = self.raw.read(_CHUNK), 0
                if not self._in:
                    if self._d is not None:
                        raise Corrupt(f"{self.label}: truncated zstd stream")
                    self._eof = True
                    break
            if self._d is None:  # between frames: another frame, zero padding, or the end
                if not self._in[self._pos:].strip(b"\0"):
                    self._pos = len(self._in)
                    continue
                self._d = self._dctx.decompressobj()
            piece = self._in[self._pos:self._pos + self._SLICE]
            self._pos += len(piece)
            try:
                data = self._d.decompress(piece)
            except self._zstd.ZstdError as e:
                raise Corrupt(f"{self.label}: corrupt zstd stream ({e})") from None
            if data:
                out.append(data)
                have += len(data)
            if self._d.eof:
                self._in, self._pos = self._d.unused_data + self._in[self._pos:], 0
                self._d = None
        joined = b"".join(out) if len(out) != 1 else out[0]
        if len(joined) <= n:
            return joined
        self._pending, self._ppos = joined, n
        return joined[:n]
