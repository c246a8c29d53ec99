"""What the sealed exec (imagetool/runtime/sealed.py) adds to a container's start.

Usage (root): python -m benchmarks.sealed_exec [--runs N]
Two measures, each interleaved (A, B, A, B, …) so load on the machine hits both alike:
  exec   fork + exec of /bin/true + wait from this Python: os.execve vs sealed.exec_command
  run    `imagetool run --rm busybox true` (a temporary store holding fixtures' busybox) as it is,
         vs the same with sealed.exec_command swapped for a plain os.execve in that process
Prints median and quartiles of each, and the difference of the medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
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


def _fork_exec(how: str) -> float:
    from imagetool.runtime import sealed

    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            if how == "sealed":
                sealed.exec_command("/bin/true", ["true"], {"PATH": "/bin"})
            else:
                os.execve("/bin/true", ["true"], {"PATH": "/bin"})
        finally:
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise SystemExit(f"{how}: /bin/true failed ({status})")
    return time.perf_counter() - t


def _report(name: str, res: dict[str, list[float]]) -> None:
    (a, va), (b, vb) = res.items()
    for how, v in res.items():
        q = statistics.quantiles(v, n=4)
        print(f"{name:5s} {how:9s} median {statistics.median(v) * 1e3:7.3f} ms   "
              f"quartiles {q[0] * 1e3:.3f}–{q[2] * 1e3:.3f} ms   n={len(v)}")
    print(f"{name:5s} added by the seal (difference of medians): "
          f"{(statistics.median(vb) - statistics.median(va)) * 1e3:+.3f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100, help="runs of each `imagetool run` variant")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))

    res = {"execve": [], "sealed": []}
    for i in range(args.runs * 10):
        for how in (("execve", "sealed") if i % 2 else ("sealed", "execve")):
            res[how].append(_fork_exec(how))
    _report("exec", res)

    from fixtures.images import busybox_image
    from tests.runhelpers import add_image

    tmp = Path(tempfile.mkdtemp(prefix="bench-sealed-"))
    try:
        add_image(tmp / "store", busybox_image(), "busybox")
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGETOOL_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        tail = ["--store", str(tmp / "store"), "run", "--rm", "busybox", "true"]
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
