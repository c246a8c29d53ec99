"""imagetool pull vs `skopeo copy docker://… oci:…`, side by side against one loopback registry.

    sudo python3 -m benchmarks.pull [--runs N] [--big-mb 300] [--layers 5] [--json FILE]

Images: busybox (from the host's busybox-static) and a generated image of `--layers` random
layers totalling about `--big-mb` MB. Each run writes into a fresh destination on a tmpfs
(/tmp/imagetool-bench-*, unmounted afterwards), runs alternate A B A B, and the report gives
median wall times, the ratio imagetool/skopeo (goal ≤ 1.0) and imagetool's peak RSS (goal
< 100 MB, from wait4's ru_maxrss of the imagetool process).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import imagetool_command, log, tmpfs_workdir  # noqa: E402


TIME = "/usr/bin/time"


def timed(argv: list[str], env: dict, rss_file: Path) -> tuple[float, int, float]:
    """(wall seconds, peak RSS in KiB, user+sys CPU seconds) of one command; raises when it fails.

    The RSS comes from `/usr/bin/time -f %M` (GNU time forks the command itself, so the peak is
    the command's own; wait4's ru_maxrss here would include this big benchmark process, whose
    pages a forked child starts with). Wall time is measured here around the whole thing."""
    cmd = [TIME, "-f", "%M %U %S", "-o", str(rss_file), *argv] if os.path.exists(TIME) else argv
    start = time.perf_counter()
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} … failed ({r.returncode}): "
                           f"{r.stderr.decode(errors='replace').strip()[-500:]}")
    try:
        rss, user, sys_ = rss_file.read_text().split()[-3:]
        return wall, int(rss), float(user) + float(sys_)
    except (OSError, ValueError):
        return wall, 0, 0.0


def build_images(big_mb: int, layers: int):
    from fixtures.images import Layer, build_image, busybox_image
    from fixtures.tarbuild import file

    per = (big_mb << 20) // layers
    log(f"generating a {layers}-layer image of ~{big_mb} MB (random, gzip)")
    big = build_image([Layer([file(f"layer{i}.bin", os.urandom(per))]) for i in range(layers)])
    return {"busybox": busybox_image(), f"big{big_mb}": big}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="runs per tool and image (default 5)")
    ap.add_argument("--big-mb", type=int, default=300)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ap.add_argument("--max-concurrent", type=int, default=None,
                    help="imagetool --max-concurrent-downloads (default: imagetool's own, 3)")
    ap.add_argument("--only", help="only the image whose name contains this (busybox, big…)")
    args = ap.parse_args(argv)
    if not shutil.which("skopeo"):
        log("skopeo is not installed")
        return 2
    from fixtures.registry import RegistryServer

    imagetool = imagetool_command()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGETOOL_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    scratch_cfg = Path(tempfile.mkdtemp(prefix="imagetool-bench-cfg-"))
    env["IMAGETOOL_CONFIG_DIR"] = str(scratch_cfg)
    env["DOCKER_CONFIG"] = str(scratch_cfg / "docker")
    env["REGISTRY_AUTH_FILE"] = str(scratch_cfg / "auth.json")
    policy = scratch_cfg / "policy.json"
    rss_file = scratch_cfg / "rss"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    results = {}
    try:
        images = build_images(args.big_mb, args.layers)
        with RegistryServer.start() as reg, tmpfs_workdir(size=f"{max(2, args.big_mb * 3 // 1024 + 1)}g") as work:
            for name, img in images.items():
                reg.push(img, f"bench/{name}:latest")
            for name, img in images.items():
                if args.only and args.only not in name:
                    continue
                ref = f"{reg.host}/bench/{name}:latest"
                size = sum(len(b) for b in img.blobs.values())
                it_times, sk_times, rss, it_cpu, sk_cpu = [], [], [], [], []
                for i in range(args.runs + 1):  # run 0 is a warm-up for both, not counted
                    dest = work / f"it-{i}"
                    extra = ["--max-concurrent-downloads", str(args.max_concurrent)] if args.max_concurrent else []
                    wall, peak, cpu = timed([*imagetool, "--store", str(dest), "pull", "-q", *extra, ref], env, rss_file)
                    shutil.rmtree(dest)
                    dest = work / f"sk-{i}"
                    wall_b, _, cpu_b = timed(["skopeo", "--policy", str(policy), "copy", "--quiet",
                                       "--src-tls-verify=false", f"docker://{ref}", f"oci:{dest}:latest"],
                                      env, rss_file)
                    shutil.rmtree(dest)
                    if i:
                        it_times.append(wall)
                        sk_times.append(wall_b)
                        rss.append(peak)
                        it_cpu.append(cpu)
                        sk_cpu.append(cpu_b)
                a, b = statistics.median(it_times), statistics.median(sk_times)
                results[name] = {"bytes": size, "runs": args.runs, "imagetool_s": it_times, "skopeo_s": sk_times,
                                 "imagetool_median_s": a, "skopeo_median_s": b, "ratio": a / b,
                                 "imagetool_peak_rss_mb": max(rss) / 1024,
                                 "imagetool_cpu_median_s": statistics.median(it_cpu),
                                 "skopeo_cpu_median_s": statistics.median(sk_cpu),
                                 "load_average": os.getloadavg()[0]}
                log(f"{name}: imagetool {a:.3f}s  skopeo {b:.3f}s  ratio {a / b:.2f}  "
                    f"peak RSS {max(rss) / 1024:.1f} MB  CPU {statistics.median(it_cpu):.2f}s vs "
                    f"{statistics.median(sk_cpu):.2f}s  (load {os.getloadavg()[0]:.1f})")
    finally:
        shutil.rmtree(scratch_cfg, ignore_errors=True)
    print(f"{'image':<10} {'size':>9} {'imagetool':>10} {'skopeo':>9} {'ratio':>6} {'RSS MB':>7} "
          f"{'CPU it':>7} {'CPU sk':>7}")
    for name, r in results.items():
        print(f"{name:<10} {r['bytes'] / 1e6:>7.1f}MB {r['imagetool_median_s']:>9.3f}s "
              f"{r['skopeo_median_s']:>8.3f}s {r['ratio']:>6.2f} {r['imagetool_peak_rss_mb']:>7.1f} "
              f"{r['imagetool_cpu_median_s']:>6.2f}s {r['skopeo_cpu_median_s']:>6.2f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
