"""Cgroups of a rootless container: the user's delegated cgroup v2 subtree, or none at all.

Delegated (cgroup v2, the user's own cgroup — /proc/self/cgroup — writable, as systemd's
`Delegate=yes` or an administrator's chown of the directory, its cgroup.procs and
cgroup.subtree_control): the container's group is `<own>/imagetool/<id>`, made, limited, joined
and removed as a root's (v2.py), and the limits apply. The "no internal processes" rule lets
controllers be enabled in `<own>` only while no process is in it, so the processes there (the
user's shell, this imagetool) first move into the leaf `<own>/init`, as podman does; an imagetool
that finds itself in such a leaf takes its parent as `<own>`. The device allow-list is left out:
a BPF device program needs CAP_SYS_ADMIN in the initial namespace (and the user cannot make
device nodes anyway).

Not delegated (every v1 or hybrid host, or a v2 cgroup the user does not own): `Unavailable`,
no group at all. Limits cannot apply; `apply` returns one `(reason, "# …")` pair for them, which
the runtime prints as one line on stderr and the container runs without them (as podman:
"Resource limits are not supported and ignored on cgroups V1 rootless systems"). Its processes
are then killed through PID 1 (the kernel kills its PID namespace with it; runtime/rootless.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from imagetool.runtime import cgroups as cg
from imagetool.runtime.cgroups.v2 import WANTED, V2Cgroup

LEAF = "init"
LIMITS = ("memory", "cpu", "pids")   # the resources a rootless container cannot have without a cgroup
DEFAULT_PIDS = 2048   # specgen.DEFAULT_PIDS_LIMIT, every container's unless asked otherwise: not worth a warning


def create(container_id: str, layout: str, mountinfo: str | None = None, proc_cgroup: str | None = None):
    """The manager for a rootless container: Delegated, else Unavailable (saying why)."""
    if layout != "v2":
        return Unavailable(1, f"cgroup {layout}: no cgroup can be delegated to an ordinary user")
    _, mnt = cg.mountinfo_cgroups(mountinfo)
    own = cg.own_cgroups(proc_cgroup).get("", "/")
    base = Path(mnt, own.lstrip("/"))
    if base.name == LEAF and writable(base.parent):
        base = base.parent
    if own.strip("/") == "" or not writable(base):
        return Unavailable(2, f"cgroup v2: your cgroup {own} is not delegated to you")
    return Delegated(base, container_id)


def writable(group: Path) -> bool:
    """Whether this process may create groups in `group` and move processes and enable controllers there."""
    return all(os.access(p, os.W_OK) for p in (group, group / "cgroup.procs", group / "cgroup.subtree_control"))


def move_to_leaf(base: Path) -> list[str]:
    """Empty `base` of processes (into `base/init`) unless its controllers are already enabled;
    the directories made."""
    available = set((base / "cgroup.controllers").read_text().split())
    enabled = set((base / "cgroup.subtree_control").read_text().split())
    if all(c in enabled for c in WANTED if c in available) or not cg.pids_in(base):
        return []
    leaf = base / LEAF
    made = []
    try:
        os.mkdir(leaf)
        made.append(str(leaf))
    except FileExistsError:
        pass
    for _ in range(10):   # a process may fork while we move them
        pids = cg.pids_in(base)
        if not pids:
            break
        for pid in pids:
            try:
                cg.write(leaf / "cgroup.procs", pid)
            except ProcessLookupError:
                pass
    return made


class Delegated(V2Cgroup):
    """A root's v2 manager rooted at the user's own cgroup (see the module docstring)."""

    def create(self) -> list[str]:
        return move_to_leaf(self.root) + super().create()

    def apply(self, resources: dict) -> list[tuple[str, str]]:
        return super().apply({k: v for k, v in resources.items() if k != "devices"})


class Unavailable:
    """No cgroup: nothing to create, join, limit or remove (see the module docstring)."""

    def __init__(self, version: int, reason: str):
        self.version = version
        self.reason = reason
        self.paths: list[str] = []
        self.unified_group = None

    def create(self) -> list[str]:
        return []

    def apply(self, resources: dict) -> list[tuple[str, str]]:
        asked = [k for k in LIMITS if any(v not in (None, 0) for v in (resources.get(k) or {}).values())
                 and resources[k] != {"limit": DEFAULT_PIDS}]
        if not asked:
            return []
        return [(self.reason, f"# resource limits ({', '.join(asked)}) cannot apply to a rootless container here")]

    def enter(self, pid: int = 0, born_in=None) -> list[str]:
        return []

    def oom_killed(self) -> bool:
        return False

    def destroy(self) -> list[str]:
        return []
