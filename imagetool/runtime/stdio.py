"""The container's stdio on imagetool's side: pipes (or a pty) it copies, never its own fds.

Issue 14 item 8: a container given imagetool's stdout/stderr file descriptors can fchmod/fchown
the host file behind them (`>> host.log`). Like conmon and the shims, the container gets pipes
(`Pipes`), or with -t a pty from its own devpts (init.open_console), and imagetool copies:
`copy()` moves bytes from the pipes to fds 1 and 2 (os.splice where the kernel allows it, which
keeps the data out of Python) and, with -i, from fd 0 to the container's stdin, until every
output pipe reaches EOF (the container's processes are all gone). With -t, console.py relays
the pty instead.
"""

from __future__ import annotations

import errno
import os
import select
from dataclasses import dataclass

CHUNK = 1 << 16


@dataclass(frozen=True, slots=True, eq=False, repr=False, init=False)
class Pipes:
    """Both ends of the container's stdio pipes: the child's ends become its fds 0-2. Open fds, not a
    value: compared by identity (no generated __eq__/__hash__/__repr__ to compile at every run;
    __init__ written out as dataclass would generate it)."""

    stdin_r: int | None
    stdin_w: int | None
    stdout_r: int
    stdout_w: int
    stderr_r: int
    stderr_w: int

    def __init__(self, stdin_r: int | None, stdin_w: int | None, stdout_r: int, stdout_w: int,
                 stderr_r: int, stderr_w: int) -> None:
        _set = object.__setattr__   # frozen: as the generated __init__ does
        _set(self, "stdin_r", stdin_r)
        _set(self, "stdin_w", stdin_w)
        _set(self, "stdout_r", stdout_r)
        _set(self, "stdout_w", stdout_w)
        _set(self, "stderr_r", stderr_r)
        _set(self, "stderr_w", stderr_w)

    @classmethod
    def make(cls, interactive: bool) -> "Pipes":
        fds: list[int] = []
        try:
            for _ in range(3 if interactive else 2):
                fds += os.pipe2(os.O_CLOEXEC)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        if interactive:
            return cls(fds[4], fds[5], fds[0], fds[1], fds[2], fds[3])
        return cls(None, None, fds[0], fds[1], fds[2], fds[3])

    def __repr__(self) -> str:
        return (f"Pipes(stdin {self.stdin_r}->{self.stdin_w}, stdout {self.stdout_w}->{self.stdout_r}, "
                f"stderr {self.stderr_w}->{self.stderr_r})")

    def child_ends(self) -> tuple:
        return (self.stdin_r, self.stdout_w, self.stderr_w)

    def close_child_ends(self) -> None:
        for fd in self.child_ends():
            if fd is not None:
                os.close(fd)

    def close_parent_ends(self) -> None:
        for fd in (self.stdin_w, self.stdout_r, self.stderr_r):
            if fd is not None:
                _close(fd)


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


class _Mover:
    """src → dst, by splice while the kernel takes it, else read/write."""

    def __init__(self, src: int, dst: int):
        self.src, self.dst = src, dst
        self.splice = hasattr(os, "splice")

    def move(self) -> int:
        if self.splice:
            try:
                return os.splice(self.src, self.dst, CHUNK)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOSYS):
                    raise
                self.splice = False   # e.g. a tty or an O_APPEND file: copy through Python
        data = os.read(self.src, CHUNK)
        if data:
            _write_all(self.dst, data)
        return len(data)


def copy(pipes: Pipes, out_fd: int = 1, err_fd: int = 2, in_fd: int = 0) -> None:
    """Copy until the container's stdout and stderr pipes both reach EOF; closes imagetool's ends.

    With pipes.stdin_w, `in_fd` is copied to the container's stdin (its EOF closes that pipe);
    a container that stops reading never blocks the output copy. A reader of imagetool's own
    output that went away (EPIPE) only stops that copy: the container still runs to its end."""
    movers = {pipes.stdout_r: _Mover(pipes.stdout_r, out_fd), pipes.stderr_r: _Mover(pipes.stderr_r, err_fd)}
    dead: set[int] = set()
    stdin_w = pipes.stdin_w
    src_in = in_fd if stdin_w is not None else None
    pending = b""
    if stdin_w is not None:
        os.set_blocking(stdin_w, False)
    try:
        while movers:
            rl = list(movers)
            wl = []
            if stdin_w is not None:
                if pending:
                    wl.append(stdin_w)
                elif src_in is not None:
                    rl.append(src_in)
            r, w, _ = select.select(rl, wl, [])
            for fd in r:
                if fd == src_in:
                    try:
                        pending = os.read(fd, CHUNK)
                    except OSError:
                        pending = b""
                    if not pending:
                        src_in = None
                        _close(stdin_w)
                        stdin_w = None
                    continue
                m = movers[fd]
                try:
                    n = m.move() if fd not in dead else len(os.read(fd, CHUNK))
                except BrokenPipeError:
                    dead.add(fd)   # nobody reads our output any more: drain and discard
                    n = 1
                if n == 0:
                    _close(fd)
                    del movers[fd]
            if w and stdin_w is not None:
                try:
                    pending = pending[os.write(stdin_w, pending):]
                except BlockingIOError:
                    pass
                except OSError:   # the container closed its stdin
                    pending, src_in = b"", None
                    _close(stdin_w)
                    stdin_w = None
    finally:
        for fd in movers:
            _close(fd)
        if stdin_w is not None:
            _close(stdin_w)


def drain(pipes: Pipes, sink) -> None:
    """Hand everything the container writes to `sink(stream, data)` ("stdout" or "stderr", bytes, in
    the order it arrives) until both output pipes reach EOF; closes imagetool's ends. The detached
    run's monitor logs this way (jsonlog.py): the container never holds a file of the host."""
    names = {pipes.stdout_r: "stdout", pipes.stderr_r: "stderr"}
    try:
        while names:
            for fd in select.select(list(names), [], [])[0]:
                data = os.read(fd, CHUNK)
                if data:
                    sink(names[fd], data)
                else:
                    _close(fd)
                    del names[fd]
    finally:
        for fd in names:
            _close(fd)
