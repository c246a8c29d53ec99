"""Unpack: layer blobs → per-layer snapshots, overlay rootfs plans, flattened trees and OCI bundles.

Modules: layers (decompress + diff_id), apply (one layer onto a directory; names resolved by
imagetool.safepath), snapshots, flatten, rootfs, bundle. The service used by `imagetool unpack` is
`unpack_image`.
"""

from __future__ import annotations

from pathlib import Path


def unpack_image(store, ref: str, dest, bundle: bool = False) -> Path:
    """Unpack image `ref` into the new (or empty) directory `dest`, all or nothing.

    bundle=False: the flattened root filesystem. bundle=True: `dest/rootfs` + `dest/config.json`.
    Raises ImageNotFound, UnpackError / UnsafeLayer, DigestError, ManifestError."""
    from imagetool import image as images
    from imagetool.unpack.flatten import flatten_new

    img = images.load(store, ref)
    with store.lock_shared():
        if bundle:
            from imagetool.unpack.bundle import write_bundle

            return write_bundle(store, img, dest)
        return flatten_new(store, img, dest)
