"""The pull service: resolve a reference at a registry and bring its image into the store.

Contract of `pull(store, ref_string, platform=None, max_concurrent=3, progress=None, insecure=False,
unpack=True)`:
1. Parse the reference (InvalidReference before any network or store write). registries.conf
   (registry/mirrors.py) may block it (RegistryError) or name mirrors: each is tried in order
   (steps 2-5 against it), then the registry; `PullResult.served_by` names the host that served.
2. Resolve a tag with HEAD (free against Docker Hub's pull limit). When that digest is stored,
   the name already points at the image it selects and all its blobs are present: done
   ("Image is up to date"), nothing else is fetched.
3. GET the manifest by digest (verified, ≤ 4 MiB, mediaType == Content-Type); for an index or
   manifest list, select the platform (default: the host's; nested indexes are followed) or
   fail listing the platforms that exist.
4. Download the config and the layers, `max_concurrent` at a time, each through `fetch.fetch_blob`
   (verified, resumable, skipped when present). With `unpack` (the default, as podman and
   containerd do; only where snapshots can be used: root and overlayfs) each missing layer
   snapshot is built WHILE its blob downloads: a fetch.BlobTap tees the bytes written to the
   ingest to unpack.snapshots.build_snapshots, which commits snapshots/<diff_id> only after the
   blob's digest and the diff_id both check out, layers unpacked concurrently where exact (see
   build_snapshots). A download that restarts from byte 0 breaks its tap, and an unpack error on
   bytes not verified yet (a resumed partial that was not the blob's prefix) waits for the
   downloads: either fails the pull with the download's error or unpacks what is left from the
   verified blobs. An unpack failure there (unsafe or corrupt layer) fails the pull before
   anything is tagged. An up-to-date image gets its missing snapshots from its blobs (a
   re-pull with every snapshot present stats one directory per layer and imports no unpack code).
5. Only then store the manifest(s) and tag the name. Tagging rule: the name
   ("docker.io/library/busybox:latest", or "…@sha256:<digest>" for a digest reference) points at
   the *platform-specific image manifest* that was pulled (with its index entry's platform); the
   index blob is stored too, so the next pull can check "up to date" without a GET. The digest
   reported (`PullResult.digest`) is the one the registry resolved the reference to (the index
   digest for a multi-platform image), as `docker pull` prints it.
A failure leaves refs untouched; completed blobs stay (unreferenced, removed by `prune`) and
partial downloads stay resumable in ingest/. The store's GC lock is held shared for the whole
pull, so a concurrent `prune` waits instead of sweeping blobs not yet reachable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from store import Descriptor, Digest
from store.errors import RefNotFound

from imagetool import oci, reference
from imagetool.errors import ImagetoolError, ManifestError, RegistryError, TransportError
from imagetool.progress import NullProgress, Progress
from imagetool.transports import walk

UP_TO_DATE = "Image is up to date"
DOWNLOADED = "Downloaded newer image"


@dataclass(frozen=True, slots=True)
class PullResult:
    """What a pull did: the name tagged, the digest, whether anything was downloaded, and from where."""

    name: str      # the full name tagged in the store
    digest: str    # the digest the registry resolved the reference to
    status: str    # UP_TO_DATE or DOWNLOADED
    served_by: str = ""  # the host that answered: the registry's, or a mirror's


@dataclass(frozen=True, slots=True)
class _Resolved:
    """The image manifest a reference resolved to, what the name is tagged to, and the way there."""

    manifest: oci.Manifest
    descriptor: Descriptor             # what the name is tagged to
    documents: tuple                   # (raw, Digest) of every index/manifest on the way down


def pull(store, ref_string: str, platform: str | None = None, max_concurrent: int = 3,
         progress: Progress | None = None, insecure: bool = False, unpack: bool = True) -> PullResult:
    """Pull `ref_string` into `store` (see the module docstring for the steps and guarantees)."""
    from imagetool.registry.client import RegistryClient

    from imagetool.registry.mirrors import endpoints as endpoints_for

    ref = reference.parse(ref_string)
    want = oci.Platform.parse(platform) if platform else None
    progress = progress or NullProgress()
    endpoints = endpoints_for(ref)  # mirrors first (registries.conf), then the registry
    for i, ep in enumerate(endpoints):
        client = RegistryClient(ep.ref, insecure=insecure or ep.insecure, endpoint=ep.url)
        try:
            if ep.mirror:
                progress.message(f"trying mirror {client.host} for {ref.name}")
            # the shared GC lock from the first blob written until the tag makes them reachable
            with store.lock_shared():
                result = _pull_from(store, client, ref, want, max(1, max_concurrent), progress, unpack)
            return dataclasses.replace(result, served_by=client.host)
        except (TransportError, RegistryError) as e:
            if i == len(endpoints) - 1:
                raise
            progress.message(f"{'mirror' if ep.mirror else 'registry'} {client.host} failed ({e}); "
                             "trying the next endpoint")
        finally:
            client.close()
    raise AssertionError("unreachable")  # pragma: no cover


def snapshots_usable() -> bool:
    """Can this process make and use overlay snapshots (root, and the kernel has overlayfs)?"""
    import os

    from imagetool.unpack.rootfs import overlay_supported

    return os.geteuid() == 0 and overlay_supported()


def _pull_from(store, client, ref, want, max_concurrent: int, progress: Progress, unpack: bool) -> PullResult:
    name = str(ref)
    previous = _local_ref(store, name)
    if ref.digest:
        top = Digest.parse(ref.digest)
    else:
        progress.message(f"{ref.tag}: Pulling from {ref.familiar_name}")
        top = _head(client, ref.tag)

    if top is not None and previous is not None and store.has(top):
        local = _resolve_local(store, top, want)
        if local is not None and local.digest == previous.digest and _complete(store, local):
            if unpack:
                _snapshots_from_blobs(store, local)
            _warn_ratelimit(client, progress)
            return PullResult(name, str(top), UP_TO_DATE)

    resolved = _resolve_remote(store, client, ref, top, want)
    top = resolved.documents[0][1]
    manifest = resolved.manifest
    if want is not None and not resolved.descriptor.platform:
        _fetch_all(store, client, [manifest.config], 1, progress)
        _check_config_platform(store, manifest, want, ref)
    blobs = walk.blobs_of(manifest)
    if unpack and manifest.layers and snapshots_usable():
        _fetch_and_unpack(store, client, manifest, blobs, max_concurrent, progress)
    else:
        _fetch_all(store, client, blobs, max_concurrent, progress)
    for raw, digest in resolved.documents:  # manifests last: they are what makes the image visible
        store.put(raw, expected=digest)
    store.tag(name, resolved.descriptor)
    _warn_ratelimit(client, progress)
    status = UP_TO_DATE if previous is not None and previous.digest == resolved.descriptor.digest \
        else DOWNLOADED
    return PullResult(name, str(top), status)


# ------------------------------------------------------------------ resolution


def _head(client, tag: str) -> Digest | None:
    """The digest a tag points at (None when the registry's HEAD does not say; GET will tell)."""
    try:
        return client.head_manifest(tag).digest
    except RegistryError as e:
        if e.status in (401, 403) and e.code not in (None, "UNAUTHORIZED", "DENIED"):
            raise
        return None  # the GET that follows reports the precise error (HEAD has no body)


def _manifest_bytes(store, client, reference_: str, expected: Digest | None,
                    media_type: str | None = None) -> tuple[bytes, Digest, str]:
    if expected is not None and store.has(expected):
        return store.read(expected), expected, media_type or ""
    got = client.get_manifest(reference_, expected)
    return got.raw, got.digest, got.media_type or media_type or ""


def _resolve_remote(store, client, ref, top: Digest | None, want) -> _Resolved:
    raw, digest, ctype = _manifest_bytes(store, client, str(top) if top else ref.reference, top)
    first = Descriptor(ctype or "", digest, len(raw))

    def read(desc: Descriptor) -> bytes:
        if desc.digest == digest:
            return raw
        return _manifest_bytes(store, client, str(desc.digest), desc.digest, desc.media_type)[0]

    chain = walk.select(read, first, want)
    return _Resolved(chain[-1].document, chain[-1].descriptor, tuple((n.raw, n.descriptor.digest) for n in chain))


def _resolve_local(store, top: Digest, want) -> Descriptor | None:
    """The image manifest descriptor `top` selects using only stored blobs, or None."""
    from store.errors import StoreError

    try:
        size = store.size(top)
        return walk.select(lambda d: store.read(d.digest), Descriptor("", top, size), want)[-1].descriptor
    except (ManifestError, StoreError, OSError, ValueError):
        return None


def _complete(store, desc: Descriptor) -> bool:
    try:
        manifest = oci.parse_manifest(store.read(desc.digest), desc.digest, desc.media_type)
    except Exception:  # noqa: BLE001 - anything unreadable means "not complete"
        return False
    return isinstance(manifest, oci.Manifest) and store.has(manifest.config.digest) \
        and all(store.has(layer.digest) for layer in manifest.layers)


def _local_ref(store, name: str) -> Descriptor | None:
    try:
        return store.resolve(name)
    except RefNotFound:
        return None


def _check_config_platform(store, manifest, want, ref) -> None:
    config = oci.parse_config(store.read(manifest.config.digest), manifest.config.digest)
    have = config.platform
    if have is not None and not want.matches(have):
        raise ManifestError(f"{ref} is an image for {have}, not for the requested platform {want}")


# ------------------------------------------------------------------ blobs


def _fetch_all(store, client, descs: list[Descriptor], max_concurrent: int, progress: Progress) -> None:
    """Fetch blobs in parallel; the first failure cancels the others and is raised."""
    import threading  # here, not at the top: a re-pull of a present image fetches no blob
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    from imagetool.fetch import fetch_blob

    cancel = threading.Event()
    with ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="imagetool-pull") as pool:
        futures = [pool.submit(fetch_blob, store, client, d, progress, cancel) for d in descs]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for f in futures:
                if f.done() and f.exception() is not None:
                    raise f.exception()
        finally:
            cancel.set()
            for f in futures:
                f.cancel()
    for f in futures:
        f.result()


def _layer_pairs(store, manifest) -> list:
    """[(layer descriptor, diff_id)] of a manifest whose config is stored."""
    config = oci.parse_config(store.read(manifest.config.digest), manifest.config.digest)
    if len(config.diff_ids) != len(manifest.layers):
        raise ManifestError(f"image {manifest.digest}: {len(manifest.layers)} layers but "
                            f"{len(config.diff_ids)} diff_ids in its config")
    return list(zip(manifest.layers, config.diff_ids))


def _snapshots_from_blobs(store, desc: Descriptor) -> None:
    """Build the snapshots a stored image lacks (a stat per layer when it has them all)."""
    manifest = oci.parse_manifest(store.read(desc.digest), desc.digest, desc.media_type)
    pairs = _layer_pairs(store, manifest)
    if all(store.snapshot_path(d).is_dir() for _, d in pairs) or not snapshots_usable():
        return   # a re-pull with every snapshot there imports nothing of unpack/
    from imagetool.unpack.snapshots import build_snapshots

    build_snapshots(store, pairs, lambda i, layer: store.open(layer.digest))


def _fetch_and_unpack(store, client, manifest, blobs: list, max_concurrent: int, progress: Progress) -> None:
    """Download `blobs` (config first) and build the missing snapshots from the bytes as they
    arrive (see the module docstring, step 4); the first failure cancels the rest and is raised."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from imagetool.fetch import BlobTap, TapBroken, fetch_blob
    from imagetool.unpack.snapshots import build_snapshots

    cancel = threading.Event()
    taps = {d.digest: BlobTap(f"blob {d.digest}") for d in manifest.layers}
    first_of = {}
    for i, d in enumerate(manifest.layers):
        first_of.setdefault(d.digest, i)
    pool = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="imagetool-pull")
    try:
        futures = {d.digest: pool.submit(fetch_blob, store, client, d, progress, cancel, taps.get(d.digest))
                   for d in blobs}

        def open_layer(i: int, layer: Descriptor):
            if first_of[layer.digest] == i:
                return taps[layer.digest]
            futures[layer.digest].result()    # a repeated layer: unpacked again from the stored blob
            return store.open(layer.digest)

        try:
            futures[manifest.config.digest].result()
            pairs = _layer_pairs(store, manifest)
            try:
                build_snapshots(store, pairs, open_layer)
            except (TapBroken, ImagetoolError):
                # a tap broke on a restart, or the unpacker refused bytes not verified yet (a
                # resumed partial that is not the blob's prefix): a failed download is the error to
                # report; else every blob is stored and verified, and what is left is unpacked from
                # the blobs (a layer that is really bad fails there again, with its own error)
                for f in futures.values():
                    f.result()
                build_snapshots(store, pairs, lambda i, layer: store.open(layer.digest))
            for f in futures.values():
                f.result()
        except BaseException:
            cancel.set()
            raise
    finally:
        for t in taps.values():
            t.close()
        pool.shutdown(wait=True, cancel_futures=True)


def _warn_ratelimit(client, progress: Progress) -> None:
    if client.ratelimit_low:
        progress.message(f"warning: {client.host} pull rate limit nearly reached: "
                         f"{client.ratelimit_remaining} pulls remaining")
