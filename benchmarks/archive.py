"""imagetool load/save vs podman load/save vs skopeo copy, on the ~300 MB 5-layer image.

    sudo python3 -m benchmarks.archive [--runs 3] [--quick] [--json FILE]

Image: "debian" from benchmarks/imagegen.py (5 layers, ~300 MB uncompressed; --quick: 0.1 scale).
Two archives are made once with skopeo on a tmpfs work dir (/tmp/imagetool-bench-*, removed
afterwards): a docker-archive (uncompressed layers, as `docker save` writes them) and an
oci-archive (the gzip blobs as pushed). Operations, contenders alternating (A B C A B C …):

  load docker-archive   imagetool load -i | podman load -i | skopeo copy docker-archive: oci:
  load oci-archive      imagetool load -i | podman load -i | skopeo copy oci-archive: oci:
  save docker format    imagetool save | skopeo copy oci: docker-archive: | podman save
  save oci format       imagetool save --format oci | skopeo copy oci: oci-archive: | podman save --format oci-archive

Every run starts from an empty destination (store, podman root, oci dir, output file; not
timed). Reported: median wall seconds, imagetool/peer ratios (goal < 1), peak RSS (GNU time
%M of the whole process tree; goal < 100 MB for imagetool). podman uses the overlay driver
with a private --root on the tmpfs; it also extracts the layers, which imagetool load does not
(imagetool unpacks lazily at the first run), so podman does strictly more work.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import imagetool_command, log, rmtree, tmpfs_workdir, umount_all_under, which  # noqa: E402
from benchmarks.measure import RunFailed, run_once  # noqa: E402

NAME = "localhost/bench/debian:latest"


def _sh(argv: list) -> None:
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv[:4]))} … failed: {r.stderr.strip()[-400:]}")


class Podman:
    """podman with a private root on the work dir (overlay driver) and a short runroot."""

    def __init__(self, work: Path):
        self.root = work / "podman"
        self.runroot = Path(tempfile.mkdtemp(prefix="imagetool-bp-", dir="/tmp"))
        self.exe = which("podman")

    def argv(self, *args) -> list[str]:
        return [self.exe, "--root", str(self.root), "--runroot", str(self.runroot), "--storage-driver", "overlay",
                "--cgroup-manager", "cgroupfs", "--events-backend", "file", *map(str, args)]

    def reset(self) -> None:
        umount_all_under(self.root, include_self=True)
        umount_all_under(self.runroot, include_self=True)
        rmtree(self.root)
        shutil.rmtree(self.runroot, ignore_errors=True)
        self.runroot.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        self.reset()
        shutil.rmtree(self.runroot, ignore_errors=True)


def measure(contenders: dict, runs: int, scratch: Path) -> dict:
    """{tool: [(seconds, rss_kb)]}; contenders = {tool: (argv_fn, setup_fn, teardown_fn)}. Run 0 warms up."""
    samples: dict[str, list] = {t: [] for t in contenders}
    failed: dict[str, str] = {}
    for i in range(runs + 1):
        for tool, (argv, setup, teardown) in contenders.items():
            if tool in failed:
                continue
            if setup:
                setup()
            try:
                s = run_once(argv(), timeout=900, errfile=scratch / "stderr.txt")
                if i:
                    samples[tool].append((s.seconds, s.maxrss_kb))
            except RunFailed as e:
                failed[tool] = str(e)
                log(f"{tool} failed: {e}")
            finally:
                if teardown:
                    teardown()
    return {"samples": samples, "failed": failed}


def summarise(op: str, result: dict) -> dict:
    samples = result["samples"]
    med = {t: statistics.median(x for x, _ in s) for t, s in samples.items() if s}
    rss = {t: max(r for _, r in s) / 1024 for t, s in samples.items() if s}
    ratios = {f"imagetool/{t}": med["imagetool"] / m for t, m in med.items()
              if t != "imagetool" and "imagetool" in med}
    line = "  ".join(f"{t} {m:.2f}s ({rss[t]:.0f} MB)" for t, m in med.items())
    log(f"{op}: {line}  |  " + "  ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    return {"operation": op, "median_s": med, "peak_rss_mb": rss, "ratios": ratios,
            "failed": result["failed"], "runs": len(next(iter(samples.values()), []))}


def bench(work: Path, runs: int, scale: float) -> list[dict]:
    from benchmarks.imagegen import generate

    img = generate(scale)["debian"]
    log(img.describe)
    layout = work / "layout"
    shutil.copytree(img.layout, layout)
    skopeo = which("skopeo")
    docker_tar, oci_tar = work / "debian-docker.tar", work / "debian-oci.tar"
    _sh([skopeo, "--insecure-policy", "copy", "-q", "oci:" + str(layout) + ":latest", f"docker-archive:{docker_tar}:{NAME}"])
    _sh([skopeo, "--insecure-policy", "copy", "-q", "oci:" + str(layout) + ":latest", f"oci-archive:{oci_tar}:{NAME}"])
    log(f"docker-archive {docker_tar.stat().st_size / 1e6:.0f} MB, oci-archive {oci_tar.stat().st_size / 1e6:.0f} MB")
    imagetool = imagetool_command()
    store, dest, out = work / "store", work / "dest", work / "out.tar"
    podman = Podman(work) if which("podman") else None
    rows = []

    def clean_store():
        rmtree(store)

    def clean_dest():
        rmtree(dest)

    def clean_out():
        out.unlink(missing_ok=True)

    try:
        for kind, archive, transport in (("docker-archive", docker_tar, "docker-archive"),
                                         ("oci-archive", oci_tar, "oci-archive")):
            contenders = {
                "imagetool": (lambda a=archive: [*imagetool, "--store", str(store), "load", "-i", str(a)], None, clean_store),
                "skopeo": (lambda a=archive, t=transport: [skopeo, "--insecure-policy", "copy", "-q", f"{t}:{a}",
                                                            f"oci:{dest}:latest"], None, clean_dest),
            }
            if podman:
                contenders["podman"] = (lambda a=archive: podman.argv("load", "-q", "-i", a), None, podman.reset)
            rows.append(summarise(f"load {kind}", measure(contenders, runs, work)))

        # save: from a store / podman storage / OCI layout that already holds the image
        _sh([*imagetool, "--store", str(store), "load", "-i", str(oci_tar)])
        if podman:
            podman.reset()
            _sh(podman.argv("load", "-q", "-i", oci_tar))
        for fmt, transport, pod_fmt in (("docker", "docker-archive", "docker-archive"), ("oci", "oci-archive", "oci-archive")):
            contenders = {
                "imagetool": (lambda f=fmt: [*imagetool, "--store", str(store), "save", "--format", f, "-o", str(out), NAME],
                              None, clean_out),
                "skopeo": (lambda t=transport: [skopeo, "--insecure-policy", "copy", "-q", f"oci:{layout}:latest",
                                                f"{t}:{out}:{NAME}"], None, clean_out),
            }
            if podman:
                contenders["podman"] = (lambda f=pod_fmt: podman.argv("save", "-q", "--format", f, "-o", out, NAME),
                                        None, clean_out)
            rows.append(summarise(f"save {fmt} format", measure(contenders, runs, work)))
    finally:
        if podman:
            podman.close()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="0.1 scale image (~30 MB)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if not which("skopeo"):
        log("skopeo is required (apt-get install skopeo)")
        return 2
    with tmpfs_workdir() as work:
        rows = bench(work, args.runs, 0.1 if args.quick else 1.0)
    print("| operation | " + " | ".join(["imagetool", "podman", "skopeo"]) + " | ratios | imagetool peak RSS |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cells = [f"{r['median_s'][t]:.2f}s" if t in r["median_s"] else r["failed"].get(t, "n/a")
                 for t in ("imagetool", "podman", "skopeo")]
        ratios = ", ".join(f"{k} {v:.2f}" for k, v in r["ratios"].items())
        print(f"| {r['operation']} | " + " | ".join(cells) + f" | {ratios} | {r['peak_rss_mb'].get('imagetool', 0):.0f} MB |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
