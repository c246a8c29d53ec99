"""cgroup v2: one group at `<cgroup2 mount>/imagetool/<id>` with memory, cpu and pids enabled.

The parent `imagetool/` sits at the root of the (namespace's) hierarchy: the "no internal
processes" rule would refuse controllers below imagetool's own group while imagetool runs in it.
"""

from __future__ import annotations

import os
from pathlib import Path

from imagetool.runtime import cgroups as cg

WANTED = ("cpu", "memory", "pids")


def _mkdir(path: Path) -> None:
    """mkdir (a separate function so tests can mimic cgroupfs creating the control files)."""
    os.mkdir(path)


class V2Cgroup:
    version = 2

    def __init__(self, root: Path, container_id: str):
        self.root = Path(root)
        self.parent = self.root / cg.PARENT
        self.group = self.parent / container_id

    @property
    def paths(self) -> list[str]:
        return [str(self.group)]

    def _enable(self, where: Path) -> None:
        available = set((where / "cgroup.controllers").read_text().split())
        enabled = set((where / "cgroup.subtree_control").read_text().split())
        missing = [c for c in WANTED if c in available and c not in enabled]
        if missing:
            cg.write(where / "cgroup.subtree_control", " ".join("+" + c for c in missing))

    def create(self) -> None:
        self._enable(self.root)
        for attempt in range(3):
            try:
                _mkdir(self.parent)
            except FileExistsError:
                pass
            try:
                self._enable(self.parent)
                _mkdir(self.group)
                return
            except FileNotFoundError:
                if attempt == 2:  # another imagetool removed the empty parent meanwhile: retry
                    raise

    def apply(self, resources: dict) -> None:
        from imagetool.errors import ContainerError

        g = self.group
        controllers = set((g / "cgroup.controllers").read_text().split()) if (g / "cgroup.controllers").exists() else set()

        def need(c, option):
            if c not in controllers:
                raise ContainerError(f"{option} needs the cgroup v2 {c} controller, which is not enabled here")

        mem = resources.get("memory") or {}
        if mem.get("limit") is not None:
            need("memory", "--memory")
            cg.write(g / "memory.max", mem["limit"])
            swap = mem.get("swap")
            if swap is not None and (g / "memory.swap.max").exists():
                cg.write(g / "memory.swap.max", "max" if swap < 0 else max(swap - mem["limit"], 0))
        cpu = resources.get("cpu") or {}
        if cpu.get("quota"):
            need("cpu", "--cpus")
            cg.write(g / "cpu.max", f"{cpu['quota']} {cpu.get('period', 100000)}")
        pids = resources.get("pids") or {}
        if pids.get("limit"):
            need("pids", "--pids-limit")
            cg.write(g / "pids.max", pids["limit"])

    def enter(self, pid: int = 0) -> None:
        cg.write(self.group / "cgroup.procs", pid)

    def oom_killed(self) -> bool:
        return cg.read_keyed(self.group / "memory.events").get("oom_kill", 0) > 0

    def destroy(self) -> None:
        try:
            cg.kill_and_remove(self.group, use_kill_file=True)
        finally:
            cg.remove_parent_if_empty(self.parent)
