"""Start-up cost of the everyday commands as users install imagetool: the median and minimum wall time of
`images`, `ps -a`, `--help` and `run --rm busybox true`, side by side with podman's same command.

Usage: python3 -m benchmarks.startup [--venv DIR]... [--runs N]
Each --venv (repeatable: before/after side by side) holds an installed imagetool; without one it
makes one: a venv of /usr/bin/python3 (the distribution's interpreter) with `pip install .` (not
editable), as the README's quick start does. The store is a temporary one
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


def timed(targets: list[tuple[list[str], dict]], runs: int) -> list[tuple[float, float] | str]:
    """(median, minimum) wall seconds of each (argv, env) over `runs` runs after one warm-up, the
    targets taking turns so that a change in the machine's load falls on all of them alike; a
    target that fails gets its error line instead."""
    times: list[list[float]] = [[] for _ in targets]
    failed: dict[int, str] = {}
    for i in range(runs + 1):
        for k, (argv, env) in enumerate(targets):
            if k in failed:
                continue
            t = time.perf_counter()
            r = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if r.returncode != 0:
                failed[k] = f"failed: exit {r.returncode}: {r.stderr.decode(errors='replace').strip()[:60]}"
            elif i:
                times[k].append(time.perf_counter() - t)
    return [failed.get(k) or (statistics.median(ts), min(ts)) for k, ts in enumerate(times)]


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
        print(f"{args.runs} runs each (taking turns), median / min; one store for every venv")
        for command in COMMANDS:
            targets = [([str(venv / "bin" / "imagetool"), *command], env) for venv in venvs]
            names = [str(venv) for venv in venvs]
            if podman:
                targets.append(([podman, *command], os.environ.copy()))
                names.append("podman")
            for name, result in zip(names, timed(targets, args.runs)):
                shown = result if isinstance(result, str) else f"{1000 * result[0]:6.1f} / {1000 * result[1]:6.1f} ms"
                print(f"{' '.join(command):24} {name:28} {shown}")

if __name__ == "__main__":
    main()
