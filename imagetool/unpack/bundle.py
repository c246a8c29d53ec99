"""An OCI bundle: `DIR/rootfs` (the flattened image) + `DIR/config.json` (the runtime spec).

The spec comes from `imagetool.specgen.spec_from_image` (the same one `imagetool run` executes),
so `runc run --bundle DIR <id>` runs the image's Entrypoint/Cmd as is. Written all or nothing:
the bundle is assembled in a temp dir next to DIR and renamed into place.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from imagetool.unpack.flatten import flatten, new_dir_atomically
from imagetool.unpack.layers import Limits
from imagetool.safepath import Root

USER_DB_LIMIT = 4 << 20   # as much as the user lookup reads of each file


def _fill(store, image, tmp: Path, limits: Limits | None) -> None:
    from imagetool.specgen import spec_from_image

    rootfs = tmp / "rootfs"
    rootfs.mkdir(mode=0o755)
    flatten(store, image, rootfs, limits)
    with tempfile.TemporaryDirectory(prefix="imagetool-userdb-") as db:
        _copy_user_db(rootfs, Path(db))
        spec = spec_from_image(image.config, None, "rootfs", rootfs_dir=db)
    data = json.dumps(spec, indent=2).encode() + b"\n"
    fd = os.open(tmp / "config.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _copy_user_db(rootfs: Path, db: Path) -> None:
    """Copy the image's /etc/passwd and /etc/group (resolved inside `rootfs`, regular files only)
    to `db/etc/`, for the user lookup: a host path there would follow an image symlink out of the
    rootfs (its /etc -> the host's /etc) or block on a fifo."""
    (db / "etc").mkdir()
    with Root(rootfs) as root:
        for name in ("passwd", "group"):
            data = root.read_file(("etc", name), USER_DB_LIMIT)
            if data is not None:
                (db / "etc" / name).write_bytes(data)


def write_bundle(store, image, dest, limits: Limits | None = None) -> Path:
    """Write the bundle of `image` into the new (or empty) directory `dest`."""
    return new_dir_atomically(dest, lambda tmp: _fill(store, image, tmp, limits))
