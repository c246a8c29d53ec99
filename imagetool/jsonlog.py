"""A container's log in docker's json-file format: one JSON object a line, `log`, `stream`, `time`.

`Writer` is the monitor's side: output is cut at newlines (as docker does; a line longer than
`MAX_LINE` is cut there too, and what is left at EOF is written without its newline), each piece
one entry stamped with RFC 3339 nanosecond UTC time, appended with O_APPEND so a restarted
container's entries follow the old ones. With `LogOptions` (--log-opt max-size=, max-file=) a
write that would take the file past max-size first rotates it as docker does: `container.log`
becomes `.1`, `.1` becomes `.2` … up to max-file - 1 kept (max-file 1: the file starts again),
so the log never holds much more than max-size × max-file on disk.
`entries()` is the reader's side (`imagetool logs`): the rotated files oldest first, then the
current one; the last `tail` entries; then, with `follow`, new ones as they are written (across
rotations) until `done()` says the writer has finished and nothing more is left to read. A torn
or foreign line is skipped.
"""

from __future__ import annotations

import json
import os
import time

MAX_LINE = 16 * 1024
STREAMS = ("stdout", "stderr")


class LogOptions:
    """docker's json-file --log-opt: max-size (bytes; None: no limit) and max-file. A plain class,
    not a dataclass: the lean monitor (conmon.py) imports this module, and dataclasses would add
    ~1.5 MB to its resident size."""

    __slots__ = ("max_size", "max_file")

    def __init__(self, max_size: int | None = None, max_file: int = 1):
        self.max_size, self.max_file = max_size, max_file

    def __eq__(self, other) -> bool:
        return isinstance(other, LogOptions) and (self.max_size, self.max_file) == (other.max_size, other.max_file)

    def __hash__(self) -> int:
        return hash((self.max_size, self.max_file))

    def __repr__(self) -> str:
        return f"LogOptions(max_size={self.max_size!r}, max_file={self.max_file!r})"

    @classmethod
    def parse(cls, opts) -> "LogOptions":
        from imagetool.errors import ImagetoolError
        from imagetool.runtime.spec import parse_memory

        values = {}
        for opt in opts or ():
            key, eq, value = opt.partition("=")
            if not eq or key not in ("max-size", "max-file"):
                raise ImagetoolError(f"invalid --log-opt {opt!r}", hint="use max-size=SIZE or max-file=N (json-file)")
            values[key] = value
        max_size = parse_memory(values["max-size"], "max-size") if "max-size" in values else None
        max_file = values.get("max-file", "1")
        if not max_file.isdigit() or int(max_file) < 1:
            raise ImagetoolError(f"invalid --log-opt max-file={max_file!r}: a number of at least 1")
        if int(max_file) > 1 and max_size is None:
            raise ImagetoolError("--log-opt max-file needs max-size")
        return cls(max_size, int(max_file))


def now() -> str:
    """The current UTC time as docker writes it: 2026-12-02T17:20:01.123456789Z."""
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"


class Writer:
    """Appends entries to `path` (created 0640); `write(stream, data)` takes raw output bytes."""

    def __init__(self, path, options: LogOptions = LogOptions()):
        self.path = str(path)
        self.options = options
        self.fd = self._open()
        self.size = os.fstat(self.fd).st_size
        self._partial = {s: b"" for s in STREAMS}

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)

    def _rotate(self) -> None:
        os.close(self.fd)
        keep = self.options.max_file - 1
        if keep == 0:
            os.unlink(self.path)
        for n in range(keep, 0, -1):   # .2 -> .3 … the current file -> .1 (the oldest is overwritten)
            try:
                os.replace(self.path if n == 1 else f"{self.path}.{n - 1}", f"{self.path}.{n}")
            except FileNotFoundError:
                pass
        self.fd = self._open()
        self.size = 0

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

    def pending(self) -> dict:
        """The unfinished line of each stream (bytes read, not yet in the file): {stream: bytes}."""
        return dict(self._partial)

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
        limit = self.options.max_size
        if limit is not None and self.size and self.size + len(data) > limit:
            self._rotate()
        self.size += len(data)
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


def _rotated(path) -> list[str]:
    """The rotated files of `path`, oldest first (path.N … path.1)."""
    n = 1
    while os.path.exists(f"{path}.{n}"):
        n += 1
    return [f"{path}.{k}" for k in range(n - 1, 0, -1)]


def _docs(data: bytes) -> list[dict]:
    return [d for d in map(_parse, data.split(b"\n")) if d is not None]


def entries(path, tail: int | None = None, follow: bool = False, done=lambda: True, poll: float = 0.1,
            offset: int | None = None):
    """The log's entries (dicts): the rotated files' then the current file's (only the current
    file's from byte `offset` when given), the last `tail` of them (all when None), then with
    `follow` the new ones, across rotations, until `done()` is true and nothing more is left to
    read. A missing log is empty."""
    docs = []
    if offset is None:
        for old in _rotated(path):
            try:
                with open(old, "rb") as f:
                    docs += _docs(f.read())
            except FileNotFoundError:
                pass
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        yield from docs[-tail:] if tail else ([] if tail == 0 else docs)
        return
    try:
        f.seek(offset or 0)
        lines = f.read().split(b"\n")
        buf = lines.pop()   # an entry being written: completed later
        docs += [d for d in map(_parse, lines) if d is not None]
        yield from docs[-tail:] if tail else ([] if tail == 0 else docs)
        while follow:
            finished = done()   # asked before the read: what was written before it ended is still read
            chunk = f.read()
            if chunk:
                lines = (buf + chunk).split(b"\n")
                buf = lines.pop()
                yield from (d for d in map(_parse, lines) if d is not None)
            elif _replaced(f, path):   # rotated: what the old file got last, then the new file
                lines = (buf + f.read()).split(b"\n")
                yield from (d for d in map(_parse, lines) if d is not None)
                f.close()
                f, buf = open(path, "rb"), b""
            elif finished:
                return
            else:
                time.sleep(poll)
    finally:
        f.close()


def between(path, start: int, end: int) -> list[dict]:
    """The entries of the current file `path` from byte `start` to byte `end` (both at entry
    boundaries, as Writer.size gives them)."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            return _docs(f.read(max(0, end - start)))
    except FileNotFoundError:
        return []


def _replaced(f, path) -> bool:
    """Whether `path` now names another file than the open `f` (the writer rotated it)."""
    try:
        return os.stat(path).st_ino != os.fstat(f.fileno()).st_ino
    except FileNotFoundError:
        return False
