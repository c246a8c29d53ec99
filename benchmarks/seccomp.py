"""What seccomp costs a container's start: build (profile -> OCI section -> BPF) and load.

Usage (root): python -m benchmarks.seccomp [--runs N]
  steps  each step alone, in this process: the default profile filtered for docker's capabilities
         (profile_to_oci), libseccomp's build, compile (a cache hit), and the load in a forked
         child (fork + no_new_privs + load, minus fork + no_new_privs)
  run    `imagetool run --rm busybox true` (a temporary store holding fixtures' busybox), interleaved:
           unconfined  --security-opt seccomp=unconfined
           default     the default profile (its program from the cache after the first run)
           no-cache    the same with every program built by libseccomp
           podman      `podman run --rm --runtime runc busybox true` (its own root in the temp dir,
                       cgroupfs, --network none, this host's ulimits), when podman is installed
Prints median and quartiles of each and the differences of the medians to `unconfined`.
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

# `python -c NO_CACHE --store S run …`: imagetool building every filter with libseccomp
NO_CACHE = """
import sys
from imagetool.runtime import seccomp
seccomp.compile = lambda section, cache_dir=None: seccomp.build(section)
from imagetool.__main__ import main
main(sys.argv[1:])
"""


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def fork_child(load: bytes | None) -> None:
    from imagetool.runtime import seccomp, syscalls

    pid = os.fork()
    if pid == 0:
        syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
        if load is not None:
            seccomp.load(load)
        os._exit(0)
    os.waitpid(pid, 0)


def line(name: str, samples: list[float], base: list[float] | None = None) -> str:
    q = statistics.quantiles(samples, n=4)
    text = (f"{name:28s} median {statistics.median(samples) * 1e3:8.3f} ms   "
            f"quartiles {q[0] * 1e3:.3f}-{q[2] * 1e3:.3f} ms   n={len(samples)}")
    if base is not None:
        text += f"   {(statistics.median(samples) - statistics.median(base)) * 1e3:+.3f} ms"
    return text


def steps(n: int) -> None:
    from imagetool.runtime import capabilities, seccomp

    profile = seccomp.default_profile()
    section = seccomp.profile_to_oci(profile, capabilities.DEFAULT_CAPS)
    cache = Path(tempfile.mkdtemp(prefix="bench-seccomp-"))
    try:
        program = seccomp.compile(section, cache)
        print(f"default profile: {len(section['syscalls'])} rules, {len(program) // 8} BPF instructions")
        print(line("profile_to_oci", timed(lambda: seccomp.profile_to_oci(profile, capabilities.DEFAULT_CAPS), n)))
        print(line("build (libseccomp)", timed(lambda: seccomp.build(section), max(5, n // 10))))
        print(line("compile (cache hit)", timed(lambda: seccomp.compile(section, cache), n)))
        bare, loaded = [], []
        for i in range(n):
            for how in ((None, program) if i % 2 else (program, None)):
                t = time.perf_counter()
                fork_child(how)
                (bare if how is None else loaded).append(time.perf_counter() - t)
        print(line("fork + nnp", bare))
        print(line("fork + nnp + load", loaded, bare))
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def runs(n: int) -> None:
    from fixtures.images import busybox_image
    from tests.runhelpers import add_image

    tmp = Path(tempfile.mkdtemp(prefix="bench-seccomp-"))
    try:
        add_image(tmp / "store", busybox_image(), "busybox")
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGETOOL_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        head = ["--store", str(tmp / "store"), "run", "--rm", "--network", "none"]
        argv = {"unconfined": [sys.executable, "-m", "imagetool", *head, "--security-opt", "seccomp=unconfined",
                               "busybox", "true"],
                "default": [sys.executable, "-m", "imagetool", *head, "busybox", "true"],
                "no-cache": [sys.executable, "-c", NO_CACHE, *head, "busybox", "true"]}
        if shutil.which("podman"):
            argv["podman"] = _podman_argv(tmp)
        res: dict[str, list[float]] = {k: [] for k in argv}
        order = list(argv)
        for i in range(n + 1):
            k = i % len(order)
            for how in order[k:] + order[:k]:
                t = time.perf_counter()
                subprocess.run(argv[how], env=env, check=True, stdin=subprocess.DEVNULL)
                if i:  # the first round warms the caches
                    res[how].append(time.perf_counter() - t)
        for how in argv:
            print(line(f"run --rm busybox true: {how}", res[how], None if how == "unconfined" else res["unconfined"]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _podman_argv(tmp: Path) -> list[str]:
    """podman with a private root under `tmp`, busybox loaded into it; the argv of its run."""
    from benchmarks.specs import podman_ulimits
    from fixtures.images import busybox_archive

    base = ["podman", "--root", str(tmp / "podman/root"), "--runroot", str(tmp / "podman/run"),
            "--tmpdir", str(tmp / "podman/tmp"), "--storage-driver", "overlay",
            "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
    archive = tmp / "busybox.tar"
    archive.write_bytes(busybox_archive())
    subprocess.run([*base, "load", "-i", str(archive)], check=True, capture_output=True)
    return [*base, "run", "--rm", "--runtime", "runc", "--network", "none", *podman_ulimits(), "busybox", "true"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40, help="runs of each `imagetool run` variant")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    steps(args.runs * 5)
    runs(args.runs)


if __name__ == "__main__":
    main()
