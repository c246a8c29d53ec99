"""Registry authentication: challenge parsing, Bearer tokens, Basic, credentials, login/logout.

Contract:
- `parse_challenges(header)` parses a WWW-Authenticate value per RFC 7235 (several challenges,
  auth-params with quoted-strings that may hold commas and escapes).
- `Authenticator(domain, transport, scope)` answers a 401: Bearer → a token from the realm
  (`token` or `access_token`, cached per (realm, service, scope) until `expires_in`, default 60 s),
  Basic → the stored credentials. Credentials are bound to the registry's domain; they go to a
  token realm only over https (or loopback/insecure), never to a redirect target.
- Credentials are looked up in $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json and the
  docker config.json (`$DOCKER_CONFIG` or ~/.docker): `credHelpers[host]`, `auths[host].auth`
  (base64 "user:pass") or `username`/`password`, then `credsStore`, the helpers being run as
  `docker-credential-<name> get`.
- `login` checks the credentials against the registry's `/v2/` first, then writes
  `auths[host].auth` into `settings.auth_file()` (mode 0600, atomic); `logout` removes them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from imagetool import settings
from imagetool.errors import AuthError, ImagetoolError, RegistryError

DOCKER_HUB = "docker.io"
DOCKER_HUB_KEY = "https://index.docker.io/v1/"  # the key docker itself writes for Docker Hub
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}

# ------------------------------------------------------------------ challenges (RFC 7235)

_TCHAR = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge of a WWW-Authenticate header: its scheme, parameters or token68."""

    scheme: str                      # lower case: "bearer", "basic"
    params: dict = field(default_factory=dict)   # lower-case names
    token68: str | None = None


class _Scanner:
    def __init__(self, text: str):
        self.s, self.i = text, 0

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t":
            self.i += 1

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def token(self) -> str:
        start = self.i
        while self.i < len(self.s) and self.s[self.i] in _TCHAR:
            self.i += 1
        return self.s[start:self.i]

    def quoted(self) -> str:
        assert self.peek() == '"'
        self.i += 1
        out = []
        while self.i < len(self.s):
            c = self.s[self.i]
            if c == "\\" and self.i + 1 < len(self.s):
                out.append(self.s[self.i + 1])
                self.i += 2
                continue
            if c == '"':
                self.i += 1
                return "".join(out)
            out.append(c)
            self.i += 1
        raise ValueError("unterminated quoted-string")


def parse_challenges(header: str) -> list[Challenge]:
    """All challenges of a WWW-Authenticate value; malformed tails are ignored, never guessed."""
    sc = _Scanner(header or "")
    out: list[Challenge] = []
    try:
        while True:
            sc.ws()
            while sc.peek() == ",":
                sc.i += 1
                sc.ws()
            scheme = sc.token()
            if not scheme:
                break
            params: dict[str, str] = {}
            token68 = None
            sc.ws()
            while True:
                save = sc.i
                name = sc.token()
                sc.ws()
                if name and sc.peek() == "=":
                    # auth-param (or token68 ending in '=': "abc==" has no value after it)
                    sc.i += 1
                    sc.ws()
                    if sc.peek() == '"':
                        params[name.lower()] = sc.quoted()
                    else:
                        value = _bare_value(sc)
                        if not value and not params and sc.peek() in ("=", ",", ""):
                            sc.i = save
                            token68 = _token68(sc)
                            break
                        params[name.lower()] = value
                    sc.ws()
                    if sc.peek() == ",":
                        sc.i += 1
                        sc.ws()
                        continue
                    break
                sc.i = save
                if name and not params and sc.peek() not in (",", ""):
                    token68 = _token68(sc)
                break
            out.append(Challenge(scheme.lower(), params, token68))
    except ValueError:
        pass
    return out


def _bare_value(sc: _Scanner) -> str:
    """An unquoted value: a token, leniently extended to any run without comma or space (some
    registries send `realm=https://…` unquoted)."""
    start = sc.i
    while sc.i < len(sc.s) and sc.s[sc.i] not in ' \t,"':
        sc.i += 1
    return sc.s[start:sc.i]


def _token68(sc: _Scanner) -> str:
    start = sc.i
    while sc.i < len(sc.s) and sc.s[sc.i] not in " \t,":
        sc.i += 1
    return sc.s[start:sc.i]


# ------------------------------------------------------------------ credentials


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user and password, or an identity token (an OAuth2 refresh token: `identitytoken` in the
    docker config, or a credential helper's "<token>" user) exchanged by POST at the realm."""

    username: str
    password: str = field(repr=False)
    identity_token: str | None = field(default=None, repr=False)

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def normalize_registry(value: str) -> str:
    """"https://index.docker.io/v1/" / "index.docker.io" -> "docker.io"; "http://h:5000/x" -> "h:5000"."""
    v = value.strip()
    v = urlsplit(v).netloc if "://" in v else v.split("/", 1)[0]
    return DOCKER_HUB if v.lower() in _HUB_ALIASES else v


def registry_host(domain: str) -> str:
    """Where a domain is served: docker.io -> registry-1.docker.io, others unchanged."""
    return "registry-1.docker.io" if domain == DOCKER_HUB else domain


def _auth_key(domain: str) -> str:
    return DOCKER_HUB_KEY if domain == DOCKER_HUB else domain


def config_files() -> list[Path]:
    """Credential files in the order they are consulted (missing ones included)."""
    files = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        files.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    if os.environ.get("XDG_RUNTIME_DIR"):
        files.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    files.append(settings.docker_config_path())
    seen, out = set(), []
    for f in files:
        if f not in seen:
            seen.add(f)
            out.append(f)
    return out


def _read_config(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ImagetoolError(f"cannot read credentials file {path}: {e}") from None
    if not isinstance(data, dict):
        raise ImagetoolError(f"cannot read credentials file {path}: not a JSON object")
    return data


def _from_auths(auths: dict, domain: str, path: Path) -> Credentials | None:
    for key, entry in (auths or {}).items():
        if normalize_registry(key) != domain or not isinstance(entry, dict):
            continue
        if entry.get("identitytoken"):
            return Credentials(entry.get("username") or "<token>", "", identity_token=entry["identitytoken"])
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise ImagetoolError(f"invalid base64 'auth' for {key} in {path}") from None
            return Credentials(user, password)
        if entry.get("username") is not None:
            return Credentials(entry["username"], entry.get("password") or "")
    return None


def run_helper(helper: str, domain: str) -> Credentials | None:
    """`docker-credential-<helper> get` for the domain; None when it has no credentials."""
    import shutil  # here and below, not at the top: a pull without a credential helper never loads them
    import subprocess

    prog = f"docker-credential-{helper}"
    if not shutil.which(prog):
        raise AuthError(f"credential helper {prog} (configured for {domain}) is not on PATH")
    server = _auth_key(domain)
    try:
        r = subprocess.run([prog, "get"], input=server, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AuthError(f"credential helper {prog} failed: {e}") from None
    if r.returncode != 0:
        if "credentials not found" in (r.stdout + r.stderr).lower():
            return None
        raise AuthError(f"credential helper {prog} failed: {(r.stderr or r.stdout).strip()[:200]}")
    try:
        data = json.loads(r.stdout)
        user, secret = data["Username"], data["Secret"]
    except (ValueError, KeyError, TypeError):
        raise AuthError(f"credential helper {prog} printed something that is not credentials") from None
    if user == "<token>":  # an identity token (OAuth2 refresh token)
        return Credentials(user, "", identity_token=secret)
    return Credentials(user, secret)


def lookup(domain: str) -> Credentials | None:
    """Stored credentials for a registry domain ("docker.io", "127.0.0.1:5000"), or None."""
    domain = normalize_registry(domain)
    for path in config_files():
        cfg = _read_config(path)
        if not cfg:
            continue
        helpers = cfg.get("credHelpers") or {}
        for key, helper in helpers.items():
            if normalize_registry(key) == domain:
                return run_helper(helper, domain)
        creds = _from_auths(cfg.get("auths") or {}, domain, path)
        if creds:
            return creds
        if cfg.get("credsStore"):
            creds = run_helper(cfg["credsStore"], domain)
            if creds:
                return creds
    return None


# ------------------------------------------------------------------ tokens


class TokenCache:
    """Bearer tokens per (realm, service, scope, credentials), valid until their expiry (thread-safe)."""

    def __init__(self):
        self._items: dict[tuple, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple) -> str | None:
        with self._lock:
            item = self._items.get(key)
            if item and item[1] > time.monotonic():
                return item[0]
            self._items.pop(key, None)
            return None

    def put(self, key: tuple, token: str, expires_in: float) -> None:
        with self._lock:
            # renew a little early so a token does not expire in flight
            self._items[key] = (token, time.monotonic() + max(1.0, expires_in - min(5.0, expires_in / 10)))

    def drop(self, token: str) -> None:
        with self._lock:
            for k in [k for k, v in self._items.items() if v[0] == token]:
                del self._items[k]


TOKENS = TokenCache()


class Authenticator:
    """The Authorization header for one registry domain and scope; reacts to 401 challenges."""

    def __init__(self, domain: str, transport, scope: str | None,
                 credentials: Credentials | None = None, cache: TokenCache = TOKENS):
        self.domain = domain
        self.transport = transport
        self.scope = scope
        self.cache = cache
        self._creds = credentials
        self._creds_loaded = credentials is not None
        self._header: str | None = None
        self._lock = threading.Lock()
        self.token_requests = 0

    def credentials(self) -> Credentials | None:
        if not self._creds_loaded:
            self._creds = lookup(self.domain)
            self._creds_loaded = True
        return self._creds

    def header(self) -> str | None:
        return self._header

    def on_unauthorized(self, resp, sent: str | None) -> bool:
        """Handle a 401; True when a new Authorization header is ready and a retry makes sense."""
        challenges = parse_challenges(resp.headers.get("WWW-Authenticate", ""))
        with self._lock:
            if self._header != sent:  # another thread already renewed it
                return True
            if sent and sent.startswith("Bearer "):
                self.cache.drop(sent[7:])
            for ch in challenges:
                if ch.scheme == "bearer" and ch.params.get("realm"):
                    self._header = "Bearer " + self._token(ch, force=sent is not None)
                    return True
            for ch in challenges:
                if ch.scheme == "basic":
                    creds = self.credentials()
                    if creds is None or sent == creds.basic():
                        return False
                    self._header = creds.basic()
                    return True
            return False

    def _token(self, ch: Challenge, force: bool = False) -> str:
        realm = ch.params["realm"]
        service = ch.params.get("service", "")
        # what the registry asks for, plus what this client will need next (push, a mount source)
        scope = " ".join(dict.fromkeys((ch.params.get("scope") or "").split() + (self.scope or "").split()))
        creds = self.credentials()
        secret = (creds.identity_token or creds.basic()) if creds else None
        who = hashlib.sha256(secret.encode()).hexdigest() if secret else None
        key = (realm, service, scope, who)
        if not force:
            cached = self.cache.get(key)
            if cached:
                return cached
        token, expires_in = fetch_token(self.transport, self.domain, realm, service,
                                        scope.split() if scope else [], creds)
        self.token_requests += 1
        self.cache.put(key, token, expires_in)
        return token


def fetch_token(transport, domain: str, realm: str, service: str, scopes: list[str],
                creds: Credentials | None) -> tuple[str, float]:
    """GET realm?service=…&scope=… (Basic when credentials are known) -> (token, expires_in)."""
    from imagetool.registry.transport import is_loopback

    parts = urlsplit(realm)
    if parts.scheme not in ("https", "http"):
        raise AuthError(f"{domain} sent an invalid token realm {realm!r}")
    if parts.scheme == "http" and not (is_loopback(parts.netloc) or transport.insecure):
        raise AuthError(f"{domain} asks for credentials over plain http ({parts.netloc}); refusing")
    if creds and creds.identity_token:
        return _oauth_token(transport, domain, realm, service, scopes, creds)
    params = []
    if service:
        params.append(("service", service))
    params += [("scope", s) for s in scopes]
    if creds:
        params.append(("account", creds.username))
    url = realm + ("&" if parts.query else "?") + urlencode(params)
    headers = {"Authorization": creds.basic()} if creds else {}
    who = f" as {creds.username}" if creds else ""
    refused = f"authentication to {domain}{who} failed: " + \
        ("incorrect username or password" if creds else "credentials required")
    return _token_answer(transport.send("GET", url, headers), domain, realm, (401, 403), refused, None)


def _oauth_token(transport, domain: str, realm: str, service: str, scopes: list[str],
                 creds: Credentials) -> tuple[str, float]:
    """OAuth2 refresh: POST realm grant_type=refresh_token (the identity token) -> access_token."""
    body = urlencode({"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                      "service": service, "scope": " ".join(scopes), "client_id": "imagetool"}).encode()
    resp = transport.send("POST", realm, {"Content-Type": "application/x-www-form-urlencoded"}, body=body)
    refused = f"authentication to {domain} with its identity token failed: the token was refused (expired or revoked)"
    return _token_answer(resp, domain, realm, (400, 401, 403), refused, f"log in again: imagetool login {domain}")


def _token_answer(resp, domain: str, realm: str, refusals: tuple, refused: str, hint: str | None) -> tuple[str, float]:
    """(token, expires_in) from a token server's answer (`token` or `access_token`, bounded JSON)."""
    netloc = urlsplit(realm).netloc
    try:
        if resp.status_code in refusals:
            raise AuthError(refused, code="UNAUTHORIZED", status=resp.status_code, hint=hint)
        if resp.status_code != 200:
            raise RegistryError(f"token server {netloc} for {domain} answered {resp.status_code}",
                                status=resp.status_code)
        try:
            body = json.loads(resp.content[: 1 << 20])
        except ValueError:
            raise RegistryError(f"token server {netloc} sent an invalid JSON answer") from None
    finally:
        resp.close()
    token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
    if not token or not isinstance(token, str):
        raise RegistryError(f"token server {netloc} sent no token")
    try:
        return token, float(body.get("expires_in") or 60)
    except (TypeError, ValueError):
        return token, 60.0


# ------------------------------------------------------------------ login / logout


def verify_login(transport, domain: str, creds: Credentials) -> None:
    """Raise AuthError unless `creds` are accepted by the registry's /v2/ endpoint."""
    resp = transport.request("GET", "/v2/")
    resp.close()
    if resp.status_code == 200:
        return  # open registry: nothing to check against (docker stores them anyway)
    if resp.status_code != 401:
        raise RegistryError(f"{domain} answered {resp.status_code} to GET /v2/", status=resp.status_code)
    challenges = parse_challenges(resp.headers.get("WWW-Authenticate", ""))
    header = None
    for ch in challenges:
        if ch.scheme == "bearer" and ch.params.get("realm"):
            token, _ = fetch_token(transport, domain, ch.params["realm"], ch.params.get("service", ""),
                                   [], creds)
            header = "Bearer " + token
            break
    else:
        if any(ch.scheme == "basic" for ch in challenges):
            header = creds.basic()
    if header is None:
        raise AuthError(f"{domain} asks for an authentication scheme imagetool does not support")
    resp = transport.request("GET", "/v2/", authorization=header)
    resp.close()
    if resp.status_code in (401, 403):
        raise AuthError(f"login to {domain} failed: incorrect username or password",
                        code="UNAUTHORIZED", status=resp.status_code)
    if resp.status_code != 200:
        raise RegistryError(f"{domain} answered {resp.status_code} to GET /v2/", status=resp.status_code)


def _write_config(path: Path, data: dict) -> None:
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix="imagetool-auth-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent="\t")
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)  # point of no return
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def login(registry: str, username: str, password: str, insecure: bool = False) -> Path:
    """Check the credentials against the registry, then store them; returns the file written."""
    from imagetool.registry.transport import Transport

    if not username:
        raise AuthError("login needs a username")
    if not password:
        raise AuthError("login needs a password")
    domain = normalize_registry(registry)
    creds = Credentials(username, password)
    transport = Transport(registry_host(domain), insecure=insecure)
    try:
        verify_login(transport, domain, creds)
    finally:
        transport.close()
    path = settings.auth_file()
    data = _read_config(path)
    auths = data.setdefault("auths", {})
    for key in [k for k in auths if normalize_registry(k) == domain]:
        del auths[key]
    auths[_auth_key(domain)] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
    _write_config(path, data)
    return path


def logout(registry: str) -> bool:
    """Remove stored credentials for the registry; False when there were none."""
    domain = normalize_registry(registry)
    path = settings.auth_file()
    data = _read_config(path)
    auths = data.get("auths") or {}
    keys = [k for k in auths if normalize_registry(k) == domain]
    if not keys:
        return False
    for k in keys:
        del auths[k]
    _write_config(path, data)
    return True
