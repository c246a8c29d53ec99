"""`benchmarks/run [--quick] [--only TEXT] [--runs N] [--warmups N] [--no-write]`: the one benchmark command.

Installs missing peers (root + apt), generates the images (cached), mounts a tmpfs work dir,
starts a loopback docker-registry, pushes the images with skopeo, runs every operation of
`specs.operations`, writes benchmarks/results/<date>-<host>.md and prints a short summary.
"""

from __future__ import annotations

import argparse
import os
import datetime as dt
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks import common
from benchmarks.common import RESULTS, log


def parse(argv):
    p = argparse.ArgumentParser(prog="benchmarks/run", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller images (1/10), fewer runs: a smoke check < 3 min")
    p.add_argument("--only", action="append", default=[], metavar="TEXT",
                   help="run only operations whose name contains TEXT (repeatable)")
    p.add_argument("--runs", type=int, help="counted runs per tool (default 5, quick 3)")
    p.add_argument("--warmups", type=int, help="warm-up runs per tool (default 1)")
    p.add_argument("--budget", type=float, help="seconds an operation may spend on extra counted runs when its "
                                                  "rounds are cheap (default 30, quick 6; 0: exactly --runs)")
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                   help="two extra runs of each imagetool command (-X importtime, cProfile) for the report "
                        "(default: on, off with --quick)")
    p.add_argument("--no-write", action="store_true", help="print the report instead of writing results/")
    p.add_argument("--output", help="write the report here instead of benchmarks/results/<date>-<host>.md")
    p.add_argument("--editable", action="store_true",
                   help="measure the checkout's editable install (.venv) instead of the headline install (a "
                        "non-editable `pip install .` into a venv of /usr/bin/python3, made for this run)")
    p.add_argument("--scaling", action="store_true",
                   help="also the scaling table: pull and unpack of ~50 MB, ~300 MB and ~1.2 GB images and of 1, "
                        "16 and 64 layers beside skopeo and umoci (time and peak RSS; see benchmarks/scaling.py)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    started = time.monotonic()
    runs = args.runs or (3 if args.quick else 5)
    warmups = 1 if args.warmups is None else args.warmups
    budget = (6.0 if args.quick else 30.0) if args.budget is None else args.budget
    scale = 0.1 if args.quick else 1.0
    profile = (not args.quick) if args.profile is None else args.profile

    if args.editable:  # imagetool runs from this checkout even when the installed copy is stale or elsewhere
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(common.REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    else:  # the installed copy, not this checkout, is what the headline measures
        os.environ.pop("PYTHONPATH", None)
    tools = common.ensure_peers()
    for name in ("skopeo", "docker-registry"):
        if not tools.get(name):
            log(f"error: {name} is required (the registry and the image push need it)")
            return 2

    from benchmarks.imagegen import generate

    images = generate(scale)
    scaling_images = {}
    if args.scaling:
        from benchmarks import scaling

        scaling_images = scaling.generate(scale, images)
        images.update({img.name: img for img in scaling_images.values() if img.name not in images})
    # fresh bytecode: with PYTHONDONTWRITEBYTECODE set, an edited module would be recompiled on
    # every measured start (~18 ms), which measures the environment, not imagetool
    subprocess.run([sys.executable, "-m", "compileall", "-q", *(str(common.REPO / d) for d in ("imagetool", "store"))],
                   check=False)
    editable = common.imagetool_command()
    venv_dir = None
    if args.editable:
        imagetool = editable
    else:  # on disk, as users have it (not on the tmpfs); removed at the end
        venv_dir = tempfile.mkdtemp(prefix="imagetool-bench-venv-")
        log(f"headline install: venv of {common.HEADLINE_PYTHON} + pip install . in {venv_dir} …")
        imagetool = common.headline_install(common.Path(venv_dir) / "venv")
    log(f"imagetool: {' '.join(imagetool)}")
    try:
        return _measure(args, started, runs, warmups, budget, scale, profile, tools, images, imagetool, editable,
                        scaling_images)
    finally:
        if venv_dir:
            shutil.rmtree(venv_dir, ignore_errors=True)


def _measure(args, started, runs, warmups, budget, scale, profile, tools, images, imagetool, editable,
             scaling_images) -> int:
    from fixtures.registry import RegistryServer

    from benchmarks import scaling, specs
    from benchmarks.measure import profile_imagetool, run_operation, trace_breakdown
    from benchmarks.report import markdown, summary

    results = []
    profiles = {}
    rootfs = None
    breakdowns = {}
    # the scaling rows need room for the ~1.2 GB image's layout, registry copy, stores and targets
    with common.tmpfs_workdir("16g" if scaling_images else "6g") as work:
        machine = common.machine_description(work, tools)
        machine["imagetool"] = _imagetool_version(imagetool)
        machine["python"] = f"{_python_version(common.python_command(imagetool))} ({common.python_command(imagetool)})"
        machine["install"] = ("editable (the checkout's .venv, PYTHONPATH = the checkout)" if args.editable else
                              f"headline: non-editable `pip install .` into a venv of {common.HEADLINE_PYTHON}")
        layouts = work / "layouts"
        layouts.mkdir()
        local = {}
        for name, img in images.items():  # the sources the peers read live on the tmpfs too
            dst = layouts / name
            shutil.copytree(img.layout, dst)
            local[name] = type(img)(img.name, dst, img.layers, img.files, img.tar_bytes, img.blob_bytes)
        old_tmp = tempfile.tempdir
        tempfile.tempdir = str(work)  # the registry's storage on the tmpfs as well
        try:
            registry = RegistryServer.start()
        finally:
            tempfile.tempdir = old_tmp
        try:
            # no host configuration or credentials leak in: every tool gets empty config dirs (set
            # after the registry started: distribution reads REGISTRY_* variables as its config)
            cfg = work / "config"
            (cfg / "imagetool").mkdir(parents=True)
            (cfg / "auth.json").write_text('{"auths": {}}\n')
            os.environ.update(IMAGETOOL_CONFIG_DIR=str(cfg / "imagetool"), DOCKER_CONFIG=str(cfg / "docker"),
                              REGISTRY_AUTH_FILE=str(cfg / "auth.json"))
            os.environ.pop("IMAGETOOL_STORE", None)
            for name, img in local.items():
                registry.push_layout(img.layout, "latest", f"bench/{name}:latest")
            log(f"registry {registry.host}: pushed {', '.join(local)}")
            ctx = specs.Context(work=work, registry=registry.host, images=local, imagetool=imagetool,
                                python=common.python_command(imagetool), tools=tools, quick=args.quick,
                                editable=None if editable == imagetool else editable)
            ops = specs.operations(ctx)
            if scaling_images:
                ops += scaling.operations(ctx, scaling_images)
            if args.only:
                ops = [o for o in ops if any(t.lower() in o.name.lower() for t in args.only)]
            try:
                for op in ops:
                    os.sync()  # let the previous operation's writes and frees settle first
                    time.sleep(1.0)
                    t0 = time.monotonic()
                    log(f"{op.name} …")
                    scratch = work / "scratch"
                    scratch.mkdir(exist_ok=True)
                    big = op.group.startswith("scaling")   # rounds of tens of seconds: the fixed count
                    res = run_operation(op, warmups, scaling.RUNS if big else runs, scratch, budget=0 if big else budget)
                    results.append(res)
                    if op.group == "run" and res.imagetool.ok:
                        breakdowns[op.image] = trace_breakdown(op, scratch, runs)
                    if profile and res.imagetool.ok and op.group != "baseline" and not big:
                        profiles[op.name] = profile_imagetool(op, imagetool, ctx.python, scratch)
                    log(f"{op.name}: done in {time.monotonic() - t0:.0f} s")
                if not args.only or any(t.lower() in ROOTFS_NAME for t in args.only):
                    log(f"{ROOTFS_NAME} …")
                    rootfs = rootfs_figures(work / "rootfs", local, runs)
            finally:
                specs.cleanup(ctx)
        finally:
            registry.stop()

    machine["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    now = dt.datetime.now(dt.timezone.utc)
    meta = {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "mode": "quick" if args.quick else "full",
            "command": "benchmarks/run" + (" --quick" if args.quick else "") + (" --editable" if args.editable else "")
                       + (" --scaling" if args.scaling else "") + "".join(f" --only {o!r}" for o in args.only),
            "warmups": warmups, "runs": runs, "elapsed": time.monotonic() - started}
    meta["fallbacks"] = list(ctx.fallbacks) if "ctx" in locals() else []
    text = markdown(results, machine, meta, [i.describe for i in images.values()], profiles, rootfs, breakdowns,
                    scaling_images)
    print(summary(results))
    if args.no_write:
        print(text)
    else:
        out = args.output or RESULTS / f"{now:%Y-%m-%d}-{platform.node() or 'host'}{'-quick' if args.quick else ''}.md"
        out = RESULTS.__class__(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        log(f"report written to {out}")
    log(f"total {time.monotonic() - started:.0f} s")
    return 0


ROOTFS_NAME = "rootfs (overlay plan + mount)"


def rootfs_figures(work, images: dict, runs: int):
    """Container rootfs creation time per image, from benchmarks/rootfs.py's in-process measure
    (overlay plan + mount + umount with the snapshots present). A list of dicts, or the reason why not."""
    try:
        from store import Store

        from benchmarks.rootfs import bench_rootfs, import_layout

        work.mkdir(parents=True, exist_ok=True)
        st = Store.open(work / "store")
        chosen = {n: images[n] for n in ("busybox", "debian") if n in images}
        for name, img in chosen.items():
            import_layout(st, img.layout, f"localhost/bench/{name}:latest")
        return bench_rootfs(work, chosen, runs)
    except Exception as e:  # noqa: BLE001 - reported in the table's place
        log(f"{ROOTFS_NAME}: not measured: {type(e).__name__}: {e}")
        return f"not measured: {type(e).__name__}: {e}"
    finally:
        common.rmtree(work)


def _python_version(python: str) -> str:
    r = subprocess.run([python, "-c", "import platform; print(platform.python_version())"], capture_output=True,
                       text=True)
    return r.stdout.strip() or "?"


def _imagetool_version(argv) -> str:
    import subprocess

    try:
        r = subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=30)
    except OSError as e:
        return f"? ({e})"
    text = (r.stdout or r.stderr).strip().splitlines()
    return f"{text[0] if text else '?'} ({' '.join(argv)})"


if __name__ == "__main__":
    sys.exit(main())
