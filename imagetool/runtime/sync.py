"""Typed messages between the container's init (child) and imagetool (parent) over a pipe.

Protocol: the child writes zero or more JSON lines `{"type": …, …}` on a close-on-exec pipe.
A successful `execve` closes the pipe, so EOF without an `error` message means "started".
Types: `error` (code: the exit code to report — 125 setup failure, 126 not executable,
127 not found — and message) and `timing` (name → seconds, for IMAGETOOL_TRACE_TIMING).
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
