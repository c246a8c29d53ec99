"""Image archives as a sink: one tar (oci-archive, or docker-archive with manifest.json) streamed
straight from the sources, with no temporary copy of the blobs.

    w = ArchiveWriter("docker")
    copy_image(source, ArchiveSink(w, annotations={...}, tag="busybox:latest"))   # once per image
    w.write("out.tar")                       # or "-": stdout; the file appears only complete

The sink records what each image needs (blobs by digest, manifests as bytes, index.json entries,
manifest.json entries); `write` lays out `oci-layout`, `index.json` (and `manifest.json`,
`repositories` for docker), then every blob once. A blob a source holds as a verified file (the
store) is copied with sendfile; any other is streamed and hashed on the way, and a mismatch aborts
the write (nothing appears). A docker-archive holds one platform's image per entry: an index is
refused. The tar is deterministic: metadata first, blobs in the order they were met, mtime 0.
"""

from __future__ import annotations

import json
import tarfile

from store import Descriptor, Digest

from imagetool import mediatypes as mt
from imagetool import reference
from imagetool.errors import ArchiveError, DigestError
from imagetool.transports.base import COPIED, Sink, Source

FORMATS = ("docker", "oci")
CONTAINERD_NAME = "io.containerd.image.name"
REF_NAME = "org.opencontainers.image.ref.name"


def blob_name(d: Digest) -> str:
    return f"blobs/{d.algorithm}/{d.hex}"


def _dump(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class ArchiveWriter:
    def __init__(self, fmt: str):
        if fmt not in FORMATS:
            raise ArchiveError(f"unknown archive format {fmt!r} (use docker or oci)")
        self.fmt = fmt
        self.blobs: dict = {}            # Digest -> bytes | (Descriptor, Source)
        self.index: list[dict] = []
        self.docker: list[dict] = []

    def add_image(self, top: Descriptor, manifest, annotations: dict | None, tag: str | None) -> None:
        """Name an image whose blobs were added: an index.json entry (and, for docker, a
        manifest.json entry for `manifest`, the image manifest, with `tag` in its RepoTags)."""
        entry = Descriptor(top.media_type, top.digest, top.size, annotations or None, top.platform).to_dict()
        if entry not in self.index:
            self.index.append(entry)
        if self.fmt == "docker":
            docker_entry(self.docker, manifest, tag)

    def write(self, out: str) -> None:
        from imagetool.archive.output import output_fd
        from imagetool.archive.tarwriter import TarWriter

        files = {"oci-layout": _dump({"imageLayoutVersion": "1.0.0"}),
                 "index.json": _dump({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": self.index})}
        if self.fmt == "docker":
            files["manifest.json"] = _dump(self.docker)
            files["repositories"] = _dump(repositories(self.docker))
        with output_fd(out) as fd:
            w = TarWriter(fd)
            for name in ("oci-layout", "index.json", "manifest.json", "repositories"):
                if name in files:
                    w.add_bytes(name, files[name])
            w.add_dir("blobs")
            for alg in sorted({d.algorithm for d in self.blobs}):
                w.add_dir(f"blobs/{alg}")
            for d, what in self.blobs.items():
                self._add_blob(w, d, what)
            w.close()

    @staticmethod
    def _add_blob(w, d: Digest, what) -> None:
        ti = tarfile.TarInfo(blob_name(d))
        ti.mode, ti.mtime = 0o644, 0
        if isinstance(what, bytes):
            w.add_bytes(ti.name, what)
            return
        desc, source = what
        ti.size = desc.size
        path = source.path(desc)
        if path is not None:  # a verified file (the store): sendfile, no hashing needed
            with open(path, "rb") as f:
                w.add_fd(ti, f.fileno())
            return
        h, seen = d.hasher(), 0

        def checked():
            nonlocal seen
            for chunk in source.chunks(desc):
                h.update(chunk)
                seen += len(chunk)
                yield chunk

        w.add_chunks(ti, checked())
        if seen != desc.size or h.hexdigest() != d.hex:
            raise DigestError(f"blob {d} from {source.label} does not match its descriptor "
                              f"({seen} bytes, sha256:{h.hexdigest()})")


class ArchiveSink(Sink):
    """One image into an ArchiveWriter. With `out`, `finish` also writes the archive (copy)."""

    def __init__(self, writer: ArchiveWriter, annotations: dict | None = None, tag: str | None = None,
                 out: str | None = None):
        self.w = writer
        self.annotations = annotations
        self.tag = tag
        self.out = out
        self.label = f"{writer.fmt}-archive:{out or ''}"
        self._manifest = None

    def has(self, desc: Descriptor) -> bool:
        return desc.digest in self.w.blobs

    def put_blob(self, desc: Descriptor, source: Source, progress) -> str:
        source.path(desc)  # a store blob that is missing fails now, before any byte is written
        self.w.blobs[desc.digest] = (desc, source)
        return COPIED

    def put_manifest(self, node) -> None:
        if node.is_index and self.w.fmt == "docker":
            raise ArchiveError("a docker-archive holds one platform's image, not an index",
                               hint="copy one platform (without --all), or use oci-archive:")
        if not node.is_index:
            self._manifest = node.document
        self.w.blobs.setdefault(node.descriptor.digest, node.raw)

    def finish(self, top: Descriptor) -> None:
        self.w.add_image(top, self._manifest, self.annotations, self.tag)
        if self.out is not None:
            self.w.write(self.out)


def docker_entry(entries: list[dict], manifest, name: str | None) -> None:
    """Add (or merge the tag into) manifest.json's entry for an image manifest."""
    tag = reference.parse(name).familiar if name else None
    config = blob_name(manifest.config.digest)
    layers = [blob_name(la.digest) for la in manifest.layers]
    for e in entries:
        if e["Config"] == config and e["Layers"] == layers:
            if tag and tag not in e["RepoTags"]:
                e["RepoTags"].append(tag)
            return
    entries.append({"Config": config, "RepoTags": [tag] if tag else [], "Layers": layers})


def repositories(entries: list[dict]) -> dict:
    """The legacy `repositories` file: {familiar name: {tag: top layer id}}."""
    repos: dict[str, dict[str, str]] = {}
    for e in entries:
        if not e["Layers"]:
            continue
        top = e["Layers"][-1].rsplit("/", 1)[-1]
        for tag in e["RepoTags"]:
            ref = reference.parse(tag)
            repos.setdefault(ref.familiar_name, {})[ref.tag or "latest"] = top
    return repos
