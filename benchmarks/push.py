"""push and copy side by side with skopeo (issue 15's benchmark), apart from the main suite.

    sudo .venv/bin/python -m benchmarks.push [--quick] [--runs N]

On a tmpfs work dir with a loopback docker-registry: the debian-like image (5 gzip layers) pushed
to a fresh repository by `imagetool push` (the service, `python -c`, as the CLI has no push yet)
and by `skopeo copy oci:… docker://…` and `podman push` (a podman root of its own in the work
dir, the image pulled into it from the OCI layout; podman recompresses its stored layers, as it
does for its users); the same pushes again with every blob present; and `copy docker:// → oci:`
(a fresh directory) by imagetool and skopeo. Rounds alternate the tools (A B A B …);
the table gives medians of wall time and peak RSS (GNU time, the process tree) and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from benchmarks.common import tmpfs_workdir
from benchmarks.imagegen import REF, generate
from benchmarks.measure import run_once

PY = sys.executable
STORE_NAME = "bench.local/debian:latest"  # another domain: nothing to mount from in the registry


def _imagetool(code: str, *args) -> list:
    return [PY, "-c", "import sys; from store import Store; " + code, *map(str, args)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args(argv)
    from fixtures.registry import RegistryServer

    img = generate(0.1 if a.quick else 1.0)["debian"]
    env = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent), "PYTHONDONTWRITEBYTECODE": "1"}
    rows = {}
    with tmpfs_workdir() as work:
        for k, v in {"IMAGETOOL_CONFIG_DIR": "cfg", "DOCKER_CONFIG": "docker"}.items():
            env[k] = str(work / v)
        env["REGISTRY_AUTH_FILE"] = str(work / "docker" / "auth.json")
        (work / "docker").mkdir(exist_ok=True)
        (work / "docker" / "auth.json").write_text("{}")   # podman refuses a missing one
        store = work / "store"
        from store import Store

        from imagetool.archive import load_images

        load_layout = work / "load"
        import shutil

        shutil.copytree(img.layout, load_layout)
        idx = json.loads((load_layout / "index.json").read_text())
        idx["manifests"][0].setdefault("annotations", {})["io.containerd.image.name"] = STORE_NAME
        (load_layout / "index.json").write_text(json.dumps(idx))
        load_images(Store.open(store), str(load_layout))
        reg = RegistryServer.start()
        try:
            policy = reg._policy()
            skopeo = ["skopeo", "--policy", str(policy), "copy", "--quiet", "--dest-tls-verify=false"]
            push_code = "from imagetool.push import push; push(Store.open(sys.argv[1]), sys.argv[2], dest=sys.argv[3])"
            copy_code = "from imagetool.transfer import copy; copy(Store.open(sys.argv[1]), sys.argv[2], sys.argv[3])"
            podman = None
            if shutil.which("podman"):
                podman = ["podman", "--root", str(work / "podman/root"), "--runroot", str(work / "podman/run"),
                          "--tmpdir", str(work / "podman/tmp"), "--storage-driver", "overlay",
                          "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
                import subprocess

                # podman names the image after the layout's path, which must parse as a reference
                # (the work dir's random suffix may not): a fixed, removed-after path
                src = Path("/tmp/imagetoolbenchpodmansrc")
                shutil.rmtree(src, ignore_errors=True)
                shutil.copytree(img.layout, src)
                try:
                    subprocess.run([*podman, "pull", "-q", f"oci:{src}:{REF}"], check=True, capture_output=True)
                finally:
                    shutil.rmtree(src, ignore_errors=True)
                ids = subprocess.run([*podman, "images", "-q"], check=True, capture_output=True, text=True).stdout.split()
                subprocess.run([*podman, "tag", ids[0], STORE_NAME], check=True, capture_output=True)
                podman_push = [*podman, "push", "--quiet", "--tls-verify=false", STORE_NAME]
            # a fresh push goes to a registry of its own each time: skopeo's blob-info cache would
            # otherwise mount the blobs from the previous round's repository
            ops = {
                "push debian (fresh registry)": [
                    ("imagetool", lambda h: _imagetool(push_code, store, STORE_NAME, f"{h}/bench/push:latest")),
                    ("skopeo", lambda h: skopeo + [f"oci:{img.layout}:{REF}", f"docker://{h}/bench/push:latest"])],
                "re-push debian (all present)": [
                    ("imagetool", lambda h: _imagetool(push_code, store, STORE_NAME, f"{reg.host}/bench/again:latest")),
                    ("skopeo", lambda h: skopeo + [f"oci:{img.layout}:{REF}", f"docker://{reg.host}/bench/again:latest"])],
                "copy docker:// -> oci: (fresh dir)": [
                    ("imagetool", lambda h: _imagetool(copy_code, store, f"docker://{reg.host}/bench/again:latest",
                                                       f"oci:{work / ('oci-%d' % fresh_dir())}:latest")),
                    ("skopeo", lambda h: ["skopeo", "--policy", str(policy), "copy", "--quiet", "--src-tls-verify=false",
                                          f"docker://{reg.host}/bench/again:latest",
                                          f"oci:{work / ('oci-%d' % fresh_dir())}:latest"])],
            }
            if podman:
                ops["push debian (fresh registry)"].append(
                    ("podman", lambda h: podman_push + [f"docker://{h}/bench/push:latest"]))
                ops["re-push debian (all present)"].append(
                    ("podman", lambda h: podman_push + [f"docker://{reg.host}/bench/podman:latest"]))
            counter = [0]

            def fresh_dir() -> int:
                counter[0] += 1
                return counter[0]

            for name, tools in ops.items():
                samples = {t: [] for t, _ in tools}
                for i in range(a.runs + 1):  # one warm-up round
                    for tool, argv in tools:
                        own = RegistryServer.start() if "fresh registry" in name else None
                        try:
                            s = run_once(argv(own.host if own else reg.host), timeout=600, env=env,
                                         errfile=work / "err.txt")
                        finally:
                            if own:
                                own.stop()
                        if i:
                            samples[tool].append(s)
                rows[name] = samples
        finally:
            reg.stop()
    print(f"| operation ({img.blob_bytes / 1e6:.0f} MB of blobs) | tool | median s | imagetool/tool | peak RSS MB |")
    print("|---|---|---|---|---|")
    for name, samples in rows.items():
        med = {t: statistics.median(s.seconds for s in v) for t, v in samples.items()}
        for tool, v in samples.items():
            rss = statistics.median(s.maxrss_kb for s in v) / 1024
            ratio = "" if tool == "imagetool" else f"{med['imagetool'] / med[tool]:.2f}"
            print(f"| {name} | {tool} | {med[tool]:.2f} | {ratio} | {rss:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
