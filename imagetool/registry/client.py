"""The distribution API for one repository: resolve and fetch manifests, stream blobs.

    client = RegistryClient(reference.parse("busybox"))
    head = client.head_manifest("latest")              # ManifestHead(digest, media_type, size)
    raw = client.get_manifest("sha256:…", expected)    # RawManifest: verified bytes
    with client.blob_stream(digest, offset) as s:      # BlobStream: s.start, s.chunks()
        ...

Returns bytes and streams, never touches the store. Manifests are read with a 4 MiB cap and
verified against the digest asked for (or the `Docker-Content-Digest` the registry gives for a
tag); registry errors keep their distribution error code.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from store import Digest
from store.errors import InvalidDigest

from imagetool import mediatypes as mt
from imagetool.errors import (AuthError, DigestError, ManifestError, NotFoundError, RegistryError,
                              TransportError)
from imagetool.registry.auth import Authenticator
from imagetool.registry.transport import Transport

MAX_MANIFEST = 4 << 20
MAX_ERROR_BODY = 64 << 10
CHUNK = 256 << 10   # a blob's body is gathered in pieces of this size (x 2 while copied, per download)
RATELIMIT_WARN = 10
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True, slots=True)
class ManifestHead:
    """What a HEAD on a manifest says (digest None when the registry sends no Docker-Content-Digest)."""

    digest: Digest | None
    media_type: str
    size: int | None


@dataclass(frozen=True, slots=True)
class RawManifest:
    """Exact, verified manifest bytes; `media_type` is the registry's Content-Type (no parameters)."""

    raw: bytes
    digest: Digest
    media_type: str


class BlobStream:
    """The body of a blob GET: bytes start at `start` (0 when the server ignored Range)."""

    def __init__(self, resp, start: int, total: int | None):
        self._resp = resp
        self.start = start
        self.total = total

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """Raw body bytes in pieces of up to `size`; a network error propagates to the caller,
        but only after the bytes that arrived before it were yielded (so they can be kept)."""
        raw = self._resp.raw
        # read1: whatever has arrived, so bytes before a dropped connection are not lost in a
        # half-filled read buffer; gathered up to `size` to keep writes and hashing efficient
        read = getattr(raw, "read1", None) or raw.read
        buf = bytearray()
        while True:
            try:
                piece = read(size - len(buf), decode_content=False)
            except BaseException:
                if buf:
                    yield bytes(buf)
                raise
            if not piece:
                if buf:
                    yield bytes(buf)
                return
            if not buf and len(piece) >= size:
                yield piece  # a full piece: no copy
                continue
            buf += piece
            if len(buf) >= size:
                yield bytes(buf)
                buf = bytearray()

    def close(self) -> None:
        self._resp.close()


class RegistryClient:
    """Pull-side client of one repository (`ref.path`) on `ref.registry_host` or a mirror endpoint.

    `endpoint` ("https://mirror.example" or "host:port") replaces the registry host, e.g. for a
    docker.io mirror; credentials are then looked up for the mirror's host.
    """

    def __init__(self, ref, insecure: bool = False, endpoint: str | None = None,
                 transport: Transport | None = None, scope: str | None = None):
        self.ref = ref
        scheme = None
        host = ref.registry_host
        domain = ref.domain
        if endpoint:
            if "://" in endpoint:
                scheme, _, host = endpoint.partition("://")
                host = host.rstrip("/")
            else:
                host = endpoint
            domain = host
        self.host = host
        self.transport = transport or Transport(host, insecure=insecure, scheme=scheme)
        self.auth = Authenticator(domain, self.transport, scope=scope or f"repository:{ref.path}:pull")
        self.ratelimit_remaining: int | None = None
        self._rl_lock = threading.Lock()

    def close(self) -> None:
        self.transport.close()

    # -------------------------------------------------------------- plumbing

    def _request(self, method: str, path: str, headers: dict | None = None, stream: bool = False,
                 body=None):
        """A request with Authorization; a 401 is answered (token or Basic) and retried once or twice."""
        for attempt in range(3):
            sent = self.auth.header()
            resp = self.transport.request(method, path, headers, authorization=sent, stream=stream, body=body)
            self._note_ratelimit(resp)
            # a 401 from a redirect target (a CDN) is not the registry's: its challenge could name
            # any realm, and answering it would send our credentials there (ContainerDrip)
            if resp.status_code == 401 and attempt < 2 and self.transport.same_origin(resp.url):
                if self.auth.on_unauthorized(resp, sent):
                    resp.close()
                    continue
            return resp
        return resp  # pragma: no cover - the loop always returns

    def _note_ratelimit(self, resp) -> None:
        value = resp.headers.get("ratelimit-remaining")
        if not value:
            return
        try:
            n = int(value.split(";", 1)[0])
        except ValueError:
            return
        with self._rl_lock:
            self.ratelimit_remaining = n

    @property
    def ratelimit_low(self) -> bool:
        return self.ratelimit_remaining is not None and self.ratelimit_remaining <= RATELIMIT_WARN

    def _fail(self, resp, what: str):
        """Raise the error tree member for a non-success response (reads a bounded body)."""
        status = resp.status_code
        code, detail = None, ""
        try:
            body = getattr(resp, "_content", None)  # a non-streamed body was read already
            if body is None:
                body = resp.raw.read(MAX_ERROR_BODY, decode_content=True) if resp.method != "HEAD" else b""
            errors = json.loads(body).get("errors") if body else None
            if errors and isinstance(errors, list) and isinstance(errors[0], dict):
                code = _printable(errors[0].get("code"), 64) or None
                detail = _printable(errors[0].get("message") or "", 300)
        except (ValueError, AttributeError, OSError, Exception):  # noqa: BLE001 - best effort only
            pass
        finally:
            resp.close()
        where = f"{self.ref.name} on {self.host}"
        if status == 404 or code in ("NAME_UNKNOWN", "MANIFEST_UNKNOWN", "BLOB_UNKNOWN"):
            if code == "NAME_UNKNOWN" or (what.startswith("manifest") and not self.repository_exists()):
                msg = f"repository {self.ref.name} not found on {self.host}"
                code = "NAME_UNKNOWN"
            elif what.startswith("manifest"):
                msg = f"manifest for {self.ref} not found on {self.host}: manifest unknown"
            else:
                msg = f"{what} not found in {where}"
            return NotFoundError(msg, code=code, status=status)
        if status == 401:
            creds = self.auth.credentials()
            if creds:
                msg = (f"authentication to {self.auth.domain} as {creds.username} failed: "
                       "incorrect username or password")
            else:
                msg = (f"pull access denied for {self.ref.name}: the repository does not exist or "
                       f"needs credentials (imagetool login {self.auth.domain})")
            return AuthError(msg, code=code or "UNAUTHORIZED", status=status)
        if status == 403:
            return AuthError(f"access to {where} denied{': ' + detail if detail else ''}",
                             code=code or "DENIED", status=status)
        if status == 429:
            return RegistryError(f"{self.host} rate limit reached while fetching {what}"
                                 f"{': ' + detail if detail else ''}", code=code or "TOOMANYREQUESTS",
                                 status=status)
        text = f"{code}: {detail}" if code else f"HTTP {status}"
        return RegistryError(f"{self.host} failed to serve {what} of {self.ref.name} ({text})",
                             code=code, status=status)

    def repository_exists(self) -> bool:
        """False only when the registry says NAME_UNKNOWN for the repository's tag list."""
        try:
            resp = self._request("GET", f"/v2/{self.ref.path}/tags/list?n=1")
        except TransportError:
            return True
        try:
            if resp.status_code != 404:
                return True
            body = resp.content[:MAX_ERROR_BODY]
            errors = json.loads(body).get("errors") or [{}]
            return errors[0].get("code") != "NAME_UNKNOWN"
        except (ValueError, AttributeError, IndexError, TypeError):
            return True
        finally:
            resp.close()

    # -------------------------------------------------------------- manifests

    def head_manifest(self, reference: str) -> ManifestHead:
        """HEAD /v2/<name>/manifests/<reference> (free against Docker Hub's pull limit)."""
        resp = self._request("HEAD", f"/v2/{self.ref.path}/manifests/{reference}",
                             {"Accept": mt.ACCEPT_HEADER})
        if resp.status_code != 200:
            raise self._fail(resp, f"manifest {reference}")
        resp.close()
        digest = None
        header = resp.headers.get("Docker-Content-Digest")
        if header:
            digest = _parse_digest(header, self.host)
        try:
            size = int(resp.headers.get("Content-Length", ""))
        except ValueError:
            size = None
        return ManifestHead(digest, mt.base(resp.headers.get("Content-Type")), size)

    def get_manifest(self, reference: str, expected: Digest | None = None) -> RawManifest:
        """GET a manifest/index; verified against `expected` (or Docker-Content-Digest), ≤ 4 MiB."""
        resp = self._request("GET", f"/v2/{self.ref.path}/manifests/{reference}",
                             {"Accept": mt.ACCEPT_HEADER, "Accept-Encoding": "identity"}, stream=True)
        if resp.status_code != 200:
            raise self._fail(resp, f"manifest {reference}")
        try:
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > MAX_MANIFEST:
                raise ManifestError(f"manifest {reference} of {self.ref.name} is {int(length)} bytes, "
                                    f"more than the {MAX_MANIFEST >> 20} MiB limit")
            try:
                raw = resp.raw.read(MAX_MANIFEST + 1, decode_content=True)
            except (OSError, http.client.HTTPException) as e:
                raise TransportError(f"reading manifest {reference} from {self.host} failed: {e}") from None
            if len(raw) > MAX_MANIFEST:
                raise ManifestError(f"manifest {reference} of {self.ref.name} is more than the "
                                    f"{MAX_MANIFEST >> 20} MiB limit")
            if length and length.isdigit() and len(raw) < int(length):  # read(n) does not raise on EOF
                raise TransportError(f"reading manifest {reference} from {self.host} failed: the connection "
                                     f"closed after {len(raw)} of {length} bytes")
            header = resp.headers.get("Docker-Content-Digest")
            content_type = mt.base(resp.headers.get("Content-Type"))
        finally:
            resp.close()
        if expected is None and reference.startswith("sha256:"):
            expected = _parse_digest(reference, self.host)
        if expected is None and header:
            expected = _parse_digest(header, self.host)
        if expected is not None:
            actual = Digest.of_bytes(raw, expected.algorithm)
            if actual != expected:
                raise DigestError(f"manifest {reference} of {self.ref.name} from {self.host} does not "
                                  f"match its digest: expected {expected}, got {actual}")
            digest = expected
        else:
            digest = Digest.of_bytes(raw)
        if header and expected is not None and _parse_digest(header, self.host) != digest:
            raise DigestError(f"{self.host} sent Docker-Content-Digest {header} for manifest "
                              f"{reference}, but its bytes hash to {digest}")
        _check_media_type(raw, content_type, reference)
        return RawManifest(raw, digest, content_type)

    # -------------------------------------------------------------- blobs

    @contextmanager
    def blob_stream(self, digest: Digest, offset: int = 0) -> Iterator[BlobStream]:
        """GET a blob from `offset` (Range); redirects are followed without Authorization.

        The stream's `start` is where its bytes begin: `offset` on 206, 0 when the server
        answered 200 (the caller must then start over). A 416 at offset > 0 yields an empty
        stream at `offset` (the partial is already complete).
        """
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        resp = self._request("GET", f"/v2/{self.ref.path}/blobs/{digest}", headers, stream=True)
        try:
            if resp.status_code == 200:
                stream = BlobStream(resp, 0, _length(resp))
            elif resp.status_code == 206 and offset:
                m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                if not m or int(m.group(1)) != offset:
                    raise TransportError(f"{self.host} answered the range request for {digest} "
                                         f"with {resp.headers.get('Content-Range')!r}")
                total = None if m.group(3) == "*" else int(m.group(3))
                stream = BlobStream(resp, offset, total)
            elif resp.status_code == 416 and offset:
                stream = BlobStream(_Empty(resp), offset, None)
            else:
                raise self._fail(resp, f"blob {digest}")
            yield stream
        finally:
            resp.close()


class _Empty:
    """A response stand-in with an empty body (416: nothing left to read)."""

    def __init__(self, resp):
        self._resp = resp

    class raw:  # noqa: N801 - mimics Response.raw
        @staticmethod
        def read(*_a, **_k) -> bytes:
            return b""

    def close(self) -> None:
        self._resp.close()


def _printable(value, limit: int) -> str:
    """Registry-chosen text made safe for one line on a terminal: control characters (escape
    sequences, newlines) become spaces; at most `limit` characters."""
    if value is None:
        return ""
    return "".join(c if c.isprintable() else " " for c in str(value)[:limit])


def _length(resp) -> int | None:
    value = resp.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


def _parse_digest(text: str, host: str) -> Digest:
    try:
        return Digest.parse(text.strip())
    except (InvalidDigest, ValueError):
        raise RegistryError(f"{host} sent an invalid digest {text[:80]!r}") from None


def _check_media_type(raw: bytes, content_type: str, reference: str) -> None:
    """A body mediaType must agree with the Content-Type (CVE-2021-41190 type confusion)."""
    if mt.is_schema1(content_type):
        raise ManifestError(f"manifest {reference} is Docker image manifest schema 1, which is not "
                            "supported")
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ManifestError(f"manifest {reference} is not valid JSON") from None
    body = doc.get("mediaType") if isinstance(doc, dict) else None
    if isinstance(body, str) and content_type not in mt.GENERIC_TYPES and mt.base(body) != content_type:
        raise ManifestError(f"manifest {reference}: its mediaType {body!r} contradicts the "
                            f"Content-Type {content_type!r}")
