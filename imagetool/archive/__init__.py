"""Offline images: load, save, import, export (and `run ARCHIVE`).

    load(store, input) -> list[str]        docker-archive / oci-archive / OCI layout dir / "-" (stdin)
    save(store, refs, out, fmt="docker")   a tar that docker/podman load and skopeo read ("oci": exact blobs)
    import_(store, source, name) -> str    a rootfs tarball or directory as a one-layer image; its digest
    export(store, target, out, container_dir=None)  a container's (its directory, found by the caller)
                                           or an image's flattened filesystem as a tar
    load_for_run(store, image_arg)         `run ./x.tar`, `run oci-archive:P`, …: load, return the name
    is_archive_arg(text)                   does `run TEXT` name an archive? (the one detector)

Loading is two-phase (plan.py verifies everything without writing; commit.py writes and tags or
rolls back), so a bad archive leaves the store exactly as it was.

`run` imports `imagetool.archive.loader.is_archive_arg` for every container it starts: this package
and that module import nothing heavy at module level (the services below load on first use).
"""

from __future__ import annotations

__all__ = ["load", "load_for_run", "load_images", "is_archive_arg", "save", "import_", "export"]


def __getattr__(name: str):
    """The services, imported on first use (plain lazy imports, so the import checks see them)."""
    if name in ("load", "load_for_run", "load_images", "is_archive_arg"):
        from imagetool.archive import loader as module
    elif name == "save":
        from imagetool.archive import saver as module
    elif name in ("import_", "export"):
        from imagetool.archive import rootfs as module
    else:
        raise AttributeError(f"module 'imagetool.archive' has no attribute {name!r}")
    return getattr(module, name)
