"""The one index walk: from a top descriptor down to image manifests, with one depth limit.

Every reader of images (the store, a registry, an OCI layout, an archive) hands this module a
`read(descriptor) -> bytes` that returns the *verified* raw bytes of a manifest or index; the
walk parses them and checks what an index entry promises (size, media type) against what it
points at. Two shapes:

    select(read, top, platform)  the chain top → … → the image manifest for one platform
    walk(read, top, keep)        every index and manifest under `top`, children before their
                                 parent (the order a writer needs: manifests after their blobs,
                                 indexes after their manifests); `keep(entry)` drops index entries
                                 (platforms an archive does not carry, artifacts)

Indexes nested more than MAX_INDEX_DEPTH deep are refused (ManifestError), whatever the source.
"""

from __future__ import annotations

from dataclasses import dataclass

from store import Descriptor

from imagetool import mediatypes as mt
from imagetool import oci
from imagetool.errors import ManifestError

MAX_INDEX_DEPTH = 4

TYPE_CHECKING = False  # annotations only: collections.abc is not loaded for them at every `run`/`images`
if TYPE_CHECKING:
    from collections.abc import Callable

    Reader = Callable[[Descriptor], bytes]


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Node:
    """One manifest or index met on the walk: the descriptor that led to it (an index entry keeps
    its platform), its exact bytes and its parsed form. A step of one walk, compared by identity
    (no generated __eq__/__hash__/__repr__ to compile: every `run` loads this module)."""

    descriptor: Descriptor
    document: oci.Manifest | oci.Index

    @property
    def raw(self) -> bytes:
        return self.document.raw

    @property
    def is_index(self) -> bool:
        return isinstance(self.document, oci.Index)

    def __repr__(self) -> str:
        return f"Node({self.document!r})"


def node(read: Reader, desc: Descriptor, parent: Descriptor | None = None) -> Node:
    """Read and parse `desc`; as an entry of `parent`, its size and media type must be what the
    index says."""
    raw = read(desc)
    doc = oci.parse_manifest(raw, desc.digest, desc.media_type or None)
    if parent is not None:
        if len(raw) != desc.size:
            raise ManifestError(f"index {parent.digest}: manifest {desc.digest} is {len(raw)} bytes "
                                f"but the index says {desc.size}")
        if desc.media_type and mt.base(doc.media_type) != mt.base(desc.media_type):
            raise ManifestError(f"index {parent.digest}: entry {desc.digest} says {desc.media_type} "
                                f"but the manifest is {doc.media_type}")
    media = desc.media_type or doc.media_type
    return Node(Descriptor(media, desc.digest, desc.size or len(raw), desc.annotations, desc.platform,
                           desc.urls), doc)


def _too_deep(top: Descriptor) -> ManifestError:
    return ManifestError(f"index {top.digest}: indexes nested more than {MAX_INDEX_DEPTH} deep")


def select(read: Reader, top: Descriptor, platform=None) -> list[Node]:
    """[top, …, image manifest]: each index resolved to the entry for `platform` (default: the
    host's; see oci.select_platform for the errors listing what exists)."""
    chain = [node(read, top)]
    while chain[-1].is_index:
        if len(chain) > MAX_INDEX_DEPTH:
            raise _too_deep(top)
        entry = oci.select_platform(chain[-1].document, platform)
        chain.append(node(read, entry, chain[-1].descriptor))
    return chain


def is_image_entry(entry: Descriptor) -> bool:
    """An index entry that is a manifest or an index (not an attestation or other artifact blob)."""
    return (mt.is_index(entry.media_type) or mt.is_manifest(entry.media_type)) and not oci.is_attestation(entry)


def walk(read: Reader, top: Descriptor, keep: Callable[[Descriptor], bool] = is_image_entry) -> list[Node]:
    """Every manifest and index under `top` (itself included, last), children before parents,
    each once. Entries `keep` refuses are left out (their index still lists them)."""
    out: list[Node] = []
    seen: set = set()

    def visit(desc: Descriptor, parent: Descriptor | None, depth: int) -> None:
        if depth > MAX_INDEX_DEPTH:
            raise _too_deep(top)
        n = node(read, desc, parent)
        if n.is_index:
            for entry in n.document.manifests:
                if entry.digest not in seen and keep(entry):
                    visit(entry, n.descriptor, depth + 1)
        if desc.digest not in seen:
            seen.add(desc.digest)
            out.append(n)

    visit(top, None, 0)
    return out


def blobs_of(manifest: oci.Manifest) -> list[Descriptor]:
    """The config and the layers of an image manifest, each digest once, in manifest order."""
    seen, out = set(), []
    for d in [manifest.config] + list(manifest.layers):
        if d.digest not in seen:
            seen.add(d.digest)
            out.append(d)
    return out
