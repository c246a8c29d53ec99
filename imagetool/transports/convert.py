"""A source whose manifests are rewritten to the OCI or the Docker media types (push --format).

Only manifests and indexes change (their media types, and those of the descriptors in them): the
config and layer blobs are the same bytes under the same digests, so nothing is recompressed. A
document already in the target format keeps its exact bytes (and digest). A layer the target
format cannot name without recompressing (zstd, or an uncompressed tar, in Docker format) is a
ManifestError before anything is sent.
"""

from __future__ import annotations

import json

from store import Descriptor, Digest

from imagetool import mediatypes as mt
from imagetool.errors import ManifestError
from imagetool.transports import walk
from imagetool.transports.base import Source

TO_DOCKER = {mt.OCI_INDEX: mt.DOCKER_MANIFEST_LIST, mt.OCI_MANIFEST: mt.DOCKER_MANIFEST,
             mt.OCI_CONFIG: mt.DOCKER_CONFIG, mt.OCI_LAYER_GZIP: mt.DOCKER_LAYER,
             mt.OCI_LAYER_ND_GZIP: mt.DOCKER_LAYER_FOREIGN}
TO_OCI = {mt.DOCKER_MANIFEST_LIST: mt.OCI_INDEX, mt.DOCKER_MANIFEST: mt.OCI_MANIFEST,
          mt.DOCKER_CONFIG: mt.OCI_CONFIG, mt.DOCKER_LAYER: mt.OCI_LAYER_GZIP,
          mt.DOCKER_LAYER_FOREIGN: mt.OCI_LAYER_ND_GZIP, mt.DOCKER_LAYER_TAR: mt.OCI_LAYER,
          mt.DOCKER_LAYER_ZSTD: mt.OCI_LAYER_ZSTD}
FORMATS = {"docker": TO_DOCKER, "oci": TO_OCI}


class Converted(Source):
    """`source` as `fmt` ("oci" or "docker"); every document is converted when built."""

    def __init__(self, source: Source, fmt: str):
        if fmt not in FORMATS:
            raise ManifestError(f"unknown manifest format {fmt!r} (use oci or docker)")
        self.source, self.fmt, self.label = source, fmt, source.label
        self._raw: dict[Digest, bytes] = {}
        done: dict[Digest, Descriptor] = {}
        top = source.top()
        keep = lambda e: walk.is_image_entry(e) and source.carries(e)  # noqa: E731
        for n in walk.walk(source.read, top, keep):
            done[n.descriptor.digest] = self._convert(n, done)
        self._top = done[top.digest]

    def _media(self, media: str, what: str) -> str:
        table = FORMATS[self.fmt]
        if media in table:
            return table[media]
        if self.fmt == "docker" and mt.is_docker(media) or self.fmt == "oci" and not mt.is_docker(media):
            return media
        raise ManifestError(f"{self.label}: {what} of type {media} has no {self.fmt} form without recompressing")

    def _convert(self, n: walk.Node, done: dict) -> Descriptor:
        doc = json.loads(n.raw)
        new = dict(doc)
        new["mediaType"] = self._media(n.document.media_type, "manifest")
        if n.is_index:
            entries = []
            for e in doc.get("manifests") or []:
                child = done.get(Digest.parse(e["digest"]))
                if child is not None:
                    e = {**e, "mediaType": child.media_type, "digest": str(child.digest), "size": child.size}
                entries.append(e)
            new["manifests"] = entries
        else:
            new["config"] = {**doc["config"], "mediaType": self._media(n.document.config.media_type, "config")}
            new["layers"] = [{**la, "mediaType": self._media(la.get("mediaType", ""), "layer")}
                             for la in doc.get("layers") or []]
        if new == doc:  # already in this format: the exact bytes, the same digest
            return Descriptor(n.document.media_type, n.descriptor.digest, len(n.raw), platform=n.descriptor.platform)
        raw = json.dumps(new, separators=(",", ":")).encode()
        digest = Digest.of_bytes(raw)
        self._raw[digest] = raw
        return Descriptor(new["mediaType"], digest, len(raw), platform=n.descriptor.platform)

    def top(self) -> Descriptor:
        return self._top

    def read(self, desc: Descriptor) -> bytes:
        return self._raw[desc.digest] if desc.digest in self._raw else self.source.read(desc)

    def carries(self, entry: Descriptor) -> bool:
        return entry.digest in self._raw or self.source.carries(entry)

    def chunks(self, desc: Descriptor, offset: int = 0):
        return self.source.chunks(desc, offset)

    def path(self, desc: Descriptor):
        return self.source.path(desc)

    def mount_source(self, desc: Descriptor):
        return self.source.mount_source(desc)

    def registry_client(self):
        return self.source.registry_client()

    def close(self) -> None:
        self.source.close()
