"""The push service: a local image to the registry its name names (or to another destination).

Contract of `push(store, src_ref, dest=None, all_tags=False, format=None, progress=None,
insecure=False) -> list[PushResult]`:
1. `src_ref` is found in the store (name, digest or ID prefix; ImageNotFound otherwise). `dest`
   defaults to the image's own name; `docker://REF` and a plain REF are the same.
   `all_tags` pushes every tag of the source's repository in the store (`dest` then names a
   repository, without tag).
2. Blobs: HEAD first (present blobs are never sent), cross-repository mount when a ref of the
   store holds the blob in another repository of the same registry, else an upload (monolithic
   or chunked, resumable: see transports/registry.py). Manifests after their blobs, an index
   after its manifests (every platform the store holds), the tag last.
3. `format` "oci" or "docker" rewrites the manifests' media types (transports/convert.py: the
   blobs stay as they are; a converted manifest has a new digest, one already in the format keeps
   its bytes); None pushes the image exactly as stored.
The registry stores the store's bytes: every blob digest, and without `format` every manifest
digest, is unchanged. Never prints.
"""

from __future__ import annotations

from dataclasses import dataclass

from imagetool import reference
from imagetool.errors import ImageNotFound, InvalidReference, ManifestError
from imagetool.progress import NullProgress, Progress

FORMATS = ("oci", "docker")


@dataclass(frozen=True, slots=True)
class PushResult:
    """What a push did: the name pushed, its digest and size, and how many blobs were sent."""

    name: str       # "host/repo:tag" pushed
    digest: str     # the manifest (or index) digest the tag points at
    size: int       # its size in bytes (as docker prints "digest: … size: …")
    sent: int       # blobs uploaded (not present, not mounted)


def _dest_ref(text: str):
    text = text[len("docker://"):] if text.startswith("docker://") else text
    return reference.parse(text)


def push(store, src_ref: str, dest: str | None = None, all_tags: bool = False, format: str | None = None,
         progress: Progress | None = None, insecure: bool = False) -> list[PushResult]:
    """Push (see the module docstring); one PushResult per tag pushed."""
    from imagetool import image

    progress = progress or NullProgress()
    if format is not None and format not in FORMATS:
        raise ManifestError(f"unknown manifest format {format!r} (use oci or docker)")
    pairs = []
    if all_tags:
        name, _ = image.resolve(store, src_ref)
        repo = reference.parse(name).name
        target = _dest_ref(dest).name if dest else repo
        for ref_name, _ in store.refs():
            try:
                r = reference.parse(ref_name)
            except InvalidReference:  # refs written by other tools
                continue
            if r.name == repo and r.tag and not r.digest:
                pairs.append((ref_name, f"{target}:{r.tag}"))
        if not pairs:
            raise ImageNotFound(f"no tag of {repo} in the store", hint=f"tag one: imagetool tag IMAGE {repo}:TAG")
    else:
        name, _ = image.resolve(store, src_ref)
        pairs.append((src_ref, dest or name))
    return [_push_one(store, src, target, format, progress, insecure) for src, target in sorted(pairs)]


def _push_one(store, src_ref: str, dest: str, format, progress, insecure: bool) -> PushResult:
    from imagetool.transports.base import copy_image
    from imagetool.transports.convert import Converted
    from imagetool.transports.registry import RegistrySink
    from imagetool.transports.store import StoreSource

    from imagetool.registry.mirrors import check_not_blocked

    source = StoreSource(store, src_ref)
    ref = _dest_ref(dest)
    check_not_blocked(ref)
    if ref.digest and (format or ref.digest != str(source.top().digest)):
        raise ManifestError(f"cannot push {source.name} as {ref}: its digest is {source.top().digest}")
    mounts = set(source.holders(ref.domain).values())
    sink = RegistrySink(ref, insecure=insecure, state_dir=store.ingest_dir, mount_from=sorted(mounts))
    try:
        progress.message(f"The push refers to repository [{ref.name}]")
        with store.lock_shared():
            src = Converted(source, format) if format else source
            copied = copy_image(src, sink, all_platforms=True, progress=progress)
    finally:
        sink.close()
    top = copied.descriptor
    return PushResult(str(ref), str(top.digest), top.size, len(copied.sent))

