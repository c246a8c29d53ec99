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
- Redirects are followed here, never by requests: the caller's Authorization header is sent only
  to the registry's own origin (scheme, host, port), never to the host a redirect points at.
"""

from __future__ import annotations

import atexit
import email.utils
import ipaddress
import os
import random
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests

from imagetool import settings
from imagetool.errors import TransportError

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
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


def retry_after(resp: requests.Response) -> float | None:
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

_BUNDLES: dict[tuple[str, ...], str] = {}
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


def _remove_bundles() -> None:
    for path in _BUNDLES.values():
        try:
            os.unlink(path)
        except OSError:
            pass


def ca_files(host: str) -> list[Path]:
    """The extra CA certificates configured for `host` (certs.d/<host>/*.crt, imagetool's dir first)."""
    found: list[Path] = []
    for d in settings.certs_dirs(host):
        try:
            found += sorted(p for p in d.iterdir() if p.suffix == ".crt" and p.is_file())
        except OSError:
            continue
    return found


def verify_for(host: str) -> bool | str:
    """`verify=` for requests: True (system CAs) or a bundle file of system CAs + certs.d CAs."""
    extra = ca_files(host)
    if not extra:
        return True
    key = tuple(str(p) for p in extra)
    with _BUNDLES_LOCK:
        if key in _BUNDLES:
            return _BUNDLES[key]
        parts = []
        system = _system_cafile()
        if system:
            parts.append(Path(system).read_bytes())
        for p in extra:
            parts.append(p.read_bytes())
        fd, path = tempfile.mkstemp(prefix="imagetool-ca-", suffix=".pem")
        with os.fdopen(fd, "wb") as f:
            f.write(b"\n".join(parts))
        if not _BUNDLES:
            atexit.register(_remove_bundles)
        _BUNDLES[key] = path
        return path


# ------------------------------------------------------------------ the transport


def _is_cert_error(exc: BaseException) -> bool:
    text = str(exc)
    return "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text \
        or "hostname" in text and "match" in text


class Transport:
    """Requests to one registry host (`host` is "name[:port]"); thread-safe for concurrent use."""

    def __init__(self, host: str, insecure: bool = False, scheme: str | None = None,
                 policy: Policy | None = None):
        self.host = host
        cfg = settings.registries_config()
        self.insecure = insecure or host in (cfg.get("insecure") or [])
        self.policy = policy or Policy.from_env()
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=16)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
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
        self.session.close()

    # -------------------------------------------------------------- requests

    def request(self, method: str, path: str, headers: dict | None = None,
                authorization: str | None = None, stream: bool = False,
                follow_redirects: bool = True) -> requests.Response:
        """One request with retries; redirects followed, Authorization only to the registry's origin.

        `path` is "/v2/…" (relative to the registry) or an absolute URL. Returns the final
        response, whatever its status, after the retry budget for 5xx/429 is spent.
        """
        if self._scheme is None and "://" not in path:
            self._decide_scheme(path, headers, authorization)
        url = self.url(path)
        for _ in range(MAX_REDIRECTS + 1):
            h = dict(headers or {})
            if authorization and self._same_origin(url):
                h["Authorization"] = authorization
            resp = self.send(method, url, h, stream=stream)
            if not follow_redirects or resp.status_code not in REDIRECT_STATUS:
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

    def _same_origin(self, url: str) -> bool:
        parts = urlsplit(url)
        return parts.scheme == (self._scheme or "https") and parts.netloc == self.host

    def _decide_scheme(self, path: str, headers: dict | None, authorization: str | None) -> None:
        """Loopback/insecure hosts: https when the server speaks TLS, else http.

        The probe is a bare TLS handshake (no CA loading); the certificate is verified by the real
        requests that follow, so an untrusted certificate still fails there, clearly."""
        with self._lock:
            if self._scheme is not None:
                return
            name, port = split_host(self.host)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            try:
                with socket.create_connection((name, port or 443), timeout=self.policy.connect_timeout) as sock:
                    sock.settimeout(min(self.policy.read_timeout, 5.0))
                    with ctx.wrap_socket(sock, server_hostname=name):
                        self._scheme = "https"
            except (ssl.SSLError, ConnectionError, socket.timeout, OSError):
                self._scheme = "http"

    def send(self, method: str, url: str, headers: dict, stream: bool = False) -> requests.Response:
        """One URL, no redirects, with the retry policy; raises TransportError when it gives up."""
        failures = 0
        while True:
            try:
                resp = self._once(method, url, headers, stream)
            except requests.exceptions.RequestException as e:
                err = self._map(e, url)
                failures += 1
                if not getattr(err, "retryable", False) or failures >= self.policy.attempts:
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

    def _once(self, method: str, url: str, headers: dict, stream: bool) -> requests.Response:
        host = urlsplit(url).netloc
        if url.startswith("https://"):
            verify = False if (self.insecure and host == self.host) else verify_for(host)
        else:
            verify = True
        return self.session.request(
            method, url, headers=headers, stream=stream, allow_redirects=False, verify=verify,
            timeout=(self.policy.connect_timeout, self.policy.read_timeout))

    def _map(self, e: BaseException, url: str) -> TransportError:
        host = urlsplit(url).netloc or self.host
        if isinstance(e, requests.exceptions.SSLError):
            if _is_cert_error(e):
                err = TransportError(
                    f"TLS certificate of {host} is not trusted: {_reason(e)}",
                    hint=f"install the registry's CA as {settings.config_dir()}/certs.d/{host}/ca.crt"
                         " (or mark the registry insecure)")
            else:
                err = TransportError(f"TLS handshake with {host} failed: {_reason(e)}")
            err.retryable = False
            return err
        if isinstance(e, requests.exceptions.ConnectTimeout):
            err = TransportError(f"cannot connect to {host}: timed out after "
                                 f"{self.policy.connect_timeout:g}s")
        elif isinstance(e, requests.exceptions.ReadTimeout):
            err = TransportError(f"{host} did not answer within {self.policy.read_timeout:g}s")
        elif isinstance(e, requests.exceptions.ConnectionError):
            text = str(e)
            if "Name or service not known" in text or "NameResolutionError" in text \
                    or "Temporary failure in name resolution" in text:
                err = TransportError(f"cannot resolve registry host {split_host(host)[0]}")
                err.retryable = False
                return err
            err = TransportError(f"cannot connect to {host}: {_reason(e)}")
        else:
            err = TransportError(f"request to {host} failed: {_reason(e)}")
        err.retryable = True
        return err


def _reason(e: BaseException) -> str:
    """The innermost useful reason of a requests/urllib3 exception, one line."""
    text = str(e)
    for marker in ("certificate verify failed: ", "Connection refused", "Connection reset by peer",
                   "Remote end closed connection", "timed out"):
        if marker in text:
            i = text.index(marker)
            tail = text[i:].split("(")[0].split("'")[0].strip(" :)")
            return tail or marker.strip(": ")
    return " ".join(text.split())[:200]
