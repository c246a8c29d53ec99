"""Helpers shared by the run/cgroup tests: a store with busybox images, host-state snapshots."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def kernel_skip_reason() -> str | None:
    """Why containers cannot run here (None when they can)."""
    if os.geteuid() != 0:
        return "needs root (namespaces, mounts, cgroups)"
    if not Path("/bin/busybox").is_file():
        return "needs /bin/busybox (busybox-static)"
    try:
        with open("/proc/filesystems") as f:
            if "overlay" not in f.read():
                return "overlayfs is not available"
    except OSError:
        return "no /proc/filesystems"
    from imagetool.runtime import cgroups

    if cgroups.detect() == "none":
        return "no cgroup filesystem mounted"
    return None


def add_image(store_root: Path, built, name: str) -> None:
    """Put a fixtures BuiltImage into the store under `name` (through the store's public API)."""
    from store import Descriptor, Digest, Store

    st = Store.open(store_root)
    for d, data in built.blobs.items():
        st.put(data, Digest.parse(d))
    st.put(built.manifest, Digest.parse(built.manifest_digest))
    st.put(built.config_bytes, Digest.parse(built.config_digest))
    st.tag(name, Descriptor(built.manifest_media_type, Digest.parse(built.manifest_digest), len(built.manifest)))


class Imagetool:
    """`imagetool --store STORE …` as a subprocess (python -m imagetool)."""

    def __init__(self, store: Path):
        self.store = store
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGETOOL_")}
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)

    def argv(self, *args) -> list[str]:
        return [sys.executable, "-m", "imagetool", "--store", str(self.store), *map(str, args)]

    def __call__(self, *args, input=None, timeout=120, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), input=input, capture_output=True, text=True, timeout=timeout,
                              env=self.env, stdin=None if input is not None else subprocess.DEVNULL, **kw)

    def popen(self, *args, **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.Popen(self.argv(*args), env=self.env, text=True, **kw)


def cgroup_children() -> set[str]:
    """Every `imagetool` parent group and the groups below it, in every cgroup hierarchy."""
    from imagetool.runtime import cgroups

    with open("/proc/self/mountinfo") as f:
        mnts = {line.split(" - ")[0].split()[4] for line in f
                if line.partition(" - ")[2].split()[:1] in (["cgroup"], ["cgroup2"])}
    out = set()
    for mnt in mnts:
        for dirpath, dirnames, _ in os.walk(mnt):
            if Path(dirpath).name == cgroups.PARENT:
                out.add(dirpath)
                out.update(os.path.join(dirpath, d) for d in dirnames)
                dirnames[:] = []
            elif dirpath.count("/") - mnt.count("/") >= 4:
                dirnames[:] = []
    return out


def mounts_under(path: Path) -> list[str]:
    """Lines of the host's mountinfo that mention `path`."""
    with open("/proc/self/mountinfo") as f:
        return sorted(line for line in f if str(path) in line)


def new_cgroups_that_stay(before: set[str], grace: float = 3.0) -> set[str]:
    """Groups that appeared since `before`, hold no process and did not go away within `grace`
    seconds: leaked ones (other containers may start and finish concurrently on a shared host)."""
    from imagetool.runtime.cgroups import pids_in

    deadline = time.monotonic() + grace
    while True:
        extra = {p for p in cgroup_children() - before
                 if Path(p).exists() and not pids_in(Path(p)) and not _has_subdirs(Path(p))}
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.1)


def _has_subdirs(path: Path) -> bool:
    try:
        return any(e.is_dir(follow_symlinks=False) for e in os.scandir(path))
    except OSError:
        return False


def have_tool(name: str) -> bool:
    return shutil.which(name) is not None


class HostSnapshot:
    """The host's mounts under a test store and its imagetool cgroups, to compare after a test;
    also no container of the store may still be marked created or running."""

    def __init__(self, store: Path):
        self.store = store
        self.mounts = mounts_under(store.parent)
        self.cgroups = cgroup_children()

    def assert_unchanged(self) -> None:
        import json

        assert mounts_under(self.store.parent) == self.mounts
        assert new_cgroups_that_stay(self.cgroups) == set()
        states = [json.loads(p.read_text()) for p in (self.store / "containers").glob("*/state.json")]
        assert [s["name"] for s in states if s.get("status") in ("created", "running")] == []


def busybox_store(root: Path, extra: dict | None = None) -> Path:
    """A store at `root` with busybox as `busybox`, and for each `name: (entries, config)` of
    `extra` an image of busybox's layers plus one layer of those tar entries."""
    import gzip
    import json

    from fixtures.images import Layer, build_image, busybox_image

    bb = busybox_image()
    add_image(root, bb, "docker.io/library/busybox:latest")
    tars = [gzip.decompress(bb.blobs[la["digest"]]) for la in json.loads(bb.manifest)["layers"]]
    for name, (entries, config) in (extra or {}).items():
        img = build_image([*(Layer(t, compression="gzip") for t in tars), Layer(entries)],
                          config=config or {"Cmd": ["sh"], "Env": ["PATH=/bin"]})
        add_image(root, img, f"docker.io/library/{name}:latest")
    return root


def imports_of(cli, *args, python_flags=()) -> tuple[subprocess.CompletedProcess, set[str]]:
    """`imagetool ARGS` under `python -X importtime` (and `python_flags`): the result and the names
    of every module it imported."""
    argv = cli.argv(*args)
    r = subprocess.run([argv[0], *python_flags, "-X", "importtime", *argv[1:]], env=cli.env, capture_output=True,
                       text=True, timeout=120, stdin=subprocess.DEVNULL)
    return r, {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}


def loaded(imported: set[str], names) -> set[str]:
    """The modules of `imported` that are one of `names` or inside one of those packages."""
    return {m for m in imported for n in names if m == n or m.startswith(n + ".")}
