"""Reading containers' records (`containers/<id>/state.json`): the read side of containers.py.

`ps`, `inspect` and every lookup by id or name need only this: a scan of the containers directory
and a JSON read per container. It imports no runtime, network or image code, so those commands do
not load the modules that `run` needs (~12 ms). A container whose imagetool died while it was
created or running is handed to the caller's `reconcile` (containers.reconcile: kill what is left,
mark it exited), the only step here that writes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from imagetool.errors import ImagetoolError

TYPE_CHECKING = False  # typing is not imported at run time: annotations only
if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class ContainerInfo:
    """One row of `ps` (docker's columns); `to_dict` is its --format json."""

    id: str
    name: str
    image: str
    command: str
    status: str
    exit_code: int | None
    created: str
    status_text: str = ""   # docker's: "Up 3 seconds", "Exited (143) 2 seconds ago"
    created_ago: str = ""   # "5 minutes ago"
    ports: str = ""         # docker's PORTS column: "127.0.0.1:8080->80/tcp"

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "image": self.image, "command": self.command,
                "status": self.status, "exit_code": self.exit_code, "created": self.created, "ports": self.ports}

    def __repr__(self) -> str:   # (written: rows are compared through to_dict(), never printed but to debug)
        return f"ContainerInfo({self.id[:12]}, {self.name!r}, {self.status})"


def read_state(cdir: Path) -> dict | None:
    """The container's state.json, or None when it is missing, unreadable or not a JSON object."""
    try:
        with open(Path(cdir) / "state.json") as f:
            doc = json.load(f)
        return doc if isinstance(doc, dict) else None
    except (OSError, ValueError):
        return None


def all_states(store) -> list[tuple[Path, dict]]:
    """(directory, state) of every container with a readable record, by directory name."""
    out = []
    try:
        entries = sorted(os.scandir(store.containers_dir), key=lambda e: e.name)
    except FileNotFoundError:
        return out
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            st = read_state(Path(e.path))
            if st is not None:
                out.append((Path(e.path), st))
    return out


def owner_alive(state: dict) -> bool:
    """Whether the imagetool process that owns the container (its `run` or monitor) still lives."""
    pid = state.get("owner_pid")
    if not pid:
        return False
    from imagetool.runtime.supervise import proc_start

    return proc_start(pid) == state.get("owner_start")


def is_orphan(state: dict) -> bool:
    """Created or running by its record, but its owner has died (SIGKILL): reconcile it first."""
    return state.get("status") in ("created", "running") and not owner_alive(state)


def find(store, id_or_name: str) -> tuple[Path, dict]:
    """(container directory, state) of a container named by id, name or a unique id prefix (≥ 3)."""
    states = all_states(store)
    for cdir, st in states:
        if st.get("id") == id_or_name or st.get("name") == id_or_name:
            return cdir, st
    matches = [(c, s) for c, s in states if len(id_or_name) >= 3 and s.get("id", "").startswith(id_or_name)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ImagetoolError(f"container id prefix {id_or_name!r} is ambiguous")
    raise ImagetoolError(f"no such container: {id_or_name}", hint="list them with `imagetool ps -a`")


def info(state: dict, cdir: Path | None = None) -> ContainerInfo:
    """The `ps` row of one container record."""
    from imagetool import ages, network

    status = state.get("status", "unknown")
    if cdir is not None and state.get("healthcheck") and status == "running":
        from imagetool import health

        state = {**state, "health_status": (health.read(cdir) or {}).get("Status")}
    if status == "exited" and state.get("exit_code") is not None:
        status = f"exited ({state['exit_code']})"
    return ContainerInfo(state.get("id", ""), state.get("name", ""), state.get("image", ""),
                         state.get("command", ""), status, state.get("exit_code"), state.get("created", ""),
                         ages.status_text(state), ages.ago(state.get("created")),
                         network.ports_text(cdir) if cdir is not None else "")


def list_containers(store, all_: bool, reconcile: Callable[[Path, dict], dict | None]) -> list[ContainerInfo]:
    """Running containers (all of them with all_), oldest first. An orphan (is_orphan) goes through
    `reconcile` first, which returns its new state or None when it is gone (--rm)."""
    rows = []
    for cdir, state in all_states(store):
        if is_orphan(state):
            state = reconcile(cdir, state)
            if state is None:
                continue
        if all_ or state.get("status") == "running":
            rows.append(info(state, cdir))
    rows.sort(key=lambda r: r.created)
    return rows
