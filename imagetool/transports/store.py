"""The local store as an image source (a name, digest or ID prefix) and as a sink (a name)."""

from __future__ import annotations

import os

from store import Descriptor
from store.errors import BlobNotFound, DigestMismatch, SizeMismatch, StoreError

from imagetool import image, reference
from imagetool import mediatypes as mt
from imagetool.errors import DigestError, ImagetoolError, InvalidReference, ManifestError
from imagetool.transports.base import COPIED, EXISTS, Sink, Source

CHUNK = 1 << 20


class StoreSource(Source):
    """The image a store ref names; blobs read straight from `blobs/`. `mount_source` offers the
    other repositories on the destination's registry that hold a blob (from the store's refs)."""

    def __init__(self, store, ref_string: str, resolved: tuple | None = None):
        self.store = store
        self.name, desc = resolved or image.resolve(store, ref_string)
        self._top = Descriptor(desc.media_type, desc.digest, desc.size, None, desc.platform)
        self.label = self.name
        self._holders: dict | None = None

    def top(self) -> Descriptor:
        return self._top

    def read(self, desc: Descriptor) -> bytes:
        return image.read_json_blob(self.store, desc, "manifest")

    def chunks(self, desc: Descriptor, offset: int = 0):
        with self.store.open_blob(desc.digest) as f:
            f.seek(offset)
            while True:
                data = f.read(CHUNK)
                if not data:
                    return
                yield data

    def path(self, desc: Descriptor):
        try:
            return self.store.path(desc.digest)
        except BlobNotFound:
            raise ManifestError(f"image {self.name} is incomplete in the store: blob {desc.digest} is missing",
                                hint="pull or load the image again") from None

    def carries(self, entry: Descriptor) -> bool:
        """The entry's manifest and all its blobs are stored (a platform pulled in full)."""
        if not self.store.has(entry.digest):
            return False
        if mt.is_index(entry.media_type):
            return True
        try:
            _, manifest, _ = image.manifest_for(self.store, entry)
        except (ImagetoolError, StoreError):
            return False
        return all(self.store.has(d.digest) for d in [manifest.config] + list(manifest.layers))

    def holders(self, domain: str) -> dict:
        """{blob digest: repository path} for the images the store's refs name on `domain`."""
        if self._holders is None:
            self._holders = {}
            for name, desc in self.store.refs():
                try:
                    ref = reference.parse(name)
                    _, manifest, _ = image.manifest_for(self.store, desc)
                except (ImagetoolError, StoreError):  # an unreadable ref offers no mount, nothing more
                    continue
                for d in [manifest.config] + list(manifest.layers):
                    self._holders.setdefault((ref.domain, d.digest), ref.path)
        return {d: p for (dom, d), p in self._holders.items() if dom == domain}

    def mount_source(self, desc: Descriptor) -> tuple[str, str] | None:
        try:
            ref = reference.parse(self.name)
        except InvalidReference:
            return None
        repo = self.holders(ref.domain).get(desc.digest)
        return (ref.domain, repo) if repo else None


class StoreSink(Sink):
    """Blobs through the store's ingest (verified on commit), manifests by `put`, then the names.

    The caller holds `store.lock_shared()` for the whole copy (a concurrent prune waits). With
    `deferred`, `finish` only records the names and `tag_all` writes them (a load names nothing
    until every image's blobs are in); `roll_back` deletes what this sink committed and the
    partial files it left, so a failed load leaves the store as it was."""

    def __init__(self, store, name: str | None, deferred: bool = False):
        self.store = store
        self.names = [name] if name else []
        self.label = name or "the store"
        self.deferred = deferred
        self.tags: list = []
        self.written: list = []
        self._partials: set = set()

    def has(self, desc: Descriptor) -> bool:
        return self.store.has(desc.digest)

    def put_blob(self, desc: Descriptor, source: Source, progress) -> str:
        client = source.registry_client()
        if client is not None:  # the pull's glue: verified, resumed with Range after a cut
            from imagetool.fetch import fetch_blob

            return COPIED if fetch_blob(self.store, client, desc, _Quiet(progress)) else EXISTS
        with self.store.ingest(desc.digest, desc.size) as w:
            if w.exists:  # another process committed it meanwhile
                return EXISTS
            if w.offset:
                w.reset()  # an abandoned partial of another download: start from scratch
            self._partials.add(desc.digest)
            progress.blob_start(str(desc.digest), desc.size, 0)
            try:
                for chunk in source.chunks(desc):
                    w.write(chunk)
                    progress.blob_advance(str(desc.digest), len(chunk))
                w.commit()
            except (DigestMismatch, SizeMismatch) as e:
                raise DigestError(f"blob {desc.digest} from {source.label}: {e}") from None
            self.written.append(desc.digest)
            self._partials.discard(desc.digest)
        return COPIED

    def put_manifest(self, node) -> None:
        if not self.store.has(node.descriptor.digest):
            self.store.put(node.raw, node.descriptor.digest)
            self.written.append(node.descriptor.digest)

    def finish(self, top: Descriptor) -> None:
        self.tags += [(n, top) for n in self.names]
        if not self.deferred:
            self.tag_all()

    def tag_all(self) -> None:
        for name, desc in self.tags:
            self.store.tag(name, desc)
        self.tags = []

    def roll_back(self) -> None:
        """Delete the blobs this sink committed and its partial ingest files (best effort)."""
        for d in reversed(self.written):
            try:
                self.store.delete(d)
            except (StoreError, OSError):
                pass
        for d in self._partials:
            name = d.hex if d.algorithm == "sha256" else f"{d.algorithm}-{d.hex}"
            try:
                os.unlink(os.path.join(self.store.ingest_dir, name + ".partial"))
            except OSError:
                pass
        self.written, self._partials = [], set()


class _Quiet:
    """Progress without blob_done: the copy loop reports each blob's end once itself."""

    def __init__(self, progress):
        self._p = progress

    def message(self, text: str) -> None:
        self._p.message(text)

    def blob_start(self, digest: str, size, offset: int) -> None:
        self._p.blob_start(digest, size, offset)

    def blob_advance(self, digest: str, nbytes: int) -> None:
        self._p.blob_advance(digest, nbytes)

    def blob_done(self, digest: str, status: str) -> None:
        pass
