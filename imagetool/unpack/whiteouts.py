"""What a whiteout is: the one definition, in OCI layer form (tar names) and overlay form (disk nodes).

OCI form (image-spec "changesets", what layers carry):
- an entry `.wh.<name>` deletes `<name>` of the lower layers (never content of its own layer);
- an entry `.wh..wh..opq` in a directory hides everything the lower layers have in it;
- other `.wh..wh.*` names are AUFS metadata (`.wh..wh.plnk`, …): ignored, as Docker does;
- a whiteout of "", "." or ".." is invalid (the caller refuses the layer).
Overlay form (overlayfs, what snapshots and a container's upper dir hold):
- a character device 0/0 named `<name>` deletes `<name>` of the lower directories;
- the xattr `trusted.overlay.opaque=y` on a directory hides the lower directories' contents;
  rootless (inside a user namespace, userns.inside()) trusted.* cannot be set, so snapshots made
  there carry `user.overlay.opaque=y` and are mounted with `userxattr` (kernel >= 5.11): one store
  holds one form (a store belongs to one user), `opaque_xattr()` says which;
- a non-directory hides everything below its path in the lower directories.
"""

from __future__ import annotations

import os
import stat

PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
META_PREFIX = ".wh..wh."
OPAQUE_XATTR = "trusted.overlay.opaque"
USER_OPAQUE_XATTR = "user.overlay.opaque"
OPAQUE_VALUE = b"y"
# overlayfs reads these on its layers (trusted.* as mounted by root, user.* with `userxattr`): a layer
# entry carrying one is refused, whichever form this store uses
OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")

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


_opaque_name: list[str] = []


def opaque_xattr() -> str:
    """The opaque marker this process writes and reads: trusted.* as real root, user.* rootless."""
    if not _opaque_name:
        from imagetool import userns

        _opaque_name.append(USER_OPAQUE_XATTR if userns.inside() else OPAQUE_XATTR)
    return _opaque_name[0]


def is_opaque(target: int | str) -> bool:
    """Does the directory (a path, or an fd opened for reading; an O_PATH fd goes as
    f"/proc/self/fd/{fd}") carry the overlay opaque marker? Unreadable counts as no."""
    try:
        return os.getxattr(target, opaque_xattr()) == OPAQUE_VALUE
    except OSError:
        return False


def set_opaque(target: int | str) -> None:
    """Mark the directory (a path, or an fd opened for reading) opaque (trusted.*: CAP_SYS_ADMIN;
    rootless: user.*, the directory's owner)."""
    os.setxattr(target, opaque_xattr(), OPAQUE_VALUE)
