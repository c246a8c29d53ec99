"""A streaming tar reader for layers: ustar, PAX (x/g) and GNU long names, one pass, no seeking.

Why not `tarfile` "r|": its stream buffer re-slices on every small read (quadratic copying with
large buffers, many Python calls with small ones) and it decodes xattr values through text. This
reader keeps one buffer, hands out memoryviews of file data, and gives xattrs as raw bytes.

Contract: `TarReader(stream)` iterates `Entry` objects in archive order. Between two `next()`
calls the caller may read the current entry's data with `read_data(entry)` (chunks); unread
data is skipped. Corrupt headers raise UnpackError; a stream that ends inside a header or data
raises UnpackError("truncated"). GNU sparse files and multi-volume archives are refused (the OCI
layer spec says sparse files SHOULD NOT be used).
"""

from __future__ import annotations

import struct
from decimal import Decimal, InvalidOperation

from zlib import adler32 as _adler32

from imagetool.errors import UnpackError

BLOCK = 512
READ = 1 << 20
_HDR = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s")

REG, LNK, SYM, CHR, BLK, DIR, FIFO = "file", "hardlink", "symlink", "char", "block", "dir", "fifo"
_TYPES = {b"0": REG, b"\0": REG, b"7": REG, b"1": LNK, b"2": SYM, b"3": CHR, b"4": BLK, b"5": DIR, b"6": FIFO}


class Entry:
    __slots__ = ("name", "type", "mode", "uid", "gid", "size", "mtime_ns", "linkname", "devmajor",
                 "devminor", "xattrs", "_left")

    def isreg(self) -> bool:
        return self.type == REG

    def isdir(self) -> bool:
        return self.type == DIR

    def __repr__(self) -> str:
        return f"Entry({self.name!r}, {self.type})"


def _num(field: bytes, what: str) -> int:
    if field and field[0] & 0x80:      # base-256 (GNU) for big values
        v = int.from_bytes(field[1:], "big")
        if field[0] & 0x40:
            v -= 1 << (8 * len(field) - 2)
        return v
    field = field.split(b"\0", 1)[0].strip()
    if not field:
        return 0
    try:
        return int(field, 8)
    except ValueError:
        raise UnpackError(f"corrupt tar header: bad {what} field {field[:20]!r}") from None


def _pax_int(merged: dict, key: str, default: int, layer: str) -> int:
    """A non-negative integer PAX record (uid, gid, size), or `default` when absent."""
    v = merged.get(key)
    if v is None:
        return default
    try:
        n = int(v)
    except ValueError:
        n = -1
    if n < 0:
        raise UnpackError(f"{layer}: corrupt PAX header: bad {key} {v[:20]!r}")
    return n


def _str(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _parse_pax(data: bytes) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    pos, n = 0, len(data)
    while pos < n:
        if data[pos] == 0:
            break
        sp = data.find(b" ", pos)
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise UnpackError("corrupt PAX header (bad record length)") from None
        if sp < 0 or length <= 0 or pos + length > n:
            raise UnpackError("corrupt PAX header (bad record length)")
        rec = data[sp + 1:pos + length]
        if not rec.endswith(b"\n") or b"=" not in rec:
            raise UnpackError("corrupt PAX header (bad record)")
        k, _, v = rec[:-1].partition(b"=")
        out[_str(k)] = v
        pos += length
    return out


class TarReader:
    def __init__(self, stream, name: str = "layer"):
        self._s = stream
        self._buf = b""
        self._pos = 0
        self._cur: Entry | None = None
        self._globals: dict[str, bytes] = {}
        self.layer = name

    # -- buffer

    def _fill(self, n: int) -> bool:
        """Make at least n bytes available; False at EOF with fewer."""
        have = len(self._buf) - self._pos
        if have >= n:
            return True
        parts = [self._buf[self._pos:]]
        while have < n:
            chunk = self._s.read(max(READ, n - have))
            if not chunk:
                self._buf, self._pos = b"".join(parts), 0
                return False
            parts.append(chunk)
            have += len(chunk)
        self._buf, self._pos = b"".join(parts), 0
        return True

    def _take(self, n: int) -> bytes:
        if not self._fill(n):
            raise UnpackError(f"{self.layer}: truncated tar stream")
        b = self._buf[self._pos:self._pos + n]
        self._pos += n
        return b

    def _skip(self, n: int) -> None:
        while n:
            have = len(self._buf) - self._pos
            if have >= n:
                self._pos += n
                return
            n -= have
            self._buf, self._pos = self._s.read(READ), 0
            if not self._buf:
                raise UnpackError(f"{self.layer}: truncated tar stream")

    # -- data

    def read_data(self, e: Entry):
        """Yield the entry's data as memoryviews (valid until the next chunk is requested)."""
        while e._left:
            have = len(self._buf) - self._pos
            if not have:
                self._buf, self._pos = self._s.read(READ), 0
                if not self._buf:
                    raise UnpackError(f"{self.layer}: truncated tar stream inside {e.name!r}")
                continue
            n = min(have, e._left)
            mv = memoryview(self._buf)[self._pos:self._pos + n]
            self._pos += n
            e._left -= n
            yield mv
        self._skip_padding(e)

    def buffered_data(self, e: Entry):
        """The entry's whole data as one memoryview when it is already buffered (the padding is
        skipped too), else None: use read_data(). Valid until the next read from this reader."""
        left = e._left
        end = self._pos + left
        if left <= 0 or end + (-e.size % BLOCK) > len(self._buf):
            return None
        mv = memoryview(self._buf)[self._pos:end]
        self._pos = end + (-e.size % BLOCK)
        e._left = -1 if e.size % BLOCK else 0
        return mv

    def _skip_padding(self, e: Entry) -> None:
        pad = -e.size % BLOCK
        if pad and e._left == 0:
            e._left = -1          # padding skipped once
            self._skip(pad)

    def _finish_current(self) -> None:
        e = self._cur
        if e is None:
            return
        if e._left > 0:
            self._skip(e._left)
            e._left = 0
        self._skip_padding(e)
        self._cur = None

    def _payload(self, size: int) -> bytes:
        data = self._take(size)
        self._skip(-size % BLOCK)
        return data

    # -- headers

    def __iter__(self):
        return self

    def __next__(self) -> Entry:
        if self._cur is not None:
            self._finish_current()
        pax: dict[str, bytes] = {}
        longname = longlink = None
        first = True
        while True:
            if len(self._buf) - self._pos < BLOCK and not self._fill(BLOCK):
                if len(self._buf) - self._pos == 0 and not first:
                    raise UnpackError(f"{self.layer}: truncated tar stream (a header without its entry)")
                if len(self._buf) - self._pos == 0:
                    if self._seen_any:
                        raise StopIteration   # EOF without the end-of-archive blocks: accepted
                    raise UnpackError(f"{self.layer}: empty stream, not a tar archive")
                raise UnpackError(f"{self.layer}: truncated tar stream")
            pos = self._pos
            block = self._buf[pos:pos + BLOCK]
            self._pos = pos + BLOCK
            # the unsigned byte sum: adler32's low half is 1 + sum mod 65521, exact for ASCII
            # blocks (sum <= 512 * 127 < 65520); headers with high bytes take sum()
            total = (_adler32(block) & 0xFFFF) - 1 if block.isascii() else sum(block)
            if total == 0:                 # all zero: the end-of-archive marker
                if not first:
                    raise UnpackError(f"{self.layer}: corrupt tar stream (end marker after an extended header)")
                self._seen_any = True
                raise StopIteration       # end of archive (the rest is drained by LayerStream.finish)
            (name, mode, uid, gid, size, mtime, chksum, typeflag, linkname, magic, uname, gname,
             devmajor, devminor, prefix) = _HDR.unpack_from(block)
            # octal numbers: int() on the field without its NUL padding; anything else (base-256,
            # NUL inside, empty) takes _num's full path, which gives the same value or the error
            try:
                want = int(chksum.rstrip(b"\0 "), 8)
            except ValueError:
                want = _num(chksum, "checksum")
            if want != total - sum(chksum) + 256:
                raise UnpackError(f"{self.layer}: not a tar archive or corrupt (bad header checksum)")
            self._seen_any = True
            first = False
            try:
                size_n = int(size.rstrip(b"\0 "), 8)
            except ValueError:
                size_n = _num(size, "size")
            if size_n < 0:   # base-256 allows negatives: they would move the reader backwards
                raise UnpackError(f"{self.layer}: corrupt tar header: negative size")
            if typeflag == b"x":
                pax.update(_parse_pax(self._payload(size_n)))
                continue
            if typeflag == b"g":
                self._globals.update(_parse_pax(self._payload(size_n)))
                continue
            if typeflag == b"L":
                longname = self._payload(size_n).split(b"\0", 1)[0]
                continue
            if typeflag == b"K":
                longlink = self._payload(size_n).split(b"\0", 1)[0]
                continue
            kind = _TYPES.get(typeflag)
            if kind is None or (pax and any(k.startswith("GNU.sparse") for k in pax)):
                what = {b"S": "GNU sparse file", b"M": "multi-volume continuation", b"V": "volume label",
                        b"D": "GNU dump directory"}.get(typeflag, f"type {typeflag!r}")
                if typeflag in (b"V",):
                    self._skip(size_n + (-size_n % BLOCK))
                    pax, longname, longlink, first = {}, None, None, True
                    continue
                raise UnpackError(f"{self.layer}: unsupported tar entry ({what})")
            merged = {**self._globals, **pax} if self._globals else pax
            e = Entry()
            if merged and "path" in merged:
                nm = merged["path"]
            elif longname is not None:
                nm = longname
            else:
                nm = name.split(b"\0", 1)[0]
                if prefix[0] and magic[:6] == b"ustar\0":
                    nm = prefix.split(b"\0", 1)[0] + b"/" + nm
            e.name = _str(nm)
            if kind == REG and e.name.endswith("/") and typeflag == b"\0":
                kind = DIR
            e.type = kind
            try:
                e.mode = int(mode.rstrip(b"\0 "), 8) & 0o7777
            except ValueError:
                e.mode = _num(mode, "mode") & 0o7777
            try:
                uid_n = int(uid.rstrip(b"\0 "), 8)
            except ValueError:
                uid_n = _num(uid, "uid")
            try:
                gid_n = int(gid.rstrip(b"\0 "), 8)
            except ValueError:
                gid_n = _num(gid, "gid")
            if merged:
                uid_n = _pax_int(merged, "uid", uid_n, self.layer)
                gid_n = _pax_int(merged, "gid", gid_n, self.layer)
                size_n = _pax_int(merged, "size", size_n, self.layer)
            e.uid, e.gid = uid_n, gid_n
            e.size = size_n if kind == REG else 0
            if merged and "mtime" in merged:
                try:
                    m = Decimal(merged["mtime"].decode())
                    if not m.is_finite():
                        raise InvalidOperation
                    e.mtime_ns = int(m * 1_000_000_000)
                except (InvalidOperation, UnicodeDecodeError):
                    raise UnpackError(f"{self.layer}: corrupt PAX mtime for {e.name!r}") from None
            else:
                try:
                    e.mtime_ns = int(mtime.rstrip(b"\0 "), 8) * 1_000_000_000
                except ValueError:
                    e.mtime_ns = _num(mtime, "mtime") * 1_000_000_000
            if merged and "linkpath" in merged:
                ln = merged["linkpath"]
            elif longlink is not None:
                ln = longlink
            else:
                ln = linkname.split(b"\0", 1)[0]
            e.linkname = _str(ln) if ln else ""
            if "\x00" in e.linkname:
                raise UnpackError(f"{self.layer}: corrupt tar header: NUL byte in the link target of {e.name!r}")
            e.devmajor = _num(devmajor, "devmajor") if kind in (CHR, BLK) else 0
            e.devminor = _num(devminor, "devminor") if kind in (CHR, BLK) else 0
            xattrs = {}
            for k, v in merged.items() if merged else ():
                if k.startswith("SCHILY.xattr."):
                    xattrs[k[13:]] = v
                elif k.startswith("LIBARCHIVE.xattr."):
                    import base64
                    import urllib.parse

                    try:
                        xattrs[urllib.parse.unquote(k[17:])] = base64.b64decode(v + b"=" * (-len(v) % 4))
                    except ValueError:
                        raise UnpackError(f"{self.layer}: bad base64 xattr on {e.name!r}") from None
            if xattrs and any("\x00" in k for k in xattrs):
                raise UnpackError(f"{self.layer}: corrupt PAX header: NUL byte in an xattr name on {e.name!r}")
            e.xattrs = xattrs
            # hardlinks, symlinks, dirs and devices carry no data, whatever the size field says
            e._left = size_n if kind == REG else 0
            if kind != REG and size_n:
                self._skip(size_n + (-size_n % BLOCK))
            self._cur = e
            return e

    _seen_any = False
