"""The one resolver of paths taken from image content: everything stays inside one root directory.

Contract (the rules every caller relies on):

- `clean_name(name)` turns a tar member name into components. A leading "/" and "." components
  are dropped (tar producers write "./etc" and "/etc" alike). A ".." component is refused with
  `UnsafeLayer`: no legitimate layer needs it, and it is the classic traversal.
- `Root.resolve_dir(components)` walks a directory path component by component from the root's
  file descriptor with `O_PATH|O_NOFOLLOW` (openat), never through a host path string. Symlinks
  met on the way are followed *as if the root were "/"*: an absolute target restarts at the root,
  ".." inside a target is clamped at the root (chroot semantics, like containerd's RootPath and
  umoci's securejoin). At most MAX_SYMLINKS links per resolution (ELOOP → `UnpackError`).
- The last component of an entry is never followed: callers get `(parent_fd, name)` and create,
  replace or delete `name` through `dir_fd=` calls, so a symlink planted earlier (in this layer or a
  lower one) is replaced, never written through.
- `Root.resolve(components)` follows the last component's symlink too (in-root), for callers
  that act on what a path points at: `read_file` (e.g. the image's /etc/passwd, users.py) and
  `open` (an O_PATH fd of a mount target, mounted on as /proc/self/fd/N).
- The returned fds are owned by the Root (a cache keyed by the canonical, symlink-free path):
  `invalidate()` (after removing a directory or symlink) retires them from the cache, and
  `release()` closes retired fds once no caller holds one (between entries).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

from imagetool.errors import UnpackError, UnsafeLayer

MAX_SYMLINKS = 40          # Linux's own limit (ELOOP)
MAX_CACHED_FDS = 512       # keep well below common RLIMIT_NOFILE values

_O_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# mkdir hook: (parent_fd, name, canonical_path_of_new_dir, lstat_or_None) -> None | str.
# Called when a component is missing (lstat None) or is not a directory; it must leave a
# directory named `name` in parent_fd and return None, or return a symlink target to follow
# instead (a symlink that exists in a lower layer only), or raise.
MkdirHook = Callable[[int, str, str, "os.stat_result | None"], "str | None"]


class MissingPath(UnpackError):
    """A path component does not exist (and the caller did not ask to create it)."""


def clean_name(name: str) -> tuple[str, ...]:
    """Components of a member name; () is the root itself. Raises UnsafeLayer on ".." or NUL."""
    if "\x00" in name:
        raise UnsafeLayer(f"layer entry {name!r} contains a NUL byte")
    comps = tuple(name.split("/"))
    if "" in comps or "." in comps:      # "a//b", "./a", "a/", "/a": drop the empty and "." parts
        comps = tuple(c for c in comps if c and c != ".")
    if ".." in comps:
        raise UnsafeLayer(f"layer entry {name!r} contains a '..' component (path traversal)")
    return comps


def join(canon: str, name: str) -> str:
    """Canonical paths are "a/b/c" with "" for the root."""
    return f"{canon}/{name}" if canon else name


class Root:
    """A directory opened once; image paths are resolved only inside it (see module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.fd = os.open(self.path, _O_DIR)
        self._fds: dict[str, int] = {"": self.fd}     # canonical dir path -> O_PATH fd
        self._lex: dict[tuple, str] = {}              # lexical components -> canonical dir path
        self._stale: list[int] = []                   # invalidated fds, closed by release()

    # -- lifecycle

    def close(self) -> None:
        self.invalidate()
        self.release()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self._fds.clear()

    def __enter__(self) -> "Root":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def invalidate(self) -> None:
        """Forget every cached lookup (call after removing or replacing a directory or symlink).

        The fds handed out so far stay open (a caller may still hold one for the entry it is
        applying) until `release()`, which the applier calls between entries."""
        self._stale.extend(fd for canon, fd in self._fds.items() if canon)
        self._fds = {"": self.fd}
        self._lex.clear()

    def release(self) -> None:
        """Close the fds retired by `invalidate()` (no lookup result may be in use)."""
        stale, self._stale = self._stale, []
        for fd in stale:
            os.close(fd)

    # -- lookups

    def dir_fd(self, canon: str) -> int:
        """The O_PATH fd of a canonical (symlink-free) directory path inside the root."""
        fd = self._fds.get(canon)
        if fd is not None:
            return fd
        if len(self._fds) > MAX_CACHED_FDS:
            self.invalidate()
        parent, _, name = canon.rpartition("/")
        pfd = self.dir_fd(parent)
        try:
            fd = os.open(name, _O_DIR, dir_fd=pfd)
        except FileNotFoundError:
            raise MissingPath(f"{canon!r} does not exist") from None
        except (NotADirectoryError, OSError) as e:
            raise UnpackError(f"{canon!r} is not a directory inside the root ({e.strerror})") from None
        self._fds[canon] = fd
        return fd

    def resolve_dir(self, comps: tuple[str, ...], mkdir: MkdirHook | None = None) -> tuple[int, str]:
        """(fd, canonical path) of the directory named by `comps`, symlinks followed in-root.

        Missing components (and non-directories) are handed to `mkdir` when given; otherwise a
        missing component raises MissingPath and a non-directory raises UnpackError.
        """
        canon = self._lex.get(comps)
        if canon is not None:
            return self.dir_fd(canon), canon
        # start from the longest lexical prefix already resolved
        start = 0
        base: list[str] = []
        for i in range(len(comps) - 1, 0, -1):
            hit = self._lex.get(comps[:i])
            if hit is not None:
                start, base = i, (hit.split("/") if hit else [])
                break
        canon_parts = self._walk(base, list(reversed(comps[start:])), mkdir, comps)
        canon = "/".join(canon_parts)
        self._lex[comps] = canon
        return self.dir_fd(canon), canon

    def _walk(self, canon: list[str], todo: list[str], mkdir: MkdirHook | None,
              comps: tuple[str, ...]) -> list[str]:
        links = 0
        while todo:
            c = todo.pop()
            if c == "" or c == ".":
                continue
            if c == "..":
                if canon:           # clamped at the root
                    canon.pop()
                continue
            cur = "/".join(canon)
            fd = self.dir_fd(cur)
            try:
                st = os.stat(c, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode):
                canon.append(c)
                continue
            if st is not None and stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_SYMLINKS:
                    raise UnpackError(f"too many levels of symbolic links resolving {'/'.join(comps)!r}")
                target = os.readlink(c, dir_fd=fd)
                if not target:
                    raise UnpackError(f"empty symlink {join(cur, c)!r} in the path of {'/'.join(comps)!r}")
                if target.startswith("/"):
                    canon = []
                todo.extend(reversed(target.split("/")))
                continue
            if mkdir is None:
                if st is None:
                    raise MissingPath(f"{'/'.join(comps)!r}: {join(cur, c)!r} does not exist")
                raise UnpackError(f"{'/'.join(comps)!r}: {join(cur, c)!r} is not a directory")
            target = mkdir(fd, c, join(cur, c), st)
            if target is None:
                canon.append(c)
                continue
            links += 1           # the hook says: follow this as a symlink (one of a lower layer)
            if links > MAX_SYMLINKS:
                raise UnpackError(f"too many levels of symbolic links resolving {'/'.join(comps)!r}")
            if not target:
                raise UnpackError(f"empty symlink {join(cur, c)!r} in the path of {'/'.join(comps)!r}")
            if target.startswith("/"):
                canon = []
            todo.extend(reversed(target.split("/")))
        return canon

    def lookup(self, comps: tuple[str, ...], mkdir: MkdirHook | None = None) -> tuple[int, str, str]:
        """(parent fd, last name, canonical parent) for a non-root entry; the last name is not followed."""
        pfd, pcanon = self.resolve_dir(comps[:-1], mkdir)
        return pfd, comps[-1], pcanon

    def resolve(self, comps: tuple[str, ...], mkdir: MkdirHook | None = None
                ) -> tuple[int, str, str, os.stat_result | None]:
        """(parent fd, name, canonical parent, lstat or None) of the entry `comps` names, with
        every symlink, the last component's too, followed inside the root (chroot semantics).

        The entry itself is never a symlink; st None means it does not exist (create it with
        `dir_fd=` calls). Missing parents go to `mkdir` as in resolve_dir (else MissingPath).
        A path that resolves to the root itself, an empty link or a loop raise UnpackError."""
        comps = tuple(comps)
        for _ in range(MAX_SYMLINKS + 1):
            if comps and comps[-1] in ("", ".", ".."):       # settle a trailing "." or ".." physically
                comps = tuple(c for c in self.resolve_dir(comps, mkdir)[1].split("/") if c)
            if not comps:
                raise UnpackError("the path resolves to the root directory itself")
            pfd, pcanon = self.resolve_dir(comps[:-1], mkdir)
            name = comps[-1]
            st = self.lstat(pfd, name)
            if st is None or not stat.S_ISLNK(st.st_mode):
                return pfd, name, pcanon, st
            target = os.readlink(name, dir_fd=pfd)
            if not target:
                raise UnpackError(f"empty symlink {join(pcanon, name)!r}")
            base = () if target.startswith("/") or not pcanon else tuple(pcanon.split("/"))
            comps = base + tuple(c for c in target.split("/") if c)
        raise UnpackError(f"too many levels of symbolic links resolving {'/'.join(comps)!r}")

    def open(self, comps: tuple[str, ...], flags: int = os.O_PATH) -> int:
        """An fd (the caller closes it) of the existing entry `comps` names, resolved as by
        `resolve` and opened with O_NOFOLLOW|O_CLOEXEC added: what is opened is what was checked,
        even if a component is swapped for a symlink meanwhile (e.g. a mount target, as
        /proc/self/fd/N). MissingPath when it does not exist."""
        pfd, name, pcanon, st = self.resolve(comps)
        if st is None:
            raise MissingPath(f"{join(pcanon, name)!r} does not exist")
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)

    def read_file(self, comps: tuple[str, ...], limit: int) -> bytes | None:
        """The first `limit` bytes of the regular file named by `comps` (resolved as by
        `resolve`); None when it is missing, unresolvable or not a regular file (a fifo or a
        device is never opened for reading: that could block or read host state)."""
        try:
            pfd, name, _, st = self.resolve(comps)
        except UnpackError:              # MissingPath included
            return None
        if st is None or not stat.S_ISREG(st.st_mode):
            return None
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=pfd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            with os.fdopen(os.dup(fd), "rb") as f:
                return f.read(limit)
        finally:
            os.close(fd)

    def lstat(self, pfd: int, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
