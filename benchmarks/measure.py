"""The measurement core: operations as small specs, run alternately (A B C A B C …), timed per child.

An `Operation` has one imagetool `Contender` and its peers. Each contender builds its argv for
run i, and may have per-run setup/teardown (fresh destinations: not timed) and a one-off
`prepare` (pre-pull, bundle, …). `run_operation` does the warm-up rounds, then the counted
rounds; every round runs every contender once, in the same order, so drifts of the machine
hit all of them alike. One sample = wall time (time.perf_counter around spawn + os.wait4)
and the child's peak RSS (ru_maxrss of wait4, which covers the child and its waited-for
descendants). A contender that is missing or fails keeps its row with the reason.
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from benchmarks.common import log

Argv = list  # list[str]
Hook = Optional[Callable[[int], None]]


@dataclass(frozen=True, slots=True)
class Sample:
    seconds: float
    maxrss_kb: int


@dataclass(slots=True)
class Contender:
    """One tool doing the operation. `command(i)` returns the argv of run i."""

    name: str
    command: Callable[[int], Argv]
    setup: Hook = None  # before run i (not timed)
    teardown: Hook = None  # after run i (not timed)
    prepare: Optional[Callable[[], None]] = None  # once, before the first round
    missing: Optional[str] = None  # set when the tool is not installed: the reason
    env: Optional[dict] = None
    timeout: float = 600.0


@dataclass(slots=True)
class Operation:
    name: str
    imagetool: Contender
    peers: list
    note: str = ""
    group: str = ""  # pull | re-pull | unpack | run | load | save | baseline (for goals)
    image: str = ""

    @property
    def contenders(self) -> list:
        return [self.imagetool, *self.peers]


@dataclass(slots=True)
class Result:
    """The outcome of one contender in one operation."""

    name: str
    samples: list = field(default_factory=list)
    status: str = "ok"  # ok | missing: … | failed: …

    @property
    def ok(self) -> bool:
        return self.status == "ok" and bool(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def peak_rss_kb(self) -> int:
        return max(s.maxrss_kb for s in self.samples)


@dataclass(slots=True)
class OpResult:
    op: Operation
    results: list  # Result per contender, imagetool first

    @property
    def imagetool(self) -> Result:
        return self.results[0]

    def ratios(self, peer: Result) -> list[float]:
        """imagetool/peer per round (the samples were taken in the same rounds, in order)."""
        it = self.imagetool
        if not (it.ok and peer.ok):
            return []
        return [a.seconds / b.seconds for a, b in zip(it.samples, peer.samples) if b.seconds > 0]


class RunFailed(Exception):
    pass


GNU_TIME = "/usr/bin/time"


def run_once(argv: Argv, timeout: float, env: dict | None = None, errfile: Path | None = None) -> Sample:
    """Spawn argv (stdout to /dev/null, stderr to errfile), wait with wait4; raise RunFailed on non-zero.

    The command runs under GNU time, which forks it and writes its ru_maxrss to a file: a child
    forked (or vforked) straight from this process would be charged this process's own peak RSS
    at exec (the kernel keeps the old mm's high-water mark in ru_maxrss). The launcher costs the
    same ~1-3 ms to every tool; the baseline operation shows that floor (`/bin/true`).
    Without GNU time the RSS is an upper bound that includes this process's.
    """
    err = open(errfile, "wb+") if errfile else subprocess.DEVNULL
    rssfile = Path(errfile or "/tmp/imagetool-bench-rss").with_suffix(".rss")
    try:
        full_env = None if env is None else {**os.environ, **env}
        if os.path.exists(GNU_TIME):
            rssfile.unlink(missing_ok=True)
            argv = [GNU_TIME, "-f", "%M", "-o", str(rssfile), *argv]
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                env=full_env, start_new_session=True)
        timer = threading.Timer(timeout, _kill_group, (proc.pid,))
        timer.start()
        try:
            _, status, rusage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        t1 = time.perf_counter()
        proc.returncode = os.waitstatus_to_exitcode(status)  # tell Popen it was reaped
        if proc.returncode != 0:
            tail = ""
            if errfile:
                err.seek(0)
                tail = error_line(err.read().decode(errors="replace"))
            what = f"exit {proc.returncode}" if proc.returncode > 0 else f"signal {-proc.returncode}"
            if t1 - t0 >= timeout:
                what = f"timed out after {timeout:.0f}s"
            raise RunFailed(f"{what}: {tail}" if tail else what)
        maxrss = rusage.ru_maxrss
        if argv[0] == GNU_TIME:
            try:
                maxrss = int(rssfile.read_text().split()[-1])
            except (OSError, ValueError, IndexError):
                pass
        return Sample(t1 - t0, maxrss)
    finally:
        if errfile:
            err.close()


def error_line(stderr: str) -> str:
    """The most telling line of a tool's stderr: imagetool's `error:` line, a Go tool's msg=, else the last."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("imagetool: error:"):
            return ln
    if not lines:
        return ""
    last = lines[-1]
    m = re.search(r'level=(?:fatal|error) msg="((?:[^"\\]|\\.)*)"', last)
    return m.group(1).replace('\\"', '"') if m else last


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _short(reason: str, limit: int = 220) -> str:
    reason = " ".join(str(reason).split()).replace("|", "/")
    reason = re.sub(r"\b([0-9a-f]{12})[0-9a-f]{20,}\b", r"\1…", reason)  # digests: 12 hex are enough
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"


def run_operation(op: Operation, warmups: int, runs: int, scratch: Path, budget: float = 0.0,
                  max_runs: int = 20) -> OpResult:
    """Warm-up rounds, then counted rounds: `runs`, or more (up to max_runs) when the warm-up
    rounds show that they fit in `budget` seconds — cheap operations get more samples, which
    steadies their medians on a busy machine."""
    results = [Result(c.name) for c in op.contenders]
    for c, r in zip(op.contenders, results):
        if c.missing:
            r.status = f"missing: {c.missing}"
            continue
        if c.prepare:
            try:
                c.prepare()
            except Exception as e:  # noqa: BLE001 - any failure of a tool becomes its row's reason
                r.status = f"failed: prepare: {_short(e)}"
    errfile = scratch / "stderr.txt"
    total = warmups + runs
    i = 0
    t_start = time.perf_counter()
    while i < total:
        if i == warmups and warmups and budget > 0:
            per_round = (time.perf_counter() - t_start) / warmups
            total = warmups + max(runs, min(max_runs, int(budget / max(per_round, 1e-3))))
        for c, r in zip(op.contenders, results):
            if r.status != "ok":
                continue
            try:
                if c.setup:
                    c.setup(i)
                sample = run_once(c.command(i), c.timeout, c.env, errfile)
            except RunFailed as e:
                r.status = f"failed: {_short(e)}"
                log(f"  {op.name} / {c.name}: {r.status}")
            except Exception as e:  # noqa: BLE001
                r.status = f"failed: {_short(f'{type(e).__name__}: {e}')}"
                log(f"  {op.name} / {c.name}: {r.status}")
            else:
                if i >= warmups:
                    r.samples.append(sample)
            finally:
                if c.teardown:
                    try:
                        c.teardown(i)
                    except Exception as e:  # noqa: BLE001
                        log(f"  {op.name} / {c.name}: teardown failed: {e}")
        i += 1
    for r in results:
        if r.status == "ok" and not r.samples:
            r.status = "failed: no sample"
    return OpResult(op, results)


def profile_imagetool(op: Operation, imagetool: list, python: str, scratch: Path, top: int = 14) -> str:
    """Two extra runs of imagetool's command, not counted in the table: one under `-X importtime`
    (what the imports cost) and one under cProfile (imagetool's and the store's functions by
    cumulative time, then every function by own time). Returns the text (or why there is none)."""
    import io
    import pstats

    c = op.imagetool
    argv = c.command(10_000)
    if argv[: len(imagetool)] != imagetool:
        return "(not profiled: not an imagetool command)"
    out = scratch / "profile.out"
    out.unlink(missing_ok=True)
    rest = argv[len(imagetool):]
    # the console script itself as the profiled program: the same entry (and fast paths) as the table's runs
    entry = [imagetool[0]] if len(imagetool) == 1 and Path(imagetool[0]).is_file() else ["-m", "imagetool"]
    runs = {"imports": [python, "-X", "importtime", *entry, *rest],
            "profile": [python, "-m", "cProfile", "-o", str(out), *entry, *rest]}
    samples = {}
    try:
        if c.prepare:
            c.prepare()
        for what, cmd in runs.items():
            try:
                if c.setup:
                    c.setup(10_000)
                samples[what] = run_once(cmd, c.timeout, c.env, scratch / f"{what}.err")
            finally:
                if c.teardown:
                    c.teardown(10_000)
    except Exception as e:  # noqa: BLE001
        return f"(not profiled: {_short(e)})"
    text = [f"wall {samples['imports'].seconds:.3f} s with -X importtime; "
            f"{samples['profile'].seconds:.3f} s under cProfile (which inflates Python-heavy parts)"]
    text.append(_imports_summary((scratch / "imports.err").read_text(errors="replace")))
    buf = io.StringIO()
    st = pstats.Stats(str(out), stream=buf)
    st.sort_stats("cumulative").print_stats(r"imagetool/|store/", top)
    st.sort_stats("tottime").print_stats(top)
    lines = [ln.rstrip() for ln in buf.getvalue().splitlines()]
    noise = ("/profile.out", "List reduced from")
    keep = [ln for ln in lines if ln and not any(n in ln for n in noise)]
    prof = "\n".join(keep)
    prof = prof.replace(str(Path(__file__).resolve().parent.parent) + "/", "")
    prof = re.sub(r"/\S*/site-packages/", "", prof)
    prof = re.sub(r"/\S*/lib/python3\.\d+/", "", prof)
    text.append(prof)
    return "\n".join(text)


def _imports_summary(stderr: str, top: int = 10) -> str:
    """From `-X importtime` output: the total, and the costliest top-level imports (cumulative)."""
    rows = []
    for ln in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", ln)
        if m:
            rows.append((int(m.group(1)), int(m.group(2)), len(m.group(3)), m.group(4)))
    if not rows:
        return "imports: (no -X importtime output)"
    total = sum(r[0] for r in rows) / 1000
    tops = sorted((r for r in rows if r[2] == 1), key=lambda r: -r[1])[:top]
    listed = ", ".join(f"{name} {cum / 1000:.0f} ms" for _, cum, _, name in tops)
    return f"imports: {total:.0f} ms in {len(rows)} modules; top-level by cumulative time: {listed}"


def trace_breakdown(op: Operation, scratch: Path, runs: int = 5) -> dict[str, float] | str:
    """imagetool's own account of a `run` (IMAGETOOL_TRACE_TIMING=1 → one `imagetool-timing: step=ms …`
    line on stderr): the median milliseconds per step over `runs` extra runs, or why there is none."""
    c = op.imagetool
    steps: dict[str, list[float]] = {}
    errfile = scratch / "trace.err"
    for i in range(runs):
        try:
            if c.setup:
                c.setup(20_000 + i)
            run_once(c.command(20_000 + i), c.timeout, {**(c.env or {}), "IMAGETOOL_TRACE_TIMING": "1"}, errfile)
            text = errfile.read_text(errors="replace")
        except Exception as e:  # noqa: BLE001
            return f"no breakdown: {_short(e)}"
        finally:
            if c.teardown:
                c.teardown(20_000 + i)
        m = re.search(r"imagetool-timing: (.*)", text)
        if not m:
            return "no breakdown (imagetool printed no imagetool-timing line)"
        for kv in m.group(1).split():
            k, _, v = kv.partition("=")
            try:
                steps.setdefault(k, []).append(float(v.rstrip("ms")))
            except ValueError:
                continue
    return {k: statistics.median(v) for k, v in steps.items()}
