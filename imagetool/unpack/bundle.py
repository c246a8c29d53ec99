"""An OCI bundle: `DIR/rootfs` (the flattened image) + `DIR/config.json` (the runtime spec).

The spec comes from `imagetool.specgen.spec_from_image` (the same one `imagetool run` executes),
so `runc run --bundle DIR <id>` runs the image's Entrypoint/Cmd as is. Written all or nothing:
the bundle is assembled in a temp dir next to DIR and renamed into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from imagetool.unpack.flatten import flatten, new_dir_atomically
from imagetool.unpack.layers import Limits


def _fill(store, image, tmp: Path, limits: Limits | None) -> None:
    from imagetool.specgen import spec_from_image

    rootfs = tmp / "rootfs"
    rootfs.mkdir(mode=0o755)
    flatten(store, image, rootfs, limits)
    spec = spec_from_image(image.config, None, "rootfs", rootfs_dir=rootfs)   # users read through safepath
    data = json.dumps(spec, indent=2).encode() + b"\n"
    fd = os.open(tmp / "config.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def write_bundle(store, image, dest, limits: Limits | None = None) -> Path:
    """Write the bundle of `image` into the new (or empty) directory `dest`."""
    return new_dir_atomically(dest, lambda tmp: _fill(store, image, tmp, limits))
