"""A container's root filesystem as one `Mount`: an overlay over the image's snapshots, or a flat copy.

Overlay (the default): nothing is copied whatever the image size. `overlay_mount()` makes
`containers/<id>/{l,upper,work,rootfs}` and one short symlink per layer, `l/<n>` → the snapshot
(like Docker's overlay2 `l/` directory), and returns the Mount

    Mount("overlay", "overlay", "<cdir>/rootfs",
          ("lowerdir=l/3:l/2:l/1:l/0", "upperdir=upper", "workdir=work"), cwd="<cdir>")

whose relative paths the kernel resolves against `cwd` (the runtime chdirs there to mount it,
inside the container's mount namespace), so the mount data stays inside its one page: 128 layers
take about 900 bytes (absolute snapshot paths would need ~100 bytes each). `lowerdirs(m)` gives
the absolute snapshot directories, top layer first. This module never mounts anything itself.

Rootless (this process is root of a user namespace, userns.inside()): the same overlay plus
`userxattr`, mounted by the container's init inside its user namespace (Linux 5.11): the
snapshots' opaque markers and the upper dir's are `user.overlay.*` (unpack/whiteouts.py).

Copy fallback (overlay unavailable, or chosen for tests): `copy_rootfs()` flattens the image into
`containers/<id>/rootfs` (plain whiteouts, see flatten.py) and returns a bind Mount of it.
"""

from __future__ import annotations

import os
from pathlib import Path

from imagetool import userns
from imagetool.errors import UnpackError
from imagetool.mount import Mount
from imagetool.unpack.snapshots import ensure_snapshots

MOUNT_DATA_LIMIT = 4096 - 1   # the mount data is copied into one page


def lowerdirs(m: Mount) -> list[Path]:
    """The absolute lower directories of an overlay Mount, top layer first (links resolved)."""
    base = Path(m.cwd or "/")
    return [Path(os.path.realpath(base / d)) for d in (m.option("lowerdir") or "").split(":") if d]


def overlay_supported() -> bool:
    """True when the kernel lists overlay in /proc/filesystems (the module may still be loadable)."""
    try:
        with open("/proc/filesystems") as f:
            return any(line.split()[-1:] == ["overlay"] for line in f)
    except OSError:
        return False


def _mkdir(path: Path, mode: int) -> None:
    """mkdir with exactly `mode`, whatever the caller's umask (upper/ is the container's `/`:
    under `umask 077` it would be 0700 and lock every non-root user of the container out)."""
    path.mkdir(mode=mode, exist_ok=True)
    os.chmod(path, mode)


def overlay_mount(store, image, container_dir) -> Mount:
    """Ensure the snapshots, create l/ upper/ work/ rootfs/ in `container_dir`, return the Mount."""
    cdir = Path(os.path.abspath(container_dir))
    snaps = ensure_snapshots(store, image)
    links = cdir / "l"
    cdir.mkdir(mode=0o755, parents=True, exist_ok=True)
    for d in (links, cdir / "upper", cdir / "work", cdir / "rootfs"):
        _mkdir(d, 0o700 if d == cdir / "work" else 0o755)
    if not snaps:   # an image without layers: overlay still needs one lowerdir
        empty = cdir / "empty"
        _mkdir(empty, 0o755)
        lower_rel = ["empty"]
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
    data = f"lowerdir={':'.join(lower_rel)},upperdir=upper,workdir=work"
    if userns.inside():   # rootless: mounted in the user namespace, markers in user.overlay.* (Linux 5.11)
        data += ",userxattr"
    if len(data) > MOUNT_DATA_LIMIT:   # 10k+ layers; the kernel caps lowers at 500 anyway
        raise UnpackError(f"image {image.name} has too many layers ({len(snaps)}) for one overlay mount")
    return Mount("overlay", "overlay", str(cdir / "rootfs"), tuple(data.split(",")), cwd=str(cdir))


def copy_rootfs(store, image, container_dir) -> Mount:
    """The fallback: a flattened copy in `container_dir/rootfs`, bind-mounted onto itself."""
    cdir = Path(os.path.abspath(container_dir))
    target = cdir / "rootfs"
    target.mkdir(parents=True, exist_ok=True)
    from imagetool.unpack.flatten import flatten  # lazy: keeps `run` with overlay lean

    flatten(store, image, target)
    return Mount("bind", str(target), str(target), ("rbind",))


def prepare_rootfs(store, image, container_dir, backend: str = "auto") -> Mount:
    """backend "overlay", "copy", or "auto" (overlay when the kernel has it and we are root)."""
    if backend == "auto":
        backend = "overlay" if overlay_supported() and os.geteuid() == 0 else "copy"
    if backend == "overlay":
        return overlay_mount(store, image, container_dir)
    if backend == "copy":
        return copy_rootfs(store, image, container_dir)
    raise ValueError(f"unknown rootfs backend {backend!r}")
