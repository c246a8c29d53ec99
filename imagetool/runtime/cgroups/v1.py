"""cgroup v1: one group per controller hierarchy (memory, cpu, cpuacct, pids, devices).

Groups live at `<hierarchy mount>/<imagetool's own cgroup there>/imagetool/<id>`, so limits the
host placed on imagetool itself still hold (v1 has no "no internal processes" rule).
"""

from __future__ import annotations

import os
from pathlib import Path

from imagetool.runtime import cgroups as cg

CONTROLLERS = ("memory", "cpu", "pids", "devices")


class V1Cgroup:
    version = 1

    def __init__(self, groups: dict[str, Path]):
        """`groups`: {controller: group directory}; controllers sharing a hierarchy share a path."""
        self.groups = groups

    @classmethod
    def for_host(cls, container_id: str, mountinfo: str | None = None, proc_cgroup: str | None = None):
        mounts, _ = cg.mountinfo_cgroups(mountinfo)
        own = cg.own_cgroups(proc_cgroup)
        groups = {}
        for c in CONTROLLERS:
            if c in mounts:
                base = own.get(c, "/").lstrip("/")
                groups[c] = Path(mounts[c], base, cg.PARENT, container_id)
        return cls(groups)

    @property
    def paths(self) -> list[str]:
        return sorted({str(p) for p in self.groups.values()})

    def create(self) -> None:
        for p in self.paths:
            try:
                os.makedirs(p)
            except FileExistsError:
                pass

    def apply(self, resources: dict) -> None:
        """Write the spec's linux.resources (memory, memory+swap, cpu quota, pids, device rules)."""
        mem = resources.get("memory") or {}
        if mem.get("limit") is not None:
            g = self._need("memory", "--memory")
            cg.write(g / "memory.limit_in_bytes", mem["limit"])
            swap = mem.get("swap")
            if swap is not None and (g / "memory.memsw.limit_in_bytes").exists():
                cg.write(g / "memory.memsw.limit_in_bytes", -1 if swap < 0 else max(swap, mem["limit"]))
        cpu = resources.get("cpu") or {}
        if cpu.get("quota"):
            g = self._need("cpu", "--cpus")
            cg.write(g / "cpu.cfs_period_us", cpu.get("period", 100000))
            cg.write(g / "cpu.cfs_quota_us", cpu["quota"])
        pids = resources.get("pids") or {}
        if pids.get("limit"):
            g = self._need("pids", "--pids-limit")
            cg.write(g / "pids.max", pids["limit"])
        if resources.get("devices") and "devices" in self.groups:
            g = self.groups["devices"]
            for d in resources["devices"]:
                rule = f"{d.get('type', 'a')} {d.get('major', '*')}:{d.get('minor', '*')} {d.get('access', 'rwm')}"
                try:
                    cg.write(g / ("devices.allow" if d.get("allow") else "devices.deny"), rule)
                except OSError:
                    if not d.get("allow"):
                        raise  # an allow the parent group refuses only narrows access

    def _need(self, controller: str, option: str) -> Path:
        from imagetool.errors import ContainerError

        if controller not in self.groups:
            raise ContainerError(f"{option} needs the cgroup v1 {controller} controller, which is not mounted")
        return self.groups[controller]

    def enter(self, pid: int = 0) -> None:
        """Move `pid` (0: the caller) into every group."""
        for p in self.paths:
            cg.write(Path(p) / "cgroup.procs", pid)

    def oom_killed(self) -> bool:
        g = self.groups.get("memory")
        return bool(g and cg.read_keyed(g / "memory.oom_control").get("oom_kill", 0) > 0)

    def destroy(self) -> None:
        first_error = None
        for p in self.paths:
            try:
                cg.kill_and_remove(Path(p))
            except OSError as e:
                first_error = first_error or e
            cg.remove_parent_if_empty(Path(p).parent)
        if first_error:
            raise first_error
