"""What a whiteout is: the one definition, in OCI layer form (tar names) and overlay form (disk nodes).

OCI form (image-spec "changesets", what layers carry):
- an entry `.wh.<name>` deletes `<name>` of the lower layers (never content of its own layer);
- an entry `.wh..wh..opq` in a directory hides everything the lower layers have in it;
- other `.wh..wh.*` names are AUFS metadata (`.wh..wh.plnk`, …): ignored, as Docker does;
- a whiteout of "", "." or ".." is invalid (the caller refuses the layer).
Overlay form (overlayfs, what snapshots and a container's upper dir hold):
- a character device 0/0 named `<name>` deletes `<name>` of the lower directories;
- the xattr `trusted.overlay.opaque=y` on a directory hides the lower directories' contents;
- a non-directory hides everything below its path in the lower directories.
"""

from __future__ import annotations

import os
import stat

PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
META_PREFIX = ".wh..wh."
OPAQUE_XATTR = "trusted.overlay.opaque"
OPAQUE_VALUE = b"y"

# kinds of a tar entry's last name
ENTRY, WHITEOUT, OPAQUE_MARKER, META, INVALID = "entry", "whiteout", "opaque", "meta", "invalid"


def classify(base: str) -> tuple[str, str | None]:
    """(kind, the whited-out name for WHITEOUT else None) of an entry's last path component."""
    if not base.startswith(PREFIX):
        return ENTRY, None
    if base == OPAQUE:
        return OPAQUE_MARKER, None
    if base.startswith(META_PREFIX):
        return META, None
    target = base[len(PREFIX):]
    if target in ("", ".", ".."):
        return INVALID, None
    return WHITEOUT, target


def oci_name(name: str) -> str:
    """The OCI whiteout entry name that deletes `name` (the inverse of classify)."""
    return PREFIX + name


def is_overlay_whiteout(st: os.stat_result) -> bool:
    """Is this (lstat) an overlay whiteout: a character device 0/0?"""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def make_overlay_whiteout(name: str, dir_fd: int) -> None:
    """Create the overlay whiteout `name` in the directory `dir_fd` (needs CAP_MKNOD)."""
    os.mknod(name, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=dir_fd)


def is_opaque(target: int | str) -> bool:
    """Does the directory (a path, or an fd opened for reading; an O_PATH fd goes as
    f"/proc/self/fd/{fd}") carry the overlay opaque marker? Unreadable counts as no."""
    try:
        return os.getxattr(target, OPAQUE_XATTR) == OPAQUE_VALUE
    except OSError:
        return False


def set_opaque(target: int | str) -> None:
    """Mark the directory (a path, or an fd opened for reading) opaque (needs CAP_SYS_ADMIN)."""
    os.setxattr(target, OPAQUE_XATTR, OPAQUE_VALUE)
