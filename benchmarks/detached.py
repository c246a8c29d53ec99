"""Long-running containers: `run -d` until the id is printed, `exec CONTAINER true`, `stop -t 1`, the
monitor's idle RSS and the log's throughput, imagetool beside podman (conmon), taking turns.

Usage: sudo python3 -m benchmarks.detached [--runs N] [--log-mb N] [--venv DIR | --checkout]
The container's PID 1 is `sh` trapping SIGTERM (so `stop` measures the stop, not the timeout).
podman runs with its own --root/--runroot/--tmpdir in a temporary directory (the host's podman
store is not touched), `--runtime runc` (crun refuses the hybrid cgroup layout of some hosts)
and the ulimits a root without CAP_SYS_RESOURCE may set (benchmarks/specs.podman_ulimits).
Both run with `--network none` (a network namespace with loopback only): the default bridge
network's CNI ADD/DEL (iptables) would be measured otherwise, not the detached machinery.
imagetool is, by default, what users install: a venv of /usr/bin/python3 with `pip install .`
(not editable; made in the temporary directory, as benchmarks/startup.py does), or the one given
with --venv; --checkout runs this checkout with the interpreter running the script instead.
Each row gives imagetool's figure over podman's (the goal for the three commands: <= 0.5).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SERVICE = ["sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"]


def _timed(argv, env) -> tuple[float, str]:
    t = time.perf_counter()
    r = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - t, r.stdout.strip()


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


class Tool:
    """One side: how it runs detached, execs, stops, removes, and which process monitors it."""

    def __init__(self, name, base, env, run_extra=(), monitor_pid=None):
        self.name, self.base, self.env, self.run_extra, self._monitor_pid = name, base, env, list(run_extra), monitor_pid
        self.samples: dict[str, list[float]] = {"run -d": [], "exec true": [], "stop -t 1": []}
        self.rss: list[int] = []

    def round(self) -> None:
        t, cid = _timed([*self.base, "run", "-d", *self.run_extra, "busybox", *SERVICE], self.env)
        self.samples["run -d"].append(t)
        try:
            time.sleep(0.5)   # idle: the monitor has settled (imagetool's has exec'd its lean self)
            self.rss.append(_rss_kb(self._monitor_pid(cid)))
            self.samples["exec true"].append(_timed([*self.base, "exec", cid, "true"], self.env)[0])
            self.samples["stop -t 1"].append(_timed([*self.base, "stop", "-t", "1", cid], self.env)[0])
        finally:
            subprocess.run([*self.base, "rm", "-f", cid], env=self.env, capture_output=True)

    def log_throughput(self, mb: int) -> float:
        """MB/s of a container writing `mb` MB of 50-byte lines, from `run -d` to `wait` returning."""
        script = f"yes 0123456789012345678901234567890123456789012345678 | head -c {mb * 1000000}"
        t = time.perf_counter()
        _, cid = _timed([*self.base, "run", "-d", *self.run_extra, "busybox", "sh", "-c", script], self.env)
        try:
            _timed([*self.base, "wait", cid], self.env)
            return mb / (time.perf_counter() - t)
        finally:
            subprocess.run([*self.base, "rm", "-f", cid], env=self.env, capture_output=True)


def _ratio(value: float, podman: float, tool, tools) -> str:
    """"   (0.62x)" on imagetool's row when podman ran too."""
    return f"   ({value / podman:.2f}x)" if len(tools) > 1 and tool is tools[0] and podman else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--log-mb", type=int, default=20)
    ap.add_argument("--venv", type=Path, help="a venv with imagetool installed (default: make one)")
    ap.add_argument("--checkout", action="store_true", help="run this checkout (python -m imagetool) instead")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from benchmarks.specs import podman_ulimits
    from benchmarks.common import busybox_store

    with tempfile.TemporaryDirectory(prefix="imagetool-bench-detached-") as tmp:
        it, env, archive = busybox_store(Path(tmp))
        store = Path(tmp) / "store"
        if not args.checkout:
            from benchmarks.startup import make_venv

            venv = args.venv or make_venv(Path(tmp) / "venv")
            it = [str(venv / "bin" / "imagetool"), "--store", str(store)]
            env = {k: v for k, v in env.items() if k != "PYTHONPATH"}   # the installed copy, not the checkout
        print(f"imagetool: {it[0]}")

        def owner(cid: str) -> int:
            return json.loads((store / "containers" / cid / "state.json").read_text())["owner_pid"]

        tools = [Tool("imagetool", it, env, ["--network", "none"], monitor_pid=owner)]
        podman = shutil.which("podman")
        if podman:
            p = Path(tmp) / "podman"
            pbase = [podman, "--root", str(p / "root"), "--runroot", str(p / "run"), "--tmpdir", str(p / "tmp")]
            subprocess.run([*pbase, "load", "-i", str(archive)], check=True, capture_output=True)

            def conmon(cid: str) -> int:
                return int(_timed([*pbase, "inspect", "--format", "{{.State.ConmonPid}}", cid], None)[1])

            tools.append(Tool("podman (conmon, runc)", pbase, None, ["--runtime", "runc", *podman_ulimits(),
                                                                      "--network", "none"], conmon))
        try:
            tools[0].round()   # warm-up: caches, the first cgroup, podman's first container
            for t in tools[1:]:
                t.round()
            for t in tools:
                t.samples = {k: [] for k in t.samples}
                t.rss = []
            for _ in range(args.runs):
                for t in tools:
                    t.round()
            print(f"{args.runs} rounds each (taking turns), median / min; ratio: imagetool / podman (medians)")
            for op in tools[0].samples:
                for t in tools:
                    s = t.samples[op]
                    ratio = _ratio(statistics.median(s), statistics.median(tools[-1].samples[op]), t, tools)
                    print(f"  {op:10} {t.name:24} {1000 * statistics.median(s):7.1f} / {1000 * min(s):7.1f} ms{ratio}")
            for t in tools:
                rss = statistics.median(t.rss)
                ratio = _ratio(rss, statistics.median(tools[-1].rss), t, tools)
                print(f"  idle RSS of the monitor, {t.name:24} {rss / 1024:5.1f} MB{ratio}")
            rates = [t.log_throughput(args.log_mb) for t in tools]
            for t, rate in zip(tools, rates):
                ratio = _ratio(rate, rates[-1], t, tools)
                print(f"  log throughput ({args.log_mb} MB of 50-byte lines), {t.name:24} {rate:6.1f} MB/s{ratio}")
        finally:
            if podman:
                subprocess.run([*pbase, "rm", "-a", "-f"], capture_output=True)
                subprocess.run([*pbase, "system", "reset", "-f"], capture_output=True)


if __name__ == "__main__":
    main()
