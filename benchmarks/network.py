"""Networking cost: `run --rm busybox true` on a bridge and on `none`, imagetool beside podman, and
imagetool's network setup + teardown alone.

Usage: sudo python3 -m benchmarks.network [--runs N]
Everything runs inside a network namespace made for the run (`ip netns add`, deleted at the end):
the bridges, veths and NAT rules of both tools live there, never in the host's network. podman
runs with `--runtime runc` (crun refuses the hybrid cgroup layout of some hosts) and the nofile/
nproc limits a root without CAP_SYS_RESOURCE may set (benchmarks/specs.podman_ulimits); its
default bridge network is `podman` (netavark). imagetool runs from this checkout with the
interpreter running the script, on a temporary store holding busybox.
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


def setup_teardown_alone(store_root: Path, runs: int) -> tuple[float, float]:
    """(median, min) seconds of imagetool.network.attach setup + teardown on the default bridge,
    in this process (which is in the benchmark's namespace): the plugin calls and nothing else."""
    from store import Store

    from imagetool.containers import RunOptions
    from imagetool.network import attach

    store = Store.open(store_root)
    times = []
    for i in range(runs + 1):
        cid = os.urandom(32).hex()
        cdir = Path(store.containers_dir) / cid
        cdir.mkdir()
        spec = {"hostname": cid[:12], "mounts": [], "linux": {"namespaces": [{"type": "network"}]}}
        t = time.perf_counter()
        attach.setup(store, cdir, cid, RunOptions("busybox", network="bridge"), spec)
        attach.teardown(cdir, strict=True)
        if i:
            times.append(time.perf_counter() - t)
        shutil.rmtree(cdir)
    return statistics.median(times), min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from benchmarks.specs import podman_ulimits
    from benchmarks.startup import timed
    from benchmarks.common import busybox_store

    ns = f"imagetool-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        with tempfile.TemporaryDirectory(prefix="imagetool-bench-net-") as tmp:
            it, env, archive = busybox_store(Path(tmp))
            store = Path(tmp) / "store"
            enter = ["nsenter", f"--net=/run/netns/{ns}"]
            targets = [(f"imagetool {mode}", [*enter, *it, "run", "--rm", *extra, "busybox", "true"], env)
                       for mode, extra in (("bridge", ["--network", "bridge"]),
                                           ("bridge --runtime runc", ["--network", "bridge", "--runtime", "runc"]),
                                           ("none", ["--network", "none"]), ("private (default)", []))]
            podman = shutil.which("podman")
            if podman:
                subprocess.run([podman, "load", "-i", str(archive)], check=True, capture_output=True)
                for mode in ("bridge", "none"):
                    targets.append((f"podman {mode} (--runtime runc)",
                                    [*enter, podman, "run", "--rm", "--runtime", "runc", *podman_ulimits(),
                                     "--network", mode, "busybox", "true"], os.environ.copy()))
            print(f"run --rm busybox true, {args.runs} runs each (taking turns), median / min, in netns {ns}")
            for (name, _, _), result in zip(targets, timed([(a, e) for _, a, e in targets], args.runs)):
                shown = result if isinstance(result, str) else f"{1000 * result[0]:6.1f} / {1000 * result[1]:6.1f} ms"
                print(f"  {name:34} {shown}")
            alone = subprocess.run([*enter, sys.executable, "-c", "import sys; from pathlib import Path; "
                                    "from benchmarks.network import setup_teardown_alone as f; "
                                    "m, n = f(Path(sys.argv[1]), int(sys.argv[2])); print(f'{1000*m:6.1f} / {1000*n:6.1f} ms')",
                                    str(store), str(args.runs)], env=env, cwd=REPO, capture_output=True, text=True)
            print(f"  {'imagetool network setup+teardown':34} "
                  f"{alone.stdout.strip() or 'failed: ' + alone.stderr.strip()[-200:]}")
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)


if __name__ == "__main__":
    main()
