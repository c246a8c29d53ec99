"""Networking cost: `run --rm busybox true` on the default bridge and on `none`, imagetool beside
podman (netavark + aardvark-dns) in one run, and imagetool's network setup + teardown alone.

Usage: sudo python3 -m benchmarks.network [--runs N] [--venv DIR] [--output FILE]
Everything runs inside a network namespace made for the run (`ip netns add`, deleted on every way
out): the bridges, veths, NAT rules and DNS servers of both tools live there, never in the host's
network. imagetool is a non-editable `pip install .` into a venv of /usr/bin/python3 (made here
unless --venv names one), its store on a tmpfs (common.tmpfs_workdir). podman has its own
--root/--runroot/--tmpdir there, `--runtime runc` (crun refuses the hybrid cgroup layout of some
hosts), cgroupfs, file events and the limits a root without CAP_SYS_RESOURCE may set
(specs.podman_ulimits); its default network is `podman` (netavark's bridge). The targets take
turns (startup.timed); ratios are imagetool/podman of the medians. The per-plugin times come
from imagetool's own --explain trace of the setup (CNI ADD calls, aardvark-dns start).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def setup_teardown_alone(store_root: Path, runs: int) -> tuple[float, float, dict]:
    """(median, min) seconds of imagetool.network.attach setup + teardown on the default bridge in
    this process (which is in the benchmark's namespace): the plugin calls and nothing else; and
    the median of each traced step (ms)."""
    from store import Store

    from imagetool.containers import RunOptions
    from imagetool.network import attach

    class Steps:
        def __init__(self):
            self.ms: dict[str, list[float]] = {}

        def report(self, step, _line, started):
            self.ms.setdefault(step, []).append(1000 * (time.perf_counter() - started))

    store = Store.open(store_root)
    times, steps = [], Steps()
    for i in range(runs + 1):
        cid = os.urandom(32).hex()
        cdir = Path(store.containers_dir) / cid
        cdir.mkdir()
        spec = {"hostname": cid[:12], "mounts": [], "linux": {"namespaces": [{"type": "network"}]}}
        t = time.perf_counter()
        attach.setup(store, cdir, cid, RunOptions("busybox", network="bridge"), spec, steps if i else None)
        t_del = time.perf_counter()
        attach.teardown(cdir, strict=True)
        if i:
            times.append(time.perf_counter() - t)
            steps.report("teardown (DEL of the chain, aardvark-dns stopped)", "", t_del)
        shutil.rmtree(cdir)
    return statistics.median(times), min(times), {k: statistics.median(v) for k, v in steps.ms.items()}


def _alone_main(argv: list[str]) -> None:
    """`network.py --alone STORE RUNS`: run by the venv's interpreter inside the namespace."""
    import json

    median, low, steps = setup_teardown_alone(Path(argv[0]), int(argv[1]))
    print(json.dumps({"median": median, "min": low, "steps": steps}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--venv", type=Path, help="a venv with imagetool installed (default: make one)")
    ap.add_argument("--output", type=Path, help="also write the report (markdown) to this file")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from benchmarks.common import tmpfs_workdir
    from benchmarks.specs import podman_ulimits
    from benchmarks.startup import make_venv, timed
    from fixtures.images import busybox_archive

    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    ns = f"imagetool-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        with tmpfs_workdir() as tmp:
            venv = args.venv or make_venv(tmp / "venv")
            py = str(venv / "bin" / "python")
            env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGETOOL_") and k != "PYTHONPATH"}
            archive = tmp / "busybox.tar"
            archive.write_bytes(busybox_archive())
            it = [py, "-m", "imagetool", "--store", str(tmp / "store")]
            subprocess.run([*it, "load", "-i", str(archive)], env=env, check=True, stdout=subprocess.DEVNULL)
            subprocess.run([py, "-m", "compileall", "-q", str(venv)], check=False, stdout=subprocess.DEVNULL)
            enter = ["nsenter", f"--net=/run/netns/{ns}"]
            targets = [(f"imagetool {mode}", [*enter, *it, "run", "--rm", *extra, "busybox", "true"], env)
                       for mode, extra in (("bridge (default)", []),
                                           ("bridge --runtime runc", ["--runtime", "runc"]),
                                           ("none", ["--network", "none"]),
                                           ("private", ["--network", "private"]))]
            podman = shutil.which("podman")
            if podman:
                p = tmp / "podman"
                pbase = [podman, "--root", str(p / "root"), "--runroot", str(p / "run"), "--tmpdir", str(p / "tmp"),
                         "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
                subprocess.run([*enter, *pbase, "load", "-i", str(archive)], check=True, capture_output=True)
                for mode, extra in (("bridge (default network podman)", []), ("none", ["--network", "none"])):
                    targets.append((f"podman {mode}", [*enter, *pbase, "run", "--rm", "--runtime", "runc",
                                                       *podman_ulimits(), *extra, "busybox", "true"], env))
            say(f"# network benchmark — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.uname().nodename}")
            say()
            say(f"`run --rm busybox true`, {args.runs} runs each after a warm-up, taking turns, in netns {ns}; "
                f"imagetool from a non-editable venv ({py}), store and podman root on a tmpfs.")
            say()
            say(f"Load average at the start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs "
                "(both tools take turns, so load falls on them alike).")
            say()
            say("| target | median | min |")
            say("|---|---|---|")
            results = dict(zip([t[0] for t in targets], timed([(a, e) for _, a, e in targets], args.runs)))
            for name, result in results.items():
                shown = result if isinstance(result, str) else f"| {1000 * result[0]:.1f} ms | {1000 * result[1]:.1f} ms"
                say(f"| {name} {shown} |")
            say()
            for a, b in (("imagetool bridge (default)", "podman bridge (default network podman)"),
                         ("imagetool none", "podman none")):
                if isinstance(results.get(a), tuple) and isinstance(results.get(b), tuple):
                    say(f"- ratio {a} / {b}: **{results[a][0] / results[b][0]:.2f}**")
            alone = subprocess.run([*enter, py, str(Path(__file__).resolve()), "--alone", str(tmp / "store"),
                                    str(args.runs)], env=env, capture_output=True, text=True)
            say()
            if alone.returncode == 0:
                import json

                doc = json.loads(alone.stdout)
                say(f"imagetool network setup + teardown alone (attach.setup/teardown, default bridge): "
                    f"median {1000 * doc['median']:.1f} ms, min {1000 * doc['min']:.1f} ms; its steps (median ms):")
                say()
                for step, ms in doc["steps"].items():
                    say(f"- {step}: {ms:.1f}")
            else:
                say(f"setup + teardown alone failed: {alone.stderr.strip()[-300:]}")
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)
    if args.output:
        args.output.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--alone"]:
        _alone_main(sys.argv[2:])
    else:
        main()
