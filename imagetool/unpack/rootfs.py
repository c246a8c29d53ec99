"""A container's root filesystem: an overlay mount plan over the image's snapshots, or a flat copy.

Overlay (the default): nothing is copied whatever the image size. `overlay_plan()` makes
`containers/<id>/{l,upper,work,rootfs}` and one short symlink per layer, `l/<n>` → the snapshot
(like Docker's overlay2 `l/` directory), so that the mount data uses short relative paths:

    lowerdir=l/3:l/2:l/1:l/0,upperdir=upper,workdir=work      (top layer first)

The caller (the runtime, inside the container's mount namespace) must `chdir(plan.cwd)` and then
`mount("overlay", plan.target, "overlay", 0, plan.data)`; the kernel resolves the relative paths
against that cwd. 128 layers take about 900 bytes, well inside the one-page limit for mount data
(absolute snapshot paths would need ~100 bytes each). `plan.lowerdirs` holds the absolute paths
too, for callers using the new mount API (`fsconfig(..., "lowerdir+", path)`, Linux ≥ 6.8).
This module never mounts anything itself (no syscalls, no shelling out).

Copy fallback (overlay unavailable, or chosen for tests): `copy_rootfs()` flattens the image into
`containers/<id>/rootfs` (plain whiteouts, see flatten.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from imagetool.errors import UnpackError
from imagetool.unpack.snapshots import ensure_snapshots

MOUNT_DATA_LIMIT = 4096 - 1   # the mount data is copied into one page


@dataclass(frozen=True, slots=True)
class RootfsPlan:
    """How to get a container's rootfs at `target`.

    kind "overlay": mount overlay at `target` with `data` after chdir(`cwd`).
    kind "copy": `target` already holds a flattened copy (bind-mount it or use it as is).
    `snapshots` are the diff_id hexes used, base first (for state.json, so gc keeps them)."""

    kind: str
    target: Path
    cwd: Path
    data: str = ""
    lowerdirs: tuple = ()        # absolute snapshot dirs, top layer first
    upperdir: Path | None = None
    workdir: Path | None = None
    snapshots: tuple = ()


def overlay_supported() -> bool:
    """True when the kernel lists overlay in /proc/filesystems (the module may still be loadable)."""
    try:
        with open("/proc/filesystems") as f:
            return any(line.split()[-1:] == ["overlay"] for line in f)
    except OSError:
        return False


def overlay_plan(store, image, container_dir) -> RootfsPlan:
    """Ensure the snapshots, create l/ upper/ work/ rootfs/ in `container_dir`, return the plan."""
    cdir = Path(os.path.abspath(container_dir))
    snaps = ensure_snapshots(store, image)
    links = cdir / "l"
    cdir.mkdir(mode=0o755, parents=True, exist_ok=True)
    for d in (links, cdir / "upper", cdir / "work", cdir / "rootfs"):
        d.mkdir(mode=0o700 if d == cdir / "work" else 0o755, exist_ok=True)
    if not snaps:   # an image without layers: overlay still needs one lowerdir
        empty = cdir / "empty"
        empty.mkdir(mode=0o755, exist_ok=True)
        lower_rel, lowers = ["empty"], (empty,)
    else:
        lower_rel = []
        for n, snap in enumerate(snaps):
            link = links / str(n)
            if link.is_symlink() and os.readlink(link) != str(snap):
                link.unlink()
            if not link.is_symlink():
                link.symlink_to(snap)
            lower_rel.append(f"l/{n}")
        lower_rel.reverse()
        lowers = tuple(reversed(snaps))
    data = f"lowerdir={':'.join(lower_rel)},upperdir=upper,workdir=work"
    if len(data) > MOUNT_DATA_LIMIT:   # 10k+ layers; the kernel caps lowers at 500 anyway
        raise UnpackError(f"image {image.name} has too many layers ({len(snaps)}) for one overlay mount")
    return RootfsPlan("overlay", cdir / "rootfs", cdir, data, lowers, cdir / "upper", cdir / "work",
                      tuple(p.name for p in snaps))


def copy_rootfs(store, image, container_dir) -> RootfsPlan:
    """The fallback: a flattened copy in `container_dir/rootfs`."""
    cdir = Path(os.path.abspath(container_dir))
    target = cdir / "rootfs"
    target.mkdir(parents=True, exist_ok=True)
    from imagetool.unpack.flatten import flatten  # lazy: keeps `run` with overlay lean

    flatten(store, image, target)
    return RootfsPlan("copy", target, cdir)


def prepare_rootfs(store, image, container_dir, backend: str = "auto") -> RootfsPlan:
    """backend "overlay", "copy", or "auto" (overlay when the kernel has it and we are root)."""
    if backend == "auto":
        backend = "overlay" if overlay_supported() and os.geteuid() == 0 else "copy"
    if backend == "overlay":
        return overlay_plan(store, image, container_dir)
    if backend == "copy":
        return copy_rootfs(store, image, container_dir)
    raise ValueError(f"unknown rootfs backend {backend!r}")
