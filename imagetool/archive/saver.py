"""The save service: images of the store as one tar that docker, podman and skopeo load.

Both formats write an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) holding
every blob exactly as stored, so manifest digests survive a save → load round trip.
  * "oci":    the layout only; index.json points at what each name points at (an index with the
              platforms the store holds in full, or a manifest).
  * "docker": additionally `manifest.json` (Config, RepoTags, Layers pointing into blobs/) and
              `repositories`, as Docker Engine 25+ writes it; one platform manifest per image
              (the host's, when a name points at an index), since manifest.json cannot hold more.
A save is a copy from the store into an archive (transports.store → transports.archive): the tar
is deterministic (metadata first, blobs in manifest order, mtime 0, root owner) and appears only
complete; an image missing a blob in the store writes nothing.
"""

from __future__ import annotations

from store import Descriptor

from imagetool import image as images
from imagetool import reference
from imagetool.archive.loader import DANGLING
from imagetool.errors import ArchiveError, InvalidReference, ManifestError
from imagetool.transports.archive import CONTAINERD_NAME, FORMATS, REF_NAME, ArchiveSink, ArchiveWriter


def save(store, refs: list[str], out: str, fmt: str = "docker") -> None:
    """Write the images named by `refs` to `out` (a path, or "-" for stdout)."""
    from imagetool.transports.base import copy_image
    from imagetool.transports.store import StoreSource

    if fmt not in FORMATS:
        raise ArchiveError(f"unknown archive format {fmt!r} (use docker or oci)")
    if not refs:
        raise ArchiveError("no image to save")
    writer = ArchiveWriter(fmt)
    chosen = [(ref, _resolve(store, ref)) for ref in refs]
    with store.lock_shared():
        for ref, (name, found) in chosen:
            ann = {CONTAINERD_NAME: name, REF_NAME: name} if name else None
            source = StoreSource(store, ref, resolved=found)
            try:
                copy_image(source, ArchiveSink(writer, ann, name), all_platforms=(fmt == "oci"), max_concurrent=1)
            except ManifestError as e:
                raise ArchiveError(f"image {name or found[1].digest}: {e.message}", hint=e.hint) from None
        writer.write(out)


def _resolve(store, ref: str) -> tuple[str | None, tuple[str, Descriptor]]:
    """(full name or None, what image.resolve found) for a name, digest or ID prefix."""
    name, desc = images.resolve(store, ref)
    found = (name, Descriptor(desc.media_type, desc.digest, desc.size, None, desc.platform))
    if images.is_id(ref.strip()) or name.startswith(DANGLING):
        return None, found
    try:
        name = str(reference.parse(name))
    except InvalidReference:
        pass
    if "@" in name:  # a digest reference is not a tag: keep the image, drop the name
        return None, found
    return name, found
