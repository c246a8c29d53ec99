"""OCI layout directories and image archives (oci-archive, docker-archive) as sources and sinks.

Source: `ArchiveSource.open(path, ref)` reads `oci:DIR`, `oci-archive:FILE` and `docker-archive:FILE`
through the load path's verified reader (archive/plan.py: every blob hashed before any byte is
copied; a legacy docker save gets the OCI manifest the load would write). `ref` picks the image:
for a layout, the `org.opencontainers.image.ref.name` annotation as written (skopeo's rule), or an
image name; for a docker save, one of its RepoTags. Without `ref` the archive must hold one image.

Sink: `LayoutSink(dir, ref)` writes blobs (hashed while written, temp + fsync + rename) and then
index.json with an entry annotated `ref` (replacing an entry of the same ref). Archives as a
sink: transports/archive.py.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from store import Descriptor, Digest
from store.errors import InvalidDescriptor

from imagetool import mediatypes as mt
from imagetool import reference
from imagetool.errors import ArchiveError, DigestError, ImageNotFound, InvalidReference, ManifestError
from imagetool.transports import walk
from imagetool.transports.archive import REF_NAME
from imagetool.transports.base import COPIED, Sink, Source, skip



class _NoStore:
    """What plan.read_archive asks of a store, for a copy that writes none: nothing is present."""

    @staticmethod
    def has(_digest) -> bool:
        return False


class ArchiveSource(Source):
    """A verified archive plan (archive/plan.py) as a source: manifests and configs from the plan
    (or from `store`, for what the store already held when the plan was made), other blobs from
    the archive's members. `ArchiveSource.open` reads an archive for copy; `choose` names the
    image the next copy takes."""

    def __init__(self, src, plan, store=None, label: str | None = None):
        self.src, self.plan, self.store = src, plan, store
        self.label = label or src.label
        self._top: Descriptor | None = None

    @classmethod
    def open(cls, path: str, ref: str | None, spool_dir: Path) -> "ArchiveSource":
        from imagetool.archive.plan import read_archive
        from imagetool.archive.source import open_source

        src = open_source(path, spool_dir)
        try:
            self = cls(src, read_archive(src, _NoStore()), label=path)
            return self.choose(self._by_ref(ref))
        except BaseException:
            src.close()
            raise

    def choose(self, top: Descriptor) -> "ArchiveSource":
        self._top = top
        return self

    def close(self) -> None:
        self.src.close()

    def _by_ref(self, ref: str | None) -> Descriptor:
        images = self.plan.images
        if ref is None:
            if len(images) != 1:
                raise ArchiveError(f"{self.label} holds {len(images)} images: name one",
                                   hint="append :REF (a ref name or image name) to the path")
            return images[0].descriptor
        by_annotation = self._ref_names().get(ref)
        for img in images:
            if by_annotation is not None and img.descriptor.digest == by_annotation:
                return img.descriptor
        full = _full(ref)
        for img in images:
            if full and full in img.names:
                return img.descriptor
        raise ImageNotFound(f"no image {ref!r} in {self.label}")

    def _ref_names(self) -> dict:
        """{ref.name annotation: digest} of index.json (empty for a legacy docker save)."""
        if not self.src.exists("index.json"):
            return {}
        try:
            entries = json.loads(self.src.read("index.json")).get("manifests") or []
            return {e["annotations"][REF_NAME]: Digest.parse(e["digest"]) for e in entries
                    if isinstance(e, dict) and REF_NAME in (e.get("annotations") or {})}
        except (ValueError, TypeError, KeyError, AttributeError):
            return {}

    def _held(self, d: Digest) -> bool:
        return d in self.plan.puts or d in self.plan.copies or (self.store is not None and self.store.has(d))

    def top(self) -> Descriptor:
        return self._top

    def read(self, desc: Descriptor) -> bytes:
        if desc.digest in self.plan.puts:
            return self.plan.puts[desc.digest]
        if self.store is not None and self.store.has(desc.digest):
            from imagetool.image import read_json_blob

            return read_json_blob(self.store, desc, "manifest")
        raise ArchiveError(f"{self.label}: manifest {desc.digest} is not in the archive")

    def carries(self, entry: Descriptor) -> bool:
        """The entry's manifest and every blob it needs are in the plan (or the store); an OCI
        artifact (a config that is not an image config) is not carried."""
        if not self._held(entry.digest):
            return False
        if mt.is_index(entry.media_type):
            return True
        try:
            doc = walk.node(self.read, entry).document
        except (ManifestError, ArchiveError):
            return False
        if doc.config.media_type and not mt.is_config(doc.config.media_type):
            return False
        return all(self._held(d.digest) for d in walk.blobs_of(doc))

    def chunks(self, desc: Descriptor, offset: int = 0):
        if desc.digest in self.plan.puts:
            yield self.plan.puts[desc.digest][offset:]
            return
        member = self.plan.copies.get(desc.digest)
        if member is None:
            raise ArchiveError(f"{self.label}: blob {desc.digest} is not in the archive")
        yield from skip(self.src.chunks(member), offset)


def _full(name: str) -> str | None:
    try:
        ref = reference.parse(name)
    except InvalidReference:  # not an image name: only the annotation can match
        return None
    return None if ref.digest else str(ref)


class LayoutSink(Sink):
    def __init__(self, root: str | Path, ref: str | None):
        self.root = Path(root)
        self.ref = ref
        self.label = f"oci:{root}"
        if self.root.exists() and any(self.root.iterdir()) and not (self.root / "oci-layout").exists():
            raise ArchiveError(f"{root} is a non-empty directory that is not an OCI layout; refusing to "
                               "write into it")
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        layout = self.root / "oci-layout"
        if not layout.exists():
            _atomic(layout, json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        self.written: list[Digest] = []

    def _path(self, d: Digest) -> Path:
        return self.root / "blobs" / d.algorithm / d.hex

    def has(self, desc: Descriptor) -> bool:
        return self._path(desc.digest).is_file()

    def put_blob(self, desc: Descriptor, source: Source, progress) -> str:
        self._write(desc, source.chunks(desc), source.label, progress)
        return COPIED

    def _write(self, desc: Descriptor, chunks, label: str, progress=None) -> None:
        path = self._path(desc.digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="imagetool-", suffix=".tmp", dir=path.parent)
        try:
            h, size = desc.digest.hasher(), 0
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    h.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
                    if progress is not None:
                        progress.blob_advance(str(desc.digest), len(chunk))
                f.flush()
                os.fsync(f.fileno())
            if size != desc.size or h.hexdigest() != desc.digest.hex:
                raise DigestError(f"blob {desc.digest} from {label} does not match its descriptor "
                                  f"({size} bytes, sha256:{h.hexdigest()})")
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)  # point of no return: the verified blob appears under its digest
            self.written.append(desc.digest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_manifest(self, node) -> None:
        if not self.has(node.descriptor):
            self._write(node.descriptor, [node.raw], "the source")
        elif node.descriptor.digest not in self.written:
            self.written.append(node.descriptor.digest)

    def finish(self, top: Descriptor) -> None:
        index_path = self.root / "index.json"
        entries = []
        if index_path.exists():
            try:
                doc = json.loads(index_path.read_bytes())
                entries = [Descriptor.from_dict(e) for e in doc.get("manifests") or []]
            except (ValueError, AttributeError, InvalidDescriptor) as e:
                raise ArchiveError(f"{index_path} is not a valid OCI index ({e})") from None
        ann = {REF_NAME: self.ref} if self.ref else None
        entry = Descriptor(top.media_type, top.digest, top.size, ann, top.platform)
        keep = [e for e in entries if not (self.ref and (e.annotations or {}).get(REF_NAME) == self.ref)
                and e.to_dict() != entry.to_dict()]
        index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                 "manifests": [e.to_dict() for e in keep + [entry]]}
        _atomic(index_path, json.dumps(index, separators=(",", ":")).encode())


def _atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix="imagetool-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

