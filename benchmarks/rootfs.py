"""Container rootfs creation time per image: the overlay plan plus the mount, which must not grow
with the image's size (the snapshots already exist). Used by benchmarks/run for its rootfs rows."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from benchmarks.common import log


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


def bench_rootfs(work: Path, images: dict, runs: int) -> list[dict]:
    """Per image: snapshots built once, then `runs` timed plan+mount+umount rounds (medians)."""
    from store import Store

    from imagetool import image as images_mod
    from imagetool.unpack.rootfs import overlay_mount
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
            plan = overlay_mount(st, image, cdir)
            t1 = time.perf_counter()
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o", ",".join(plan.options), str(plan.target)],
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
