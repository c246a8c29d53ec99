"""Services for `images`, `inspect`, `tag` and `rmi` (`prune`: prune.py): they return data and never print."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from store import Descriptor
from store.errors import RefNotFound

from imagetool import image as images_lookup
from imagetool import oci, reference
from imagetool.errors import ImageNotFound, InvalidReference, ManifestError


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class ImageSummary:
    """One row of `imagetool images`: repository as Docker shows it (`busybox`, `localhost:5000/app`),
    tag (None for a digest-only name), the digest the ref points at, and the total size in bytes
    (manifest + config + compressed layers of the host's image when the ref is an index).
    A row to print, never compared: no generated __eq__/__repr__ to compile at every `images`."""

    repository: str
    tag: str | None
    digest: str
    size: int
    name: str

    def to_dict(self) -> dict:
        return asdict(self)

    def __repr__(self) -> str:
        return f"ImageSummary({self.name!r}, {self.digest}, {self.size} bytes)"


def human_size(n: int) -> str:
    """Decimal units as Docker prints them: 512B, 1.2kB, 4.5MB, 1.0GB."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1000
    return f"{n}B"


def _split_name(name: str) -> tuple[str, str | None]:
    """(repository, tag) for display; a ref name that is not a reference is shown verbatim."""
    try:
        ref = reference.parse(name)
    except InvalidReference:
        return name, None
    return ref.familiar_name, ref.tag


def _size(store, desc: Descriptor) -> int:
    """Manifest + config + layers of the ref's image for this host; the descriptor's own size when the
    manifest cannot be read (an incomplete image is still listed, its size then counts what is known)."""
    try:
        mdesc, manifest, index = images_lookup.manifest_for(store, desc)
    except ManifestError:
        return desc.size
    total = mdesc.size + manifest.config.size + sum(la.size for la in manifest.layers)
    return total + (desc.size if index is not None else 0)


def list_images(store) -> list[ImageSummary]:
    """Every named ref of the store, sorted by repository then tag."""
    rows = []
    sizes: dict = {}   # the tags of one image: its manifest is read and parsed once
    for name, desc in store.refs():
        repo, tag = _split_name(name)
        key = (desc.media_type, desc.digest, desc.size)
        if key not in sizes:
            sizes[key] = _size(store, desc)
        rows.append(ImageSummary(repo, tag, str(desc.digest), sizes[key], name))
    rows.sort(key=lambda r: (r.repository, r.tag or "", r.name))
    return rows


def inspect(store, ref: str) -> dict:
    """name, digest, mediaType, platform, config (the parsed config JSON), layers and size of one image."""
    img = images_lookup.load(store, ref)
    layers = [{"digest": str(la.digest), "size": la.size, "mediaType": la.media_type,
               "diffID": str(diff)} for la, diff in zip(img.manifest.layers, img.config.diff_ids)]
    names = sorted(n for n, d in store.refs() if d.digest in (img.digest, _top_digest(img)))
    out = {
        "name": img.name,
        "names": names,
        "digest": str(img.digest),
        "mediaType": img.manifest.media_type,
        "platform": str(img.config.platform),
        "created": img.config.created,
        "configDigest": str(img.config.digest),
        "config": json.loads(img.config.raw),
        "layers": layers,
        "size": img.size,
    }
    if img.index is not None:
        out["index"] = {"digest": str(img.index.digest), "mediaType": img.index.media_type,
                        "platforms": oci.available_platforms(img.index)}
    if img.manifest.annotations:
        out["annotations"] = dict(img.manifest.annotations)
    return out


def _top_digest(img):
    return img.index.digest if img.index is not None else img.digest


def tag(store, src: str, dst: str) -> str:
    """Point the name `dst` at what `src` points at (index or manifest); returns the full new name."""
    _, desc = images_lookup.resolve(store, src)
    target = reference.parse(dst)
    if target.digest:
        raise InvalidReference(f'invalid tag target "{dst}": a tag cannot contain a digest',
                               hint="give a name with an optional :tag")
    raw = images_lookup.read_json_blob(store, desc, "manifest")   # refuse to name what the store cannot use
    oci.parse_manifest(raw, desc.digest, desc.media_type or None)
    store.tag(str(target), Descriptor(desc.media_type, desc.digest, desc.size, platform=desc.platform))
    return str(target)


def remove(store, ref: str) -> str:
    """Remove one name (blobs stay until `prune`); returns the familiar name removed.

    A manifest digest or ID prefix removes the name pointing at it only when exactly one name does.
    """
    text = ref.strip()
    name, desc = images_lookup.resolve(store, text)   # ImageNotFound / InvalidReference
    if name != text and not _names_same(name, text) and images_lookup.is_id(text):
        holders = sorted(n for n, d in store.refs() if d.digest == desc.digest)
        if len(holders) > 1:
            raise ImageNotFound(f"image {text} is referenced by {len(holders)} names ({', '.join(holders)})",
                                hint="remove each name with `imagetool rmi NAME`")
    try:
        store.untag(name)
    except RefNotFound:   # removed by someone else meanwhile
        raise ImageNotFound(f"image {text} not found in the store") from None
    try:
        return reference.parse(name).familiar
    except InvalidReference:
        return name


def _names_same(name: str, text: str) -> bool:
    try:
        return reference.parse(text).name == reference.parse(name).name
    except InvalidReference:
        return False
