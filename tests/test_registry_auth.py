"""Registry authentication: the RFC 7235 challenge parser, credentials from every source, Basic
auth against an htpasswd registry, and Docker Hub's Bearer token flow verified by the real registry."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from test_pull_support import refs, store_state


# ---------------------------------------------------------------- challenge parsing (no network)

@pytest.mark.parametrize("header, expected", [
    ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
     'scope="repository:samalba/my-app:pull,push"',
     [("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                  "scope": "repository:samalba/my-app:pull,push"})]),
    ('Basic realm="imagetool-test"', [("basic", {"realm": "imagetool-test"})]),
    ('Basic realm="a \\"quoted\\", comma", Bearer realm=https://x/t, error=insufficient_scope',
     [("basic", {"realm": 'a "quoted", comma'}),
      ("bearer", {"realm": "https://x/t", "error": "insufficient_scope"})]),
    ('bearer  realm = "r" ,  service=s ,scope="a b"', [("bearer", {"realm": "r", "service": "s", "scope": "a b"})]),
    ("Basic", [("basic", {})]),
    ("", []),
    ('Bearer realm="unterminated', [])
])
def test_challenge_parser_handles_quoted_commas_and_several_challenges(header, expected):
    from imagetool.registry.auth import parse_challenges

    assert [(c.scheme, c.params) for c in parse_challenges(header)] == expected


def test_retry_after_seconds_and_http_date():
    import email.utils
    import time

    from email.message import Message

    from imagetool.registry.transport import retry_after

    class R:
        headers = Message()

    r = R()
    r.headers["Retry-After"] = "7"
    assert retry_after(r) == 7
    del r.headers["Retry-After"]
    r.headers["Retry-After"] = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 20 < retry_after(r) <= 31
    del r.headers["Retry-After"]
    r.headers["Retry-After"] = "soon"
    assert retry_after(r) is None


def test_token_cache_expires_and_separates_scopes(monkeypatch):
    import imagetool.registry.auth as auth

    now = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: now[0])
    cache = auth.TokenCache()
    cache.put(("realm", "svc", "repository:a:pull", None), "tok-a", 60)
    assert cache.get(("realm", "svc", "repository:a:pull", None)) == "tok-a"
    assert cache.get(("realm", "svc", "repository:b:pull", None)) is None
    now[0] += 61
    assert cache.get(("realm", "svc", "repository:a:pull", None)) is None


# ---------------------------------------------------------------- credential sources

def _auth_entry(user: str, password: str) -> dict:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_credentials_from_docker_config_helpers_and_store(tmp_path, monkeypatch):
    from imagetool.registry import auth

    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-imagetooltest"
    helper.write_text("#!/bin/sh\nread server\n"
                      'if [ "$server" = "helped.example:5000" ]; then\n'
                      '  echo "{\\"ServerURL\\":\\"$server\\",\\"Username\\":\\"hu\\",\\"Secret\\":\\"hs\\"}"\n'
                      'else echo "credentials not found in native keychain"; exit 1; fi\n')
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    docker = tmp_path / "docker"
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps({
        "auths": {"https://index.docker.io/v1/": _auth_entry("hub", "hubpw"),
                  "plain.example": {"username": "pu", "password": "pp"}},
        "credHelpers": {"helped.example:5000": "imagetooltest"},
        "credsStore": "imagetooltest",
    }))
    monkeypatch.setenv("DOCKER_CONFIG", str(docker))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert auth.lookup("docker.io") == auth.Credentials("hub", "hubpw")
    assert auth.lookup("plain.example") == auth.Credentials("pu", "pp")
    assert auth.lookup("helped.example:5000") == auth.Credentials("hu", "hs")
    assert auth.lookup("unknown.example") is None  # credsStore says "not found"
    # REGISTRY_AUTH_FILE comes first
    other = tmp_path / "auth.json"
    other.write_text(json.dumps({"auths": {"docker.io": _auth_entry("first", "pw")}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(other))
    assert auth.lookup("docker.io").username == "first"
    assert "hubpw" not in repr(auth.lookup("docker.io"))


# ---------------------------------------------------------------- Basic auth (htpasswd registry)

def _write_docker_config(cli, host: str, user: str, password: str) -> None:
    cli.docker_config.mkdir(parents=True, exist_ok=True)
    (cli.docker_config / "config.json").write_text(json.dumps({"auths": {host: _auth_entry(user, password)}}))


def test_login_pull_logout_with_basic_auth(auth_registry, busybox, cli, store_dir):
    auth_registry.push(busybox, "auth/busybox:latest")
    host = auth_registry.host
    ref = f"{host}/auth/busybox"
    r = cli("pull", ref)
    assert r.returncode == 1 and "imagetool login" in r.stderr
    r = cli("login", "-u", auth_registry.username, "--password-stdin", host, input=auth_registry.password + "\n")
    assert r.returncode == 0, r.stderr
    assert "Login Succeeded" in r.stdout
    path = cli.docker_config / "config.json"
    saved = json.loads(path.read_text())["auths"][host]["auth"]
    assert base64.b64decode(saved).decode() == f"{auth_registry.username}:{auth_registry.password}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    r = cli("pull", ref)
    assert r.returncode == 0, r.stderr
    assert refs(store_dir)[f"{ref}:latest"]["digest"] == busybox.manifest_digest
    r = cli("logout", host)
    assert r.returncode == 0, r.stderr
    assert host not in json.loads(path.read_text()).get("auths", {})
    r = cli("logout", host)
    assert r.returncode == 0 and f"Not logged in to {host}" in r.stdout


def test_login_with_wrong_password_fails_and_writes_nothing(auth_registry, cli):
    r = cli("login", "-u", auth_registry.username, "-p", "wrong", auth_registry.host)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"imagetool: error: login to {auth_registry.host} failed: incorrect username or password"]
    assert not (cli.docker_config / "config.json").exists()


def test_pull_with_wrong_password_is_one_line_error(auth_registry, busybox, cli, store_dir):
    auth_registry.push(busybox, "auth/wrongpw:latest")
    _write_docker_config(cli, auth_registry.host, auth_registry.username, "not-the-password")
    from store import Store

    Store.open(store_dir)
    before = store_state(store_dir)
    r = cli("pull", f"{auth_registry.host}/auth/wrongpw")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"imagetool: error: authentication to {auth_registry.host} as {auth_registry.username} "
        "failed: incorrect username or password")
    assert len([x for x in r.stderr.splitlines() if x.startswith("imagetool: error")]) == 1
    assert store_state(store_dir) == before


def test_pull_with_credentials_from_docker_config_and_helper(auth_registry, busybox, cli, store_dir, tmp_path):
    auth_registry.push(busybox, "auth/fromconfig:latest")
    _write_docker_config(cli, auth_registry.host, auth_registry.username, auth_registry.password)
    r = cli("pull", f"{auth_registry.host}/auth/fromconfig", env={"REGISTRY_AUTH_FILE": None})
    assert r.returncode == 0, r.stderr
    # the same through a credential helper named by credHelpers
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-imagetoolfake"
    helper.write_text("#!/bin/sh\ncat >/dev/null\n"
                      f"echo '{{\"Username\":\"{auth_registry.username}\",\"Secret\":\"{auth_registry.password}\"}}'\n")
    helper.chmod(0o755)
    (cli.docker_config / "config.json").write_text(json.dumps({"credHelpers": {auth_registry.host: "imagetoolfake"}}))
    cli.store_dir = tmp_path / "store2"
    r = cli("pull", f"{auth_registry.host}/auth/fromconfig",
            env={"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"})
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------- Bearer tokens (Docker Hub flow)

def token_pair(**token_server):
    """Yield (TokenServer(**token_server), TokenRegistry trusting it); both stopped afterwards
    (skips when openssl or docker-registry is missing). For module fixtures: `yield from`."""
    from fixtures.registry import RegistryUnavailable
    from fixtures.tokenserver import TokenRegistry, TokenServer

    try:
        ts = TokenServer(**token_server)
    except RegistryUnavailable as e:
        pytest.skip(str(e))
    try:
        reg = TokenRegistry.start(ts)
    except Exception:
        ts.stop()
        raise
    try:
        yield ts, reg
    finally:
        reg.stop()
        ts.stop()


@pytest.fixture(scope="module")
def token_registry():
    yield from token_pair(users={"alice": "wonderland"}, anonymous=False)


def test_bearer_token_flow_verified_by_registry(token_registry, busybox, cli, store_dir):
    ts, reg = token_registry
    reg.push(busybox, "tok/busybox:latest")
    _write_docker_config(cli, reg.host, "alice", "wonderland")
    mark = len(ts.requests)
    r = cli("pull", f"{reg.host}/tok/busybox")
    assert r.returncode == 0, r.stderr
    issued = ts.requests[mark:]
    # one token for the pull scope, reused for every manifest and blob request
    assert [(t.scopes, t.user) for t in issued] == [(("repository:tok/busybox:pull",), "alice")]
    served = [x for x in reg.requests() if x[1].startswith("/v2/tok/busybox/") and x[2] == 200]
    assert len(served) >= 4  # HEAD + GET manifest + config + layer, all with the token


def test_bearer_wrong_password_and_anonymous_are_refused(token_registry, busybox, cli, store_dir):
    ts, reg = token_registry
    reg.push(busybox, "tok/refused:latest")
    _write_docker_config(cli, reg.host, "alice", "not-wonderland")
    r = cli("pull", f"{reg.host}/tok/refused")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"imagetool: error: authentication to {reg.host} as alice failed: incorrect username or password")
    (cli.docker_config / "config.json").unlink()
    r = cli("pull", f"{reg.host}/tok/refused")
    assert r.returncode == 1
    assert "imagetool: error:" in r.stderr and "credentials" in r.stderr
    assert "Traceback" not in r.stderr


def test_login_against_token_registry(token_registry, cli):
    ts, reg = token_registry
    r = cli("login", "-u", "alice", "-p", "wonderland", reg.host)
    assert r.returncode == 0, r.stderr
    r = cli("login", "-u", "alice", "-p", "bad", reg.host)
    assert r.returncode == 1 and "incorrect username or password" in r.stderr


def test_token_registry_is_started_by_registry_server(token_registry, monkeypatch):
    """TokenRegistry reuses RegistryServer's start-up: the same binary lookup (a missing one is
    RegistryUnavailable, not a spawn of a hard-coded name) and the same clean-up."""
    import fixtures.registry as fr
    from fixtures.tokenserver import TokenRegistry

    ts, reg = token_registry
    assert isinstance(reg, TokenRegistry) and reg.token_server is ts
    assert (reg.workdir / "config.yml").read_text().count("rootcertbundle:") == 1
    monkeypatch.setattr(fr, "REGISTRY_BIN", "imagetool-no-such-registry-binary")
    try:
        started = TokenRegistry.start(ts)
    except fr.RegistryUnavailable:
        return
    started.stop()
    pytest.fail("TokenRegistry.start ignored RegistryServer's binary lookup")


def test_proxy_environment_rules(monkeypatch):
    from imagetool.registry.transport import proxy_for

    for k in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(k, raising=False)
    assert proxy_for("https", "registry-1.docker.io") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://user:pw@proxy.example:3128")
    p = proxy_for("https", "registry-1.docker.io")
    assert (p.hostname, p.port, p.username) == ("proxy.example", 3128, "user")
    assert proxy_for("http", "registry-1.docker.io") is None          # only HTTPS_PROXY is set
    assert proxy_for("https", "127.0.0.1:5000") is None                # loopback is never proxied
    monkeypatch.setenv("NO_PROXY", "example.com, .internal,other:5000")
    assert proxy_for("https", "registry.example.com") is None
    assert proxy_for("https", "r.internal") is None
    assert proxy_for("https", "other:5000") is None
    assert proxy_for("https", "other:5001") is not None
    assert proxy_for("https", "notexample.com") is not None


# ---------------------------------------------------------------- identity tokens (OAuth2 refresh)

@pytest.fixture(scope="module")
def oauth_registry():
    yield from token_pair(users={"alice": "wonderland"}, refresh_tokens={"rt-alice": "alice"})


@pytest.mark.parametrize("token,ok", [("rt-alice", True), ("rt-revoked", False)], ids=["valid", "revoked"])
def test_an_identity_token_is_exchanged_by_oauth2_post_for_pull_and_push(token, ok, oauth_registry, busybox, cli,
                                                                         store_dir):
    ts, reg = oauth_registry
    reg.push(busybox, "oauth/busybox:latest")
    cli.docker_config.mkdir(parents=True, exist_ok=True)
    (cli.docker_config / "config.json").write_text(json.dumps({"auths": {reg.host: {"identitytoken": token}}}))
    mark = len(ts.requests)
    r = cli("pull", f"{reg.host}/oauth/busybox")
    issued = ts.requests[mark:]
    assert issued and all(t.user.startswith("oauth:") for t in issued)  # POSTs only, no Basic GET
    if not ok:
        assert r.returncode == 1
        assert "identity token failed" in r.stderr and "imagetool login" in r.stderr
        return
    assert r.returncode == 0, r.stderr
    assert issued[0] == type(issued[0])("imagetool-test-registry", ("repository:oauth/busybox:pull",), "oauth:alice")
    r = cli("push", f"{reg.host}/oauth/busybox", f"{reg.host}/oauth/pushed:v1")
    assert r.returncode == 0, r.stderr
    assert any("repository:oauth/pushed:pull,push" in t.scopes for t in ts.requests[mark:])
