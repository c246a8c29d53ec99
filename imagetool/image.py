"""Find an image in the local store by name, manifest digest or digest prefix, and read its manifest and config.

    img = image.load(store, "busybox")      # docker.io/library/busybox:latest
    img = image.load(store, "sha256:…")     # a manifest digest held by some ref
    img = image.load(store, "3f57d9401f8d") # a 12+ hex prefix of such a digest, unique among refs

A ref that points at an index resolves to the manifest for the requested platform (default:
the host's), which must be in the store too.
"""

from __future__ import annotations

from dataclasses import dataclass

from store import Descriptor, Digest
from store.digest import is_hex
from store.errors import BlobNotFound, BlobTooLarge, RefNotFound

from imagetool import mediatypes as mt
from imagetool import oci, reference
from imagetool.errors import ImageNotFound, InvalidReference, ManifestError
from imagetool.transports import walk

MIN_PREFIX = 12


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Image:
    """An image in the store: its ref name, the descriptor of its image manifest, manifest and config.

    `name` is the full normalised name of the ref it was found through
    ("docker.io/library/busybox:latest"). `index` is set when the ref points at an index.
    Compared by identity (compare `digest`s): no generated __eq__/__hash__/__repr__ to compile at
    every `run`.
    """

    name: str
    descriptor: Descriptor
    manifest: oci.Manifest
    config: oci.ImageConfig
    index: oci.Index | None = None

    @property
    def digest(self) -> Digest:
        """The image manifest's digest."""
        return self.descriptor.digest

    @property
    def layers(self) -> list:
        return self.manifest.layers

    @property
    def size(self) -> int:
        """Manifest + config + compressed layers, in bytes."""
        return self.descriptor.size + self.manifest.config.size + sum(la.size for la in self.manifest.layers)

    def __repr__(self) -> str:
        return f"Image({self.name!r}, {self.digest})"


def _id_hex(text: str) -> str | None:
    """The hex part of `(sha256:)?[0-9a-f]{12,64}` (a manifest digest or an ID prefix), else None.
    (str methods, not a regex: compiling one cost ~0.1 ms of `inspect` and `run`.)"""
    hexpart = text[7:] if text.startswith("sha256:") else text
    return hexpart if MIN_PREFIX <= len(hexpart) <= 64 and is_hex(hexpart, len(hexpart)) else None


def _not_found(text: str) -> ImageNotFound:
    return ImageNotFound(f"image {text} not found in the store", hint=f"pull it with `imagetool pull {text}`")


def resolve(store, ref_string: str) -> tuple[str, Descriptor]:
    """(ref name, descriptor) for a name, a manifest digest or a unique 12+ hex prefix of one.

    Order: the normalised name; for `name@digest` a ref of that repository holding that digest;
    the name verbatim (refs written by other tools); then a full digest (`sha256:<hex>`) or a
    prefix. Digests match what refs point at first, else the image manifests listed in indexes
    that refs point at (then the descriptor returned is that index entry).
    """
    text = ref_string.strip() if isinstance(ref_string, str) else ""
    if not text:
        raise InvalidReference('invalid reference "": repository name must have at least one component')
    if reference.is_sha256(text):
        return _by_digest(store, text, text[len("sha256:"):])
    ref = None
    try:
        ref = reference.parse(text)
    except InvalidReference:
        if _id_hex(text) is None:
            raise
    if ref is not None:
        try:
            return str(ref), store.resolve(str(ref))
        except RefNotFound:
            pass
        if ref.digest:
            found = _matching(store, lambda d: str(d) == ref.digest, lambda n: _same_repository(n, ref.name))
            if found:
                return found[0]
    try:
        return text, store.resolve(text)     # a ref name written by another tool, verbatim
    except (RefNotFound, ValueError):
        pass
    hexpart = _id_hex(text)
    if hexpart is not None:
        return _by_digest(store, text, hexpart)
    raise _not_found(text)


def is_id(text: str) -> bool:
    """A full manifest digest or a 12+ hex prefix of one (what `docker` calls an image ID)."""
    return _id_hex(text) is not None


def _same_repository(name: str, repository: str) -> bool:
    try:
        return reference.parse(name).name == repository
    except InvalidReference:
        return False


def _matching(store, digest_ok, name_ok=lambda n: True) -> list[tuple[str, Descriptor]]:
    """Refs whose descriptor satisfies `digest_ok`; if none, (ref, entry) for matching entries of
    the indexes refs point at (attestations skipped; unreadable indexes ignored)."""
    refs = [(n, d) for n, d in store.refs() if name_ok(n)]
    top = [(n, d) for n, d in refs if digest_ok(d.digest)]
    if top:
        return top
    inner = []
    for name, desc in refs:
        if not mt.is_index(desc.media_type) or not store.has(desc.digest):
            continue
        try:
            doc = oci.parse_manifest(read_json_blob(store, desc, "index"), desc.digest, desc.media_type)
        except ManifestError:
            continue
        inner += [(name, e) for e in getattr(doc, "manifests", ())
                  if digest_ok(e.digest) and not oci.is_attestation(e)]
    return inner


def _by_digest(store, text: str, hexprefix: str) -> tuple[str, Descriptor]:
    matches: dict[str, tuple[str, Descriptor]] = {}
    for name, desc in _matching(store, lambda d: d.hex.startswith(hexprefix)):
        matches.setdefault(str(desc.digest), (name, desc))
    if not matches:
        raise ImageNotFound(f"image {text} not found in the store",
                            hint="list the images with `imagetool images`")
    if len(matches) > 1:
        raise ImageNotFound(f"image ID prefix {text} is ambiguous: it matches {len(matches)} images",
                            hint="give more hex digits or the image name")
    return next(iter(matches.values()))


def read_json_blob(store, desc: Descriptor, what: str) -> bytes:
    """The bytes of a manifest/index/config blob (bounded to 4 MiB); ManifestError when missing or too big."""
    if desc.size > oci.MAX_JSON_SIZE:
        raise ManifestError(f"{what} {desc.digest} is {desc.size} bytes, more than the "
                            f"{oci.MAX_JSON_SIZE >> 20} MiB limit")
    try:
        return store.read(desc.digest, limit=oci.MAX_JSON_SIZE)
    except BlobNotFound:
        raise ManifestError(f"{what} blob {desc.digest} is missing from the store",
                            hint="the image is incomplete: pull or load it again") from None
    except BlobTooLarge as e:
        raise ManifestError(f"{what} {desc.digest}: {e}") from None


def manifest_for(store, desc: Descriptor, platform=None) -> tuple[Descriptor, oci.Manifest, oci.Index | None]:
    """Follow `desc` (a manifest, or an index possibly nested) to the image manifest for `platform`."""
    chain = walk.select(lambda d: read_json_blob(store, d, "manifest"), desc, platform)
    top_index = chain[0].document if chain[0].is_index else None
    return chain[-1].descriptor, chain[-1].document, top_index


def load(store, ref_string: str, platform=None) -> Image:
    """The image named `ref_string` (see `resolve`), its manifest for `platform` and its parsed config.

    An explicit `platform` must also match a single-platform image's config (else ImageNotFound,
    as `docker run --platform` treats it). Raises ImageNotFound (with a pull hint),
    InvalidReference, or ManifestError when the stored content is unusable (missing blob, schema 1,
    bad JSON).
    """
    name, top = resolve(store, ref_string)
    desc, manifest, index = manifest_for(store, top, platform)
    if manifest.config.media_type and not (mt.is_config(manifest.config.media_type)):
        raise ManifestError(f"{name}: manifest {desc.digest} is not a container image "
                            f"(config media type {manifest.config.media_type!r})")
    raw_config = read_json_blob(store, manifest.config, "config")
    config = oci.parse_config(raw_config, manifest.config.digest)
    if platform is not None and index is None and config.os and config.architecture:
        want = oci.Platform.parse(platform) if isinstance(platform, str) else platform
        if not want.matches(config.platform):
            raise ImageNotFound(f"image {ref_string} in the store is {config.platform}, not {want}",
                                hint=f"pull it with `imagetool pull --platform {want} {ref_string}`")
    if len(config.diff_ids) != len(manifest.layers):
        raise ManifestError(f"{name}: manifest {desc.digest} has {len(manifest.layers)} layers but its config "
                            f"lists {len(config.diff_ids)} diff_ids")
    return Image(name, desc, manifest, config, index)
