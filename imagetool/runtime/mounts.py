"""Mounts inside the container's mount namespace: rootfs, /proc, /dev, /sys, binds, pivot_root.

Every function here runs in the child after `unshare(CLONE_NEWNS)` and after `/` was made
private, so nothing reaches the host's mount table. Mount destinations taken from the spec are
resolved inside the new root (`secure_join`) so a symlink in the image cannot point a mount at a
host path.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from imagetool.errors import ContainerError
from imagetool.runtime import syscalls as sc

_FLAGS = {
    "ro": (sc.MS_RDONLY, True), "rw": (sc.MS_RDONLY, False),
    "nosuid": (sc.MS_NOSUID, True), "suid": (sc.MS_NOSUID, False),
    "nodev": (sc.MS_NODEV, True), "dev": (sc.MS_NODEV, False),
    "noexec": (sc.MS_NOEXEC, True), "exec": (sc.MS_NOEXEC, False),
    "strictatime": (sc.MS_STRICTATIME, True),
    "bind": (sc.MS_BIND, True), "rbind": (sc.MS_BIND | sc.MS_REC, True),
}
_PROPAGATION = {"private", "rprivate", "slave", "rslave", "shared", "rshared"}

DEVICES = (  # name, major, minor
    ("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0),
)
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
             ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"), ("core", "/proc/kcore"))


@dataclass(frozen=True, slots=True)
class RootfsPlan:
    """How to build the container's root at `target`.

    overlay: `lowerdir` (the option string, possibly relative to `cwd`), `upper`, `work`;
    copy fallback: `lowerdir` None and `source` a directory bind-mounted at `target`.
    """

    target: str
    lowerdir: str | None = None
    upper: str | None = None
    work: str | None = None
    cwd: str | None = None
    source: str | None = None


def parse_options(options) -> tuple[int, str]:
    flags, data = 0, []
    for o in options or ():
        if o in _FLAGS:
            bit, on = _FLAGS[o]
            flags = flags | bit if on else flags & ~bit
        elif o in _PROPAGATION:
            continue
        else:
            data.append(o)
    return flags, ",".join(data)


def secure_join(root: str, path: str, mkdir: bool = False) -> str:
    """`path` (absolute, container view) resolved under `root`; symlinks resolve as if `root` were `/`.

    With mkdir=True missing components are created as directories (mode 0755).
    """
    parts = [p for p in path.split("/") if p and p != "."]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        cur = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            if not mkdir:
                resolved.append(part)
                continue
            os.mkdir(cur, 0o755)
            resolved.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > 40:
                raise ContainerError(f"too many levels of symbolic links in {path}")
            target = os.readlink(cur)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def make_private(path: str = "/") -> None:
    sc.mount(None, path, None, sc.MS_REC | sc.MS_PRIVATE)


def mount_rootfs(plan: RootfsPlan) -> None:
    """Step 1 of the filesystem: overlay (or a bind of the flattened copy) at plan.target."""
    if plan.lowerdir is None:
        sc.mount(plan.source, plan.target, None, sc.MS_BIND | sc.MS_REC)
        return
    data = f"lowerdir={plan.lowerdir},upperdir={plan.upper},workdir={plan.work}"
    old = None
    if plan.cwd:
        old = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
        os.chdir(plan.cwd)
    try:
        sc.mount("overlay", plan.target, "overlay", 0, data)
    finally:
        if old is not None:
            os.fchdir(old)
            os.close(old)


def _is_dir_mountpoint(root: str, dest: str) -> str:
    """Resolve a fixed mount point (/proc, /dev, /sys …), refusing anything but a directory."""
    target = secure_join(root, dest, mkdir=True)
    st = os.lstat(target)
    if not stat.S_ISDIR(st.st_mode):
        raise ContainerError(f"cannot mount {dest}: it is not a directory in the image")
    return target


def mount_one(root: str, m: dict) -> None:
    dest = m["destination"]
    mtype = m.get("type") or "none"
    flags, data = parse_options(m.get("options"))
    if mtype == "bind" or flags & sc.MS_BIND:
        src = m["source"]
        is_dir = os.path.isdir(src)
        secure_join(root, os.path.dirname(dest) or "/", mkdir=True)
        target = secure_join(root, dest, mkdir=is_dir)
        if not is_dir and not os.path.lexists(target):
            with open(target, "a"):
                pass
        sc.mount(src, target, None, sc.MS_BIND | (flags & sc.MS_REC))
        if flags & ~(sc.MS_BIND | sc.MS_REC):
            sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | (flags & ~(sc.MS_BIND | sc.MS_REC)))
        return
    target = _is_dir_mountpoint(root, dest)
    try:
        sc.mount(m.get("source") or mtype, target, mtype, flags, data or None)
    except OSError as e:
        if mtype == "mqueue" and e.errno in (errno.ENODEV, errno.EPERM):
            return  # no POSIX message queues in this kernel
        if mtype == "sysfs" and e.errno == errno.EPERM:
            # sysfs of a netns we do not own: bind the host's /sys read-only instead
            sc.mount("/sys", target, None, sc.MS_BIND | sc.MS_REC)
            sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_NOSUID |
                     sc.MS_NODEV | sc.MS_NOEXEC)
            return
        raise
    if mtype == "tmpfs" and dest == "/dev":
        populate_dev(target)


def populate_dev(dev: str) -> None:
    """Device nodes (mknod, or a bind of the host's node when mknod is refused) and the usual links."""
    for name, major, minor in DEVICES:
        path = os.path.join(dev, name)
        mode = 0o620 if name == "tty" else 0o666
        try:
            os.mknod(path, stat.S_IFCHR | mode, os.makedev(major, minor))
            os.chmod(path, mode)
        except PermissionError:
            with open(path, "a"):
                pass
            sc.mount(f"/dev/{name}", path, None, sc.MS_BIND)
    for name, target in DEV_LINKS:
        os.symlink(target, os.path.join(dev, name))
    for d in ("pts", "shm", "mqueue"):
        os.mkdir(os.path.join(dev, d), 0o755)


def pivot(root: str) -> None:
    """pivot_root(".", ".") inside `root`, then detach the old root stacked on top of it."""
    os.chdir(root)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")


def mask_paths(paths) -> None:
    """After pivot: /dev/null over files, an empty read-only tmpfs over directories."""
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            sc.mount("tmpfs", p, "tmpfs", sc.MS_RDONLY)
        else:
            sc.mount("/dev/null", p, None, sc.MS_BIND)


def readonly_paths(paths) -> None:
    """After pivot: bind each path onto itself and remount it read-only."""
    for p in paths:
        try:
            sc.mount(p, p, None, sc.MS_BIND | sc.MS_REC)
        except FileNotFoundError:
            continue
        sc.mount(None, p, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)


def readonly_root() -> None:
    sc.mount(None, "/", None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)
