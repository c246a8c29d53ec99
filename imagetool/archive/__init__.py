"""Offline images: load, save, import, export (and `run ARCHIVE`).

    load(store, input) -> list[str]        docker-archive / oci-archive / OCI layout dir / "-" (stdin)
    save(store, refs, out, fmt="docker")   a tar that docker/podman load and skopeo read ("oci": exact blobs)
    import_(store, source, name) -> str    a rootfs tarball or directory as a one-layer image; its digest
    export(store, target, out)             a container's or image's flattened filesystem as a tar
    load_for_run(store, image_arg)         `run ./x.tar`, `run oci-archive:P`, …: load, return the name

Loading is two-phase (plan.py verifies everything without writing; commit.py writes and tags or
rolls back), so a bad archive leaves the store exactly as it was.
"""

from __future__ import annotations

from imagetool.archive.loader import load, load_for_run, load_images
from imagetool.archive.rootfs import export, import_
from imagetool.archive.saver import save

__all__ = ["load", "load_for_run", "load_images", "save", "import_", "export"]
