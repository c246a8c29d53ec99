"""`imagetool info`: what this machine gives the user running it (rootless or root).

Each line is one fact, found by looking, not assumed: the user and the store; the user namespace
mapping (the subordinate ranges of /etc/subuid and /etc/subgid, or the single-id mapping); the
root filesystem backend (overlayfs, probed for an ordinary user by mounting one in a throw-away
user namespace with `userxattr`; else the copy fallback); slirp4netns and /dev/net/tun; the cgroup
layout and, for an ordinary user, whether a writable cgroup v2 subtree is delegated to them and
with which controllers.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from dataclasses import asdict, dataclass


@dataclass
class Info:
    """What `imagetool info` reports about this machine and user."""

    user: str
    uid: int
    rootless: bool
    store: str
    store_mode: str                 # octal, or "missing" (made on first use, 0700)
    userns: str                     # "subordinate ids", "single-id mapping", or "not used (root)"
    uid_map: list                   # [[inside, outside, count], ...] the namespace would get
    gid_map: list
    newuidmap: bool
    rootfs: str                     # "overlay", "overlay (user namespace, userxattr)" or "copy (…why)"
    slirp4netns: str | None         # its path, or None
    tun: str                        # "usable" or why not
    cgroup: str                     # "v1", "v2", "hybrid", "none"
    cgroup_delegation: str          # "root" / "delegated: <path>" / why not
    cgroup_controllers: list

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        def ranges(rows):
            return ", ".join(f"{i}→{o} ({c})" for i, o, c in rows) or "-"

        return [
            f"user: {self.user} (uid {self.uid}){'  rootless' if self.rootless else ''}",
            f"store: {self.store} (mode {self.store_mode})",
            f"user namespace: {self.userns}",
            f"  uid map: {ranges(self.uid_map)}",
            f"  gid map: {ranges(self.gid_map)}",
            f"  newuidmap/newgidmap: {'yes' if self.newuidmap else 'no'}",
            f"root filesystem: {self.rootfs}",
            f"slirp4netns: {self.slirp4netns or 'not installed'}",
            f"/dev/net/tun: {self.tun}",
            f"cgroups: {self.cgroup}",
            f"  delegation: {self.cgroup_delegation}",
            f"  controllers: {' '.join(self.cgroup_controllers) or '-'}",
        ]


def gather(store_root) -> Info:
    """What the machine gives this process's user (outside any namespace: `info` does not enter one)."""
    from imagetool import userns

    ids = userns.host_ids()
    uid = ids[0] if ids else os.getuid()
    rootless = uid != 0
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    try:
        store_mode = f"{os.stat(store_root).st_mode & 0o7777:04o}"
    except OSError:
        store_mode = "missing"
    if rootless:
        m = userns.mapping(*(ids or (None, None)))
        kind = "single-id mapping (no subordinate range)" if m.single else "subordinate ids"
        umap = [[r.inside, r.outside, r.count] for r in m.uids]
        gmap = [[r.inside, r.outside, r.count] for r in m.gids]
    else:
        kind, umap, gmap = "not used (root)", [], []
    slirp_path, tun = _slirp()
    layout, delegation, controllers = _cgroups(rootless)
    return Info(user, uid, rootless, str(store_root), store_mode, kind, umap, gmap, userns.helpers_present(),
                _rootfs(rootless), slirp_path, tun, layout, delegation, controllers)


def _slirp() -> tuple[str | None, str]:
    from imagetool.network import slirp

    a = slirp.available()
    if a.binary is None:
        return None, _tun_state()
    return a.binary, "usable" if a.ok else a.why


def _tun_state() -> str:
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return f"not usable ({e.strerror})"
    os.close(fd)
    return "usable"


def _cgroups(rootless: bool) -> tuple[str, str, list]:
    from pathlib import Path

    from imagetool.runtime import cgroups as cg

    layout = cg.detect()
    if not rootless:
        return layout, "root: every controller", _enabled_controllers()
    from imagetool.runtime.cgroups import delegated

    mgr = delegated.create("info", layout)
    root = getattr(mgr, "root", None)
    if root is None:
        return layout, f"none ({mgr.reason}): resource limits cannot apply", []
    try:
        controllers = (Path(root) / "cgroup.controllers").read_text().split()
    except OSError:
        controllers = []
    return layout, f"delegated: {root}", controllers


def _enabled_controllers() -> list:
    try:
        with open("/proc/cgroups") as f:
            rows = [line.split() for line in f if not line.startswith("#")]
    except OSError:
        return []
    return sorted(r[0] for r in rows if len(r) >= 4 and r[3] == "1")


def _rootfs(rootless: bool) -> str:
    from imagetool.unpack.rootfs import overlay_supported

    if not overlay_supported():
        return "copy (the kernel has no overlayfs)"
    if not rootless:
        return "overlay"
    why = probe_userns_overlay()
    return "overlay (in the user namespace, userxattr)" if why is None else f"copy ({why})"


def probe_userns_overlay() -> str | None:
    """Mount an overlay (userxattr) in a throw-away user+mount namespace: None when it works, else why."""
    from imagetool import userns

    tmp = tempfile.mkdtemp(prefix="imagetool-info-")
    try:
        for d in ("lower", "upper", "work", "merged"):
            os.mkdir(os.path.join(tmp, d))
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:   # pragma: no cover (child)
            os.close(r)
            code = 1
            step = "no user namespace"
            try:
                uid, gid = os.geteuid(), os.getegid()
                userns._unshare(userns.CLONE_NEWUSER | userns.CLONE_NEWNS)
                for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
                    with open(f"/proc/self/{name}", "w") as f:
                        f.write(text)
                step = "overlay in a user namespace failed"
                opts = f"lowerdir={tmp}/lower,upperdir={tmp}/upper,workdir={tmp}/work,userxattr"
                _mount("overlay", f"{tmp}/merged", "overlay", opts)
                code = 0
            except OSError as e:
                os.write(w, f"{step}: {e.strerror or e}".encode()[:200])
            finally:
                os._exit(code)
        os.close(w)
        msg = os.read(r, 256).decode(errors="replace")
        os.close(r)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) == 0:
            return None
        return msg or "the overlay probe died"
    finally:
        _remove(tmp)


def _remove(tmp: str) -> None:
    """rmtree, after opening up what overlay left in workdir (work/work is made mode 0)."""
    for d, dirs, _ in os.walk(tmp):
        for n in dirs:
            try:
                os.chmod(os.path.join(d, n), 0o700)
            except OSError:
                pass
    shutil.rmtree(tmp, ignore_errors=True)


def _mount(source: str, target: str, fstype: str, data: str) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), target.encode(), fstype.encode(), 0, data.encode()) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
