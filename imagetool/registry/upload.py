"""The push side of the distribution API for one repository: blob HEAD, mount, uploads, manifest PUT.

    up = Uploader(reference.parse("host/team/app:v1"), mount_from=["team/base"])
    up.blob_exists(digest)                   # HEAD: True when the registry has it (never sent again)
    up.mount(digest, "team/base")            # POST ?mount=&from=: True when mounted (201)
    loc = up.start()                         # POST: an upload session (202 Location)
    loc, offset = up.status(loc)             # GET the session: where the registry stands (Range)
    loc, held = up.patch(loc, body, n, offset)  # PATCH n bytes (Content-Range): new Location, Range
    up.finish(loc, digest, body, n)          # PUT ?digest=: the registry verifies and commits

A `body` is bytes or a callable returning a fresh iterable of bytes (streamed, so a large chunk
is never held in memory, and sent again when the transport retries).
    up.put_manifest("v1", raw, media_type)   # PUT a manifest/index under a tag or digest

Token scope: `repository:<path>:pull,push` plus `repository:<source>:pull` for every mount
source; a 401 with a pull-only token is answered once more (the re-challenge) and then reported
as an AuthError naming push access. Returns nothing but statuses and locations; never touches
the store. Uploads are not retried by the transport's budget alone: the caller resumes a session
from the registry's `Range` (see imagetool.push).
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit

from store import Digest

from imagetool.errors import AuthError, RegistryError
from imagetool.registry.client import RegistryClient
from imagetool.registry.transport import refused_target

_RANGE = re.compile(r"^(?:bytes=)?0-(\d+)$")


class UploadGone(RegistryError):
    """The upload session is unknown to the registry (expired, purged): start a new one."""


class Uploader(RegistryClient):
    """Push-side client of one repository (`ref.path`)."""

    def __init__(self, ref, insecure: bool = False, mount_from=(), transport=None):
        scopes = [f"repository:{ref.path}:pull,push"] + \
            [f"repository:{r}:pull" for r in dict.fromkeys(mount_from) if r != ref.path]
        super().__init__(ref, insecure=insecure, transport=transport, scope=" ".join(scopes))

    # -------------------------------------------------------------- errors

    def _push_fail(self, resp, what: str):
        if resp.status_code in (401, 403):
            resp.close()
            creds = self.auth.credentials()
            who = f" as {creds.username}" if creds else " (no credentials)"
            return AuthError(f"push access denied to {self.ref.name} on {self.host}{who} while {what}",
                             hint=f"log in with an account that may push: imagetool login {self.auth.domain}",
                             code="DENIED", status=resp.status_code)
        return self._fail(resp, what)

    def _url(self, location: str, **params: str) -> str:
        """The session URL the registry gave (absolute or relative) with `params` added."""
        if not location:
            raise RegistryError(f"{self.host} started an upload without a Location")
        if "://" not in location:
            location = self.transport.origin + (location if location.startswith("/") else "/" + location)
        # the session may live on another host (a storage front end): it gets the blob's bytes,
        # never the Authorization (the transport sends that to the registry's origin only);
        # it must not take them off TLS (the rule redirects follow too)
        if refused_target(self.transport.origin, location):
            raise RegistryError(f"{self.host} sent an upload Location {location[:120]!r} that imagetool refuses "
                                "(not http(s), or from https to plain http)")
        if params:
            query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
            location += ("&" if urlsplit(location).query else "?") + query
        return location

    # -------------------------------------------------------------- blobs

    def blob_exists(self, digest: Digest) -> bool:
        resp = self._request("HEAD", f"/v2/{self.ref.path}/blobs/{digest}")
        resp.close()
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        raise self._push_fail(resp, f"checking blob {digest}")

    def mount(self, digest: Digest, source: str) -> str | None:
        """Mount `digest` from repository `source` on the same registry: None when mounted (201),
        else the Location of the upload session the registry opened instead (202)."""
        resp = self._request("POST", f"/v2/{self.ref.path}/blobs/uploads/?mount={quote(str(digest))}"
                             f"&from={quote(source)}", body=b"")
        resp.close()
        if resp.status_code == 201:
            return None
        if resp.status_code == 202:
            return self._url(resp.headers.get("Location", ""))
        raise self._push_fail(resp, f"mounting blob {digest} from {source}")

    def start(self) -> str:
        resp = self._request("POST", f"/v2/{self.ref.path}/blobs/uploads/", body=b"")
        resp.close()
        if resp.status_code != 202:
            raise self._push_fail(resp, "starting an upload")
        return self._url(resp.headers.get("Location", ""))

    def status(self, location: str) -> tuple[str, int]:
        """(location, bytes the registry holds) of an upload session; UploadGone when it is unknown."""
        resp = self._request("GET", self._url(location))
        resp.close()
        if resp.status_code == 404:
            raise UploadGone(f"upload session on {self.host} is gone", status=404, code="BLOB_UPLOAD_UNKNOWN")
        if resp.status_code != 204:
            raise self._push_fail(resp, "reading an upload's status")
        return self._url(resp.headers.get("Location") or location), _end(resp)

    def patch(self, location: str, body, size: int, offset: int) -> tuple[str, int]:
        """Send `size` bytes of `body` as the bytes from `offset`; (new location, bytes the
        registry now holds)."""
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size),
                   "Content-Range": f"{offset}-{offset + size - 1}"}
        resp = self._request("PATCH", self._url(location), headers, body=body)
        resp.close()
        if resp.status_code == 404:
            raise UploadGone(f"upload session on {self.host} is gone", status=404, code="BLOB_UPLOAD_UNKNOWN")
        if resp.status_code != 202:
            raise self._push_fail(resp, "uploading a chunk")
        got = _end(resp)
        return self._url(resp.headers.get("Location") or location), got if got else offset + size

    def finish(self, location: str, digest: Digest, body=b"", size: int = 0) -> None:
        """PUT ?digest=: close the session (with `size` bytes of `body`: the whole blob, monolithic)."""
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        resp = self._request("PUT", self._url(location, digest=str(digest)), headers, body=body)
        resp.close()
        if resp.status_code == 404 and not size:
            raise UploadGone(f"upload session on {self.host} is gone", status=404, code="BLOB_UPLOAD_UNKNOWN")
        if resp.status_code != 201:
            raise self._push_fail(resp, f"committing blob {digest}")

    # -------------------------------------------------------------- manifests

    def put_manifest(self, reference: str, raw: bytes, media_type: str) -> Digest:
        """PUT a manifest or index; the digest the registry reports must be the bytes' digest."""
        resp = self._request("PUT", f"/v2/{self.ref.path}/manifests/{reference}",
                             {"Content-Type": media_type}, body=raw)
        resp.close()
        if resp.status_code not in (200, 201):
            raise self._push_fail(resp, f"putting manifest {reference}")
        digest = Digest.of_bytes(raw)
        said = resp.headers.get("Docker-Content-Digest")
        if said and said.strip() != str(digest):
            raise RegistryError(f"{self.host} stored manifest {reference} as {said.strip()[:80]}, "
                                f"not as its digest {digest}")
        return digest


def _end(resp) -> int:
    """Bytes held according to a `Range: 0-N` header (N inclusive); 0 without one."""
    m = _RANGE.match((resp.headers.get("Range") or "").strip())
    # distribution says "0-0" for an empty session too: read it as 0 (chunks are never 1 byte)
    return int(m.group(1)) + 1 if m and int(m.group(1)) > 0 else 0
