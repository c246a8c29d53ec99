"""Start-up cost of the everyday commands as users install imagetool: the median and minimum wall time of
`images`, `ps -a`, `--help` and `run --rm busybox true`, side by side with podman's same command.

Usage: python3 -m benchmarks.startup [--venv DIR]... [--runs N]
Each --venv (repeatable: before/after side by side) holds an installed imagetool; without one it makes one: a venv of /usr/bin/python3 (the distribution's interpreter) with
`pip install .` (not editable), as the README's quick start does. The store is a temporary one
holding busybox (loaded from fixtures' archive); podman uses its own store. Needs root for `run`.
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
COMMANDS = (["images"], ["ps", "-a"], ["--help"], ["run", "--rm", "busybox", "true"])


def make_venv(where: Path) -> Path:
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(where)], check=True)
    subprocess.run([str(where / "bin" / "pip"), "install", "-q", str(REPO)], check=True)
    return where


def timed(argv: list[str], env: dict, runs: int) -> tuple[float, float]:
    """(median, minimum) wall seconds of `runs` runs after one warm-up; SystemExit on a failure."""
    times = []
    for i in range(runs + 1):
        t = time.perf_counter()
        r = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if i:
            times.append(time.perf_counter() - t)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited {r.returncode}: {r.stderr.decode(errors='replace')}")
    return statistics.median(times), min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", type=Path, action="append", help="a venv with imagetool installed (default: make one)")
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="imagetool-bench-") as tmp:
        venvs = args.venv or [make_venv(Path(tmp) / "venv")]
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGETOOL_")}
        env["IMAGETOOL_STORE"] = str(Path(tmp) / "store")
        sys.path.insert(0, str(REPO))
        from fixtures.images import busybox_archive

        archive = Path(tmp) / "busybox.tar"
        archive.write_bytes(busybox_archive())
        subprocess.run([str(venvs[0] / "bin" / "imagetool"), "load", "-i", str(archive)], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        podman = shutil.which("podman")
        if podman:
            subprocess.run([podman, "load", "-i", str(archive)], check=True, capture_output=True)
        print(f"{args.runs} runs each, median / min; one store for every venv")
        for command in COMMANDS:
            for venv in venvs:
                med, low = timed([str(venv / "bin" / "imagetool"), *command], env, args.runs)
                print(f"{' '.join(command):24} {str(venv):28} {1000 * med:6.1f} / {1000 * low:6.1f} ms")
            if podman:
                try:
                    pmed, plow = timed([podman, *command], os.environ.copy(), args.runs)
                    print(f"{' '.join(command):24} {'podman':28} {1000 * pmed:6.1f} / {1000 * plow:6.1f} ms")
                except SystemExit as e:
                    print(f"{' '.join(command):24} {'podman':28} failed: {str(e).splitlines()[0][:70]}")


if __name__ == "__main__":
    main()
