"""A streaming, deterministic tar writer (PAX when needed) that copies file data with sendfile."""

from __future__ import annotations

import errno
import os
import tarfile

BLOCK = 512
_ZEROS = b"\0" * (2 * BLOCK)


class TarWriter:
    """Writes tar entries to a file descriptor (a file, a pipe, stdout). Not thread-safe."""

    def __init__(self, fd: int):
        self.fd = fd
        self.written = 0
        self._sendfile = True

    def _write(self, data) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
            self.written += n

    def _pad(self, size: int) -> None:
        rest = size % BLOCK
        if rest:
            self._write(b"\0" * (BLOCK - rest))

    def header(self, ti: tarfile.TarInfo) -> None:
        self._write(ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644, mtime: int = 0) -> None:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.mtime = len(data), mode, mtime
        self.header(ti)
        self._write(data)
        self._pad(len(data))

    def add_dir(self, name: str, mode: int = 0o755, mtime: int = 0) -> None:
        ti = tarfile.TarInfo(name.rstrip("/"))
        ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, mode, mtime
        self.header(ti)

    def add_fd(self, ti: tarfile.TarInfo, src_fd: int) -> None:
        """An entry whose `ti.size` bytes come from `src_fd` (from offset 0); OSError if it shrank."""
        self.header(ti)
        self.copy_fd(src_fd, ti.size)
        self._pad(ti.size)

    def add_chunks(self, ti: tarfile.TarInfo, chunks) -> None:
        """An entry whose `ti.size` bytes come from an iterable of bytes; OSError when it yields
        a different amount (the archive would be corrupt: the caller abandons it)."""
        self.header(ti)
        n = 0
        for chunk in chunks:
            n += len(chunk)
            if n > ti.size:
                raise OSError(errno.EIO, f"{ti.name}: more than the {ti.size} bytes announced")
            self._write(chunk)
        if n != ti.size:
            raise OSError(errno.EIO, f"{ti.name}: {n} of the {ti.size} bytes announced")
        self._pad(ti.size)

    def copy_fd(self, src_fd: int, size: int, offset: int = 0) -> None:
        end = offset + size
        while offset < end:
            n = 0
            if self._sendfile:
                try:
                    n = os.sendfile(self.fd, src_fd, offset, min(end - offset, 1 << 30))
                except OSError as e:
                    if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        raise
                    self._sendfile = False
                    continue
            else:
                data = os.pread(src_fd, min(end - offset, 1 << 20), offset)
                self._write(data)
                n = len(data)
            if n == 0:
                raise OSError(errno.EIO, "file shrank while being archived")
            offset += n
            if self._sendfile:
                self.written += n

    def close(self) -> None:
        """The end-of-archive marker (two zero blocks)."""
        self._write(_ZEROS)
