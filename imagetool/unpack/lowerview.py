"""The merged view of an image's lower snapshots (top first), as overlayfs shows it.

Used while building a snapshot, so that a layer's paths resolve as they would on the mounted
rootfs: a symlink or directory that exists only in a lower layer is followed or copied up
(directory attributes kept), and whiteouts and opaque directories (unpack.whiteouts, overlay form)
hide what is below.
Every lookup goes through safepath.Root with canonical (symlink-free) paths only.

`ready`, when given, is called (once) before the first lookup and returns when every lower
snapshot is complete (or raises): a layer unpacked concurrently with its lower layers waits for
them only if one of its entries actually needs the merged view (snapshots.build_snapshots).
"""

from __future__ import annotations

import os

from imagetool.errors import UnpackError
from imagetool.safepath import MissingPath, Root
from imagetool.unpack import whiteouts


class LowerView:
    def __init__(self, paths, ready=None):
        self.paths = [os.fspath(p) for p in paths]
        self._ready = ready
        self._roots: list[Root | None] = [None] * len(self.paths)
        self._opaque: dict[tuple[int, str], bool] = {}

    def _root(self, i: int) -> Root:
        r = self._roots[i]
        if r is None:
            r = self._roots[i] = Root(self.paths[i])
        return r

    def close(self) -> None:
        for r in self._roots:
            if r is not None:
                r.close()
        self._roots = [None] * len(self.paths)

    def _is_opaque(self, i: int, canon: str, fd: int) -> bool:
        key = (i, canon)
        v = self._opaque.get(key)
        if v is None:
            v = self._opaque[key] = whiteouts.is_opaque(f"/proc/self/fd/{fd}")
        return v

    def lookup(self, canon: str):
        """(root, parent fd, name, lstat) of the topmost visible entry at `canon`, or None."""
        if not self.paths or not canon:
            return None
        if self._ready is not None:
            self._ready()          # raises when a lower snapshot failed: nothing is looked up
            self._ready = None
        comps = canon.split("/")
        for i in range(len(self.paths)):
            root = self._root(i)
            root.release()       # the previous lookup's fds are no longer in use
            hidden_below = self._is_opaque(i, "", root.fd)
            fd = root.fd
            present = True
            for j in range(len(comps) - 1):
                prefix = "/".join(comps[:j + 1])
                try:
                    fd = root.dir_fd(prefix)
                except MissingPath:
                    present = False
                    break
                except UnpackError:
                    return None          # a non-directory (or whiteout) hides everything below
                if self._is_opaque(i, prefix, fd):
                    hidden_below = True
            if present:
                try:
                    st = os.stat(comps[-1], dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    st = None
                if st is not None:
                    if whiteouts.is_overlay_whiteout(st):
                        return None
                    return root, fd, comps[-1], st
            if hidden_below:
                return None
        return None
