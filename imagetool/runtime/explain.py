"""The narrator of `run --explain`: every runtime step reports itself here once, as it happens.

Contract: a step does its one job, then makes ONE call, `narrator.report(name, command, started)`
(`started` is the `time.perf_counter()` taken when the step began; CLOCK_MONOTONIC is shared by
every process, so the init's times line up with imagetool's). `command` is the shell a person
would type for that step, with the real values (paths, bytes, flags, pids); several lines when
the step writes several files. A step never asks whether it is being explained: without
`--explain` the narrator is `SILENT`, whose report does nothing.

The container's init runs in another process: its narrator is a `Forwarder` that sends each step
as a `step` message over the init's sync pipe (sync.py); imagetool's side hands every message it
reads to `Narrator.emit_message`; before printing one of its own steps the Narrator first prints
the init's steps already waiting in the pipe (`sources`), so the steps appear on stderr in the
order they completed.

Output (stderr), one block per step:

    imagetool: explain: [init]   12.41 ms  mount /proc
        mount -t proc -o nosuid,noexec,nodev proc /var/lib/imagetool/containers/ID/rootfs/proc
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from imagetool.errors import printable


@dataclass(frozen=True, slots=True, eq=False, repr=False, init=False)
class Step:
    """One step as reported: who did it ("imagetool" or "init"), its name, its shell, its time.
    Printed by the narrator, never compared: no generated __eq__/__hash__ (generated methods are
    compiled at every `run`); __init__ and __repr__ written out as dataclass would generate them."""

    where: str
    name: str
    command: str
    ms: float      # how long the step took
    at_ms: float   # when it ended, since the narrator was made

    def __init__(self, where: str, name: str, command: str, ms: float, at_ms: float) -> None:
        _set = object.__setattr__   # frozen: as the generated __init__ does
        _set(self, "where", where)
        _set(self, "name", name)
        _set(self, "command", command)
        _set(self, "ms", ms)
        _set(self, "at_ms", at_ms)

    def __repr__(self) -> str:
        return (f"Step(where={self.where!r}, name={self.name!r}, command={self.command!r}, "
                f"ms={self.ms!r}, at_ms={self.at_ms!r})")


class Narrator:
    """Prints each step on `fd` (stderr) as it is reported, and keeps them (`steps`) for callers."""

    def __init__(self, fd: int | None = 2, t0: float | None = None, on_step=None):
        """`fd` None prints nothing; `on_step(step)` is called for each step too (IMAGETOOL_TRACE_TIMING)."""
        self.fd = fd
        self.t0 = time.perf_counter() if t0 is None else t0
        self.on_step = on_step
        self.steps: list[Step] = []
        self.sources: list = []   # callables returning the init's `step` messages already sent

    def report(self, name: str, command: str, started: float, where: str = "imagetool") -> None:
        now = time.perf_counter()
        for source in self.sources:   # the init's steps done meanwhile come first, in order
            for message in source():
                self.emit_message(message)
        self.emit(Step(where, name, command, 1000 * (now - started), 1000 * (now - self.t0)))

    def emit(self, step: Step) -> None:
        self.steps.append(step)
        if self.on_step is not None:
            self.on_step(step)
        if self.fd is None:
            return
        text = f"imagetool: explain: [{step.where}] {step.at_ms:9.2f} ms  {printable(step.name)} ({step.ms:.2f} ms)\n"
        text += "".join(f"    {printable(line, keep_newlines=True)}\n"   # tabs stay; image text is inert
                        for line in step.command.splitlines())
        data = text.encode(errors="replace")
        while data:
            data = data[os.write(self.fd, data):]

    def emit_message(self, message: dict) -> None:
        """A `step` message from the init (see Forwarder)."""
        ms = float(message.get("ms", 0.0))
        end = float(message.get("end", time.perf_counter()))
        self.emit(Step("init", str(message.get("name", "?")), str(message.get("command", "")), ms,
                       1000 * (end - self.t0)))


class _Silent:
    """The narrator when nothing is explained: report() does nothing."""

    steps: list = []
    sources: list = []

    def report(self, name: str, command: str, started: float, where: str = "imagetool") -> None:
        pass

    def emit_message(self, message: dict) -> None:
        pass


SILENT = _Silent()


class Forwarder:
    """The init's narrator: each report becomes a `step` message on the sync pipe."""

    def __init__(self, sync_fd: int):
        self.sync_fd = sync_fd

    def report(self, name: str, command: str, started: float, where: str = "init") -> None:
        from imagetool.runtime import sync

        now = time.perf_counter()
        sync.send(self.sync_fd, "step", name=name, command=command, ms=1000 * (now - started), end=now)
