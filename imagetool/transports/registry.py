"""A registry repository as an image source (pull side) and as a sink (the push protocol).

RegistrySink.put_blob, in order: cross-repository mount when the source says another repository
of the same registry holds the blob (POST ?mount=&from=; a 202 opens an ordinary session);
the upload session a killed or failed push left (its Location kept in the store's ingest/
directory, its offset read back from the registry's `Range`); else a new session. A blob of at
most MONOLITHIC bytes is sent in one PUT; a larger one in PATCH chunks of CHUNK bytes, the
session's Location saved after each, and after a failure the registry is asked where it stands
and only the rest is sent (the budget counts consecutive failures that made no progress).
The registry verifies the digest on the closing PUT, so what it stores is the source's bytes.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from store import Descriptor

from imagetool.errors import AuthError, RegistryError, TransportError
from imagetool.transports.base import MOUNTED, PUSHED, Sink, Source, skip


def _env_int(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


MONOLITHIC = _env_int("IMAGETOOL_PUSH_MONOLITHIC", 4 << 20)
CHUNK = _env_int("IMAGETOOL_PUSH_CHUNK", 8 << 20)


class RegistrySource(Source):
    """The image `ref` names on its registry; manifests verified against their digests."""

    def __init__(self, ref, insecure: bool = False):
        from imagetool.registry.client import RegistryClient

        self.ref = ref
        self.client = RegistryClient(ref, insecure=insecure)
        self.label = str(ref)
        self._raw: dict = {}
        self._top: Descriptor | None = None

    def close(self) -> None:
        self.client.close()

    def top(self) -> Descriptor:
        if self._top is None:
            got = self.client.get_manifest(self.ref.digest or self.ref.tag)
            self._raw[got.digest] = got.raw
            self._top = Descriptor(got.media_type or "", got.digest, len(got.raw))
        return self._top

    def read(self, desc: Descriptor) -> bytes:
        if desc.digest not in self._raw:
            self._raw[desc.digest] = self.client.get_manifest(str(desc.digest), desc.digest).raw
        return self._raw[desc.digest]

    def chunks(self, desc: Descriptor, offset: int = 0):
        with self.client.blob_stream(desc.digest, offset) as s:
            yield from skip(s.chunks(), offset - s.start)

    def mount_source(self, desc: Descriptor) -> tuple[str, str] | None:
        return self.ref.domain, self.ref.path

    def registry_client(self):
        return self.client


class RegistrySink(Sink):
    """Push into repository `ref` (tagged with `ref.tag` at the end when it has one).

    `state_dir` keeps the Locations of unfinished upload sessions (the store's ingest dir)."""

    def __init__(self, ref, insecure: bool = False, state_dir: Path | None = None, mount_from=()):
        from imagetool.registry.upload import Uploader

        self.ref = ref
        self.up = Uploader(ref, insecure=insecure, mount_from=mount_from)
        self.label = str(ref)
        self.state_dir = Path(state_dir) if state_dir else None
        self._manifests: dict = {}

    def close(self) -> None:
        self.up.close()

    def has(self, desc: Descriptor) -> bool:
        return self.up.blob_exists(desc.digest)

    # -------------------------------------------------------------- sessions kept across runs

    def _session_file(self, desc: Descriptor) -> Path | None:
        if self.state_dir is None:
            return None
        key = hashlib.sha256(f"{self.up.host}/{self.ref.path}@{desc.digest}".encode()).hexdigest()[:40]
        return self.state_dir / f"push-{key}.session"

    def _load_session(self, desc: Descriptor) -> str | None:
        f = self._session_file(desc)
        try:
            return f.read_text().strip() or None if f else None
        except OSError:
            return None

    def _save_session(self, desc: Descriptor, location: str) -> None:
        f = self._session_file(desc)
        if f is None:
            return
        tmp = f.with_name(f"imagetool-{f.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(location)
            os.replace(tmp, f)
        except OSError:
            tmp.unlink(missing_ok=True)

    def _drop_session(self, desc: Descriptor) -> None:
        f = self._session_file(desc)
        if f is not None:
            f.unlink(missing_ok=True)

    # -------------------------------------------------------------- blobs

    def _open(self, desc: Descriptor, source: Source) -> tuple[str | None, int]:
        """(session location, bytes the registry holds) or (None, 0) when the blob was mounted."""
        from imagetool.registry.upload import UploadGone

        there = source.mount_source(desc)
        if there and there[0] == self.ref.domain and there[1] != self.ref.path:
            loc = self.up.mount(desc.digest, there[1])
            if loc is None:
                return None, 0
            return loc, 0
        old = self._load_session(desc)
        if old:
            try:
                return self.up.status(old)
            except (UploadGone, RegistryError, TransportError):
                self._drop_session(desc)
        return self.up.start(), 0

    def put_blob(self, desc: Descriptor, source: Source, progress) -> str:
        loc, offset = self._open(desc, source)
        if loc is None:
            return MOUNTED
        digest = str(desc.digest)
        progress.blob_start(digest, desc.size, offset)
        if offset == 0 and desc.size <= MONOLITHIC:
            self.up.finish(loc, desc.digest, lambda: _exactly(source.chunks(desc), desc.size, source.label), desc.size)
            progress.blob_advance(digest, desc.size)
            return PUSHED
        self._save_session(desc, loc)
        loc = self._chunked(desc, source, loc, offset, progress)
        self.up.finish(loc, desc.digest)
        self._drop_session(desc)
        return PUSHED

    def _chunked(self, desc: Descriptor, source: Source, loc: str, offset: int, progress) -> str:
        """PATCH from `offset` to the end; resumes from the registry's Range after failures."""
        policy = self.up.transport.policy
        failures = 0
        while offset < desc.size:
            before = offset
            try:
                while offset < desc.size:
                    n = min(CHUNK, desc.size - offset)
                    start = offset
                    loc, got = self.up.patch(loc, lambda: _exactly(source.chunks(desc, start), n, source.label),
                                             n, offset)
                    self._save_session(desc, loc)
                    progress.blob_advance(str(desc.digest), got - offset)
                    offset = got
            except AuthError:
                raise
            except (TransportError, RegistryError) as e:
                failures = 1 if offset > before else failures + 1
                if failures >= policy.attempts:
                    raise TransportError(f"uploading blob {desc.digest} to {self.up.host} failed after "
                                         f"{failures} attempts ({offset} of {desc.size} bytes): {e}") from None
                time.sleep(policy.delay(failures))
                loc, now = self.up.status(loc)  # where the registry stands: send only the rest
                progress.blob_advance(str(desc.digest), now - offset)
                offset = now
        return loc

    # -------------------------------------------------------------- manifests

    def put_manifest(self, node) -> None:
        media = node.descriptor.media_type or node.document.media_type
        self.up.put_manifest(str(node.descriptor.digest), node.raw, media)
        self._manifests[node.descriptor.digest] = (node.raw, media)

    def finish(self, top: Descriptor) -> None:
        if self.ref.tag and not self.ref.digest:
            raw, media = self._manifests[top.digest]
            self.up.put_manifest(self.ref.tag, raw, media)


def _exactly(chunks, size: int, label: str):
    """The first `size` bytes of `chunks` (a request body of that Content-Length); an error when
    the source ends sooner (the request is then cut, never padded)."""
    left = size
    for chunk in chunks:
        if left <= 0:
            break
        piece = chunk[:left] if len(chunk) > left else chunk
        left -= len(piece)
        yield piece
    if left > 0:
        raise TransportError(f"{label}: a blob ended {left} bytes early while being uploaded")
