"""Start-up cost of the everyday commands as users install imagetool: the median and minimum wall time of
`images`, `ps -a`, `inspect` (image, container), `--help` and `run --rm busybox true`, side by side with
podman's same command (a quick look; `benchmarks/run --only startup` is the report's measure).

Usage: python3 -m benchmarks.startup [--venv DIR]... [--runs N]
Each --venv (repeatable: before/after side by side) holds an installed imagetool; without one it
makes one: a venv of /usr/bin/python3 (the distribution's interpreter) with `pip install .` (not
editable), as the README's quick start does (common.headline_install). The store is a temporary one
holding busybox (loaded from fixtures' archive) and one exited container; podman uses a root of its
own in the same temporary directory. Needs root.
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
CONTAINER = "startup-ps"
# podman here: runc (crun refuses hybrid cgroups), limits this root can grant
PODMAN_RUN = ["--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
COMMANDS = (["images"], ["ps", "-a"], ["inspect", "busybox"], ["inspect", CONTAINER], ["--help"],
            ["run", "--rm", "--network", "none", "busybox", "true"])


def make_venv(where: Path) -> Path:
    from benchmarks.common import headline_install

    headline_install(where)
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
        podman, podman_argv = shutil.which("podman"), []
        try:
            _measure(args, venvs, env, archive, podman, podman_argv, Path(tmp))
        finally:   # podman's overlay mounts and the containers go before the directory does
            if podman_argv:
                subprocess.run([*podman_argv, "rm", "-af"], capture_output=True)
                subprocess.run([*podman_argv, "system", "reset", "-f"], capture_output=True)
            from benchmarks.common import umount_all_under

            umount_all_under(Path(tmp))


def _measure(args, venvs: list, env: dict, archive: Path, podman: str | None, podman_argv: list, tmp: Path) -> None:
    subprocess.run([str(venvs[0] / "bin" / "imagetool"), "run", "--name", CONTAINER, "busybox", "true"], env=env,
                   check=True)
    if podman:
        proot = tmp / "podman"
        podman_argv += [podman, "--root", str(proot / "root"), "--runroot", str(proot / "run"), "--tmpdir",
                        str(proot / "tmp"), "--storage-driver", "overlay", "--cgroup-manager", "cgroupfs",
                        "--events-backend", "file"]
        subprocess.run([*podman_argv, "load", "-i", str(archive)], check=True, capture_output=True)
        subprocess.run([*podman_argv, "run", "--name", CONTAINER, "--network", "none", *PODMAN_RUN, "busybox", "true"],
                       check=True,
                       capture_output=True)
    print(f"{args.runs} runs each (taking turns), median / min; one store for every venv")
    for command in COMMANDS:
        targets = [([str(venv / "bin" / "imagetool"), *command], env) for venv in venvs]
        names = [str(venv) for venv in venvs]
        if podman:
            argv = [*podman_argv, *command]
            if command[0] == "run":
                argv[len(podman_argv) + 2:len(podman_argv) + 2] = PODMAN_RUN
            targets.append((argv, os.environ.copy()))
            names.append("podman")
        for name, result in zip(names, timed(targets, args.runs)):
            shown = result if isinstance(result, str) else f"{1000 * result[0]:6.1f} / {1000 * result[1]:6.1f} ms"
            print(f"{' '.join(command):24} {name:28} {shown}")


if __name__ == "__main__":
    main()
