#!/usr/bin/env python3
"""Container start latency: `imagetool run --rm busybox true` side by side with its peers.

    sudo python3 benchmarks/run_start.py [--rounds 15] [--json FILE]

Tools, alternated round by round (A B C … A B C …) so that load changes hit all of them alike:
  imagetool   imagetool --store S run --rm busybox true
  podman      podman --root … --cgroup-manager cgroupfs --events-backend file run --rm IMG true
              (IMG pulled from a loopback docker-registry with --tls-verify=false)
  runc, crun  <rt> run --bundle B <id> on a prepared bundle (the spec from imagetool.specgen)
  unshare     unshare -fp --mount-proc chroot ROOTFS /bin/busybox true
  python      python3 -c pass (the interpreter alone), and `import typer` for reference
A tool that fails (crun 1.8 refuses the hybrid cgroup layout) is reported with its error.

Then a breakdown of imagetool's own time (IMAGETOOL_TRACE_TIMING=1: image lookup, spec, rootfs
plan, cgroup, fork → exec in the child, wait, cleanup) and the imports before it.
Every work directory lives under /tmp/imagetool-bench-run-* and is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def add_image(store_root: Path, built, name: str) -> None:
    from store import Descriptor, Digest, Store

    st = Store.open(store_root)
    for d, data in built.blobs.items():
        st.put(data, Digest.parse(d))
    st.put(built.manifest, Digest.parse(built.manifest_digest))
    st.put(built.config_bytes, Digest.parse(built.config_digest))
    st.tag(name, Descriptor(built.manifest_media_type, Digest.parse(built.manifest_digest), len(built.manifest)))


def extract_rootfs(built, dest: Path) -> None:
    import gzip
    import io
    import tarfile

    dest.mkdir(parents=True)
    for layer in json.loads(built.manifest)["layers"]:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(built.blobs[layer["digest"]]))) as tf:
            tf.extractall(dest, filter="fully_trusted")


def timed(argv: list[str], env=None) -> tuple[float, float, int, str]:
    """(wall seconds, user+sys CPU seconds of the whole process tree, exit code, stderr tail)."""
    import resource

    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, err = p.communicate()
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return wall, cpu, p.returncode, err.decode(errors="replace")[-300:]


class Bench:
    def __init__(self, work: Path):
        self.work = work
        self.tools: dict[str, list[str]] = {}
        self.env: dict[str, dict] = {}
        self.errors: dict[str, str] = {}
        self.cleanups: list = []

    def setup(self) -> None:
        from fixtures.images import busybox_image

        bb = busybox_image()
        store = self.work / "store"
        add_image(store, bb, "docker.io/library/busybox:latest")
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGETOOL_")}
        env["PYTHONPATH"] = str(REPO)
        # an installed package has its bytecode cached; without it every start recompiles ~40 modules
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.base_env = env
        exe = shutil.which("imagetool") or sys.executable
        it = [exe] if exe.endswith("imagetool") else [sys.executable, "-m", "imagetool.cli"]
        self.tools["imagetool"] = it + ["--store", str(store), "run", "--rm", "busybox", "true"]

        rootfs = self.work / "bundle" / "rootfs"
        extract_rootfs(bb, rootfs)
        from imagetool.specgen import spec_from_image

        class Cfg:
            entrypoint, cmd, env, working_dir, user = None, ["true"], ["PATH=/bin"], None, None

        spec = spec_from_image(Cfg(), None, "rootfs", hostname="bench")
        (self.work / "bundle" / "config.json").write_text(json.dumps(spec))
        for rt in ("runc", "crun"):
            if shutil.which(rt):
                self.tools[rt] = [rt, "--root", str(self.work / f"{rt}-state"), "run", "--bundle",
                                  str(self.work / "bundle"), f"imagetool-bench-{rt}"]
            else:
                self.errors[rt] = "not installed"
        self.tools["unshare+chroot"] = ["unshare", "-fp", "--mount-proc", "chroot", str(rootfs), "/bin/busybox", "true"]
        self.tools["python -c pass"] = [sys.executable, "-c", "pass"]
        self.tools["python import typer"] = [sys.executable, "-c", "import typer"]
        self._setup_podman(bb)

    def add_big_image(self, scale: float) -> None:
        """The ~300 MB "debian-like" image of benchmarks/imagegen.py (cached), loaded from its layout."""
        from benchmarks.imagegen import generate

        layout = generate(scale)["debian"].layout
        it = self.tools["imagetool"][:-4]  # … --store S
        r = subprocess.run(it + ["load", "-i", str(layout)], capture_output=True, text=True, env=self.base_env)
        m = re.search(r"sha256:([0-9a-f]{64})", r.stdout)
        if r.returncode != 0 or not m:
            self.errors["imagetool (300 MB image)"] = (r.stderr or r.stdout).strip()[-300:]
            return
        self.tools["imagetool (300 MB image)"] = it + ["run", "--rm", m.group(1)[:12], "true"]

    def _setup_podman(self, bb) -> None:
        if not shutil.which("podman"):
            self.errors["podman"] = "not installed"
            return
        try:
            from fixtures.registry import RegistryServer

            reg = RegistryServer.start()
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            self.errors["podman"] = f"no registry: {e}"
            return
        self.cleanups.append(reg.stop)
        reg.push(bb, "bench/busybox:latest")
        image = f"{reg.host}/bench/busybox:latest"
        self.podman = ["podman", "--root", str(self.work / "podman-root"), "--runroot", str(self.work / "podman-run"),
                       "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                       "--storage-driver", "overlay"]
        r = subprocess.run(self.podman + ["pull", "-q", "--tls-verify=false", image], capture_output=True, text=True)
        if r.returncode != 0:
            self.errors["podman"] = r.stderr.strip()[-300:]
            return
        self.cleanups.append(lambda: subprocess.run(self.podman + ["system", "reset", "-f"], capture_output=True))
        # podman's default rlimits (NOFILE, NPROC) exceed this sandbox's hard limits (EPERM) and its
        # default crun refuses the hybrid cgroup layout: runc with docker's NOFILE 1024, as imagetool
        self.tools["podman"] = self.podman + ["run", "--rm", "--network", "none", "--runtime", "runc",
                                              "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                                              image, "true"]

    def measure(self, rounds: int, warmups: int) -> dict[str, list[float]]:
        samples: dict[str, list[float]] = {name: [] for name in self.tools}
        self.cpu: dict[str, list[float]] = {name: [] for name in self.tools}
        for i in range(warmups + rounds):
            for name, argv in list(self.tools.items()):
                if name in self.errors:
                    continue
                wall, cpu, rc, err = timed(argv, self.base_env)
                if rc != 0:
                    self.errors[name] = f"exit {rc}: {err.strip()}"
                    continue
                if i >= warmups:
                    samples[name].append(wall)
                    self.cpu[name].append(cpu)
        return samples

    def breakdown(self, runs: int) -> dict[str, float]:
        env = dict(self.base_env, IMAGETOOL_TRACE_TIMING="1")
        steps: dict[str, list[float]] = {}
        for _ in range(runs):
            _, _, rc, err = timed(self.tools["imagetool"], env)
            m = re.search(r"imagetool-timing: (.*)", err)
            if rc != 0 or not m:
                continue
            for kv in m.group(1).split():
                k, v = kv.split("=")
                steps.setdefault(k, []).append(float(v.rstrip("ms")))
        return {k: statistics.median(v) for k, v in steps.items()}

    def close(self) -> None:
        for c in reversed(self.cleanups):
            try:
                c()
            except Exception:  # noqa: BLE001
                pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--warmups", type=int, default=2)
    ap.add_argument("--json", help="also write the figures as JSON here")
    ap.add_argument("--big-scale", type=float, default=1.0,
                    help="size of the debian-like image (1.0 ≈ 300 MB; 0 to skip it)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run_start.py needs root (containers, cgroups)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="imagetool-bench-run-"))
    bench = Bench(work)
    try:
        bench.setup()
        if args.big_scale > 0:
            bench.add_big_image(args.big_scale)
        samples = bench.measure(args.rounds, args.warmups)
        breakdown = bench.breakdown(max(5, args.rounds // 2))
    finally:
        bench.close()
        subprocess.run(["umount", "-R", str(work / "podman-root")], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    med = {k: 1000 * statistics.median(v) for k, v in samples.items() if v}
    cpu = {k: 1000 * statistics.median(v) for k, v in bench.cpu.items() if v}
    print(f"load average: {open('/proc/loadavg').read().split()[:3]}")
    print(f"{'tool':22} {'median ms':>10} {'min ms':>8} {'cpu ms':>8} {'n':>3}   (cpu: user+sys of the process tree)")
    for k, v in samples.items():
        if v:
            print(f"{k:22} {med[k]:10.1f} {1000 * min(v):8.1f} {cpu[k]:8.1f} {len(v):3}")
    for k, e in bench.errors.items():
        print(f"{k:22} {'FAILED':>10}  {e.splitlines()[-1] if e else ''}")
    it = med.get("imagetool")
    if it and "imagetool (300 MB image)" in med:
        print(f"imagetool 300 MB image / busybox: {med['imagetool (300 MB image)'] / it:.2f}x")
    if it:
        for peer in ("podman", "crun", "runc", "unshare+chroot"):
            if peer in med:
                print(f"imagetool / {peer}: {it / med[peer]:.2f}x wall, {cpu['imagetool'] / cpu[peer]:.2f}x cpu")
    if breakdown:
        own = breakdown.get("total", 0.0)
        print("\nimagetool's own time (median ms, IMAGETOOL_TRACE_TIMING): " +
              " ".join(f"{k}={v:.1f}" for k, v in breakdown.items()))
        if it:
            print(f"before the run service starts (interpreter + imports): ~{it - own:.1f} ms of {it:.1f} ms")
        for peer in ("crun", "runc"):
            if peer in med:
                print(f"imagetool own work / {peer} whole run: {own / med[peer]:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"median_ms": med, "cpu_ms": cpu, "errors": bench.errors, "breakdown_ms": breakdown,
                                               "samples_s": samples}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
