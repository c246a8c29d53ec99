"""What the sealed exec (imagetool/runtime/sealed.py) adds to a container's start.

Usage (root): python -m benchmarks.sealed_exec [--runs N]
Two measures, each interleaved (A, B, …) so load on the machine hits every variant alike:
  exec   fork + exec of /bin/true + wait, the child first touching the whole heap (as the init's
         recipe has by its last step, so copy-on-write is paid before the exec in every variant):
         os.execve, vs sealed.exec_command making its memfd in the child, vs with a memfd made
         before the fork (trampoline_fd)
  run    `imagetool run --rm busybox true` (a temporary store holding fixtures' busybox) as it is,
         vs the same with sealed.exec_command swapped for a plain os.execve in that process
Prints the 10th percentile, median and 75th percentile of each (the low percentiles are the
ones load disturbs least), and each variant's difference from the first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# `python -c UNSEALED --store S run …`: imagetool with the init's final exec a plain os.execve
UNSEALED = """
import os, sys
from imagetool.runtime import sealed
def plain(path, argv, env, *, trampoline_fd=None):
    env = env if isinstance(env, dict) else dict(e.split("=", 1) for e in env if "=" in e)
    os.execve(path, argv, env)
sealed.exec_command = plain
sealed.sealed_trampoline = lambda arch=None: os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
from imagetool.__main__ import main
main(sys.argv[1:])
"""


def _fork_exec(how: str, premade: int) -> float:
    import gc

    from imagetool.runtime import sealed

    env = ["PATH=/bin", "HOME=/root", "TERM=xterm"]
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            for _ in gc.get_objects():  # touch the heap: the init's recipe has done so
                pass
            if how == "execve":
                os.execve("/bin/true", ["true"], dict(e.split("=", 1) for e in env))
            sealed.exec_command("/bin/true", ["true"], env,
                                trampoline_fd=premade if how == "sealed, fd from parent" else None)
        finally:
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise SystemExit(f"{how}: /bin/true failed ({status})")
    return time.perf_counter() - t


def _report(name: str, res: dict[str, list[float]]) -> None:
    first = None
    for how, v in res.items():
        v = sorted(v)
        p10, p50, p75 = (v[len(v) * k // 100] for k in (10, 50, 75))
        first = first or (p10, p50)
        print(f"{name:4s} {how:24s} p10 {p10 * 1e3:8.3f}  median {p50 * 1e3:8.3f}  p75 {p75 * 1e3:8.3f} ms  "
              f"(p10 {(p10 - first[0]) * 1e3:+.3f}, median {(p50 - first[1]) * 1e3:+.3f})  n={len(v)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100, help="runs of each `imagetool run` variant (exec: 10x)")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))

    import imagetool.containers  # noqa: F401 - a heap the size of the real init's
    from imagetool.runtime import sealed

    premade = sealed.sealed_trampoline()
    res = {"execve": [], "sealed, memfd in child": [], "sealed, fd from parent": []}
    for i in range(args.runs * 10):
        for how in (list(res) if i % 2 else reversed(list(res))):
            res[how].append(_fork_exec(how, premade))
    os.close(premade)
    _report("exec", res)

    from fixtures.images import busybox_image
    from tests.runhelpers import add_image

    tmp = Path(tempfile.mkdtemp(prefix="bench-sealed-"))
    try:
        add_image(tmp / "store", busybox_image(), "busybox")
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGETOOL_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        tail = ["--store", str(tmp / "store"), "run", "--rm", "--network", "none", "busybox", "true"]
        argv = {"unsealed": [sys.executable, "-c", UNSEALED, *tail],
                "sealed": [sys.executable, "-m", "imagetool", *tail]}
        res = {"unsealed": [], "sealed": []}
        for i in range(args.runs):
            for how in (("unsealed", "sealed") if i % 2 else ("sealed", "unsealed")):
                t = time.perf_counter()
                subprocess.run(argv[how], env=env, check=True, stdin=subprocess.DEVNULL)
                res[how].append(time.perf_counter() - t)
        _report("run", res)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
