"""Pull progress: a small callback protocol and its three renderings (tqdm bars, plain lines, nothing).

Services call the protocol and never print; `make_reporter(quiet)` picks the rendering for the
CLI: tqdm bars (one per blob + a total) when stderr is a terminal, plain lines such as
"3f57d9401f8d: Downloading" / "3f57d9401f8d: Pull complete" when it is not, nothing with -q.
This is the only module that imports tqdm. All methods are safe to call from several threads.
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from typing import Iterator, Protocol


class Progress(Protocol):
    def message(self, text: str) -> None:
        """A line of status ("latest: Pulling from library/busybox") or a warning."""

    def blob_start(self, digest: str, size: int | None, offset: int) -> None:
        """A download of `digest` starts (or resumes at `offset`)."""

    def blob_advance(self, digest: str, nbytes: int) -> None:
        """`nbytes` more bytes of `digest` arrived (negative after a restart from 0)."""

    def blob_done(self, digest: str, status: str) -> None:
        """`digest` is finished: "Pull complete" or "Already exists"."""


def short(digest: str) -> str:
    return str(digest).split(":", 1)[-1][:12]


class NullProgress:
    def message(self, text: str) -> None:
        pass

    def blob_start(self, digest: str, size: int | None, offset: int) -> None:
        pass

    def blob_advance(self, digest: str, nbytes: int) -> None:
        pass

    def blob_done(self, digest: str, status: str) -> None:
        pass


class PlainProgress:
    """One line per event, for logs and CI (stderr is not a terminal)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()
        self._started: set[str] = set()

    def _line(self, text: str) -> None:
        with self._lock:
            self.stream.write(text + "\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        self._line(text)

    def blob_start(self, digest: str, size: int | None, offset: int) -> None:
        if digest in self._started:
            return
        self._started.add(digest)
        self._line(f"{short(digest)}: Downloading" + (f" (resuming at {offset} bytes)" if offset else ""))

    def blob_advance(self, digest: str, nbytes: int) -> None:
        pass

    def blob_done(self, digest: str, status: str) -> None:
        self._line(f"{short(digest)}: {status}")


class TqdmProgress:
    """A bar per blob and a total, like docker's (stderr is a terminal)."""

    def __init__(self):
        from tqdm import tqdm

        self._tqdm = tqdm
        try:
            size = os.get_terminal_size(sys.stderr.fileno())
        except OSError:
            size = os.terminal_size((0, 0))
        # a terminal that reports no size (a bare pty) would get empty or hidden bars: assume 80x50
        self._fmt = {"dynamic_ncols": True} if size.columns and size.lines else {"ncols": 80, "nrows": 50}
        self._lock = threading.Lock()
        self._bars: dict[str, object] = {}
        self._total = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc="Total",
                           position=0, leave=True, file=sys.stderr, **self._fmt)

    def message(self, text: str) -> None:
        self._tqdm.write(text, file=sys.stderr)

    def blob_start(self, digest: str, size: int | None, offset: int) -> None:
        with self._lock:
            bar = self._bars.get(digest)
            if bar is None:
                bar = self._tqdm(total=size, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                                 desc=short(digest), position=len(self._bars) + 1, leave=True,
                                 file=sys.stderr, **self._fmt)
                self._bars[digest] = bar
                self._total.total = (self._total.total or 0) + (size or 0)
                self._total.update(offset)
                self._total.refresh()

    def blob_advance(self, digest: str, nbytes: int) -> None:
        bar = self._bars.get(digest)
        if bar is not None:
            bar.update(nbytes)
        self._total.update(nbytes)

    def blob_done(self, digest: str, status: str) -> None:
        with self._lock:
            bar = self._bars.get(digest)
            if bar is None:
                bar = self._tqdm(total=0, desc=short(digest), position=len(self._bars) + 1, leave=True,
                                 file=sys.stderr, bar_format="{desc}: {postfix}")
                self._bars[digest] = bar
            bar.set_postfix_str(status, refresh=True)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._total.close()


@contextmanager
def make_reporter(quiet: bool = False) -> Iterator[Progress]:
    """The reporter for the CLI: nothing (quiet), tqdm (stderr is a TTY) or plain lines."""
    if quiet:
        yield NullProgress()
        return
    if sys.stderr.isatty():
        reporter = TqdmProgress()
        try:
            yield reporter
        finally:
            reporter.close()
        return
    yield PlainProgress()
