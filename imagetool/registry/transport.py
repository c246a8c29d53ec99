"""HTTP to one registry host: scheme and TLS choice, timeouts, bounded retries, redirects without auth.

Contract:
- HTTPS by default, verified with the system CAs plus every `*.crt` in `certs.d/<host>/` (see
  `settings.certs_dirs`). Plain HTTP only for loopback hosts (127.0.0.0/8, ::1, localhost) and for
  registries marked insecure (`--insecure` or `registries.json` "insecure"); for those, HTTPS is
  tried first and HTTP is used when the server does not speak TLS. A certificate that does not
  verify is never "fixed" by falling back to HTTP: it is a `TransportError`.
- Every request has a connect and a read timeout. Connection failures, timeouts, 5xx and 429 are
  retried a bounded number of times with exponential backoff; 429/503 honour `Retry-After`
  (seconds or an HTTP date, capped). Tunables (for tests): IMAGETOOL_CONNECT_TIMEOUT,
  IMAGETOOL_READ_TIMEOUT, IMAGETOOL_RETRIES (attempts), IMAGETOOL_RETRY_BACKOFF (first delay, s),
  IMAGETOOL_RETRY_MAX_DELAY (cap, s).
- Redirects are followed here: the caller's Authorization header is sent only to the registry's
  own origin (scheme, host, port), never to the host a redirect points at.
- Built on the standard library (http.client + ssl, keep-alive connection pool): no requests, so
  `imagetool pull` starts fast. `Response` has the few attributes the client uses.
"""

from __future__ import annotations

import email.utils
import http.client
import ipaddress
import os
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from imagetool import settings
from imagetool.errors import TransportError

USER_AGENT = "imagetool/0.1"
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
MAX_BODY = 4 << 20  # bodies read whole (tokens, errors, small JSON): larger ones are refused


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass(frozen=True, slots=True)
class Policy:
    """Timeouts and the retry budget of one transport (attempts counts the first try)."""

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    attempts: int = 5
    backoff: float = 1.0
    max_delay: float = 60.0

    @classmethod
    def from_env(cls) -> "Policy":
        return cls(
            connect_timeout=_env_float("IMAGETOOL_CONNECT_TIMEOUT", 10.0),
            read_timeout=_env_float("IMAGETOOL_READ_TIMEOUT", 30.0),
            attempts=max(1, int(_env_float("IMAGETOOL_RETRIES", 5))),
            backoff=_env_float("IMAGETOOL_RETRY_BACKOFF", 1.0),
            max_delay=_env_float("IMAGETOOL_RETRY_MAX_DELAY", 60.0),
        )

    def delay(self, failures: int) -> float:
        """Backoff before retry number `failures` (1-based): backoff * 2^(n-1), jittered, capped."""
        base = self.backoff * (2 ** max(0, failures - 1))
        return min(self.max_delay, base * (0.75 + random.random() / 2))


def split_host(host: str) -> tuple[str, int | None]:
    """"127.0.0.1:5000" -> ("127.0.0.1", 5000); "[::1]:5000" -> ("::1", 5000)."""
    parts = urlsplit("//" + host)
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.hostname or host, port


def is_loopback(host: str) -> bool:
    name, _ = split_host(host)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def retry_after(resp) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


# ------------------------------------------------------------------ CA bundles

_BUNDLES_LOCK = threading.Lock()


def _system_cafile() -> str | None:
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and os.path.isfile(candidate):
            return candidate
    try:
        import certifi

        return certifi.where()
    except ImportError:
        return None


def ca_files(host: str) -> list[Path]:
    """The extra CA certificates configured for `host` (certs.d/<host>/*.crt, imagetool's dir first)."""
    found: list[Path] = []
    for d in settings.certs_dirs(host):
        try:
            found += sorted(p for p in d.iterdir() if p.suffix == ".crt" and p.is_file())
        except OSError:
            continue
    return found


def client_pair(host: str) -> tuple[Path, Path] | None:
    """The client certificate and key for registries that demand mutual TLS: the first `*.cert`
    in certs.d/<host>/ (imagetool's dir first, as docker names them) with its `*.key` beside it.
    A certificate without its key is a TransportError, as docker makes it."""
    for d in settings.certs_dirs(host):
        try:
            certs = sorted(p for p in d.iterdir() if p.suffix == ".cert" and p.is_file())
        except OSError:
            continue
        for cert in certs:
            key = cert.with_suffix(".key")
            if not key.is_file():
                raise TransportError(f"client certificate {cert} has no key {key.name} beside it")
            return cert, key
    return None


_CONTEXTS: dict[tuple, ssl.SSLContext] = {}


def ssl_context(host: str, verify: bool = True) -> ssl.SSLContext:
    """A TLS context for `host`: system CAs plus its certs.d CAs, or no verification at all; with
    the client certificate of certs.d/<host>/ when there is one (mutual TLS)."""
    extra = ca_files(host) if verify else []
    pair = client_pair(host)
    key = (verify, tuple(str(p) for p in extra), pair)
    with _BUNDLES_LOCK:
        ctx = _CONTEXTS.get(key)
        if ctx is not None:
            return ctx
        ctx = _new_context(verify, extra)
        if pair is not None:
            try:
                ctx.load_cert_chain(str(pair[0]), str(pair[1]))
            except (ssl.SSLError, OSError) as e:
                raise TransportError(f"cannot use client certificate {pair[0]} for {host}: {_reason(e)}") from None
        _CONTEXTS[key] = ctx
        return ctx


def _new_context(verify: bool, extra: list) -> ssl.SSLContext:
    """System CAs (and certifi when the system has none) plus `extra`; or no verification."""
    if not verify:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx = ssl.create_default_context()
    paths = ssl.get_default_verify_paths()
    has_default = (paths.cafile and os.path.isfile(paths.cafile)) or (paths.capath and os.path.isdir(paths.capath))
    if not has_default and _system_cafile():
        ctx.load_verify_locations(cafile=_system_cafile())
    for p in extra:
        ctx.load_verify_locations(cafile=str(p))
    return ctx


# ------------------------------------------------------------------ the transport


def _is_cert_error(exc: BaseException) -> bool:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return True
    text = str(exc)
    return "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text


class _Failure(Exception):
    """A request that did not get a response: `kind` is connect | timeout | read-timeout | tls | other."""

    def __init__(self, kind: str, cause: BaseException):
        super().__init__(str(cause))
        self.kind = kind
        self.cause = cause


class Response:
    """One HTTP response: `status_code`, `headers` (case-insensitive `.get`), `method`, the body
    through `read(n)` / `read1(n)` / `content`, and `close()` (which returns a fully read
    keep-alive connection to the pool). `raw` is the response itself (the body reader)."""

    def __init__(self, method: str, url: str, resp: http.client.HTTPResponse, conn, pool: "_Pool"):
        self.method = method
        self.url = url
        self.status_code = resp.status
        self.headers = resp.headers
        self._resp = resp
        self._conn = conn
        self._pool = pool
        self._content: bytes | None = None
        self._closed = False

    @property
    def raw(self) -> "Response":
        return self

    def read(self, n: int = -1, decode_content: bool = False) -> bytes:
        return self._resp.read(None if n is None or n < 0 else n)

    def read1(self, n: int = -1, decode_content: bool = False) -> bytes:
        return self._resp.read1(n)

    @property
    def content(self) -> bytes:
        """The whole body, at most MAX_BODY bytes (TransportError when it is longer)."""
        if self._content is None:
            if self.method == "HEAD":
                self._content = b""
                return self._content
            length = self._resp.length  # None: chunked or until close
            data = b""
            if length is None or length <= MAX_BODY:
                # read() with a known length raises IncompleteRead on a short body; read(n) does not
                data = self._resp.read() if length is not None else self._resp.read(MAX_BODY + 1)
            if length is not None and length > MAX_BODY or len(data) > MAX_BODY:
                self.close()
                raise TransportError(f"{urlsplit(self.url).netloc} sent a body of more than "
                                     f"{MAX_BODY >> 20} MiB for {self.method} {urlsplit(self.url).path}; "
                                     "refusing to read it")
            self._content = data
        return self._content

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # read1() leaves a Content-Length body that it read to the end open (length 0, not
        # isclosed): that body is complete too, and its connection can serve the next request
        done = self.method == "HEAD" or self._resp.isclosed() or \
            (self._resp.length == 0 and not self._resp.chunked)
        reusable = done and not self._resp.will_close
        if done:
            self._resp.close()
        if reusable and self._conn.sock is not None:
            self._pool.put(self._conn)
        else:
            self._resp.close()
            self._conn.close()


class _Pool:
    """Idle keep-alive connections per (scheme, host) (thread-safe)."""

    def __init__(self):
        self._idle: dict[tuple, list] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple):
        with self._lock:
            conns = self._idle.get(key)
            return conns.pop() if conns else None

    def put(self, conn) -> None:
        with self._lock:
            conns = self._idle.setdefault(conn._imagetool_key, [])
            if len(conns) < 16:
                conns.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            conns = [c for cs in self._idle.values() for c in cs]
            self._idle.clear()
        for c in conns:
            c.close()


class Transport:
    """Requests to one registry host (`host` is "name[:port]"); thread-safe for concurrent use."""

    def __init__(self, host: str, insecure: bool = False, scheme: str | None = None,
                 policy: Policy | None = None):
        self.host = host
        cfg = settings.registries_config()
        self.insecure = insecure or host in (cfg.get("insecure") or [])
        self.policy = policy or Policy.from_env()
        self._pool = _Pool()
        self._lock = threading.Lock()
        self._plain_ok = self.insecure or is_loopback(host)
        # None = not decided yet (loopback/insecure: https first, then http)
        self._scheme = scheme or (None if self._plain_ok else "https")
        self._sleep = time.sleep

    # -------------------------------------------------------------- naming

    @property
    def origin(self) -> str:
        return f"{self._scheme or 'https'}://{self.host}"

    def url(self, path: str) -> str:
        return path if "://" in path else self.origin + path

    def close(self) -> None:
        self._pool.close()

    # -------------------------------------------------------------- requests

    def request(self, method: str, path: str, headers: dict | None = None,
                authorization: str | None = None, stream: bool = False,
                follow_redirects: bool = True, body=None) -> Response:
        """One request with retries; redirects followed, Authorization only to the registry's origin.

        `path` is "/v2/…" (relative to the registry) or an absolute URL. Returns the final
        response, whatever its status, after the retry budget for 5xx/429 is spent. With
        `stream=False` the body is read before returning. `body` (uploads) is bytes, or a
        callable returning a fresh iterable of bytes for each attempt (streamed; the caller sets
        Content-Length); it is sent again on each retry. A request with a body is not redirected.
        """
        if self._scheme is None and "://" not in path:
            self._decide_scheme()
        url = self.url(path)
        for _ in range(MAX_REDIRECTS + 1):
            h = dict(headers or {})
            if authorization and self.same_origin(url):
                h["Authorization"] = authorization
            resp = self.send(method, url, h, stream=stream, body=body)
            if not follow_redirects or body is not None or resp.status_code not in REDIRECT_STATUS:
                return resp
            location = resp.headers.get("Location")
            resp.close()
            if not location:
                raise TransportError(f"{self.host} answered {resp.status_code} without a Location")
            target = urljoin(url, location)
            if urlsplit(target).scheme not in ("http", "https"):
                raise TransportError(f"{self.host} redirected to an unsupported URL scheme")
            if urlsplit(url).scheme == "https" and urlsplit(target).scheme == "http" \
                    and not is_loopback(urlsplit(target).netloc):
                raise TransportError(f"{self.host} redirected from https to plain http; refusing")
            if resp.status_code == 303:
                method = "GET"
            url = target
        raise TransportError(f"too many redirects from {self.host}")

    def same_origin(self, url: str) -> bool:
        """True when `url` is on the registry's own origin (scheme, host, port)."""
        parts = urlsplit(url)
        return parts.scheme == (self._scheme or "https") and parts.netloc == self.host

    def _decide_scheme(self) -> None:
        """Loopback/insecure hosts: https when the server speaks TLS, else http.

        The probe is a bare TLS handshake (no CA loading); the certificate is verified by the real
        requests that follow, so an untrusted certificate still fails there, clearly."""
        with self._lock:
            if self._scheme is not None:
                return
            name, port = split_host(self.host)
            ctx = ssl_context(self.host, verify=False)
            try:
                with socket.create_connection((name, port or 443), timeout=self.policy.connect_timeout) as sock:
                    sock.settimeout(min(self.policy.read_timeout, 5.0))
                    with ctx.wrap_socket(sock, server_hostname=name):
                        self._scheme = "https"
            except (ssl.SSLError, ConnectionError, socket.timeout, OSError):
                self._scheme = "http"

    def send(self, method: str, url: str, headers: dict, stream: bool = False,
             body=None) -> Response:
        """One URL, no redirects, with the retry policy; raises TransportError when it gives up."""
        failures = 0
        while True:
            try:
                resp = self._once(method, url, headers, body)
                if not stream:
                    resp.content  # noqa: B018 - read the body now (errors are retried below)
            except _Failure as e:
                err = self._map(e, url)
                failures += 1
                if not getattr(err, "retryable", False) or failures >= self.policy.attempts:
                    raise err from None
                self._sleep(self.policy.delay(failures))
                continue
            except (OSError, http.client.HTTPException) as e:  # body read of a non-stream request
                err = self._map(_Failure("other", e), url)
                failures += 1
                if failures >= self.policy.attempts:
                    raise err from None
                self._sleep(self.policy.delay(failures))
                continue
            if resp.status_code in RETRY_STATUS:
                failures += 1
                if failures < self.policy.attempts:
                    wait = retry_after(resp) if resp.status_code in (429, 503) else None
                    delay = self.policy.delay(failures) if wait is None else wait
                    resp.close()
                    self._sleep(min(delay, self.policy.max_delay))
                    continue
            return resp

    def _connect(self, scheme: str, netloc: str):
        name, port = split_host(netloc)
        proxy = proxy_for(scheme, netloc)
        if scheme == "https":
            verify = not (self.insecure and netloc == self.host)
            ctx = ssl_context(netloc, verify)
            if proxy:  # CONNECT tunnel; TLS (and its checks) still end at the registry
                conn = http.client.HTTPSConnection(proxy.hostname, proxy.port or 80,
                                                   timeout=self.policy.connect_timeout, context=ctx)
                conn.set_tunnel(name, port or 443, headers=_proxy_auth(proxy))
            else:
                conn = http.client.HTTPSConnection(name, port or 443, timeout=self.policy.connect_timeout,
                                                   context=ctx)
        elif proxy:
            conn = http.client.HTTPConnection(proxy.hostname, proxy.port or 80,
                                              timeout=self.policy.connect_timeout)
        else:
            conn = http.client.HTTPConnection(name, port or 80, timeout=self.policy.connect_timeout)
        conn._imagetool_key = (scheme, netloc)
        conn._imagetool_proxy = proxy if scheme == "http" else None
        try:
            conn.connect()
        except ssl.SSLError as e:
            conn.close()
            raise _Failure("tls", e) from None
        except (socket.timeout, TimeoutError) as e:
            conn.close()
            raise _Failure("timeout", e) from None
        except OSError as e:
            conn.close()
            raise _Failure("connect", e) from None
        conn.sock.settimeout(self.policy.read_timeout)
        return conn

    def _once(self, method: str, url: str, headers: dict, body=None) -> Response:
        parts = urlsplit(url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        h = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers}
        key = (parts.scheme, parts.netloc)
        for fresh in (False, True):
            conn = None if fresh else self._pool.get(key)
            reused = conn is not None
            if conn is None:
                conn = self._connect(parts.scheme, parts.netloc)
            data = body() if callable(body) else body
            try:
                via = getattr(conn, "_imagetool_proxy", None)
                if via is not None:  # plain http through a proxy: absolute-form target
                    conn.request(method, f"http://{parts.netloc}{target}", body=data,
                                 headers={**h, **_proxy_auth(via)})
                else:
                    conn.request(method, target, body=data, headers=h)
                resp = conn.getresponse()
            except (socket.timeout, TimeoutError) as e:
                conn.close()
                raise _Failure("read-timeout", e) from None
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                if reused:  # a stale keep-alive connection: try once on a new one
                    continue
                if isinstance(e, ssl.SSLError):
                    raise _Failure("tls", e) from None
                raise _Failure("other", e) from None
            return Response(method, url, resp, conn, self._pool)
        raise AssertionError("unreachable")  # pragma: no cover

    def _map(self, e: _Failure, url: str) -> TransportError:
        host = urlsplit(url).netloc or self.host
        cause = e.cause
        if e.kind == "tls":
            if _is_cert_error(cause):
                err = TransportError(
                    f"TLS certificate of {host} is not trusted: {_reason(cause)}",
                    hint=f"install the registry's CA as {settings.config_dir()}/certs.d/{host}/ca.crt"
                         " (or mark the registry insecure)")
            elif any(s in str(cause) for s in ("BAD_CERTIFICATE", "CERTIFICATE_REQUIRED", "HANDSHAKE_FAILURE")):
                err = TransportError(
                    f"TLS handshake with {host} failed: {_reason(cause)}",
                    hint=f"if the registry demands a client certificate, put client.cert and client.key in "
                         f"{settings.config_dir()}/certs.d/{host}/")
            else:
                err = TransportError(f"TLS handshake with {host} failed: {_reason(cause)}")
            err.retryable = False
            return err
        if e.kind == "timeout":
            err = TransportError(f"cannot connect to {host}: timed out after "
                                 f"{self.policy.connect_timeout:g}s")
        elif e.kind == "read-timeout":
            err = TransportError(f"{host} did not answer within {self.policy.read_timeout:g}s")
        elif e.kind == "connect":
            if isinstance(cause, socket.gaierror):
                err = TransportError(f"cannot resolve registry host {split_host(host)[0]}")
                err.retryable = False
                return err
            err = TransportError(f"cannot connect to {host}: {_reason(cause)}")
        else:
            err = TransportError(f"request to {host} failed: {_reason(cause)}")
        err.retryable = True
        return err


def proxy_for(scheme: str, netloc: str):
    """The proxy URL (urlsplit result) for a request, from HTTP(S)_PROXY / NO_PROXY, or None.

    Loopback hosts are never proxied (as Go's net/http does); NO_PROXY entries match a host or
    its subdomains ("*" disables proxies)."""
    if is_loopback(netloc):
        return None
    value = os.environ.get(f"{scheme}_proxy") or os.environ.get(f"{scheme.upper()}_PROXY")
    if not value:
        return None
    name, port = split_host(netloc)
    for entry in (os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or "").split(","):
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return None
        host_part, _, port_part = entry.lstrip(".").partition(":")
        if port_part and str(port or "") != port_part:
            continue
        if name.lower() == host_part or name.lower().endswith("." + host_part):
            return None
    parts = urlsplit(value if "://" in value else "http://" + value)
    return parts if parts.hostname else None


def _proxy_auth(proxy) -> dict:
    if proxy is None or not proxy.username:
        return {}
    from urllib.parse import unquote
    import base64

    raw = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}".encode()
    return {"Proxy-Authorization": "Basic " + base64.b64encode(raw).decode()}


def _reason(e: BaseException) -> str:
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
