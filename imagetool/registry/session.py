"""requests under transport.py: one Session per registry host, and the Response the client reads.

Contract:
- `new_session(owner)` makes a `requests.Session` that trusts nothing from the environment
  (`trust_env` off: no ~/.netrc credentials, no REQUESTS_CA_BUNDLE, no proxies of its own), keeps
  no cookies, sends `User-Agent: imagetool/…` and `Accept-Encoding: identity`, and pools
  keep-alive connections per host (urllib3). Every policy comes from `owner` (the Transport):
  `owner.ssl_context_for(netloc)` is the only TLS trust (CAs and client certificate; requests
  adds no CA bundle of its own), `owner.proxies_for(url)` the proxy of each hop,
  `owner.same_origin(url)` whether a hop may carry the Authorization header, and
  `owner.check_redirect(url, target)` may refuse a redirect (TransportError), and at most
  `owner.max_redirects` are followed. A redirect's body is read at most MAX_BODY bytes before it
  is followed. (requests looks at a 3xx's Location even when it does not follow it: the check and
  the bounded read apply to every 3xx with a Location.)
- `Response` wraps a streamed `requests.Response`; reading its body raises only OSError
  subclasses (ConnectionError, TimeoutError) for network failures, with the bytes that arrived
  before them already returned.
- `classify(exc)` names what a requests/urllib3 failure was: (kind, cause), kind one of tls |
  resolve | connect | timeout | read-timeout | redirects | url | other, cause the stdlib exception
  under it when there is one; `reason(cause)` is its one-line text.

Imported only by Transport when it first sends, so requests and urllib3 load only in commands
that touch the network.
"""

from __future__ import annotations

import http.client
import http.cookiejar
import logging
import socket
import ssl
import warnings
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3 import exceptions as u3

from imagetool.errors import TransportError

USER_AGENT = "imagetool/0.1"
MAX_BODY = 4 << 20  # bodies read whole (tokens, errors, small JSON, redirects): larger ones are refused
POOL_SIZE = 16  # keep-alive connections kept per host (pull and push use fewer threads than this)
NETWORK_ERRORS = (requests.RequestException, u3.HTTPError, OSError, http.client.HTTPException)

# unverified TLS happens only for registries the user marked insecure: no warning per request;
# urllib3's log lines (a full pool discarding a connection) are not the user's to act on
warnings.filterwarnings("ignore", category=u3.InsecureRequestWarning)
logging.getLogger("urllib3").setLevel(logging.ERROR)


class _Adapter(HTTPAdapter):
    """TLS settings from the owner's context for each host, instead of requests' own CA bundle."""

    def __init__(self, owner):
        self._owner = owner
        super().__init__(pool_connections=4, pool_maxsize=POOL_SIZE)

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, None)
        if host_params["scheme"] == "https":
            ctx = self._owner.ssl_context_for(urlsplit(request.url).netloc)
            # urllib3 sets the context's verify_mode from cert_reqs on every connection: keep them equal
            pool_kwargs = {"ssl_context": ctx,
                           "cert_reqs": "CERT_NONE" if ctx.verify_mode == ssl.CERT_NONE else "CERT_REQUIRED"}
        return host_params, pool_kwargs

    def cert_verify(self, conn, url, verify, cert) -> None:
        """The pool's ssl_context holds all the trust; no CA file is added to it per connection."""


class _Session(requests.Session):
    """Redirects under the owner's rules: Authorization only to its origin, proxies per hop."""

    def __init__(self, owner):
        super().__init__()
        self._owner = owner

    def get_redirect_target(self, resp):
        location = super().get_redirect_target(resp)
        if location:
            try:
                self._owner.check_redirect(resp.url, urljoin(resp.url, location))
                _read_bounded(resp)
            except BaseException:
                resp.close()
                raise
        return location

    def rebuild_auth(self, prepared_request, response) -> None:
        if "Authorization" in prepared_request.headers and not self._owner.same_origin(prepared_request.url):
            del prepared_request.headers["Authorization"]

    def rebuild_proxies(self, prepared_request, proxies):
        return self._owner.proxies_for(prepared_request.url)


def new_session(owner) -> requests.Session:
    s = _Session(owner)
    s.trust_env = False
    s.headers.clear()
    s.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    s.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    s.max_redirects = owner.max_redirects
    adapter = _Adapter(owner)
    s.mount("https://", adapter)
    s.mount("http://", adapter)
    return s


class _Sized:
    """A streamed request body of a known length (requests then sends Content-Length, not chunks)."""

    def __init__(self, chunks, size: int):
        self._chunks = chunks
        self._size = size

    def __len__(self) -> int:
        return self._size

    def __iter__(self):
        return iter(self._chunks)


def body_of(body, headers: dict):
    """What requests sends for `body`: bytes as they are; a callable's fresh iterable, sized by the
    caller's Content-Length header."""
    if not callable(body):
        return body
    chunks = body()
    size = headers.get("Content-Length")
    return _Sized(chunks, int(size)) if size is not None else chunks


def send(session: requests.Session, method: str, url: str, headers: dict, body, redirects: bool,
         timeout: tuple[float, float], proxies: dict) -> "Response":
    """One request (and its redirects when `redirects`), its body not read yet."""
    resp = session.request(method, url, headers=headers, data=body_of(body, headers), stream=True,
                           allow_redirects=redirects, timeout=timeout, proxies=proxies)
    return Response(method, resp)


# ------------------------------------------------------------------ responses


class Response:
    """One HTTP response: `status_code`, `headers` (case-insensitive), `method`, `url` (the last
    hop), the body through `read(n)` / `read1(n)` / `content`, and `close()` (which returns a
    fully read keep-alive connection to the pool). `raw` is the response itself (the body reader)."""

    def __init__(self, method: str, resp: requests.Response):
        self.method = method
        self.url = resp.url
        self.status_code = resp.status_code
        self.headers = resp.headers
        self._resp = resp
        self._content: bytes | None = None
        self._closed = False

    @property
    def raw(self) -> "Response":
        return self

    def read(self, n: int = -1, decode_content: bool = False) -> bytes:
        """Up to `n` bytes (all with n < 0), as sent: Content-Encoding is never decoded."""
        try:
            return self._resp.raw.read(None if n is None or n < 0 else n, decode_content=False)
        except NETWORK_ERRORS as e:
            raise stream_error(e) from None

    def read1(self, n: int = -1, decode_content: bool = False) -> bytes:
        """What has arrived, up to `n` bytes."""
        try:
            return self._resp.raw.read1(None if n is None or n < 0 else n, decode_content=False)
        except NETWORK_ERRORS as e:
            raise stream_error(e) from None

    @property
    def content(self) -> bytes:
        """The whole body, at most MAX_BODY bytes (TransportError when it is longer)."""
        if self._content is None:
            self._content = b"" if self.method == "HEAD" else _read_bounded(self._resp, self)
        return self._content

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        raw = self._resp.raw
        if self.method == "HEAD" or raw.length_remaining == 0:
            try:
                raw.drain_conn()  # nothing left to read: the connection goes back to the pool
            except NETWORK_ERRORS:
                pass
        self._resp.close()


def _read_bounded(resp: requests.Response, reader=None) -> bytes:
    """A body read whole, at most MAX_BODY bytes; refused unread when its length says more."""
    if resp._content_consumed:  # noqa: SLF001 - read already (a redirect seen twice)
        return resp._content or b""  # noqa: SLF001
    length = resp.raw.length_remaining
    data = b""
    if length is None or length <= MAX_BODY:
        # a known length is read whole (a short body is then an error); an unknown one up to the cap
        data = (reader or Response(resp.request.method, resp)).read(-1 if length is not None else MAX_BODY + 1)
    if length is not None and length > MAX_BODY or len(data) > MAX_BODY:
        resp.close()
        parts = urlsplit(resp.url)
        raise TransportError(f"{parts.netloc} sent a body of more than {MAX_BODY >> 20} MiB for "
                             f"{resp.request.method} {parts.path}; refusing to read it")
    resp._content, resp._content_consumed = data, True  # noqa: SLF001 - what requests reads
    return data


# ------------------------------------------------------------------ failures


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and every exception under it (urllib3's `reason`, causes, contexts, exception args)."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo and len(seen) < 32:
        x = todo.pop(0)
        if not isinstance(x, BaseException) or any(x is s for s in seen):
            continue
        seen.append(x)
        todo += [getattr(x, "reason", None), x.__cause__, x.__context__, *x.args]
    return seen


def _stdlib_cause(chain: list[BaseException]) -> BaseException:
    for x in chain:
        if type(x).__module__ in ("builtins", "ssl", "socket", "http.client"):
            return x
    return chain[-1]


def classify(exc: BaseException) -> tuple[str, BaseException]:
    """(kind, cause) of a failed request; see the module contract."""
    chain = _chain(exc)
    cause = _stdlib_cause(chain)
    tls = [x for x in chain if isinstance(x, ssl.SSLError)]
    if tls:
        return "tls", next((x for x in tls if isinstance(x, ssl.SSLCertVerificationError)), tls[-1])
    if any(isinstance(x, (u3.NameResolutionError, socket.gaierror)) for x in chain):
        return "resolve", cause
    if any(isinstance(x, u3.NewConnectionError) for x in chain):
        return "connect", cause
    if any(isinstance(x, (u3.ConnectTimeoutError, requests.ConnectTimeout)) for x in chain):
        return "timeout", cause
    if any(isinstance(x, (u3.ReadTimeoutError, requests.ReadTimeout, TimeoutError)) for x in chain):
        return "read-timeout", cause
    if isinstance(exc, requests.TooManyRedirects):
        return "redirects", exc
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                        requests.exceptions.MissingSchema, u3.LocationValueError)):
        return "url", exc
    return "other", cause


def stream_error(exc: BaseException) -> OSError:
    """The OSError a body read raises for a requests/urllib3 failure (readers catch OSError)."""
    for x in _chain(exc):
        if isinstance(x, http.client.IncompleteRead) and isinstance(x.partial, int) \
                and isinstance(x.expected, int):
            return ConnectionError(f"the connection closed after {x.partial} of {x.partial + x.expected} bytes")
    kind, cause = classify(exc)
    if kind == "read-timeout":
        return TimeoutError("the registry stopped sending (read timed out)")
    return ConnectionError(reason(cause))


def reason(e: BaseException) -> str:
    """A short, one-line reason of a socket/ssl/http.client exception."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return e.verify_message or "certificate verify failed"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, ConnectionResetError):
        return "connection reset by peer"
    if isinstance(e, http.client.RemoteDisconnected):
        return "the server closed the connection"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = " ".join(str(e).split())
    return text[:200] or type(e).__name__

