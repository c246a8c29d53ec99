"""What a container of every backend is on imagetool's side once created: supervised until deleted.

A `Supervised` is a child process (the built-in runtime's init, or runc's helper) that waits for
the start byte on a pipe, reports its steps and errors on the sync pipe (sync.py), and holds the
container's stdio on pipes imagetool copies (or a pty master it relays). start(), state(),
kill(), wait(), delete() are the OCI operations on it; each backend adds its `_cleanup()` (the
cgroup for the built-in runtime, `runc delete` for runc). Signals that arrive between create and
wait are held and forwarded once the container runs.
"""

from __future__ import annotations

import os
import signal
import time

from imagetool.errors import ContainerError
from imagetool.runtime import console, stdio, sync

FORWARD = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def exit_code(status: int) -> int:
    """A wait status as a shell would report it: the exit status, or 128 + the signal number."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def reap(pid: int) -> int:
    """Wait for child `pid` to end; its exit code as exit_code() gives it."""
    while True:
        try:
            return exit_code(os.waitpid(pid, 0)[1])
        except InterruptedError:
            continue


def proc_start(pid: int) -> str | None:
    """The start time of `pid` (field 22 of /proc/PID/stat), to tell a live process from a recycled
    PID; None when it is gone or a zombie (dead, its reaper has not reaped it yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else fields[19]
    except (OSError, IndexError):
        return None


def hold_signals(pending: list) -> dict:
    """Until the container runs, FORWARD signals are appended to `pending`; the saved handlers."""
    return {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in FORWARD}


def restore_signals(saved: dict) -> None:
    for s, h in saved.items():
        signal.signal(s, h if h is not None else signal.SIG_DFL)


def kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def receive_until(reader: sync.Reader, kind: str | None, narrator) -> None:
    """Hand the init's `step` messages to the narrator until `kind` (None: EOF, i.e. exec);
    an `error` message (or EOF before `kind`) raises."""
    from imagetool.errors import CommandNotExecutable, CommandNotFound

    while True:
        m = reader.next()
        if m is None:
            if kind is None:
                return
            raise ContainerError("the container's init exited before it was set up")
        t = m.get("type")
        if t == "step":
            narrator.emit_message(m)
        elif t == kind:
            return
        elif t == "error":
            cls = {126: CommandNotExecutable, 127: CommandNotFound}.get(m.get("code"), ContainerError)
            raise cls(m.get("message", "the container failed to start"))


class Supervised:
    """What a container of every backend is on imagetool's side: a child (the init, or runc)
    waiting for the start byte on `go_fd`, its messages on `reader`, its stdio on `pipes` (or a
    pty `master`). start(), state(), kill(), wait(), delete(); `_cleanup()` is the backend's."""

    def __init__(self, container_id, pid, io, narrator, reader, go_fd, pipes, master, saved, pending):
        self.id = container_id
        self.pid = pid
        self.io = io
        self.narrator = narrator
        self._reader = reader
        self._go_fd = go_fd
        self._pipes = pipes
        self._master = master
        self._saved = saved        # signal handlers to restore once the container is gone
        self._pending = pending    # signals that arrived before wait(): forwarded then
        self.status = "created"
        self._code: int | None = None
        self._deleted = False

    def start(self) -> None:
        """Let it exec; returns once it did. Raises CommandNotFound (127), CommandNotExecutable
        (126) or ContainerError (125) with the init's message."""
        started = time.perf_counter()
        try:
            os.write(self._go_fd, b"S")
        except BrokenPipeError:
            pass   # it died: its error (or EOF) follows
        stdio._close(self._go_fd)
        self._go_fd = None
        try:
            receive_until(self._reader, None, self.narrator)
        finally:
            stdio._close(self._reader.fd)
        self.status = "running"
        self.narrator.report("start", f"# running: host pid {self.pid}", started)

    def state(self) -> dict:
        """The OCI state: ociVersion, id, status (created, running, stopped), pid."""
        return {"ociVersion": "1.0.2", "id": self.id, "status": self.status, "pid": self.pid}

    def kill(self, sig: int = signal.SIGTERM) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, sink=None, forward: tuple = FORWARD) -> int:
        """Copy stdio (or relay the pty) and forward the `forward` signals until it exits; docker's
        exit code. With `sink` the output goes to `sink(stream, data)` instead (stdio.drain: the
        detached run's log). Signals not in `forward` get back the handlers they had before create."""
        if self._code is not None:
            return self._code
        restore_signals({s: h for s, h in self._saved.items() if s not in forward})
        for s in forward:
            signal.signal(s, lambda signum, frame: self.kill(signum))
        for s in self._pending:
            if s in forward:
                self.kill(s)
            else:
                signal.raise_signal(s)
        started = time.perf_counter()
        try:
            if self._master is not None:
                master, self._master = self._master, None
                console.relay(master, self.io.interactive)
            elif self._pipes is not None:
                pipes, self._pipes = self._pipes, None
                if sink is not None:
                    stdio.drain(pipes, sink)
                else:
                    stdio.copy(pipes)
            while True:
                try:
                    _, status = os.waitpid(self.pid, 0)
                    break
                except InterruptedError:
                    continue
        finally:
            restore_signals(self._saved)
        self._code = exit_code(status)
        self.status = "stopped"
        self.narrator.report("wait", f"wait {self.pid}  # exit code {self._code}", started)
        return self._code

    def oom_killed(self) -> bool:
        return False

    def delete(self) -> None:
        """Kill what is left and remove what the backend made (idempotent; call it in a finally)."""
        if self._deleted:
            return
        self._deleted = True
        if self._code is None:
            kill_and_reap(self.pid)
            restore_signals(self._saved)
        for fd in (self._go_fd, self._master):
            if fd is not None:
                stdio._close(fd)
        if self._pipes is not None:
            self._pipes.close_parent_ends()
        self._cleanup()

    def _cleanup(self) -> None:
        raise NotImplementedError
