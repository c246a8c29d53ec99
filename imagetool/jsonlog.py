"""A container's log in docker's json-file format: one JSON object a line, `log`, `stream`, `time`.

`Writer` is the monitor's side: output is cut at newlines (as docker does; a line longer than
`MAX_LINE` is cut there too, and what is left at EOF is written without its newline), each piece
one entry stamped with RFC 3339 nanosecond UTC time, appended with O_APPEND so a restarted
container's entries follow the old ones. `entries()` is the reader's side (`imagetool logs`):
the last `tail` entries, then, with `follow`, new ones as they are written until `done()` says
the writer has finished and nothing more is left to read. A torn or foreign line is skipped.
"""

from __future__ import annotations

import json
import os
import time

MAX_LINE = 16 * 1024
STREAMS = ("stdout", "stderr")


def now() -> str:
    """The current UTC time as docker writes it: 2026-12-02T17:20:01.123456789Z."""
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"


class Writer:
    """Appends entries to `path` (created 0640); `write(stream, data)` takes raw output bytes."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._partial = {s: b"" for s in STREAMS}

    def write(self, stream: str, data: bytes) -> None:
        buf = self._partial[stream] + data
        cut = buf.rfind(b"\n") + 1
        rest = buf[cut:]
        texts = [line + "\n" for line in buf[:cut].decode("utf-8", "replace").split("\n")[:-1]]
        while len(rest) >= MAX_LINE:
            texts.append(rest[:MAX_LINE].decode("utf-8", "replace"))
            rest = rest[MAX_LINE:]
        self._partial[stream] = rest
        self._emit(stream, texts)

    def close(self) -> None:
        """Write what is left of an unfinished line on each stream, then close."""
        for stream in STREAMS:
            if self._partial[stream]:
                self._emit(stream, [self._partial[stream].decode("utf-8", "replace")])
                self._partial[stream] = b""
        os.close(self.fd)

    def _emit(self, stream: str, texts: list[str]) -> None:
        if not texts:
            return
        # one JSON object a line, as json.dumps would write it; the string escaped by json's C encoder
        # (5x faster than a json.dumps per line: a chatty container is bound by this loop)
        head, tail = '{"log": ', f', "stream": "{stream}", "time": "{now()}"}}\n'
        data = "".join([head + _quote(t) + tail for t in texts]).encode()
        while data:
            data = data[os.write(self.fd, data):]


_quote = json.encoder.encode_basestring


def _parse(line: bytes) -> dict | None:
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    if isinstance(doc, dict) and isinstance(doc.get("log"), str) and doc.get("stream") in STREAMS:
        return doc
    return None


def entries(path, tail: int | None = None, follow: bool = False, done=lambda: True, poll: float = 0.1,
            offset: int = 0):
    """The log's entries (dicts) from byte `offset` on: the last `tail` of them (all when None), then
    with `follow` the new ones until `done()` is true and the file holds nothing more. A missing
    file is empty."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        f.seek(offset)
        lines = f.read().split(b"\n")
        buf = lines.pop()   # an entry being written: completed later
        docs = [d for d in map(_parse, lines) if d is not None]
        yield from docs[-tail:] if tail is not None and tail > 0 else ([] if tail == 0 else docs)
        while follow:
            finished = done()   # asked before the read: what was written before it ended is still read
            chunk = f.read()
            if chunk:
                lines = (buf + chunk).split(b"\n")
                buf = lines.pop()
                yield from (d for d in map(_parse, lines) if d is not None)
            elif finished:
                return
            else:
                time.sleep(poll)
