"""The one image abstraction: the shared index walk (one depth limit for every source), and
`copy` between transports with skopeo as the oracle."""

from __future__ import annotations

import json

import pytest

from store import Descriptor, Digest

from imagetool import mediatypes as mt
from imagetool.errors import ManifestError
from imagetool.transports import walk


def _doc(obj) -> tuple[Descriptor, bytes]:
    raw = json.dumps(obj).encode()
    return Descriptor(obj["mediaType"], Digest.of_bytes(raw), len(raw)), raw


def _manifest(tag: str) -> tuple[Descriptor, bytes]:
    cfg = Descriptor(mt.OCI_CONFIG, Digest.of_bytes(tag.encode()), len(tag))
    return _doc({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": cfg.to_dict(), "layers": []})


def _index(*entries: Descriptor) -> tuple[Descriptor, bytes]:
    return _doc({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [e.to_dict() for e in entries]})


def _nest(depth: int) -> tuple[Descriptor, dict]:
    """A manifest wrapped in `depth` indexes; (top, blobs)."""
    desc, raw = _manifest("x")
    blobs = {desc.digest: raw}
    for _ in range(depth):
        desc, raw = _index(Descriptor(desc.media_type, desc.digest, desc.size, platform={"os": "linux", "architecture": "amd64"}))
        blobs[desc.digest] = raw
    return desc, blobs


@pytest.mark.parametrize("depth,ok", [(0, True), (1, True), (walk.MAX_INDEX_DEPTH, True),
                                      (walk.MAX_INDEX_DEPTH + 1, False), (40, False)])
def test_index_nesting_has_one_limit_for_select_and_walk(depth, ok):
    top, blobs = _nest(depth)
    read = lambda d: blobs[d.digest]  # noqa: E731
    for fn in (lambda: walk.select(read, top, "linux/amd64"), lambda: walk.walk(read, top)):
        if ok:
            nodes = fn()
            assert len(nodes) == depth + 1
        else:
            with pytest.raises(ManifestError, match="nested more than"):
                fn()


def test_walk_lists_children_before_their_index_and_skips_refused_entries():
    a, raw_a = _manifest("a")
    b, raw_b = _manifest("b")
    top, raw_top = _index(a, b, a)
    blobs = {a.digest: raw_a, b.digest: raw_b, top.digest: raw_top}
    nodes = walk.walk(lambda d: blobs[d.digest], top)
    assert [n.descriptor.digest for n in nodes] == [a.digest, b.digest, top.digest]
    nodes = walk.walk(lambda d: blobs[d.digest], top, keep=lambda e: e.digest != b.digest)
    assert [n.descriptor.digest for n in nodes] == [a.digest, top.digest]


@pytest.mark.parametrize("lie", ["size", "media_type"])
def test_an_index_entry_that_lies_about_its_manifest_is_refused(lie):
    a, raw_a = _manifest("a")
    entry = Descriptor(a.media_type, a.digest, a.size + 1) if lie == "size" else \
        Descriptor(mt.OCI_INDEX, a.digest, a.size)
    top, raw_top = _index(entry)
    blobs = {a.digest: raw_a, top.digest: raw_top}
    with pytest.raises(ManifestError):
        walk.walk(lambda d: blobs[d.digest], top)
