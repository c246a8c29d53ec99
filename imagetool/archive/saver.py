"""The save service: images of the store as one tar that docker, podman and skopeo load.

Both formats write an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) holding
every blob exactly as stored, so manifest digests survive a save → load round trip.
  * "oci":    the layout only; index.json points at what each name points at (index or manifest).
  * "docker": additionally `manifest.json` (Config, RepoTags, Layers pointing into blobs/) and
              `repositories`, as Docker Engine 25+ writes it; one platform manifest per image
              (the host's, when a name points at an index), since manifest.json cannot hold more.
The tar is deterministic: sorted metadata first, blobs in manifest order, mtime 0, root owner.
"""

from __future__ import annotations

import json
import os

from store import Descriptor, Digest

from imagetool import image as images
from imagetool import mediatypes as mt
from imagetool import reference
from imagetool.archive.loader import DANGLING
from imagetool.archive.output import output_fd
from imagetool.archive.plan import CONTAINERD_NAME, REF_NAME, blob_name
from imagetool.archive.tarwriter import TarWriter
from imagetool.errors import ArchiveError, ManifestError
from imagetool.transports import walk

FORMATS = ("docker", "oci")


def save(store, refs: list[str], out: str, fmt: str = "docker") -> None:
    """Write the images named by `refs` to `out` (a path, or "-" for stdout)."""
    if fmt not in FORMATS:
        raise ArchiveError(f"unknown archive format {fmt!r} (use docker or oci)")
    if not refs:
        raise ArchiveError("no image to save")
    chosen = [_resolve(store, r) for r in refs]
    blobs: dict[Digest, None] = {}
    index_entries: list[dict] = []
    docker_entries: list[dict] = []
    for name, top in chosen:
        if fmt == "docker":
            top, manifest = _platform_manifest(store, top, name)
            _collect_manifest(store, top, manifest, blobs, name)
            docker_entry(docker_entries, manifest, name)
        else:
            _collect(store, top, blobs, name)
        entry = Descriptor(top.media_type, top.digest, top.size,
                           {CONTAINERD_NAME: name, REF_NAME: name} if name else None, top.platform).to_dict()
        if entry not in index_entries:
            index_entries.append(entry)
    files = {"oci-layout": _dump({"imageLayoutVersion": "1.0.0"}),
             "index.json": _dump({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": index_entries})}
    if fmt == "docker":
        files["manifest.json"] = _dump(docker_entries)
        files["repositories"] = _dump(repositories(docker_entries))
    write_tar(out, files, list(blobs), store.open_blob)


def write_tar(out: str, files: dict, blobs: list, open_blob) -> None:
    """The archive: metadata `files` (oci-layout, index.json, manifest.json, repositories) first,
    then every blob of `blobs` (Digests, in order) read from `open_blob(digest)`; deterministic
    (mtime 0, root owner). `out` appears only complete (see output.output_fd)."""
    with output_fd(out) as fd:
        w = TarWriter(fd)
        for name in ("oci-layout", "index.json", "manifest.json", "repositories"):
            if name in files:
                w.add_bytes(name, files[name])
        w.add_dir("blobs")
        for alg in sorted({d.algorithm for d in blobs}):
            w.add_dir(f"blobs/{alg}")
        for d in blobs:
            _add_blob(open_blob, w, d)
        w.close()


def _dump(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _resolve(store, ref: str) -> tuple[str | None, Descriptor]:
    """(full name or None, top descriptor) for a name, digest or ID prefix."""
    name, desc = images.resolve(store, ref)
    if images.is_id(ref.strip()) or name.startswith(DANGLING):
        name = None
    else:
        try:
            name = str(reference.parse(name))
        except Exception:
            pass
        if "@" in name:  # a digest reference is not a tag: keep the image, drop the name
            name = None
    return name, Descriptor(desc.media_type, desc.digest, desc.size, None, desc.platform)


def _what(name: str | None, d: Digest) -> str:
    return name or str(d)


def _missing(name, d: Digest, what: str) -> ArchiveError:
    return ArchiveError(f"image {_what(name, d)} is incomplete in the store: {what} {d} is missing",
                        hint="pull or load the image again")


def _json_blob(store, desc: Descriptor, name, what: str) -> bytes:
    if not store.has(desc.digest):
        raise _missing(name, desc.digest, what)
    return images.read_json_blob(store, desc, what)


def _collect(store, desc: Descriptor, blobs: dict, name) -> None:
    """Every stored blob under `desc` (index children not in the store, or whose blobs were
    never pulled, are left out; the index still lists them)."""
    try:
        nodes = walk.walk(lambda d: _json_blob(store, d, name, "manifest"), desc,
                          lambda e: walk.is_image_entry(e) and store.has(e.digest))
    except ManifestError as e:
        raise ArchiveError(f"image {_what(name, desc.digest)}: {e.message}", hint=e.hint) from None
    for n in nodes:
        if n.is_index:
            blobs[n.descriptor.digest] = None
        elif n.descriptor.digest == desc.digest or all(store.has(d.digest) for d in walk.blobs_of(n.document)):
            _collect_manifest(store, n.descriptor, n.document, blobs, name)


def _collect_manifest(store, desc: Descriptor, manifest, blobs: dict, name) -> None:
    for d in [manifest.config.digest] + [la.digest for la in manifest.layers]:
        if not store.has(d):
            raise _missing(name, d, "blob")
    blobs[desc.digest] = None
    blobs[manifest.config.digest] = None
    for la in manifest.layers:
        blobs[la.digest] = None


def _platform_manifest(store, top: Descriptor, name):
    try:
        desc, manifest, _ = images.manifest_for(store, top)
    except ManifestError as e:
        raise ArchiveError(f"image {_what(name, top.digest)}: {e.message}", hint=e.hint) from None
    return Descriptor(desc.media_type, desc.digest, desc.size, None, desc.platform), manifest


def docker_entry(entries: list[dict], manifest, name: str | None) -> None:
    tag = reference.parse(name).familiar if name else None
    config = blob_name(manifest.config.digest)
    for e in entries:
        if e["Config"] == config and e["Layers"] == [blob_name(la.digest) for la in manifest.layers]:
            if tag and tag not in e["RepoTags"]:
                e["RepoTags"].append(tag)
            return
    entries.append({"Config": config, "RepoTags": [tag] if tag else [],
                    "Layers": [blob_name(la.digest) for la in manifest.layers]})


def repositories(entries: list[dict]) -> dict:
    repos: dict[str, dict[str, str]] = {}
    for e in entries:
        if not e["Layers"]:
            continue
        top = e["Layers"][-1].rsplit("/", 1)[-1]
        for tag in e["RepoTags"]:
            ref = reference.parse(tag)
            repos.setdefault(ref.familiar_name, {})[ref.tag or "latest"] = top
    return repos


def _add_blob(open_blob, w: TarWriter, d: Digest) -> None:
    import tarfile

    f = open_blob(d)
    try:
        size = os.fstat(f.fileno()).st_size
        ti = tarfile.TarInfo(blob_name(d))
        ti.size, ti.mode, ti.mtime = size, 0o644, 0
        w.add_fd(ti, f.fileno())
    finally:
        f.close()
