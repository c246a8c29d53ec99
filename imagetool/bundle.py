"""The `imagetool unpack` service: an image as a flattened root filesystem, or as an OCI bundle.

A bundle is `DIR/rootfs` (the flattened image) + `DIR/config.json` (the runtime spec from
`imagetool.specgen.spec_from_image`, the same one `imagetool run` executes), so
`runc run --bundle DIR <id>` runs the image's Entrypoint/Cmd as is. The user named by the image
is resolved by `imagetool.users` through the new rootfs (never a host file). Written all or
nothing: the result is assembled in a temp dir next to DIR and renamed into place.

This lives above `unpack` (which never imports the runtime): writing a runtime spec is a service's job.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from imagetool.unpack.flatten import flatten, flatten_new, new_dir_atomically
from imagetool.unpack.layers import Limits


def unpack_image(store, ref: str, dest, bundle: bool = False) -> Path:
    """Unpack image `ref` into the new (or empty) directory `dest`, all or nothing.

    bundle=False: the flattened root filesystem. bundle=True: `dest/rootfs` + `dest/config.json`.
    Raises ImageNotFound, UnpackError / UnsafeLayer, DigestError, ManifestError."""
    from imagetool import image as images

    img = images.load(store, ref)
    with store.lock_shared():
        if bundle:
            return write_bundle(store, img, dest)
        return flatten_new(store, img, dest)


def write_bundle(store, image, dest, limits: Limits | None = None) -> Path:
    """Write the bundle of `image` into the new (or empty) directory `dest`."""
    return new_dir_atomically(dest, lambda tmp: _fill(store, image, tmp, limits))


def _fill(store, image, tmp: Path, limits: Limits | None) -> None:
    from imagetool.specgen import spec_from_image

    rootfs = tmp / "rootfs"
    rootfs.mkdir(mode=0o755)
    flatten(store, image, rootfs, limits)
    spec = spec_from_image(image.config, None, "rootfs", rootfs_dir=rootfs)
    data = json.dumps(spec, indent=2).encode() + b"\n"
    fd = os.open(tmp / "config.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
