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
        self.unified_group: Path | None = self.group   # where the init can be cloned into (CLONE_INTO_CGROUP)

    @property
    def paths(self) -> list[str]:
        return [str(self.group)]

    def _enable(self, where: Path) -> None:
        available = set((where / "cgroup.controllers").read_text().split())
        enabled = set((where / "cgroup.subtree_control").read_text().split())
        missing = [c for c in WANTED if c in available and c not in enabled]
        if missing:
            cg.write(where / "cgroup.subtree_control", " ".join("+" + c for c in missing))

    def create(self) -> list[str]:
        """mkdir imagetool/<id> with cpu, memory and pids enabled for it; the directories made."""
        self._enable(self.root)
        for attempt in range(3):
            made = []
            try:
                _mkdir(self.parent)
                made.append(str(self.parent))
            except FileExistsError:
                pass
            try:
                self._enable(self.parent)
                _mkdir(self.group)
                return made + [str(self.group)]
            except FileNotFoundError:
                if attempt == 2:  # another imagetool removed the empty parent meanwhile: retry
                    raise

    def apply(self, resources: dict) -> list[tuple[str, str]]:
        """Write the spec's linux.resources; the (file, value) pairs written, in order (the device
        allow-list, when runtime/devices.py is present, is a BPF program attached to the group)."""
        from imagetool.errors import ContainerError

        g = self.group
        writes: list[tuple[str, str]] = []

        def w(path: Path, value) -> None:
            cg.write(path, value)
            writes.append((str(path), str(value)))

        controllers = set((g / "cgroup.controllers").read_text().split()) if (g / "cgroup.controllers").exists() else set()

        def need(c, option):
            if c not in controllers:
                raise ContainerError(f"{option} needs the cgroup v2 {c} controller, which is not enabled here")

        mem = resources.get("memory") or {}
        if mem.get("limit") is not None:
            need("memory", "--memory")
            w(g / "memory.max", mem["limit"])
            swap = mem.get("swap")
            if swap is not None and (g / "memory.swap.max").exists():
                w(g / "memory.swap.max", "max" if swap < 0 else max(swap - mem["limit"], 0))
        cpu = resources.get("cpu") or {}
        if cpu.get("quota"):
            need("cpu", "--cpus")
            w(g / "cpu.max", f"{cpu['quota']} {cpu.get('period', 100000)}")
        pids = resources.get("pids") or {}
        if pids.get("limit"):
            need("pids", "--pids-limit")
            w(g / "pids.max", pids["limit"])
        if resources.get("devices"):
            try:
                from imagetool.runtime import devices
            except ImportError:
                devices = None
            if devices is not None and hasattr(devices, "attach"):
                devices.attach(str(g), resources["devices"])
                writes.append((str(g), "# BPF_PROG_TYPE_CGROUP_DEVICE program attached (device allow-list)"))
        return writes

    def enter(self, pid: int = 0, born_in: Path | None = None) -> list[str]:
        """Move `pid` (0: the caller) into the group; the file written. Nothing when `born_in` is
        the group (the caller was cloned into it)."""
        if born_in == self.group:
            return []
        cg.write(self.group / "cgroup.procs", pid)
        return [str(self.group / "cgroup.procs")]

    def oom_killed(self) -> bool:
        return cg.read_keyed(self.group / "memory.events").get("oom_kill", 0) > 0

    def destroy(self) -> list[str]:
        """Kill what is left (cgroup.kill), rmdir the group and the parent when empty; the group."""
        try:
            cg.kill_and_remove(self.group, use_kill_file=True)
        finally:
            cg.remove_parent_if_empty(self.parent)
        return self.paths
