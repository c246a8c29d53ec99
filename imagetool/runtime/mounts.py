"""Mounts inside the container's mount namespace, each done by file descriptor inside the root.

Every function here runs in the init after `unshare(CLONE_NEWNS)` and after `/` was made
private, so nothing reaches the host's mount table. Each returns the shell command a person
would type for what it did (for `--explain`), and does nothing else with it.

Mount targets are never host path strings built from image content: the target is resolved
inside the rootfs with the one in-root resolver (`imagetool.safepath.Root`: component by
component from the root's fd, O_NOFOLLOW, symlinks followed as if the rootfs were `/`), opened
`O_PATH|O_NOFOLLOW`, and the mount is made onto `/proc/self/fd/N`. What the kernel mounts on is
therefore the directory that was checked, even if someone swaps a path component for a symlink
between the check and the mount (CVE-2021-30465). `/proc`, `/dev`, `/sys` and their sub-mounts
must be ordinary directories: a symlink anywhere in their path is refused ("must be mounted on
ordinary directory"), as runc does. After each mount the resolver's cache is dropped, so later
targets are resolved through the new mount.
"""

from __future__ import annotations

import errno
import os
import stat

from imagetool.errors import ContainerError
from imagetool.mount import Mount
from imagetool.runtime import shell
from imagetool.runtime import syscalls as sc
from imagetool.safepath import Root

_FLAGS = {
    "ro": (sc.MS_RDONLY, True), "rw": (sc.MS_RDONLY, False),
    "nosuid": (sc.MS_NOSUID, True), "suid": (sc.MS_NOSUID, False),
    "nodev": (sc.MS_NODEV, True), "dev": (sc.MS_NODEV, False),
    "noexec": (sc.MS_NOEXEC, True), "exec": (sc.MS_NOEXEC, False),
    "strictatime": (sc.MS_STRICTATIME, True),
    "bind": (sc.MS_BIND, True), "rbind": (sc.MS_BIND | sc.MS_REC, True),
    # runc's recursive words: an rbind here always takes its locking flags all the way down
    "rro": (sc.MS_RDONLY, True), "rnosuid": (sc.MS_NOSUID, True), "rnodev": (sc.MS_NODEV, True),
    "rnoexec": (sc.MS_NOEXEC, True),
}
_PROPAGATION = {"private", "rprivate", "slave", "rslave", "shared", "rshared"}
_O_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_LOCKED = sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
_ATTRS = ((sc.MS_RDONLY, sc.MOUNT_ATTR_RDONLY), (sc.MS_NOSUID, sc.MOUNT_ATTR_NOSUID),
          (sc.MS_NODEV, sc.MOUNT_ATTR_NODEV), (sc.MS_NOEXEC, sc.MOUNT_ATTR_NOEXEC))

# the nodes of a container's /dev: name, major, minor, mode (docker's list)
DEVICES = (("null", 1, 3, 0o666), ("zero", 1, 5, 0o666), ("full", 1, 7, 0o666), ("random", 1, 8, 0o666),
           ("urandom", 1, 9, 0o666), ("tty", 5, 0, 0o666))
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
             ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"), ("core", "/proc/kcore"))
DEV_DIRS = ("pts", "shm", "mqueue")
ORDINARY = ("proc", "dev", "sys")   # first components whose mounts must not go through a symlink


def parse_options(options) -> tuple[int, str]:
    """mount(8)-style words → (MS_* flags, the data string for the filesystem)."""
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


def _q(*words) -> str:
    return shell.join(words)


def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def components(dest: str) -> tuple[str, ...]:
    """The components of a container path, `..` clamped at `/` (as docker cleans destinations)."""
    return tuple(c for c in os.path.normpath("/" + dest).split("/") if c)


# ---------------------------------------------------------------- targets by fd


def mkdir_hook(pfd: int, name: str, canon: str, st) -> None:
    if st is not None:
        raise ContainerError(f"cannot mount on /{canon}: a component is not a directory in the image")
    os.mkdir(name, 0o755, dir_fd=pfd)
    return None


def check_ordinary(root: Root, dest: str) -> None:
    """The ordinary-directory rule, the one check of both backends (the init's `target`, and
    runc.py before runc sees the bundle, since runc 1.1 follows an image's /dev symlink onto the
    host): for `dest` under /proc, /dev or /sys every component that exists in the root is a
    directory and none is a symlink (the last may be a file: a file bind), else ContainerError
    "must be mounted on ordinary directory". Missing components are fine (they are made later)."""
    comps = components(dest)
    if not comps or comps[0] not in ORDINARY:
        return
    pfd = root.fd
    try:
        for i, name in enumerate(comps):
            st = root.lstat(pfd, name)
            if st is None:
                return
            if stat.S_ISLNK(st.st_mode):
                raise ContainerError(f"{dest} must be mounted on ordinary directory (/{'/'.join(comps[:i + 1])} "
                                     f"is a symlink in the image)")
            if not stat.S_ISDIR(st.st_mode):
                if i == len(comps) - 1:
                    return
                raise ContainerError(f"{dest} must be mounted on ordinary directory (/{'/'.join(comps[:i + 1])} "
                                     f"is not a directory in the image)")
            fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            if pfd != root.fd:
                os.close(pfd)
            pfd = fd
    finally:
        if pfd != root.fd:
            os.close(pfd)


def check_mount_points(root: Root, spec: dict) -> None:
    """`check_ordinary` for /proc, /dev, /sys and every destination of the spec's mounts."""
    for dest in ("/proc", "/dev", "/sys", *(m["destination"] for m in spec.get("mounts") or ())):
        check_ordinary(root, dest)


def target(root: Root, dest: str, directory: bool = True) -> tuple[int, str]:
    """(parent fd, name) of the mount point for `dest` inside `root`, created when missing
    (a directory, or an empty file when `directory` is False). Symlinks resolve inside the root;
    under /proc, /dev and /sys none is allowed (`check_ordinary`)."""
    comps = components(dest)
    if not comps:
        raise ContainerError(f"cannot mount over the container's root ({dest})")
    check_ordinary(root, dest)
    ordinary = comps[0] in ORDINARY
    for _ in range(41):
        pfd, pcanon = root.resolve_dir(comps[:-1], mkdir_hook)
        name = comps[-1]
        if ordinary and pcanon != "/".join(comps[:-1]):
            raise ContainerError(f"{dest} must be mounted on ordinary directory (a path component is a symlink)")
        st = root.lstat(pfd, name)
        if st is None:
            if directory:
                os.mkdir(name, 0o755, dir_fd=pfd)
            else:
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 0o644, dir_fd=pfd))
            return pfd, name
        if stat.S_ISLNK(st.st_mode):
            if ordinary:
                raise ContainerError(f"{dest} must be mounted on ordinary directory (it is a symlink in the image)")
            link = os.readlink(name, dir_fd=pfd)
            base = "" if link.startswith("/") else pcanon
            comps = tuple(c for c in f"{base}/{link}".split("/") if c and c != ".")
            if not comps or comps[-1] == "..":
                comps = components("/".join(comps))   # rare: let normpath settle a trailing ..
            if not comps:
                raise ContainerError(f"cannot mount on {dest}: it resolves to the container's root")
            continue
        if directory != stat.S_ISDIR(st.st_mode):
            kind = "a directory" if directory else "a file"
            raise ContainerError(f"cannot mount on {dest}: it is not {kind} in the image")
        return pfd, name
    raise ContainerError(f"too many levels of symbolic links in {dest}")


def _open(pfd: int, name: str) -> int:
    return os.open(name, _O_PATH, dir_fd=pfd)


def _mount_on(pfd: int, name: str, source, fstype, flags: int = 0, data: str | None = None) -> None:
    """mount(2) onto the checked directory itself (/proc/self/fd/N), never onto a path string."""
    fd = _open(pfd, name)
    try:
        sc.mount(source, _fd_path(fd), fstype, flags, data or None)
    finally:
        os.close(fd)


def _remount(pfd: int, name: str, flags: int) -> None:
    """Remount the mount now on top of (pfd, name) with `flags` (a fresh fd: the new mount's root)."""
    fd = _open(pfd, name)
    try:
        sc.mount(None, _fd_path(fd), None, sc.MS_BIND | sc.MS_REMOUNT | flags)
    finally:
        os.close(fd)


def _lock_tree(pfd: int, name: str, flags: int) -> None:
    """The locking flags of `flags` (ro, nosuid, nodev, noexec) on the mount now on top of
    (pfd, name) AND every mount below it (mount_setattr AT_RECURSIVE): a remount reaches the top
    mount only, so a submount of a read-only volume's source would stay writable."""
    attrs = sum(a for bit, a in _ATTRS if flags & bit)
    if not attrs:
        return
    fd = _open(pfd, name)
    try:
        sc.mount_setattr(fd, "", sc.AT_EMPTY_PATH | sc.AT_RECURSIVE, attrs)
    except OSError as e:
        if e.errno == errno.ENOSYS:
            raise ContainerError("a read-only (or nosuid/nodev/noexec) recursive bind needs mount_setattr "
                                 "(Linux 5.12 or later)") from None
        raise
    finally:
        os.close(fd)


# ---------------------------------------------------------------- the recipe's mount steps


def make_private() -> str:
    """`/` and everything below it private: nothing mounted from here on propagates to the host."""
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    return shell.make_private("/")


def mount_rootfs(m: Mount) -> str:
    """The container's root: the overlay over the image's snapshots (or a bind of its copy)."""
    flags, data = parse_options(m.options)
    if m.type == "bind" or flags & sc.MS_BIND:
        sc.mount(m.source, m.target, None, sc.MS_BIND | sc.MS_REC)
        return shell.mount(m)
    old = None
    if m.cwd:
        old = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        os.chdir(m.cwd)
    try:
        sc.mount(m.source, m.target, m.type, flags, data or None)
    finally:
        if old is not None:
            os.fchdir(old)
            os.close(old)
    return shell.mount(m)


def mount_spec(root: Root, m: dict, cgroup_layout: str | None = None) -> str:
    """One entry of the spec's `mounts` (proc, tmpfs, devpts, mqueue, sysfs, cgroup, bind)."""
    dest = m["destination"]
    mtype = m.get("type") or "none"
    flags, data = parse_options(m.get("options"))
    shown = os.path.join(root.path, *components(dest))
    if mtype == "bind" or flags & sc.MS_BIND:
        return _bind(root, m, flags, shown)
    if mtype == "cgroup":
        return mount_cgroupfs(root, dest, flags, cgroup_layout)
    pfd, name = target(root, dest)
    try:
        _mount_on(pfd, name, m.get("source") or mtype, mtype, flags, data)
    except OSError as e:
        if mtype == "mqueue" and e.errno in (errno.ENODEV, errno.EPERM):
            return f"# {dest}: no POSIX message queues in this kernel"
        if mtype == "devpts" and e.errno == errno.EINVAL and "gid=" in data:
            # rootless with a single-id mapping: the tty group (gid 5) has no id here; as podman, without it
            data = ",".join(o for o in data.split(",") if not o.startswith("gid="))
            _mount_on(pfd, name, m.get("source") or mtype, mtype, flags, data)
            return shell.mount(Mount(mtype, m.get("source") or mtype, shown,
                                     tuple(o for o in m.get("options") or () if not o.startswith("gid="))))
        if mtype == "sysfs" and e.errno == errno.EPERM:
            # the sysfs of a network namespace we do not own (--network host): the host's, read-only
            _mount_on(pfd, name, "/sys", None, sc.MS_BIND | sc.MS_REC)
            _remount(pfd, name, _LOCKED)
            _lock_tree(pfd, name, _LOCKED)
            root.invalidate()
            return (_q("mount", "--rbind", "/sys", shown) + "\n" + _q("mount", "-o", "remount,bind,ro", shown)
                    + "\n" + shell.lock_submounts(shown))
        raise
    finally:
        root.invalidate()
    return shell.mount(Mount(mtype, m.get("source") or mtype, shown, tuple(m.get("options") or ())))


def _bind(root: Root, m: dict, flags: int, shown: str) -> str:
    src = m["source"]
    try:
        is_dir = os.path.isdir(src)
        if not is_dir and not os.path.exists(src):
            raise FileNotFoundError(errno.ENOENT, "no such file or directory")
    except OSError as e:
        raise ContainerError(f"bind mount source {src}: {e.strerror}") from None
    pfd, name = target(root, m["destination"], directory=is_dir)
    try:
        _mount_on(pfd, name, src, None, sc.MS_BIND | (flags & sc.MS_REC))
        extra = flags & ~(sc.MS_BIND | sc.MS_REC)
        if extra:
            _remount(pfd, name, extra)
        if flags & sc.MS_REC:
            _lock_tree(pfd, name, flags)
    finally:
        root.invalidate()
    return shell.mount(Mount("bind", src, shown, tuple(m.get("options") or ())))


def populate_dev(root: Root, name: str, major: int, minor: int, mode: int, kind: str = "c",
                 uid: int = 0, gid: int = 0) -> str:
    """One device node in the container's /dev (mknod, or a bind of the host's node when the
    kernel refuses mknod)."""
    dest = name if name.startswith("/") else f"/dev/{name}"
    comps = components(dest)
    if comps[:1] != ("dev",) or len(comps) < 2:
        raise ContainerError(f"device {dest}: devices are created under /dev only")
    pfd, pcanon = root.resolve_dir(comps[:-1], mkdir_hook)
    if pcanon != "/".join(comps[:-1]):
        raise ContainerError(f"device {dest}: /dev must be an ordinary directory")
    leaf = comps[-1]
    kind_bits = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[kind]
    shown = os.path.join(root.path, *comps)
    existing = root.lstat(pfd, leaf)
    if existing is not None:
        try:
            os.unlink(leaf, dir_fd=pfd)
        except OSError as e:   # rootless: the host's node already bound there (--privileged lists it again)
            if not (e.errno == errno.EBUSY and stat.S_IFMT(existing.st_mode) == kind_bits
                    and existing.st_rdev == os.makedev(major, minor)):
                raise
            return f"# {shown}: the host's node is bound there already"
    try:
        os.mknod(leaf, kind_bits | (mode & 0o7777), os.makedev(major, minor), dir_fd=pfd)
        fd = _open(pfd, leaf)
        try:
            os.chmod(_fd_path(fd), mode & 0o7777)
            if uid or gid:
                os.chown(_fd_path(fd), uid, gid)
        finally:
            os.close(fd)
    except PermissionError:   # rootless (no CAP_MKNOD on the host): the host's own node at the same path
        host = "/" + "/".join(comps)
        try:
            hst = os.stat(host)
        except OSError:
            hst = None
        if hst is None or stat.S_IFMT(hst.st_mode) != kind_bits or hst.st_rdev != os.makedev(major, minor):
            raise ContainerError(f"device {dest}: mknod is refused here (rootless) and the host's {host} is not "
                                 f"that device ({kind} {major}:{minor}) to bind instead") from None
        os.close(os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=pfd))
        _mount_on(pfd, leaf, host, None, sc.MS_BIND)
        return _q("touch", shown) + "\n" + shell.mount(Mount("bind", host, shown, ("bind",)))
    return shell.mknod(shown, kind, major, minor, mode & 0o7777)


def dev_links(root: Root) -> str:
    """The usual links and directories of /dev (fd, stdin, stdout, stderr, ptmx, core; pts, shm, mqueue)."""
    pfd, _ = root.resolve_dir(("dev",))
    lines = []
    for name, dest in DEV_LINKS:
        if root.lstat(pfd, name) is None:
            os.symlink(dest, name, dir_fd=pfd)
            lines.append(shell.symlink(dest, os.path.join(root.path, "dev", name)))
    for d in DEV_DIRS:
        if root.lstat(pfd, d) is None:
            os.mkdir(d, 0o755, dir_fd=pfd)
            lines.append(shell.mkdir(os.path.join(root.path, "dev", d)))
    return "\n".join(lines)


def mount_cgroupfs(root: Root, dest: str, flags: int, layout: str | None) -> str:
    """The container's own cgroup at `dest` (/sys/fs/cgroup), read-only, through its cgroup
    namespace: cgroup2 on a v2 host; on v1/hybrid a tmpfs holding one read-only mount per
    hierarchy (memory, cpu,cpuacct, …, name=systemd; the hybrid's cgroup2 as `unified`)."""
    from imagetool.runtime import cgroups

    locked = _LOCKED | (flags & sc.MS_RDONLY)
    shown = os.path.join(root.path, *components(dest))
    pfd, name = target(root, dest)
    try:
        if layout == "v2":
            _mount_on(pfd, name, "cgroup2", "cgroup2", locked)
            return _q("mount", "-t", "cgroup2", "-o", "ro,nosuid,nodev,noexec", "cgroup2", shown)
        _mount_on(pfd, name, "tmpfs", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "mode=755")
        lines = [_q("mount", "-t", "tmpfs", "-o", "nosuid,nodev,noexec,mode=755", "tmpfs", shown)]
        fd = _open(pfd, name)
        try:
            dfd = os.open(_fd_path(fd), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        finally:
            os.close(fd)
        try:
            for h in cgroups.hierarchies():
                if h.fstype == "cgroup2" and layout == "v2":
                    continue
                sub = h.dirname
                os.mkdir(sub, 0o755, dir_fd=dfd)
                fstype = h.fstype
                _mount_on(dfd, sub, fstype, fstype, locked, None if fstype == "cgroup2" else h.data)
                opts = "ro,nosuid,nodev,noexec" + ("" if fstype == "cgroup2" else "," + h.data)
                lines.append(_q("mkdir", f"{shown}/{sub}") + "\n" + _q("mount", "-t", fstype, "-o", opts, fstype,
                                                                     f"{shown}/{sub}"))
        finally:
            os.close(dfd)
        _remount(pfd, name, locked)
        lines.append(_q("mount", "-o", "remount,bind,ro", shown))
        return "\n".join(lines)
    finally:
        root.invalidate()


def pivot(root: str) -> str:
    """pivot_root(".", ".") inside the new root, then detach the old root stacked on top of it."""
    os.chdir(root)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")
    return shell.pivot_root(root)


def mask_path(path: str, null_fd: int) -> str | None:
    """After pivot: the /dev/null opened beforehand over a file, an empty read-only tmpfs over a
    directory; the path itself is opened O_NOFOLLOW (a symlink there is not followed)."""
    try:
        fd = os.open(path, _O_PATH)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        st = os.fstat(fd)
        if stat.S_ISLNK(st.st_mode):
            raise ContainerError(f"cannot mask {path}: it is a symlink")
        if stat.S_ISDIR(st.st_mode):
            sc.mount("tmpfs", _fd_path(fd), "tmpfs", sc.MS_RDONLY)
            return shell.mask(path, True)
        sc.mount(_fd_path(null_fd), _fd_path(fd), None, sc.MS_BIND)
        return shell.mask(path, False)
    finally:
        os.close(fd)


def readonly_path(path: str) -> str | None:
    """After pivot: bind the path onto itself and remount it read-only (nosuid, nodev, noexec)."""
    try:
        fd = os.open(path, _O_PATH)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise ContainerError(f"cannot make {path} read-only: it is a symlink")
        sc.mount(_fd_path(fd), _fd_path(fd), None, sc.MS_BIND | sc.MS_REC)
    finally:
        os.close(fd)
    fd = os.open(path, _O_PATH)
    try:
        sc.mount(None, _fd_path(fd), None, sc.MS_BIND | sc.MS_REMOUNT | _LOCKED)
    finally:
        os.close(fd)
    return shell.readonly(path)


def readonly_root() -> str:
    sc.mount(None, "/", None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)
    return shell.readonly_root("/")
