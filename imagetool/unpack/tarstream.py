"""A streaming tar reader for layers: every entry kind GNU tar, Go's archive/tar and Python's
tarfile write, one pass, no seeking.

Why not `tarfile` "r|": its stream buffer re-slices on every small read (quadratic copying with
large buffers, many Python calls with small ones) and it decodes xattr values through text. This
reader keeps one buffer, hands out memoryviews of file data, and gives xattrs as raw bytes.

Contract: `TarReader(stream)` iterates `Entry` objects in archive order. Between two `next()`
calls the caller may read the current entry's data with `read_data(entry)` (chunks); unread
data is skipped. Corrupt headers raise UnpackError; a stream that ends inside a header or data
raises UnpackError("truncated").

Read: v7, ustar (with its 155-byte prefix; star's 131-byte one), GNU and old GNU (long names 'L'
and links 'K', base-256 numbers for big uid/gid/size/mtime; negative owners and sizes are
refused), PAX ('x' and Solaris 'X' extended headers: path, linkpath, size, uid, gid, sub-second
mtime, SCHILY.xattr.* and LIBARCHIVE.xattr.* xattrs; 'g' global headers apply to every later
entry), regular files ('0', '\0', contiguous '7'; '\0' with a trailing slash is a directory),
hard links, symlinks, char/block devices, fifos, directories (and GNU dump directories 'D', as
GNU tar extracts them without --incremental). GNU sparse files in all of GNU tar's formats (old
GNU 'S' headers with extension blocks, PAX 0.0, 0.1 and 1.0) come as a regular Entry with
`sparse` = ((offset, length), ...) (else None) and `size` = the file's real size; their data
(read_data/buffered_data) is the segments' bytes one after the other, the holes are not in it.
Volume labels ('V') are skipped; other vendor typeflags are regular files (as GNU tar and
tarfile extract them); multi-volume continuations ('M') and old GNU long-name entries ('N')
cannot be extracted from one layer and are refused.
"""

from __future__ import annotations

import struct

from zlib import adler32 as _adler32

from imagetool.errors import UnpackError

BLOCK = 512
READ = 1 << 20
_HDR = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s")

REG, LNK, SYM, CHR, BLK, DIR, FIFO = "file", "hardlink", "symlink", "char", "block", "dir", "fifo"
_TYPES = {b"0": REG, b"\0": REG, b"7": REG, b"1": LNK, b"2": SYM, b"3": CHR, b"4": BLK, b"5": DIR, b"6": FIFO}


class Entry:
    __slots__ = ("name", "type", "mode", "uid", "gid", "size", "mtime_ns", "linkname", "devmajor",
                 "devminor", "xattrs", "sparse", "_left", "_pad")

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


# PAX records that may repeat (GNU sparse 0.0 writes one offset/numbytes pair per segment): kept
# in order in a list instead of the dict, where a later record replaces an earlier one
_REPEATED = ("GNU.sparse.offset", "GNU.sparse.numbytes")


def _parse_pax(data: bytes, repeated: list | None = None) -> dict[str, bytes]:
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
        key = _str(k)
        if repeated is not None and key in _REPEATED:
            repeated.append((key, v))
        else:
            out[key] = v
        pos += length
    return out


def _sparse_int(v, what: str) -> int:
    try:
        n = int(v)
    except (TypeError, ValueError):
        n = -1
    if n < 0:
        raise UnpackError(f"corrupt GNU sparse map: bad {what} {bytes(v or b'')[:20]!r}")
    return n


def _pairs(numbers: list, what: str) -> list[tuple[int, int]]:
    if len(numbers) % 2:
        raise UnpackError(f"corrupt GNU sparse map ({what}: an offset without its length)")
    return [(_sparse_int(numbers[i], "offset"), _sparse_int(numbers[i + 1], "length"))
            for i in range(0, len(numbers), 2)]


def _check_sparse(segments: list, realsize: int, stored: int, name: str) -> tuple:
    """The map of a sparse member, checked: segments in order, not overlapping, inside the file's
    size, and their lengths adding up to the data the archive stores for it."""
    end = total = 0
    for off, n in segments:
        if off < end or off + n > realsize:
            raise UnpackError(f"corrupt GNU sparse map for {name!r} (segments overlap or pass the file's size)")
        end = off + n
        total += n
    if total != stored:
        raise UnpackError(f"corrupt GNU sparse map for {name!r}: its segments hold {total} bytes, "
                          f"the archive {stored}")
    return tuple(segments)


_S = struct.Struct("12s12s")


def _oldgnu_sparse(block: bytes, first: int, count: int) -> tuple[list, bool]:
    """(segments, isextended) of an old-GNU sparse header or extension block."""
    out = []
    for i in range(count):
        off, n = _S.unpack_from(block, first + 24 * i)
        if not off.strip(b"\0"):
            break
        out.append((_num(off, "sparse offset"), _num(n, "sparse length")))
    return out, block[first + 24 * count] != 0


_NO_RECORDS: dict = {}    # an entry without PAX records (shared, never written to)

# typeflags of GNU and other vendors that carry no file: refused with this name (the rest of the
# unknown ones, "A"-"Z" vendor extensions, are regular files, as GNU tar and tarfile extract them)
_REFUSED = {b"M": "multi-volume continuation", b"N": "old GNU long-names entry"}


class TarReader:
    def __init__(self, stream, name: str = "layer"):
        self._s = stream
        self._buf = b""
        self._pos = 0
        self._cur: Entry | None = None
        self._globals: dict[str, bytes] = {}
        self._seen_any = False
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
        """Yield the entry's data as memoryviews (valid until the next chunk is requested): the
        bytes the archive stores, which for a sparse entry are its segments one after the other."""
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
        """The entry's whole (stored) data as one memoryview when it is already buffered (the
        padding is skipped too), else None: use read_data(). Valid until the next read."""
        left = e._left
        end = self._pos + left
        if left <= 0 or end + e._pad > len(self._buf):
            return None
        mv = memoryview(self._buf)[self._pos:end]
        self._pos = end + e._pad
        e._left = e._pad = 0
        return mv

    def _skip_padding(self, e: Entry) -> None:
        if e._pad and not e._left:
            pad, e._pad = e._pad, 0          # padding skipped once
            self._skip(pad)

    def _finish_current(self) -> None:
        e = self._cur
        self._cur = None
        if e._left:
            self._skip(e._left + e._pad)
        elif e._pad:
            self._skip(e._pad)
        e._left = e._pad = 0

    def _payload(self, size: int) -> bytes:
        data = self._take(size)
        self._skip(-size % BLOCK)
        return data

    def _block(self) -> bytes:
        if len(self._buf) - self._pos < BLOCK and not self._fill(BLOCK):
            raise UnpackError(f"{self.layer}: truncated tar stream")
        pos = self._pos
        self._pos = pos + BLOCK
        return self._buf[pos:pos + BLOCK]

    # -- sparse members (GNU): the map, then the data of the segments in order

    def _oldgnu_map(self, block: bytes) -> list:
        """Old GNU ('S'): four segments in the header, then 21 per extension block while the
        previous block says more follow."""
        segments, more = _oldgnu_sparse(block, 386, 4)
        while more:
            ext, more = _oldgnu_sparse(self._block(), 0, 21)
            segments += ext
        return segments

    def _pax10_map(self, stored: int, name: str) -> tuple[list, int]:
        """PAX sparse 1.0: the map is decimal numbers, one a line (count, then offset/length pairs),
        at the start of the data, padded to a block. Returns (segments, bytes the map took)."""
        lines: list[bytes] = []
        partial = b""
        used = 0
        want = None
        while want is None or len(lines) < want:
            if used + BLOCK > stored:
                raise UnpackError(f"corrupt GNU sparse map for {name!r} (it runs past the member's data)")
            parts = (partial + self._block()).split(b"\n")
            used += BLOCK
            partial = parts.pop()
            lines += parts
            if want is None and lines:
                want = 1 + 2 * _sparse_int(lines[0], "segment count")
                if want > stored:          # every number takes at least two bytes of the member
                    raise UnpackError(f"corrupt GNU sparse map for {name!r} (too many segments)")
        if len(partial.strip(b"\0")) or any(len(x) == 0 for x in lines[:want]) or \
                any(x.strip(b"\0") for x in lines[want:]):
            raise UnpackError(f"corrupt GNU sparse map for {name!r}")
        return _pairs(lines[1:want], "1.0"), used

    # -- headers

    def __iter__(self):
        return self

    def __next__(self) -> Entry:
        cur = self._cur
        if cur is not None:
            if cur._left or cur._pad:
                self._finish_current()
            else:
                self._cur = None
        pax: dict[str, bytes] = _NO_RECORDS      # replaced by a new dict at the first 'x' header
        repeated: list = []
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
            kind = _TYPES.get(typeflag)
            if kind is None:
                if typeflag == b"x" or typeflag == b"X":       # PAX (X: Solaris' older spelling)
                    if pax is _NO_RECORDS:
                        pax = {}
                    pax.update(_parse_pax(self._payload(size_n), repeated))
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
                if typeflag == b"V":        # a volume label: nothing to extract
                    self._skip(size_n + (-size_n % BLOCK))
                    pax, repeated, longname, longlink, first = _NO_RECORDS, [], None, None, True
                    continue
                if typeflag in _REFUSED:
                    raise UnpackError(f"{self.layer}: unsupported tar entry ({_REFUSED[typeflag]})")
                # S: old GNU sparse file; D: GNU dump directory (a directory; its listing is only for
                # incremental restores); any other: a vendor's type, read as a regular file
                kind = DIR if typeflag == b"D" else REG
            merged = {**self._globals, **pax} if self._globals else pax
            e = Entry()
            if merged and "path" in merged:
                nm = merged["path"]
            elif longname is not None:
                nm = longname
            else:
                nm = name.split(b"\0", 1)[0]
                if prefix[0] and magic[:6] == b"ustar\0":
                    if block[508:512] == b"tar\0":     # star: a shorter prefix, then atime/ctime
                        prefix = prefix[:131]
                    nm = prefix.split(b"\0", 1)[0] + b"/" + nm
            if kind == REG and typeflag == b"\0" and nm.endswith(b"/"):
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
            if uid_n < 0 or gid_n < 0:     # base-256 negatives: -1 would mean "leave the owner as is"
                raise UnpackError(f"{self.layer}: corrupt tar header: negative owner for {_str(nm)!r}")
            e.uid, e.gid = uid_n, gid_n
            e.sparse = None
            if typeflag == b"S" or repeated or (pax and any(k.startswith("GNU.sparse.") for k in pax)):
                nm = self._sparse(e, typeflag, block, pax, repeated, nm, size_n)
            else:
                e.size = size_n if kind == REG else 0
                # hardlinks, symlinks, dirs and devices carry no data, whatever the size field says
                e._left = e.size
                e._pad = -size_n % BLOCK if kind == REG else 0
            e.name = _str(nm)
            if merged and "mtime" in merged:
                from decimal import Decimal, InvalidOperation   # here: most layers carry no PAX mtime

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
            if kind != REG and size_n:
                self._skip(size_n + (-size_n % BLOCK))
            self._cur = e
            return e

    def _sparse(self, e: Entry, typeflag: bytes, block: bytes, pax: dict, repeated: list, nm: bytes,
                stored: int) -> bytes:
        """Fill e.size (the file's real size), e.sparse (its data segments) and the data left to
        read for a GNU sparse member; returns its real name. The formats (GNU tar's names):
        old GNU 'S' headers; PAX 0.0 (GNU.sparse.offset/numbytes pairs), 0.1 (GNU.sparse.map),
        1.0 (GNU.sparse.major/minor, the map at the start of the data)."""
        what = _str(pax.get("GNU.sparse.name", nm))
        if e.type != REG:
            raise UnpackError(f"{self.layer}: corrupt tar header: sparse map on a non-file {what!r}")
        e._pad = -stored % BLOCK
        used = 0
        if typeflag == b"S":
            segments = self._oldgnu_map(block)
            realsize = _num(block[483:495], "sparse real size")
        elif "GNU.sparse.major" in pax or "GNU.sparse.minor" in pax:
            version = (pax.get("GNU.sparse.major", b"?"), pax.get("GNU.sparse.minor", b"?"))
            if version != (b"1", b"0"):
                raise UnpackError(f"{self.layer}: unsupported GNU sparse format "
                                  f"{_str(version[0])}.{_str(version[1])} for {what!r}")
            segments, used = self._pax10_map(stored, what)
            realsize = _sparse_int(pax.get("GNU.sparse.realsize"), "real size")
        elif "GNU.sparse.map" in pax:                           # 0.1
            m = pax["GNU.sparse.map"]
            segments = _pairs(m.split(b",") if m else [], "0.1")
            realsize = _sparse_int(pax.get("GNU.sparse.size"), "real size")
        else:                                                   # 0.0
            keys = [k for k, _ in repeated]
            if keys != [_REPEATED[i % 2] for i in range(len(keys))]:
                raise UnpackError(f"corrupt GNU sparse map for {what!r} (offsets and lengths not in pairs)")
            segments = _pairs([v for _, v in repeated], "0.0")
            realsize = _sparse_int(pax.get("GNU.sparse.size"), "real size")
        e.size = realsize
        e._left = stored - used
        e.sparse = _check_sparse(segments, realsize, e._left, what)
        return pax.get("GNU.sparse.name", nm)
