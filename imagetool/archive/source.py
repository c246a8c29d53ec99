"""Where archive bytes come from: a tar file (seekable, indexed), a directory, or stdin.

`open_source(path_or_dash, spool_dir)` returns a `Source`: a read-only namespace of member
names. Everything a format reader asks for goes through `Source.resolve(name)`, which
normalises the name, follows symlinks and hard links *inside the archive only*, and refuses
any name or link that would leave it. Nothing outside the archive is ever opened by a name
taken from its content.

Whole-archive gzip/zstd and non-seekable input (a pipe) are spooled, decompressed, to an
anonymous temporary file in `spool_dir` (the store root, so no other filesystem fills up); the
file has no name (O_TMPFILE when possible, else unlinked at once) and vanishes when closed, on
every path out.
"""

from __future__ import annotations

import os
import posixpath
import stat
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from imagetool import compression
from imagetool.errors import ArchiveError

JSON_LIMIT = 4 << 20  # manifests, configs, index.json, manifest.json: read at most this much
MAX_MEMBERS = 100_000  # an image archive holds a few files per blob; refuse tar bombs of headers
_CHUNK = 1 << 20
_MAX_LINK_HOPS = 40


def normalise(name: str, what: str = "member name") -> str:
    """A member name as a clean relative path ("./a//b" → "a/b"); ArchiveError when it is
    absolute, contains "..", or a NUL — the archive must not name anything outside itself."""
    if not isinstance(name, str) or "\0" in name:
        raise ArchiveError(f"unsafe {what} {name!r} in the archive: not a valid path")
    if name.startswith("/"):
        raise ArchiveError(f"unsafe {what} {name!r} in the archive: absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"unsafe {what} {name!r} in the archive: '..' would leave the archive")
    return "/".join(parts)


@dataclass(frozen=True, slots=True)
class Member:
    """One entry of the archive: kind is "file", "dir", "symlink", "hardlink" or "other"."""

    name: str
    kind: str
    size: int = 0
    offset: int = 0          # where the data starts (tar) — unused for directories
    linkname: str = ""


class Source:
    """A read-only namespace of members. Subclasses provide `_lookup` and `chunks`."""

    label: str = "archive"
    truncated_hint: str = ""

    def close(self) -> None:  # pragma: no cover - trivial
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- names --------------------------------------------------------------------------------
    def _lookup(self, name: str) -> Member | None:
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        try:
            self.resolve(name)
        except ArchiveError:
            return False
        return True

    def resolve(self, name: str, what: str = "file") -> Member:
        """The regular-file member `name` refers to, symlinks and hard links followed inside the
        archive. ArchiveError when absent, not a regular file, or leading outside."""
        start = normalise(name, "path")
        todo = [p for p in start.split("/") if p]
        done: list[str] = []
        hops = 0
        while todo:
            comp = todo.pop(0)
            if comp == ".":
                continue
            if comp == "..":
                if not done:
                    raise ArchiveError(f"{self.label}: {name!r} leads outside the archive "
                                       "through a symbolic link")
                done.pop()
                continue
            cur = "/".join(done + [comp])
            m = self._lookup(cur)
            if m is not None and m.kind == "symlink":
                hops += 1
                if hops > _MAX_LINK_HOPS:
                    raise ArchiveError(f"{self.label}: too many levels of symbolic links in {name!r}")
                if m.linkname.startswith("/"):
                    raise ArchiveError(f"{self.label}: {cur!r} is a symbolic link to {m.linkname!r}, "
                                       "outside the archive")
                todo = [p for p in m.linkname.split("/") if p] + todo
                continue
            done.append(comp)
        path = "/".join(done)
        m = self._lookup(path) if path else None
        while m is not None and m.kind == "hardlink":
            hops += 1
            if hops > _MAX_LINK_HOPS:
                raise ArchiveError(f"{self.label}: too many levels of hard links in {name!r}")
            m = self._lookup(normalise(m.linkname, "hard link target"))
        if m is None:
            raise ArchiveError(f"{self.label}: {what} {name!r} is missing from the archive"
                               + self.truncated_hint)
        if m.kind != "file":
            raise ArchiveError(f"{self.label}: {what} {name!r} is not a regular file")
        return m

    # -- data ---------------------------------------------------------------------------------
    def read(self, name: str, limit: int = JSON_LIMIT, what: str = "file") -> bytes:
        """The whole content of `name`, refusing more than `limit` bytes."""
        m = self.resolve(name, what)
        if m.size > limit:
            raise ArchiveError(f"{self.label}: {what} {name!r} is {m.size} bytes, more than the "
                               f"{limit} bytes allowed")
        return b"".join(self.chunks(m))

    def chunks(self, m: Member, chunk: int = _CHUNK):
        """Yield the member's bytes; ArchiveError when fewer are there than its header says."""
        raise NotImplementedError


class TarSource(Source):
    """An uncompressed tar file, indexed once (headers only); data read with pread."""

    def __init__(self, fd: int, label: str, owns_fd: bool):
        self.fd = fd
        self.label = label
        self._owns = owns_fd
        self._members: dict[str, Member] = {}
        self._index()  # on failure the caller still owns (and closes) fd

    def close(self) -> None:
        if self._owns and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def _lookup(self, name: str) -> Member | None:
        return self._members.get(name)

    def _index(self) -> None:
        total = os.fstat(self.fd).st_size
        if total == 0:
            raise ArchiveError(f"{self.label}: empty file, not an archive")
        f = os.fdopen(os.dup(self.fd), "rb", buffering=0)
        try:
            f.seek(0)  # a dup shares the offset: a spool file is positioned at its end
            try:
                tf = tarfile.open(fileobj=f, mode="r:")
            except tarfile.ReadError as e:
                raise ArchiveError(f"{self.label}: not a tar archive ({e})") from None
            try:
                for ti in tf:
                    self._add(ti, total)
            except tarfile.ReadError as e:
                raise ArchiveError(f"{self.label}: corrupt or truncated tar archive ({e})") from None
            end = tf.offset
        finally:
            f.close()
        rest = total - end
        if rest <= 0:
            self.truncated_hint = " (the archive ends without an end-of-archive marker: truncated?)"
        else:
            block = os.pread(self.fd, min(rest, 1024), end)
            if block.strip(b"\0"):
                raise ArchiveError(f"{self.label}: corrupt or truncated tar archive "
                                   f"(invalid tar header at byte {end})")
        if not self._members:
            raise ArchiveError(f"{self.label}: the tar archive is empty")

    def _add(self, ti: tarfile.TarInfo, total: int) -> None:
        name = normalise(ti.name)
        if not name:
            return  # "." or "./": the archive root
        if ti.isreg():
            if ti.sparse is not None:
                raise ArchiveError(f"{self.label}: sparse member {ti.name!r} is not supported")
            if ti.offset_data + ti.size > total:
                raise ArchiveError(f"{self.label}: truncated archive: {ti.name!r} needs {ti.size} "
                                   f"bytes but the file ends after {max(0, total - ti.offset_data)}")
            m = Member(name, "file", ti.size, ti.offset_data)
        elif ti.isdir():
            m = Member(name, "dir")
        elif ti.issym():
            m = Member(name, "symlink", linkname=ti.linkname)
        elif ti.islnk():
            m = Member(name, "hardlink", linkname=ti.linkname)
        else:
            m = Member(name, "other")
        self._members[name] = m  # a later entry replaces an earlier one, as extraction would
        if len(self._members) > MAX_MEMBERS:
            raise ArchiveError(f"{self.label}: more than {MAX_MEMBERS} entries: not an image archive")

    def chunks(self, m: Member, chunk: int = _CHUNK):
        pos, end = m.offset, m.offset + m.size
        while pos < end:
            data = os.pread(self.fd, min(chunk, end - pos), pos)
            if not data:
                raise ArchiveError(f"{self.label}: truncated archive while reading {m.name!r}")
            pos += len(data)
            yield data


class DirSource(Source):
    """An OCI layout (or an unpacked docker save) in a directory. Names resolve inside it; a
    symbolic link leading out of the directory is refused."""

    def __init__(self, root: Path):
        self.root = Path(os.path.realpath(root))
        self.label = str(root)

    def _lookup(self, name: str) -> Member | None:
        path = self.root / name
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(path)
            if target.startswith("/"):  # absolute: allowed only when it stays inside the root
                real = os.path.realpath(path)
                if real != str(self.root) and not real.startswith(str(self.root) + os.sep):
                    raise ArchiveError(f"{self.label}: {name!r} is a symbolic link to {target!r}, "
                                       "outside the directory")
                target = posixpath.relpath(real, posixpath.dirname(str(path)))
            return Member(name, "symlink", linkname=target)
        if stat.S_ISREG(st.st_mode):
            return Member(name, "file", st.st_size)
        if stat.S_ISDIR(st.st_mode):
            return Member(name, "dir")
        return Member(name, "other")

    def chunks(self, m: Member, chunk: int = _CHUNK):
        fd = os.open(self.root / m.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            left = m.size
            while left > 0:
                data = os.read(fd, min(chunk, left))
                if not data:
                    raise ArchiveError(f"{self.label}: {m.name!r} shrank while being read")
                left -= len(data)
                yield data
        finally:
            os.close(fd)


def open_source(where: str, spool_dir: Path) -> Source:
    """A Source for a path (tar file, compressed tar, directory) or "-" (stdin)."""
    if where == "-":
        return _from_fd(sys.stdin.buffer.fileno(), "stdin", spool_dir, owns=False)
    path = Path(where)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ArchiveError(f"{where}: no such file or directory") from None
    except OSError as e:
        raise ArchiveError(f"{where}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        return DirSource(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise ArchiveError(f"{where}: {e.strerror}") from None
    src = None
    try:
        src = _from_fd(fd, where, spool_dir, owns=True)
        return src
    finally:
        if not (isinstance(src, TarSource) and src.fd == fd):
            os.close(fd)  # spooled (or failed): the original file is no longer needed


def _from_fd(fd: int, label: str, spool_dir: Path, owns: bool) -> Source:
    """Index a plain seekable tar in place; otherwise spool (decompressing) first."""
    seekable = stat.S_ISREG(os.fstat(fd).st_mode)
    reader = FdReader(fd)
    head = reader.peek(compression.MAGIC_LEN)
    other = compression.unsupported(head)
    if other:
        raise ArchiveError(f"{label}: {other}-compressed archives are not supported (use gzip, zstd or none)")
    kind = compression.sniff(head)
    if seekable and kind is None:
        return TarSource(fd, label, owns_fd=owns)
    spool = spool_file(spool_dir)
    try:
        stream = compression.decompressing(reader, kind, label) if kind else reader
        _copy(stream, spool, label)
    except BaseException:
        os.close(spool)
        raise
    try:
        return TarSource(spool, label, owns_fd=True)
    except BaseException:
        os.close(spool)
        raise


def spool_file(directory: Path) -> int:
    """An anonymous read-write temp file in `directory`: it disappears when closed."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except (AttributeError, OSError):
        fd, name = tempfile.mkstemp(prefix="imagetool-spool-", dir=directory)
        os.unlink(name)
        return fd


def _copy(stream, fd: int, label: str) -> None:
    while True:
        try:
            data = stream.read(_CHUNK)
        except compression.Corrupt as e:
            raise ArchiveError(f"{label}: {e}") from None
        if not data:
            break
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]


class FdReader:
    """A minimal buffered reader over a raw fd (from its current position), with peek()."""

    def __init__(self, fd: int):
        self.fd = fd
        self._buf = b""
        self._pos = 0 if stat.S_ISREG(os.fstat(fd).st_mode) else None

    def _raw(self, n: int) -> bytes:
        if self._pos is not None:
            data = os.pread(self.fd, n, self._pos)
            self._pos += len(data)
            return data
        return os.read(self.fd, n)

    def peek(self, n: int) -> bytes:
        while len(self._buf) < n:
            data = self._raw(n - len(self._buf))
            if not data:
                break
            self._buf += data
        return self._buf[:n]

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = _CHUNK
        if self._buf:
            out, self._buf = self._buf[:n], self._buf[n:]
            return out
        return self._raw(n)
