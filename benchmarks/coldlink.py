"""Cold run over a slower link: where building snapshots while blobs download pays off.

    sudo .venv/bin/python -m benchmarks.coldlink [--rate BYTES_PER_S] [--runs N] [--scale 1|0.1]

Starts a loopback docker-registry with the bench "debian" image (benchmarks/imagegen.py, the
cached layout), puts fixtures/proxy.py's throttle in front of it (`rate` bytes/s per blob
request; 3 layers download at once) and times, alternating round by round, on an empty store
under /dev/shm each time: `imagetool run --rm IMAGE true` (pull pipelined with unpack) and
`imagetool pull --no-unpack` then `imagetool run --rm` (the blobs first, every layer unpacked after:
what a cold run did before). Prints medians, minima and the peak RSS (GNU time) of each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

from benchmarks.common import REPO, imagetool_command
from benchmarks.imagegen import REF, generate


def main() -> int:
    p = argparse.ArgumentParser(prog="benchmarks.coldlink", description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=int, default=40_000_000, help="bytes per second per blob request")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--scale", type=float, default=1.0, help="image size (1: ~316 MB, 0.1: quick)")
    args = p.parse_args()
    sys.path.insert(0, str(REPO))
    from fixtures.proxy import Fault, FaultProxy
    from fixtures.registry import RegistryServer

    image = generate(args.scale)["debian"]
    it = imagetool_command()
    work = f"/dev/shm/imagetool-coldlink-{os.getpid()}"
    reg = RegistryServer.start()
    try:
        reg.push_layout(image.layout, REF, "bench/debian:latest")
        with FaultProxy(reg.url) as proxy:
            proxy.add(Fault("throttle", r"/blobs/", times=None, rate=args.rate))
            ref = f"{proxy.host}/bench/debian:latest"
            store = f"{work}/store"
            variants = {
                "imagetool run --rm (pipelined)": [[*it, "--store", store, "run", "--rm", "--network", "none", ref, "true"]],
                "pull --no-unpack, then run --rm": [[*it, "--store", store, "pull", "-q", "--no-unpack", ref],
                                                    [*it, "--store", store, "run", "--rm", "--network", "none", ref, "true"]],
            }
            samples: dict = {k: [] for k in variants}
            for _ in range(args.runs):
                for name, commands in variants.items():
                    shutil.rmtree(work, ignore_errors=True)
                    os.makedirs(work)
                    start, rss = time.perf_counter(), 0
                    for argv in commands:
                        r = subprocess.run(["/usr/bin/time", "-f", "%M", *argv], capture_output=True, text=True)
                        if r.returncode != 0:
                            print(f"{name}: failed: {r.stderr.strip()[-300:]}", file=sys.stderr)
                            return 1
                        rss = max(rss, int(r.stderr.strip().splitlines()[-1]))
                    samples[name].append((time.perf_counter() - start, rss / 1024))
        print(f"cold run of {ref.split('/', 1)[1]} ({image.tar_bytes / 1e6:.0f} MB uncompressed), "
              f"{args.rate / 1e6:g} MB/s per blob request, {args.runs} runs, load {os.getloadavg()[0]:.1f}")
        for name, v in samples.items():
            times = [t for t, _ in v]
            print(f"  {name:34s} median {statistics.median(times):.2f} s  min {min(times):.2f} s  "
                  f"peak RSS {max(m for _, m in v):.0f} MB")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
        reg.stop()


if __name__ == "__main__":
    sys.exit(main())
