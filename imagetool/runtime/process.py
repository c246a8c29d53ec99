"""The parent side of a container: fork into a new PID namespace, wait, forward signals, relay a tty.

`start()` forks the init (init.py) as PID 1 of a new PID namespace and waits for it to exec or
fail; `Container.wait()` forwards SIGINT/SIGTERM/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 to it (and
copies bytes and window size with -t) until it exits, and returns docker's exit code
(the status, or 128+signal).
"""

from __future__ import annotations

import os
import signal
import time

from imagetool.errors import ContainerError
from imagetool.runtime import init, sync
from imagetool.runtime import syscalls as sc

FORWARD = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def exit_code(status: int) -> int:
    """A wait status as a shell would report it: the exit status, or 128 + the signal number."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class Container:
    """A started container process (host PID `pid`)."""

    def __init__(self, pid: int, master: int | None, pending: list[int], timing: dict, saved: dict,
                 interactive: bool = False):
        self.pid = pid
        self.interactive = interactive  # with a tty: relay stdin (docker -i), else output only
        self._saved = saved
        self.master = master
        self.timing = timing
        self._pending = pending
        self._status: int | None = None

    def _forward(self, signum, frame=None) -> None:
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def wait(self) -> int:
        """Forward signals until the container's PID 1 exits; its exit code (128+signal)."""
        for s in FORWARD:
            signal.signal(s, self._forward)
        for s in self._pending:
            self._forward(s)
        try:
            if self.master is not None:
                self._relay_tty()
            while self._status is None:
                _, status = os.waitpid(self.pid, 0)
                self._status = status
        finally:
            _restore(self._saved)
        return exit_code(self._status)

    def _relay_tty(self) -> None:
        import fcntl
        import select
        import termios
        import tty

        stdin = 0
        is_tty = os.isatty(stdin)
        raw = self.interactive and is_tty  # keystrokes go to the container only with -i
        saved = termios.tcgetattr(stdin) if raw else None

        def winch(signum=None, frame=None):
            if is_tty:
                try:
                    size = fcntl.ioctl(stdin, termios.TIOCGWINSZ, b"\0" * 8)
                    fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)
                except OSError:
                    pass

        old_winch = signal.signal(signal.SIGWINCH, winch)
        winch()
        try:
            if raw:
                tty.setraw(stdin)
            fds = [self.master, stdin] if self.interactive else [self.master]
            while True:
                try:
                    ready, _, _ = select.select(fds, [], [])
                except InterruptedError:
                    continue
                if self.master in ready:
                    try:
                        data = os.read(self.master, 65536)
                    except OSError:  # EIO: every slave fd is closed, the container is gone
                        data = b""
                    if not data:
                        break
                    _write_all(1, data)
                if stdin in ready:
                    try:
                        data = os.read(stdin, 65536)
                    except OSError:
                        data = b""
                    if data:
                        _write_all(self.master, data)
                    else:
                        fds.remove(stdin)  # stdin closed: keep relaying output
                        try:
                            _write_all(self.master, b"\x04")
                        except OSError:
                            pass
        finally:
            if saved is not None:
                termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
            signal.signal(signal.SIGWINCH, old_winch)
            os.close(self.master)
            self.master = None


def _write_all(fd: int, data: bytes) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


def start(spec: dict, ctx_kwargs: dict, timing: bool = False) -> Container:
    """Fork the container's init as PID 1 of a new PID namespace; return once it exec'd.

    Raises ContainerError (125/126/127) with the child's own message when setup or exec failed.
    Signals that arrive while the container starts are forwarded once it runs.
    (`prefork(...).start(...)` in one go.)
    """
    pending = prefork(ctx_kwargs.get("cgroup"), bool(spec["process"].get("terminal")), timing)
    return pending.start(spec, ctx_kwargs)


def prefork(cgroup, terminal: bool, timing: bool = False) -> "Pending":
    """Fork the container's init before its spec exists: PID 1 of a new PID namespace that sets
    itself up (signals, session, parent-death signal) and joins `cgroup` (created, not yet limited)
    while the caller still prepares the image, the spec and the rootfs; then `Pending.start()`
    sends it the spec, or `Pending.abort()` kills it. Joining a cgroup is the slow part of a
    start (the kernel's first cgroup attach waits for an RCU grace period), and it overlaps.

    Call it before starting threads. `terminal` must equal the spec's process.terminal.
    """
    master = slave = None
    fds: list[int] = []
    if terminal:
        master, slave = os.openpty()
        fds += [master, slave]
    r, w = os.pipe2(os.O_CLOEXEC)            # child -> parent: sync messages (sync.py)
    config_r, config_w = os.pipe2(os.O_CLOEXEC)  # parent -> child: the spec
    fds += [r, w, config_r, config_w]
    t_fork = time.perf_counter()
    try:
        pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        try:
            sc.unshare(sc.CLONE_NEWPID)
            pid = os.fork()
            if pid == 0:  # the child: never returns
                try:
                    os.close(r)
                    os.close(config_w)
                    if master is not None:
                        os.close(master)
                    ctx = init.ChildContext(rootfs=None, sync_fd=w, cgroup=cgroup, tty_slave=slave, timing=timing)
                    init.child_main_ahead(config_r, ctx)
                finally:
                    os._exit(125)
        finally:
            if os.getpid() != 1:
                sc.setns(pidns, sc.CLONE_NEWPID)  # imagetool's later children stay in the host's PID namespace
                os.close(pidns)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    os.close(w)
    os.close(config_r)
    if slave is not None:
        os.close(slave)
    return Pending(pid, r, config_w, master, t_fork)


class Pending:
    """An init forked by `prefork`, waiting for its spec: `start()` it or `abort()` it, once."""

    def __init__(self, pid: int, sync_r: int, config_w: int, master: int | None, t_fork: float):
        self.pid = pid
        self._r = sync_r
        self._config_w = config_w
        self.master = master
        self.t_fork = t_fork
        self.done = False

    def start(self, spec: dict, ctx_kwargs: dict) -> Container:
        """Send the spec (and ctx_kwargs' rootfs, keep_stdin); return once the init exec'd.

        Raises ContainerError (125/126/127) with the child's own message when setup or exec failed.
        Signals that arrive while the container starts are forwarded once it runs.
        """
        import dataclasses
        import json

        if self.done:
            raise ContainerError("internal error: this init was already started or aborted")
        if bool(spec["process"].get("terminal")) != (self.master is not None):
            self.abort()
            raise ContainerError("internal error: the spec's terminal setting differs from prefork's")
        self.done = True
        pending: list[int] = []
        saved = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in FORWARD}
        try:
            rootfs = ctx_kwargs["rootfs"]
            config = {"spec": spec, "keep_stdin": bool(ctx_kwargs.get("keep_stdin")),
                      "rootfs": {f.name: getattr(rootfs, f.name) for f in dataclasses.fields(rootfs)}}
            data = json.dumps(config).encode()
            try:
                while data:
                    data = data[os.write(self._config_w, data):]
            except BrokenPipeError:
                pass  # the init failed before reading: its error message follows
            finally:
                os.close(self._config_w)
            messages = sync.receive_all(self._r)
        except BaseException:
            self._kill()
            _restore(saved)
            if self.master is not None:
                os.close(self.master)
            raise
        finally:
            os.close(self._r)
        pid, master = self.pid, self.master
        marks = {"fork": self.t_fork}
        for m in messages:
            if m.get("type") == "timing":
                marks.update(m.get("marks", {}))
        errors = [m for m in messages if m.get("type") == "error"]
        if errors:
            _, status = os.waitpid(pid, 0)
            _restore(saved)
            if master is not None:
                os.close(master)
            err = errors[0]
            from imagetool.errors import CommandNotExecutable, CommandNotFound

            cls = {126: CommandNotExecutable, 127: CommandNotFound}.get(err.get("code"), ContainerError)
            raise cls(err.get("message", "the container failed to start"))
        marks["exec"] = time.perf_counter()
        return Container(pid, master, pending, marks, saved, interactive=bool(ctx_kwargs.get("keep_stdin")))

    def abort(self) -> None:
        """Kill the waiting init and reap it (no-op after `start()`)."""
        if self.done:
            return
        self.done = True
        os.close(self._config_w)
        os.close(self._r)
        if self.master is not None:
            os.close(self.master)
        self._kill()

    def _kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def _restore(saved: dict) -> None:
    for s, h in saved.items():
        signal.signal(s, h if h is not None else signal.SIG_DFL)
