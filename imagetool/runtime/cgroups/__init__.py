"""Cgroups for containers: one manager interface, a v1 and a v2 implementation chosen at run time.

Layouts: `v2` (cgroup2 at /sys/fs/cgroup), `v1` (one cgroup mount per controller) and `hybrid`
(v1 controllers plus an empty cgroup2 at /sys/fs/cgroup/unified, as on systemd hosts of the
late 2010s) which is driven through its v1 controllers. Every container's group lives under an
`imagetool/` parent group, removed again when it is empty.

Manager lifecycle (both versions): `create()` → `apply(resources)` (the spec's
linux.resources) → the container's first process writes itself with `enter()` → … →
`oom_killed()` → `destroy()` (kills what is left, removes the group, and the parent when empty).
`paths` are kept in the container's state.json so a later `ps` can clean up after a SIGKILLed
imagetool with `destroy_paths()`.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

PARENT = "imagetool"


@dataclass(frozen=True, slots=True, eq=False, repr=False, init=False)
class Hierarchy:
    """One mounted cgroup hierarchy: a v1 one (its controllers, or `name=systemd`) or cgroup2.
    Equal (and hashed alike) when all three fields are; __init__, __eq__, __hash__ and __repr__ are
    written out as dataclass would generate them (generated ones are compiled at every `run`)."""

    fstype: str                    # "cgroup" (v1) or "cgroup2"
    mountpoint: str
    controllers: tuple[str, ...]   # v1: ("cpu", "cpuacct") or ("name=systemd",); cgroup2: ()

    def __init__(self, fstype: str, mountpoint: str, controllers: tuple[str, ...]) -> None:
        _set = object.__setattr__   # frozen: as the generated __init__ does
        _set(self, "fstype", fstype)
        _set(self, "mountpoint", mountpoint)
        _set(self, "controllers", controllers)

    def __eq__(self, other):
        if other.__class__ is self.__class__:
            return ((self.fstype, self.mountpoint, self.controllers)
                    == (other.fstype, other.mountpoint, other.controllers))
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.fstype, self.mountpoint, self.controllers))

    def __repr__(self) -> str:
        return f"Hierarchy(fstype={self.fstype!r}, mountpoint={self.mountpoint!r}, controllers={self.controllers!r})"

    @property
    def key(self) -> str:
        """Its name in /proc/self/cgroup (see own_cgroups): a controller, `name=…`, or "" for cgroup2."""
        return self.controllers[0] if self.controllers else ""

    @property
    def dirname(self) -> str:
        return os.path.basename(self.mountpoint.rstrip("/")) or "unified"

    @property
    def data(self) -> str:
        """The mount data selecting this hierarchy (`memory`, `cpu,cpuacct`, `none,name=systemd`)."""
        real = [c for c in self.controllers if not c.startswith("name=")]
        return ",".join(self.controllers if real else ["none", *self.controllers])


def hierarchies(mountinfo: str | None = None) -> list[Hierarchy]:
    """Every mounted cgroup hierarchy, once each (v1 ones including named ones such as
    name=systemd, and cgroup2 — the unified one of a hybrid host, or the only one on v2)."""
    if mountinfo is None:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    out: list[Hierarchy] = []
    seen: set = set()
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, rf = left.split(), right.split()
        if len(fields) < 5 or len(rf) < 3 or rf[0] not in ("cgroup", "cgroup2"):
            continue
        mnt = fields[4].replace("\\040", " ")
        ctrls = () if rf[0] == "cgroup2" else tuple(o for o in rf[2].split(",") if o in V1_CONTROLLERS or
                                                     o.startswith("name="))
        if (rf[0], ctrls) in seen or (rf[0] == "cgroup" and not ctrls):
            continue
        seen.add((rf[0], ctrls))
        out.append(Hierarchy(rf[0], mnt, ctrls))
    return out


V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer", "cpuset", "blkio", "devices", "net_cls",
                  "net_prio", "hugetlb", "perf_event", "rdma", "misc")


def mountinfo_cgroups(mountinfo: str | None = None) -> tuple[dict[str, str], str | None]:
    """({v1 controller: mount point}, cgroup2 mount point or None) from /proc/self/mountinfo."""
    if mountinfo is None:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    v1: dict[str, str] = {}
    v2 = None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        rf = right.split()
        if len(fields) < 5 or len(rf) < 3:
            continue
        mnt = fields[4].replace("\\040", " ")
        fstype = rf[0]
        if fstype == "cgroup2":
            if v2 is None or mnt == "/sys/fs/cgroup":
                v2 = mnt
        elif fstype == "cgroup":
            for opt in rf[2].split(","):
                if opt in V1_CONTROLLERS:
                    v1.setdefault(opt, mnt)
    return v1, v2


def detect(mountinfo: str | None = None) -> str:
    """'v2', 'hybrid' or 'v1' (or 'none' when no cgroup filesystem is mounted)."""
    v1, v2 = mountinfo_cgroups(mountinfo)
    if v1:
        return "hybrid" if v2 else "v1"
    return "v2" if v2 else "none"


def own_cgroups(text: str | None = None) -> dict[str, str]:
    """{controller or '' for the unified hierarchy: path} from /proc/self/cgroup."""
    if text is None:
        with open("/proc/self/cgroup") as f:
            text = f.read()
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[1] == "":
            out[""] = parts[2]
        for c in parts[1].split(","):
            if c:
                out[c] = parts[2]
    return out


def create(container_id: str, layout: str | None = None):
    """A manager (not yet created) for a container's cgroup on this host's layout."""
    mountinfo = None
    if layout is None:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()  # read once: detect() and the manager both parse it
        layout = detect(mountinfo)
    from imagetool import userns

    if userns.inside():   # rootless: the user's delegated v2 subtree, or no cgroup (delegated.py)
        from imagetool.runtime.cgroups import delegated

        return delegated.create(container_id, layout, mountinfo)
    if layout == "v2":
        from imagetool.runtime.cgroups.v2 import V2Cgroup

        _, mnt = mountinfo_cgroups(mountinfo)
        return V2Cgroup(Path(mnt), container_id)
    if layout in ("v1", "hybrid"):
        from imagetool.runtime.cgroups.v1 import V1Cgroup

        return V1Cgroup.for_host(container_id, mountinfo)
    from imagetool.errors import ContainerError

    raise ContainerError("no cgroup filesystem is mounted", hint="mount cgroup2 at /sys/fs/cgroup")


# ---------------------------------------------------------------- shared helpers


def fork_into(group) -> tuple[int, object]:
    """fork, the child born in the cgroup2 `group` when there is one and the kernel agrees (clone3
    CLONE_INTO_CGROUP): joining it later would be a `cgroup.procs` write, whose first use after a
    quiet spell waits 10-20 ms for an RCU grace period. (pid, group born in or None); a plain fork,
    and the child writes cgroup.procs itself, on an older kernel, under a seccomp filter that
    refuses clone3, or when a thread is running (glibc's fork takes locks a raw clone does not)."""
    from imagetool.runtime import syscalls

    if group is not None and _single_threaded():
        try:
            fd = os.open(group, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            fd = None
        if fd is not None:
            try:
                return syscalls.fork_into_cgroup(fd), group
            except OSError:
                pass
            finally:
                os.close(fd)
    return os.fork(), None


def _single_threaded() -> bool:
    with open("/proc/self/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[17] == b"1"   # num_threads, the 20th field


def write(path: Path, value) -> None:
    """Write a control file (it must exist, as on cgroupfs)."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def read_keyed(path: Path) -> dict[str, int]:
    """A `key value` per line file (memory.events, memory.oom_control, cpu.stat)."""
    out = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        try:
            out[k] = int(v)
        except ValueError:
            pass
    return out


def pids_in(group: Path) -> list[int]:
    try:
        return [int(x) for x in (group / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def kill_and_remove(group: Path, use_kill_file: bool = False, timeout: float = 5.0) -> None:
    """SIGKILL every process in `group`, then rmdir it (retrying while the kernel lets go)."""
    if not group.exists():
        return
    if use_kill_file and (group / "cgroup.kill").exists():
        try:
            write(group / "cgroup.kill", 1)
        except OSError:
            pass
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        for pid in pids_in(group):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            _rmdir(group)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _rmdir(path: Path) -> None:
    """rmdir (a separate function so tests can mimic cgroupfs, where control files do not count)."""
    os.rmdir(path)


def remove_parent_if_empty(parent: Path) -> None:
    try:
        _rmdir(parent)
    except OSError:
        pass  # other containers' groups, or already gone


def remove_empty_parents() -> None:
    """rmdir every empty `imagetool/` parent group in every cgroup hierarchy (runc/crun create them
    in all hierarchies, name=systemd and the hybrid's unified one included)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[:1] in (["cgroup"], ["cgroup2"]):
                mnt = Path(left.split()[4])
                remove_parent_if_empty(mnt / PARENT)
                for own in set(own_cgroups().values()):
                    if own.strip("/"):
                        remove_parent_if_empty(mnt / own.strip("/") / PARENT)


def destroy_paths(paths: list[str]) -> None:
    """Remove the groups at `paths` (from a state.json), killing what is left in them."""
    for p in paths:
        group = Path(p)
        try:
            kill_and_remove(group, use_kill_file=True)
        except OSError:
            pass
        if group.parent.name == PARENT:
            remove_parent_if_empty(group.parent)
