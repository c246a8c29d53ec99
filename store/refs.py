"""Refs: names in index.json pointing at descriptors (read-modify-write under an flock).

Writers take `index.json.lock`, read index.json, change it and replace it atomically, so
concurrent writers never lose a ref and readers (who take no lock) never see a torn file."""

from __future__ import annotations

import json

from store.atomic import write_atomic
from store.descriptor import Descriptor
from store.errors import CorruptStore, InvalidDescriptor, RefNotFound, StoreError
from store.layout import Layout

TYPE_CHECKING = False  # typing is not imported at run time (~2 ms of every start): annotations only
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
INDEX_LIMIT = 64 << 20


def empty_index() -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []}


def read_index(layout: Layout) -> dict[str, Any]:
    """Parse index.json; raises CorruptStore when it is not an OCI image index."""
    path = layout.index_json
    try:
        with open(path, "rb") as f:
            raw = f.read(INDEX_LIMIT + 1)
    except FileNotFoundError:
        raise CorruptStore(f"store {layout.root} has no index.json") from None
    if len(raw) > INDEX_LIMIT:
        raise CorruptStore(f"{path} is larger than {INDEX_LIMIT} bytes")
    try:
        index = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptStore(f"{path} is not valid JSON ({e})",
                           hint="restore it from a backup or move the store aside") from None
    if not isinstance(index, dict) or index.get("schemaVersion") != 2 \
            or not isinstance(index.get("manifests"), list) \
            or not all(isinstance(m, dict) for m in index["manifests"]):
        raise CorruptStore(f"{path} is not an OCI image index (schemaVersion 2 with a manifests list)",
                           hint="restore it from a backup or move the store aside")
    return index


def ensure_index(layout: Layout) -> None:
    """Create an empty index.json unless one exists (under the lock: never clobbers refs)."""
    if layout.index_json.exists():
        return
    from store.locking import flocked   # (here: commands that only read load neither it nor contextlib)

    with flocked(layout.index_lock):
        if not layout.index_json.exists():
            write_atomic(layout.index_json, _dump(empty_index()))


def entry_name(entry: dict) -> str | None:
    """The ref name of an index entry: the full image name when imagetool (or containerd) wrote
    it, else the bare OCI ref name (e.g. `latest` written by skopeo), else None."""
    ann = entry.get("annotations")
    if not isinstance(ann, dict):
        return None
    name = ann.get(CONTAINERD_NAME) or ann.get(REF_NAME)
    return name if isinstance(name, str) and name else None


def check_name(name: str) -> None:
    if not isinstance(name, str) or not name or len(name) > 4096 \
            or any(ord(c) < 0x21 or ord(c) == 0x7F for c in name):
        raise StoreError(f"invalid ref name {name!r}: must be a non-empty string without "
                         "whitespace or control characters")


def refs(layout: Layout) -> list[tuple[str, Descriptor]]:
    """Every named entry of index.json, in file order. Entries that are not valid descriptors
    raise CorruptStore."""
    out = []
    for entry in read_index(layout)["manifests"]:
        name = entry_name(entry)
        if name is not None:
            out.append((name, _descriptor(layout, entry)))
    return out


def resolve(layout: Layout, name: str) -> Descriptor:
    for entry in read_index(layout)["manifests"]:
        if entry_name(entry) == name:
            return _descriptor(layout, entry)
    raise RefNotFound(f"no ref named {name!r} in store {layout.root}")


def tag(layout: Layout, name: str, desc: Descriptor) -> None:
    """Point `name` at `desc` (replacing the entry in place when the name exists)."""
    check_name(name)
    if not isinstance(desc, Descriptor):
        raise StoreError(f"tag {name!r}: expected a Descriptor, not {type(desc).__name__}")
    entry = desc.to_dict()
    entry["annotations"] = {**(desc.annotations or {}), REF_NAME: name, CONTAINERD_NAME: name}

    def change(manifests: list[dict]) -> list[dict]:
        out, placed = [], False
        for m in manifests:
            if entry_name(m) == name:
                if not placed:
                    out.append(entry)
                    placed = True
            else:
                out.append(m)
        if not placed:
            out.append(entry)
        return out

    _update(layout, change)


def untag(layout: Layout, name: str) -> None:
    def change(manifests: list[dict]) -> list[dict]:
        out = [m for m in manifests if entry_name(m) != name]
        if len(out) == len(manifests):
            raise RefNotFound(f"no ref named {name!r} in store {layout.root}")
        return out

    _update(layout, change)


def _update(layout: Layout, change: Callable[[list[dict]], list[dict]]) -> None:
    from store.locking import flocked

    with flocked(layout.index_lock):
        index = read_index(layout) if layout.index_json.exists() else empty_index()
        index["manifests"] = change(index["manifests"])
        write_atomic(layout.index_json, _dump(index))


def _descriptor(layout: Layout, entry: dict) -> Descriptor:
    try:
        return Descriptor.from_dict(entry)
    except InvalidDescriptor as e:
        raise CorruptStore(f"{layout.index_json}: {e}") from None


def _dump(index: dict) -> bytes:
    return (json.dumps(index, indent=2, ensure_ascii=False) + "\n").encode()


__all__ = ["refs", "resolve", "tag", "untag", "read_index", "ensure_index", "entry_name",
           "REF_NAME", "CONTAINERD_NAME"]
