"""imagetool unpack vs `umoci unpack` vs GNU `tar -xzf` of the same layer blobs, plus rootfs creation.

    sudo python3 -m benchmarks.unpack [--runs 5] [--quick] [--json FILE] [--profile]

Images (benchmarks/imagegen.py, cached): busybox (1 layer) and "debian" (5 gzip layers, ~300 MB
uncompressed: ~20k small files, a few large incompressible ones, whiteouts); --quick uses the
0.1 scale. Everything runs on a tmpfs work dir (/tmp/imagetool-bench-*, removed afterwards): the
store and the OCI layout are copied there first. Each run unpacks into a fresh directory; the
contenders alternate (A B C D A B C D …); the report gives median wall times, the ratios
imagetool/umoci (goal < 1) and imagetool/tar (goal ≤ 1.3) and each tool's peak RSS (wait4).
"imagetool-service" is the same unpack service started without the CLI (`python -c`), to show
what the unpack engine costs apart from the CLI's start-up (typer imports pydantic).
GNU tar is the practical floor: it applies no whiteouts and checks no digests.

Rootfs: the time to create a container root filesystem for busybox and for debian when the
snapshots exist (overlay_plan + the overlay mount + umount), which must not grow with image size;
and, for information, the one-time cost of extracting the snapshots.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import imagetool_command, log, python_command, tmpfs_workdir  # noqa: E402


def timed(argv: list[str], env: dict | None = None) -> tuple[float, int]:
    """(wall seconds, peak RSS in KiB) of one command; raises when it fails."""
    start = time.perf_counter()
    p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - start
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} … failed ({rc}): {err.strip()[-500:]}")
    return wall, usage.ru_maxrss


def import_layout(store, layout: Path, name: str) -> str:
    """Copy an OCI layout's single image into the store and tag it `name`."""
    from store import Descriptor, Digest

    index = json.loads((layout / "index.json").read_text())
    m = index["manifests"][0]
    for blob in (layout / "blobs" / "sha256").iterdir():
        with store.ingest(Digest.parse("sha256:" + blob.name)) as w:
            if not w.exists:
                with open(blob, "rb") as f:
                    while chunk := f.read(1 << 20):
                        w.write(chunk)
                w.commit()
    store.tag(name, Descriptor(m["mediaType"], Digest.parse(m["digest"]), m["size"]))
    return name


def bench_unpack(work: Path, images: dict, runs: int) -> list[dict]:
    from store import Store

    store_dir = work / "store"
    st = Store.open(store_dir)
    imagetool = imagetool_command()
    rows = []
    for name, img in images.items():
        layout = work / f"layout-{name}"
        shutil.copytree(img.layout, layout)
        ref = import_layout(st, layout, f"localhost/bench/{name}:latest")
        blobs = [layout / "blobs" / "sha256" / b.name for b in img.layer_blobs()]
        tar_script = "set -e; mkdir \"$0\"; for b in \"$@\"; do tar -xzf \"$b\" -C \"$0\"; done"
        service = ("import sys; from store import Store; from imagetool.unpack import unpack_image; "
                   "unpack_image(Store.open(sys.argv[1]), sys.argv[2], sys.argv[3])")
        contenders = {
            "imagetool": lambda out: [*imagetool, "--store", str(store_dir), "unpack", ref, str(out)],
            # the same service without the CLI (typer's import of pydantic costs ~0.2-0.5 s per command)
            "imagetool-service": lambda out: [python_command(), "-c", service, str(store_dir), ref, str(out)],
            "umoci": lambda out: ["umoci", "unpack", "--image", f"{layout}:latest", str(out)],
            "tar": lambda out: ["sh", "-c", tar_script, str(out), *map(str, blobs)],
        }
        samples: dict[str, list] = {k: [] for k in contenders}
        for i in range(runs + 1):           # run 0 is a warm-up (page cache, pyc files)
            for tool, argv in contenders.items():
                out = work / f"out-{tool}"
                wall, rss = timed(argv(out))
                if i:
                    samples[tool].append((wall, rss))
                shutil.rmtree(out)
        med = {t: statistics.median(w for w, _ in s) for t, s in samples.items()}
        rss = {t: max(r for _, r in s) for t, s in samples.items()}
        row = {"image": img.describe, "name": name, "runs": runs,
               "median_s": med, "peak_rss_kib": rss,
               "imagetool/umoci": med["imagetool"] / med["umoci"],
               "imagetool/tar": med["imagetool"] / med["tar"],
               "service/umoci": med["imagetool-service"] / med["umoci"],
               "service/tar": med["imagetool-service"] / med["tar"]}
        log(f"{name}: imagetool {med['imagetool']:.3f}s  umoci {med['umoci']:.3f}s  tar {med['tar']:.3f}s  "
            f"ratio/umoci {row['imagetool/umoci']:.2f}  ratio/tar {row['imagetool/tar']:.2f}  "
            f"RSS imagetool {rss['imagetool'] / 1024:.0f} MB  |  service {med['imagetool-service']:.3f}s "
            f"ratio/umoci {row['service/umoci']:.2f} ratio/tar {row['service/tar']:.2f}")
        rows.append(row)
    return rows


def bench_rootfs(work: Path, images: dict, runs: int) -> list[dict]:
    from store import Store

    from imagetool import image as images_mod
    from imagetool.unpack.rootfs import overlay_plan
    from imagetool.unpack.snapshots import ensure_snapshots

    st = Store.open(work / "store")
    rows = []
    for name in images:
        image = images_mod.load(st, f"localhost/bench/{name}:latest")
        t = time.perf_counter()
        ensure_snapshots(st, image)
        snap_s = time.perf_counter() - t
        plan_s, total_s = [], []
        for i in range(runs + 1):
            cdir = work / "containers" / f"{name}-{i}"
            t0 = time.perf_counter()
            plan = overlay_plan(st, image, cdir)
            t1 = time.perf_counter()
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o", plan.data, str(plan.target)],
                           cwd=plan.cwd, check=True, capture_output=True)
            t2 = time.perf_counter()
            subprocess.run(["umount", str(plan.target)], check=True, capture_output=True)
            if i:
                plan_s.append(t1 - t0)
                total_s.append(t2 - t0)
            shutil.rmtree(cdir)
        row = {"name": name, "snapshots_once_s": snap_s, "plan_median_s": statistics.median(plan_s),
               "plan_plus_mount_median_s": statistics.median(total_s)}
        log(f"{name}: rootfs plan {row['plan_median_s'] * 1000:.1f} ms, plan+mount "
            f"{row['plan_plus_mount_median_s'] * 1000:.1f} ms (snapshots once: {snap_s:.2f}s)")
        rows.append(row)
    return rows


def profile(work: Path, name: str) -> str:
    """cProfile of one in-process flatten of `name` (top functions by own time)."""
    import cProfile
    import io
    import pstats

    from store import Store

    from imagetool.unpack import unpack_image

    st = Store.open(work / "store")
    out = work / "out-profile"
    prof = cProfile.Profile()
    prof.runcall(unpack_image, st, f"localhost/bench/{name}:latest", out)
    shutil.rmtree(out)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
    return buf.getvalue()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="the 0.1-scale debian image (~30 MB)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of imagetool on debian")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        log("needs root (umoci and imagetool unpack as root, overlay mounts, tmpfs)")
        return 2
    from benchmarks.imagegen import generate

    gen = generate(0.1 if args.quick else 1.0)
    images = {"busybox": gen["busybox"], "debian": gen["debian"]}
    with tmpfs_workdir("8g") as work:
        result = {"unpack": bench_unpack(work, images, args.runs),
                  "rootfs": bench_rootfs(work, images, args.runs)}
        if args.profile:
            print(profile(work, "debian"))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
