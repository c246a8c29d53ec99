"""The one user/group lookup: docker's `name|uid[:group|gid]` to ids, read from a root's /etc safely.

Contract:
- `lookup(root, text) -> User(uid, gid, additional_gids, home)`. `root` is a `safepath.Root`, a
  directory path (opened as a Root for the call), or None (no user database: numeric ids only).
- /etc/passwd and /etc/group are read only through `safepath.Root.read_file`: every symlink (the
  last component's too) resolves inside the root as in a chroot, so an image's
  `/etc/passwd -> /etc/shadow` or `-> ../../../etc/passwd` reads the image's own file, never the
  host's; only regular files are opened (O_NONBLOCK, then fstat S_ISREG: a FIFO never blocks); at
  most DB_LIMIT bytes of each are read. A missing or unreadable file is an empty database.
- Semantics as runc's GetExecUser (what docker and podman do): no text (or "") is root, uid 0 gid 0;
  a numeric uid needs no entry (gid 0 unless its passwd entry says otherwise); a name must have an
  entry; `:group` replaces the primary gid and disables the supplementary groups; without it the
  groups listing the user's name are its additional gids. `home` is the entry's home, else None.
- Errors are ContainerError with docker's wording: `unable to find user NAME: no matching entries
  in passwd file`, `unable to find group NAME: no matching entries in group file`, and an id out
  of range (0 … 2**32-2) is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from imagetool.errors import ContainerError, UnpackError
from imagetool.safepath import Root

DB_LIMIT = 4 << 20          # bytes read of each of /etc/passwd and /etc/group
MAX_ID = (1 << 32) - 2      # (uid_t)-1 means "no change" to the kernel


@dataclass(frozen=True, slots=True, eq=False, repr=False, init=False)
class User:
    """Numeric credentials for the container's process. Equal (and hashed alike) when all four
    fields are; __init__, __eq__, __hash__ and __repr__ are written out as dataclass would generate
    them (generated ones are compiled at every `run`)."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    home: str | None = None

    def __init__(self, uid: int, gid: int, additional_gids: tuple[int, ...] = (),
                 home: str | None = None) -> None:
        _set = object.__setattr__   # frozen: as the generated __init__ does
        _set(self, "uid", uid)
        _set(self, "gid", gid)
        _set(self, "additional_gids", additional_gids)
        _set(self, "home", home)

    def __eq__(self, other):
        if other.__class__ is self.__class__:
            return ((self.uid, self.gid, self.additional_gids, self.home)
                    == (other.uid, other.gid, other.additional_gids, other.home))
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.uid, self.gid, self.additional_gids, self.home))

    def __repr__(self) -> str:
        return f"User(uid={self.uid!r}, gid={self.gid!r}, additional_gids={self.additional_gids!r}, home={self.home!r})"


def lookup(root: Root | str | os.PathLike | None, text: str | None) -> User:
    """Resolve `text` (`name|uid[:group|gid]`) against the user database under `root`."""
    if root is None or isinstance(root, Root):
        return _lookup(root, text)
    with Root(root) as opened:
        return _lookup(opened, text)


def _lookup(root: Root | None, text: str | None) -> User:
    user_part, _, group_part = (text or "").strip().partition(":")
    passwd = _rows(root, "passwd")
    if not user_part:
        user_part = "0"
    if _numeric(user_part):
        uid = _id(user_part, "user")
        entry = next((r for r in passwd if len(r) >= 4 and r[2] == user_part), None)
    else:
        entry = next((r for r in passwd if len(r) >= 4 and r[0] == user_part), None)
        if entry is None or not _numeric(entry[2]):
            raise ContainerError(f"unable to find user {user_part}: no matching entries in passwd file")
        uid = _id(entry[2], "user")
    gid = _id(entry[3], "group") if entry is not None and _numeric(entry[3]) else 0
    home = entry[5] if entry is not None and len(entry) >= 6 and entry[5] else None
    name = entry[0] if entry is not None else None

    groups = _rows(root, "group") if (group_part or name) else []
    extra: list[int] = []
    if group_part:
        if _numeric(group_part):
            gid = _id(group_part, "group")
        else:
            row = next((r for r in groups if len(r) >= 3 and r[0] == group_part and _numeric(r[2])), None)
            if row is None:
                raise ContainerError(f"unable to find group {group_part}: no matching entries in group file")
            gid = _id(row[2], "group")
    elif name:
        for r in groups:
            if len(r) >= 4 and _numeric(r[2]) and name in r[3].split(","):
                g = _id(r[2], "group")
                if g != gid and g not in extra:
                    extra.append(g)
    return User(uid, gid, tuple(extra), home)


def _numeric(text: str) -> bool:
    """An id as the kernel and runc read it: ASCII decimal digits only (str.isdigit takes '²', '٣')."""
    return text.isascii() and text.isdigit()


def _id(text: str, what: str) -> int:
    if len(text.lstrip("0")) > 10:   # past MAX_ID; and int() of thousands of digits is refused by Python itself
        shown = text if len(text) <= 24 else text[:20] + "..."
        raise ContainerError(f"{what} id {shown} is out of range (0 to {MAX_ID})")
    value = int(text)
    if value > MAX_ID:
        raise ContainerError(f"{what} id {text} is out of range (0 to {MAX_ID})")
    return value


def _rows(root: Root | None, name: str) -> list[list[str]]:
    """The colon-separated rows of `/etc/<name>` in `root` (bounded; a cut-off last line dropped)."""
    if root is None:
        return []
    try:
        data = root.read_file(("etc", name), DB_LIMIT)
    except (OSError, UnpackError):   # a symlink loop; swapped for a symlink before the O_NOFOLLOW open
        return []
    if data is None:
        return []
    lines = data.decode("utf-8", "replace").split("\n")
    if len(data) >= DB_LIMIT:
        lines.pop()
    return [line.split(":") for line in lines if line and not line.startswith("#")]
