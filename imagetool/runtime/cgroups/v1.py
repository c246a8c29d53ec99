"""cgroup v1 (and hybrid): one group in EVERY mounted hierarchy, limits in memory, cpu, pids, devices.

Groups live at `<hierarchy mount>/<imagetool's own cgroup there>/imagetool/<id>`, so limits the
host placed on imagetool itself still hold (v1 has no "no internal processes" rule). The
container joins every hierarchy — blkio, cpuset, freezer, cpuacct, name=systemd and a hybrid
host's unified cgroup2 included — before it unshares its cgroup namespace, so no hierarchy is
left rooted at the host's top group where a process able to mount it could move itself or
create groups (issue 14 item 4, as runc joins all of them).

Joining is cheap on v1: the init writes `0` (itself) to each group's `tasks` file. Moving one
thread skips the kernel's global threadgroup lock (and its RCU grace period, ~10 ms) that a
`cgroup.procs` write takes; the init is single-threaded at that point, so its whole process
moves. The hybrid's cgroup2 has no `tasks`: the init is cloned straight into that group
(clone3 CLONE_INTO_CGROUP, process.py), and `cgroup.procs` is written only where that is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

from imagetool.runtime import cgroups as cg

LIMITED = ("memory", "cpu", "pids", "devices")   # the controllers `apply` writes to


class V1Cgroup:
    version = 1

    def __init__(self, groups: dict[str, Path], joins: list[tuple[Path, str]] | None = None,
                 unified_group: Path | None = None):
        """`groups`: {controller: group directory} (controllers sharing a hierarchy share a path);
        `joins`: every (group directory, file to write the pid to) to join, one per hierarchy;
        `unified_group`: the hybrid's cgroup2 group among them (the init can be cloned into it)."""
        self.groups = groups
        self.joins = joins if joins is not None else [(p, "cgroup.procs") for p in sorted(set(groups.values()))]
        self.unified_group = unified_group

    @classmethod
    def for_host(cls, container_id: str, mountinfo: str | None = None, proc_cgroup: str | None = None):
        own = cg.own_cgroups(proc_cgroup)
        groups: dict[str, Path] = {}
        joins: list[tuple[Path, str]] = []
        unified = None
        for h in cg.hierarchies(mountinfo):
            base = own.get(h.key, "/").lstrip("/")
            group = Path(h.mountpoint, base, cg.PARENT, container_id)
            joins.append((group, "cgroup.procs" if h.fstype == "cgroup2" else "tasks"))
            if h.fstype == "cgroup2":
                unified = group
            for c in h.controllers:
                groups[c] = group
        return cls(groups, joins, unified)

    @property
    def paths(self) -> list[str]:
        return sorted({str(p) for p, _ in self.joins})

    def create(self) -> list[str]:
        """mkdir the group in every hierarchy (cpuset: cpus and mems copied down from the parent,
        which a new cpuset group lacks); the directories made."""
        made = []
        for p, _ in self.joins:
            cpuset = (p.parent.parent / "cpuset.cpus").exists()
            for attempt in range(3):
                try:
                    made += self._mkdir(p.parent, cpuset) + self._mkdir(p, cpuset)
                    break
                except FileNotFoundError:
                    if attempt == 2:   # another imagetool removed the empty parent meanwhile: retry
                        raise
        return made

    @staticmethod
    def _mkdir(d: Path, cpuset: bool) -> list[str]:
        """mkdir `d` ([] when it exists); in the cpuset hierarchy, empty cpus/mems filled from the
        parent whether this call made it or not: another imagetool may have just made the shared
        `imagetool/` parent and not filled it yet, and a task joining a cpuset group with no cpus
        or mems gets ENOSPC ("No space left on device")."""
        try:
            os.mkdir(d)
            made = [str(d)]
        except FileExistsError:
            made = []
        if cpuset:
            for f in ("cpuset.cpus", "cpuset.mems"):
                if not (d / f).read_text().strip():
                    cg.write(d / f, (d.parent / f).read_text().strip())
        return made

    def apply(self, resources: dict) -> list[tuple[str, str]]:
        """Write the spec's linux.resources (memory, memory+swap, cpu quota, pids, device rules);
        the (file, value) pairs written, in order."""
        writes: list[tuple[str, str]] = []

        def w(path: Path, value) -> None:
            cg.write(path, value)
            writes.append((str(path), str(value)))

        mem = resources.get("memory") or {}
        if mem.get("limit") is not None:
            g = self._need("memory", "--memory")
            w(g / "memory.limit_in_bytes", mem["limit"])
            swap = mem.get("swap")
            if swap is not None and (g / "memory.memsw.limit_in_bytes").exists():
                w(g / "memory.memsw.limit_in_bytes", -1 if swap < 0 else max(swap, mem["limit"]))
        cpu = resources.get("cpu") or {}
        if cpu.get("quota"):
            g = self._need("cpu", "--cpus")
            w(g / "cpu.cfs_period_us", cpu.get("period", 100000))
            w(g / "cpu.cfs_quota_us", cpu["quota"])
        pids = resources.get("pids") or {}
        if pids.get("limit"):
            g = self._need("pids", "--pids-limit")
            w(g / "pids.max", pids["limit"])
        if resources.get("devices") and "devices" in self.groups:
            g = self.groups["devices"]
            for d in resources["devices"]:
                rule = f"{d.get('type', 'a')} {d.get('major', '*')}:{d.get('minor', '*')} {d.get('access', 'rwm')}"
                try:
                    w(g / ("devices.allow" if d.get("allow") else "devices.deny"), rule)
                except OSError:
                    if not d.get("allow"):
                        raise  # an allow the parent group refuses only narrows access
        return writes

    def _need(self, controller: str, option: str) -> Path:
        from imagetool.errors import ContainerError

        if controller not in self.groups:
            raise ContainerError(f"{option} needs the cgroup v1 {controller} controller, which is not mounted")
        return self.groups[controller]

    def enter(self, pid: int = 0, born_in: Path | None = None) -> list[str]:
        """Move `pid` into every group but `born_in` (the hybrid's cgroup2 group the caller was
        cloned into); 0 means the caller, which must be single-threaded (it is moved through
        `tasks`, see the module docstring). The files written."""
        done = []
        for p, name in self.joins:
            if p == born_in:
                continue
            if pid:
                name = "cgroup.procs"
            cg.write(p / name, pid)
            done.append(str(p / name))
        return done

    def oom_killed(self) -> bool:
        g = self.groups.get("memory")
        return bool(g and cg.read_keyed(g / "memory.oom_control").get("oom_kill", 0) > 0)

    def destroy(self) -> list[str]:
        """Kill what is left, rmdir every group (and the imagetool parents left empty); the groups."""
        first_error = None
        for p in self.paths:
            try:
                cg.kill_and_remove(Path(p))
            except OSError as e:
                first_error = first_error or e
            cg.remove_parent_if_empty(Path(p).parent)
        if first_error:
            raise first_error
        return self.paths
