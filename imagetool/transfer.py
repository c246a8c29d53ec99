"""The copy service: an image from one transport to another, bytes (and digests) unchanged.

Addresses, as skopeo names them (a path holds no ":"; REF as each transport reads it):
    docker://REF              a registry repository (REF: name[:tag] or name@digest)
    oci:DIR[:REF]             an OCI image layout directory (REF: its ref.name annotation)
    oci-archive:FILE[:REF]    the same layout as a tar
    docker-archive:FILE[:REF] a docker save (REF: a RepoTag; one platform only)
    store:REF                 imagetool's own store (REF: a name, digest or ID prefix)

Contract of `copy(store, src, dest, all_platforms=False, platform=None, progress=None,
insecure=False) -> CopyResult`: without `all_platforms` the image manifest for `platform` (default:
the host's) is copied alone; with it, the index and every manifest the source carries. Blobs the
destination has are not sent again; everything is verified on the way (digests of what the
destination stores equal the source's: only a legacy docker save, which has no manifest, gets a
new one). A failure names nothing at the destination (no tag, no index.json entry, no archive
file). Never prints.
"""

from __future__ import annotations

from dataclasses import dataclass

from imagetool import reference
from imagetool.errors import InvalidReference
from imagetool.progress import NullProgress, Progress

TRANSPORTS = ("docker", "oci", "oci-archive", "docker-archive", "store")


@dataclass(frozen=True, slots=True)
class Address:
    """Where `copy` reads or writes an image: a transport, its path and the name there."""

    transport: str
    path: str          # the directory or file (docker, store: "")
    ref: str | None    # what names the image there


@dataclass(frozen=True, slots=True)
class CopyResult:
    """What a copy did: the destination, the digest copied and how many blobs were sent."""

    destination: str
    digest: str
    sent: int


def parse(text: str) -> Address:
    """An address as above; InvalidReference names the transports when it is none of them."""
    if text.startswith("docker://"):
        ref = text[len("docker://"):]
        reference.parse(ref)
        return Address("docker", "", ref)
    transport, sep, rest = text.partition(":")
    if not sep or transport not in TRANSPORTS or transport == "docker":
        raise InvalidReference(f"invalid image address {text!r}: expected one of docker://REF, oci:DIR[:REF], "
                               "oci-archive:FILE[:REF], docker-archive:FILE[:REF], store:REF")
    if transport == "store":
        if not rest:
            raise InvalidReference(f"invalid image address {text!r}: store: needs an image name")
        return Address("store", "", rest)
    path, _, ref = rest.partition(":")
    if not path:
        raise InvalidReference(f"invalid image address {text!r}: no path")
    return Address(transport, path, ref or None)


def open_source(store, a: Address, insecure: bool = False):
    if a.transport == "docker":
        from imagetool.transports.registry import RegistrySource

        return RegistrySource(reference.parse(a.ref), insecure=insecure)
    if a.transport == "store":
        from imagetool.transports.store import StoreSource

        return StoreSource(store, a.ref)
    from imagetool.transports.layout import ArchiveSource

    return ArchiveSource.open(a.path, a.ref, store.root)


def open_sink(store, a: Address, source, insecure: bool = False):
    if a.transport == "docker":
        from imagetool.transports.registry import RegistrySink

        ref = reference.parse(a.ref)
        mounts = []
        there = getattr(source, "ref", None)
        if there is not None and there.domain == ref.domain:
            mounts.append(there.path)
        elif hasattr(source, "holders"):
            mounts += sorted(set(source.holders(ref.domain).values()))
        return RegistrySink(ref, insecure=insecure, state_dir=store.ingest_dir, mount_from=mounts)
    if a.transport == "store":
        from imagetool.transports.store import StoreSink

        return StoreSink(store, str(reference.parse(a.ref)))
    from imagetool.transports.layout import LayoutSink

    if a.transport == "oci":
        return LayoutSink(a.path, a.ref)
    return _archive_sink(a)


def _archive_sink(a: Address):
    """oci-archive: REF is the ref.name annotation as given (skopeo); docker-archive: REF is an
    image name, its RepoTag (and the annotations docker save writes)."""
    from imagetool.errors import ArchiveError
    from imagetool.transports.archive import CONTAINERD_NAME, REF_NAME, ArchiveSink, ArchiveWriter

    if a.transport == "oci-archive":
        return ArchiveSink(ArchiveWriter("oci"), {REF_NAME: a.ref} if a.ref else None, None, out=a.path)
    name = None
    if a.ref:
        ref = reference.parse(a.ref)
        if ref.digest:
            raise ArchiveError(f"docker-archive names its image with a tag, not {a.ref!r}")
        name = str(ref)
    return ArchiveSink(ArchiveWriter("docker"), {CONTAINERD_NAME: name, REF_NAME: name} if name else None,
                       name, out=a.path)


def copy(store, src: str, dest: str, all_platforms: bool = False, platform: str | None = None,
         progress: Progress | None = None, insecure: bool = False, format: str | None = None) -> CopyResult:
    """Copy (see the module docstring); `format` "oci"/"docker" rewrites the manifests' media types
    on the way (transports/convert.py: blobs unchanged, converted manifests get new digests)."""
    from contextlib import ExitStack

    from imagetool.transports.base import copy_image

    s, d = parse(src), parse(dest)
    progress = progress or NullProgress()
    with ExitStack() as stack:
        source = open_source(store, s, insecure)
        stack.callback(source.close)
        sink = open_sink(store, d, source, insecure)
        stack.callback(sink.close)
        stack.enter_context(store.lock_shared())
        if format:
            from imagetool.transports.convert import Converted

            source = Converted(source, format)
        copied = copy_image(source, sink, platform, all_platforms, progress)
    return CopyResult(dest, str(copied.descriptor.digest), len(copied.sent))
