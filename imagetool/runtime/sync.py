"""Typed messages between the container's init (child) and imagetool (parent) over a pipe.

Protocol: the child writes zero or more JSON lines `{"type": …, …}` on a close-on-exec pipe.
A successful `execve` closes the pipe, so EOF without an `error` message means "started".
Types: `step` (a step done: name, command, ms, end — for `--explain`, see explain.py),
`created` (the init is set up and waits for `start`), and `error` (code: the exit code to
report — 125 setup failure, 126 not executable, 127 not found — and message).
The other direction (imagetool → init) is a byte stream: `read_exact` reads its frames.
"""

from __future__ import annotations

import json
import os


def send(fd: int, type_: str, **fields) -> None:
    data = (json.dumps({"type": type_, **fields}) + "\n").encode()
    while data:
        n = os.write(fd, data)
        data = data[n:]


def read_to_eof(fd: int) -> bytes:
    """Everything the other end writes to `fd` until it closes it (or execs: the fds are CLOEXEC)."""
    chunks = []
    while True:
        try:
            b = os.read(fd, 65536)
        except InterruptedError:
            continue
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def receive_all(fd: int) -> list[dict]:
    """Every message until EOF (the child exec'd or exited)."""
    out = []
    for line in read_to_eof(fd).splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"type": "error", "code": 125, "message": line.decode(errors="replace")})
    return out


def read_exact(fd: int, n: int) -> bytes:
    """`n` bytes from `fd`, fewer only at EOF."""
    chunks, got = [], 0
    while got < n:
        try:
            b = os.read(fd, n - got)
        except InterruptedError:
            continue
        if not b:
            break
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


class Reader:
    """Messages one at a time, as the child writes them (`next()` blocks; None at EOF)."""

    def __init__(self, fd: int):
        self.fd = fd
        self._buf = b""
        self.eof = False

    def ready_steps(self) -> list[dict]:
        """The `step` messages already written, without blocking; stops before any other message
        (which `next()` returns later)."""
        import select

        while not self.eof and select.select([self.fd], [], [], 0)[0]:
            b = os.read(self.fd, 65536)
            if not b:
                self.eof = True
            self._buf += b
        out = []
        while b"\n" in self._buf:
            line, _, rest = self._buf.partition(b"\n")
            try:
                m = json.loads(line)
            except ValueError:
                break
            if m.get("type") != "step":
                break
            out.append(m)
            self._buf = rest
        return out

    def next(self) -> dict | None:
        while b"\n" not in self._buf:
            if self.eof:
                return None
            try:
                b = os.read(self.fd, 65536)
            except InterruptedError:
                continue
            if not b:
                self.eof = True
                if self._buf:   # a torn last line: report it as the error it must be
                    line, self._buf = self._buf, b""
                    return {"type": "error", "code": 125, "message": line.decode(errors="replace")}
                return None
            self._buf += b
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            return json.loads(line)
        except ValueError:
            return {"type": "error", "code": 125, "message": line.decode(errors="replace")}
