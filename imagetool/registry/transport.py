"""HTTP to one registry host, on requests: scheme and TLS choice, timeouts, bounded retries, redirects without auth.

Contract:
- HTTPS by default, verified with the system CAs plus every `*.crt` in `certs.d/<host>/` (see
  `settings.certs_dirs`), presenting the client certificate of `certs.d/<host>/` (`*.cert` with
  its `*.key`) to registries that demand mutual TLS. Plain HTTP only for loopback hosts
  (127.0.0.0/8, ::1, localhost) and for registries marked insecure (`--insecure` or
  `registries.json` "insecure"); for those, HTTPS is tried first and HTTP is used when the server
  does not speak TLS. A certificate that does not verify is never "fixed" by falling back to
  HTTP: it is a `TransportError`.
- Every request has a connect and a read timeout. Connection failures, timeouts, 5xx and 429 are
  retried a bounded number of times with exponential backoff; 429/503 honour `Retry-After`
  (seconds or an HTTP date, capped). Tunables (for tests): IMAGETOOL_CONNECT_TIMEOUT,
  IMAGETOOL_READ_TIMEOUT, IMAGETOOL_RETRIES (attempts), IMAGETOOL_RETRY_BACKOFF (first delay, s),
  IMAGETOOL_RETRY_MAX_DELAY (cap, s).
- Redirects are followed (by requests, at most MAX_REDIRECTS): the caller's Authorization header
  is sent only to the registry's own origin (scheme, host, port), never to the host a redirect
  points at; a redirect to a scheme other than http(s), or from https to plain http off
  loopback, is a TransportError. Requests with a body are not redirected.
- Proxies from HTTPS_PROXY / HTTP_PROXY / NO_PROXY (`proxy_for`), CONNECT tunnels for https (TLS
  and its checks still end at the registry); loopback is never proxied. Nothing else is taken
  from the environment (no ~/.netrc, no REQUESTS_CA_BUNDLE), and no cookies are kept.
- requests is imported when a Transport first sends (imagetool.registry.session), never when
  this module is imported: commands that do not touch the network never load it.
"""

from __future__ import annotations

import email.utils
import ipaddress
import os
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from imagetool import settings
from imagetool.errors import TransportError

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_REDIRECTS = 5


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
    # one context per host: urllib3 sets a context's verify_mode on each connection it makes
    key = (host, verify, tuple(str(p) for p in extra), pair)
    with _BUNDLES_LOCK:
        ctx = _CONTEXTS.get(key)
        if ctx is not None:
            return ctx
        ctx = _new_context(verify, extra)
        if pair is not None:
            try:
                ctx.load_cert_chain(str(pair[0]), str(pair[1]))
            except (ssl.SSLError, OSError) as e:
                raise TransportError(f"cannot use client certificate {pair[0]} for {host}: {' '.join(str(e).split())[:200]}") from None
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


class Transport:
    """Requests to one registry host (`host` is "name[:port]"); thread-safe for concurrent use."""

    max_redirects = MAX_REDIRECTS

    def __init__(self, host: str, insecure: bool = False, scheme: str | None = None,
                 policy: Policy | None = None):
        self.host = host
        cfg = settings.registries_config()
        self.insecure = insecure or host in (cfg.get("insecure") or [])
        self.policy = policy or Policy.from_env()
        self._lock = threading.Lock()
        self._session = None  # made on first use: requests loads only when something is sent
        self._plain_ok = self.insecure or is_loopback(host)
        # None = not decided yet (loopback/insecure: https first, then http)
        self._scheme = scheme or (None if self._plain_ok else "https")
        self._sleep = time.sleep

    # -------------------------------------------------------------- naming and policy

    @property
    def origin(self) -> str:
        return f"{self._scheme or 'https'}://{self.host}"

    def url(self, path: str) -> str:
        return path if "://" in path else self.origin + path

    def same_origin(self, url: str) -> bool:
        """True when `url` is on the registry's own origin (scheme, host, port)."""
        parts = urlsplit(url)
        name, port = split_host(self.host)
        try:
            theirs = parts.port
        except ValueError:
            return False
        return parts.scheme == (self._scheme or "https") and \
            (parts.hostname or "").lower() == name.lower() and theirs == port

    def check_redirect(self, url: str, target: str) -> None:
        """TransportError unless a redirect from `url` to `target` may be followed."""
        refused = refused_target(url, target)
        if refused:
            raise TransportError(f"{self.host} redirected {refused}; refusing")

    def ssl_context_for(self, netloc: str) -> ssl.SSLContext:
        """The TLS context for a connection to `netloc` (unverified only for this insecure registry)."""
        return ssl_context(netloc, verify=not (self.insecure and netloc == self.host))

    @staticmethod
    def proxies_for(url: str) -> dict:
        """requests' proxies mapping for one URL (see `proxy_for`)."""
        parts = urlsplit(url)
        proxy = proxy_for(parts.scheme, parts.netloc)
        return {parts.scheme: proxy.geturl()} if proxy else {}

    def close(self) -> None:
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()

    # -------------------------------------------------------------- requests

    def request(self, method: str, path: str, headers: dict | None = None,
                authorization: str | None = None, stream: bool = False,
                follow_redirects: bool = True, body=None):
        """One request with retries; redirects followed, Authorization only to the registry's origin.

        `path` is "/v2/…" (relative to the registry) or an absolute URL. Returns the final
        response (a `session.Response`), whatever its status, after the retry budget for 5xx/429
        is spent. With `stream=False` the body is read before returning. `body` (uploads) is
        bytes, or a callable returning a fresh iterable of bytes for each attempt (streamed; the
        caller sets Content-Length); it is sent again on each retry. A request with a body is not
        redirected.
        """
        if self._scheme is None and "://" not in path:
            self._decide_scheme()
        url = self.url(path)
        h = dict(headers or {})
        if authorization and self.same_origin(url):
            h["Authorization"] = authorization
        return self.send(method, url, h, stream=stream, body=body,
                         redirects=follow_redirects and body is None)

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

    def _http(self):
        with self._lock:
            if self._session is None:
                from imagetool.registry import session

                self._session = session.new_session(self)
            return self._session

    def send(self, method: str, url: str, headers: dict, stream: bool = False, body=None,
             redirects: bool = False):
        """One URL (and its redirects when `redirects`) with the retry policy; raises
        TransportError when it gives up."""
        from imagetool.registry import session

        http = self._http()
        timeout = (self.policy.connect_timeout, self.policy.read_timeout)
        failures = 0
        while True:
            try:
                resp = session.send(http, method, url, headers, body, redirects, timeout, self.proxies_for(url))
                if not stream:
                    resp.content  # noqa: B018 - read the body now (errors are retried below)
            except session.NETWORK_ERRORS as e:
                err = self._map(e, url)
                failures += 1
                if not err.retryable or failures >= self.policy.attempts:
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

    def _map(self, exc: BaseException, url: str) -> TransportError:
        """The one-line TransportError for a failed request (`retryable` set)."""
        from imagetool.registry.session import classify, reason

        host = urlsplit(url).netloc or self.host
        kind, cause = classify(exc)
        retryable = kind in ("connect", "timeout", "read-timeout", "other")
        if kind == "tls":
            if _is_cert_error(cause):
                err = TransportError(
                    f"TLS certificate of {host} is not trusted: {reason(cause)}",
                    hint=f"install the registry's CA as {settings.config_dir()}/certs.d/{host}/ca.crt"
                         " (or mark the registry insecure)")
            elif any(s in str(cause) for s in ("BAD_CERTIFICATE", "CERTIFICATE_REQUIRED", "HANDSHAKE_FAILURE")):
                err = TransportError(
                    f"TLS handshake with {host} failed: {reason(cause)}",
                    hint=f"if the registry demands a client certificate, put client.cert and client.key in "
                         f"{settings.config_dir()}/certs.d/{host}/")
            else:
                err = TransportError(f"TLS handshake with {host} failed: {reason(cause)}")
        else:
            err = TransportError({
                "resolve": f"cannot resolve registry host {split_host(host)[0]}",
                "timeout": f"cannot connect to {host}: timed out after {self.policy.connect_timeout:g}s",
                "read-timeout": f"{host} did not answer within {self.policy.read_timeout:g}s",
                "connect": f"cannot connect to {host}: {reason(cause)}",
                "redirects": f"too many redirects from {self.host}",
                "url": f"{self.host} sent an unusable URL: {reason(cause)}",
            }.get(kind) or f"request to {host} failed: {reason(cause)}")
        err.retryable = retryable
        return err


def refused_target(url: str, target: str) -> str | None:
    """Why a request may not go from `url` on to `target` (a redirect or an upload Location):
    a scheme other than http(s), or https to plain http off loopback; None when it may."""
    scheme = urlsplit(target).scheme
    if scheme not in ("http", "https"):
        return "to an unsupported URL scheme"
    if urlsplit(url).scheme == "https" and scheme == "http" and not is_loopback(urlsplit(target).netloc):
        return "from https to plain http"
    return None


def _is_cert_error(exc: BaseException) -> bool:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return True
    text = str(exc)
    return "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text


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

