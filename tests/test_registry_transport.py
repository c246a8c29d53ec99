"""Transport under faults: TLS with and without the registry's CA, and a fault-injecting proxy in
front of the real registry (5xx, resets mid-blob, 429, corruption, redirects, silence)."""

from __future__ import annotations

import json
import shutil

import pytest

from test_pull_support import assert_consistent, pull_env, random_layer, refs, store_state


@pytest.fixture(scope="module")
def big(registry):
    """An image with one ~1 MB random layer, pushed once for the module."""
    from fixtures.images import build_image

    layer = random_layer(1_000_000, name="big")
    img = build_image([layer])
    registry.push(img, "faults/big:v1")
    return img, layer


@pytest.fixture
def proxy(registry):
    from fixtures.proxy import FaultProxy

    with FaultProxy(registry.url) as p:
        yield p


def _blob_path(layer) -> str:
    return f"/blobs/{layer.digest}"


# ---------------------------------------------------------------- TLS

def test_tls_registry_with_certs_d_ca(tls_registry, busybox, cli, store_dir):
    tls_registry.push(busybox, "tls/busybox:latest")
    certs = cli.config_dir / "certs.d" / tls_registry.host
    certs.mkdir(parents=True)
    shutil.copy(tls_registry.ca_cert, certs / "ca.crt")
    r = cli("pull", f"{tls_registry.host}/tls/busybox")
    assert r.returncode == 0, r.stderr
    assert refs(store_dir)[f"{tls_registry.host}/tls/busybox:latest"]["digest"] == busybox.manifest_digest


def test_tls_registry_without_ca_is_a_clear_certificate_error(tls_registry, busybox, cli, store_dir):
    tls_registry.push(busybox, "tls/untrusted:latest")
    from store import Store

    Store.open(store_dir)
    before = store_state(store_dir)
    r = cli("pull", f"{tls_registry.host}/tls/untrusted", env=pull_env())
    assert r.returncode == 1
    first = r.stderr.strip().splitlines()
    errors = [x for x in first if x.startswith("imagetool: error:")]
    assert len(errors) == 1
    assert f"TLS certificate of {tls_registry.host} is not trusted" in errors[0]
    assert "certs.d" in r.stderr  # the hint says where the CA goes
    assert store_state(store_dir) == before


def test_tls_hostname_is_verified_even_with_a_trusted_ca(tls_registry, busybox, cli, store_dir):
    """The CA is trusted for `localhost:PORT`, but the certificate names only 127.0.0.1: refused."""
    tls_registry.push(busybox, "tls/hostname:latest")
    host = f"localhost:{tls_registry.port}"
    certs = cli.config_dir / "certs.d" / host
    certs.mkdir(parents=True)
    shutil.copy(tls_registry.ca_cert, certs / "ca.crt")
    r = cli("pull", f"{host}/tls/hostname", env=pull_env())
    assert r.returncode == 1
    errors = [x for x in r.stderr.splitlines() if x.startswith("imagetool: error:")]
    assert len(errors) == 1 and f"TLS certificate of {host} is not trusted" in errors[0], r.stderr
    assert "hostname" in errors[0].lower()


def test_insecure_flag_and_registries_json_skip_verification(tls_registry, busybox, cli, store_dir):
    tls_registry.push(busybox, "tls/insecure:latest")
    r = cli("pull", "--insecure", f"{tls_registry.host}/tls/insecure", env=pull_env())
    assert r.returncode == 0, r.stderr
    cli.config_dir.mkdir(parents=True, exist_ok=True)
    (cli.config_dir / "registries.json").write_text(json.dumps({"insecure": [tls_registry.host]}))
    cli.store_dir = store_dir.parent / "store2"
    r = cli("pull", f"{tls_registry.host}/tls/insecure", env=pull_env())
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------- faults through the proxy

def test_5xx_are_retried(big, proxy, cli, store_dir):
    from fixtures.proxy import Fault

    img, layer = big
    proxy.add(Fault("status", r"/manifests/", times=1, status=503, method="HEAD"))
    proxy.add(Fault("status", _blob_path(layer), times=2, status=500))
    r = cli("pull", f"{proxy.host}/faults/big:v1", env=pull_env())
    assert r.returncode == 0, r.stderr
    statuses = [rec.status for rec in proxy.records(_blob_path(layer), "GET")]
    assert statuses == [500, 500, 200]
    assert assert_consistent(store_dir) == 3


def test_5xx_forever_fails_after_bounded_retries(big, proxy, cli, store_dir):
    from fixtures.proxy import Fault

    img, layer = big
    proxy.add(Fault("status", _blob_path(layer), times=None, status=502))
    r = cli("pull", f"{proxy.host}/faults/big:v1", env=pull_env(IMAGETOOL_RETRIES=3))
    assert r.returncode == 1
    assert "imagetool: error:" in r.stderr and "502" in r.stderr
    assert len(proxy.records(_blob_path(layer), "GET")) == 3
    assert f"{proxy.host}/faults/big:v1" not in refs(store_dir)


def test_connection_reset_mid_blob_resumes_with_range(big, proxy, cli, store_dir):
    from fixtures.proxy import Fault

    img, layer = big
    proxy.add(Fault("reset", _blob_path(layer), times=1, after=400_000))
    r = cli("pull", f"{proxy.host}/faults/big:v1", env=pull_env())
    assert r.returncode == 0, r.stderr
    gets = proxy.records(_blob_path(layer), "GET")
    assert len(gets) == 2
    assert gets[0].fault == "reset" and "Range" not in gets[0].headers
    assert gets[1].headers.get("Range", "").startswith("bytes=") and gets[1].status == 206
    resumed_at = int(gets[1].headers["Range"][len("bytes="):].rstrip("-"))
    assert resumed_at > 0
    served = sum(g.sent for g in gets)
    assert served < 2 * layer.size and served == layer.size + (400_000 - resumed_at)
    assert assert_consistent(store_dir) == 3


def test_server_ignoring_range_restarts_the_blob(big, proxy, cli, store_dir):
    """A partial from an earlier run, and a server that answers 200 to Range: start over."""
    from store import Digest, Store

    from fixtures.proxy import Fault

    img, layer = big
    st = Store.open(store_dir)
    with st.ingest(Digest.parse(layer.digest), layer.size) as w:
        w.write(layer.blob[:300_000])
    proxy.add(Fault("norange", _blob_path(layer), times=None))
    r = cli("pull", f"{proxy.host}/faults/big:v1", env=pull_env())
    assert r.returncode == 0, r.stderr
    [get] = proxy.records(_blob_path(layer), "GET")
    assert get.headers.get("Range") == "bytes=300000-" and get.status == 200
    assert get.sent == layer.size
    assert assert_consistent(store_dir) == 3


def test_corrupt_partial_from_earlier_run_is_refetched(big, registry, cli, store_dir):
    """A partial that is not a prefix of the blob fails verification once; the blob is then
    fetched again from the start instead of failing the pull."""
    from store import Digest, Store

    img, layer = big
    st = Store.open(store_dir)
    with st.ingest(Digest.parse(layer.digest), layer.size) as w:
        w.write(b"x" * 1000)
    mark = registry.mark()
    r = cli("pull", f"{registry.host}/faults/big:v1", env=pull_env())
    assert r.returncode == 0, r.stderr
    gets = [p for m, p, s in registry.requests(mark) if m == "GET" and layer.digest in p]
    assert len(gets) == 2
    assert assert_consistent(store_dir) == 3


def test_429_with_retry_after_is_honoured(big, proxy, cli, store_dir):
    from fixtures.proxy import Fault

    img, layer = big
    proxy.add(Fault("status", r"/manifests/", times=1, status=429, method="HEAD",
                    headers={"Retry-After": "1"}))
    proxy.add(Fault("status", _blob_path(layer), times=1, status=429, headers={"Retry-After": "0"}))
    r = cli("pull", f"{proxy.host}/faults/big:v1", env=pull_env())
    assert r.returncode == 0, r.stderr
    assert [rec.status for rec in proxy.records(r"/manifests/v1", "HEAD")] == [429, 200]
    assert [rec.status for rec in proxy.records(_blob_path(layer), "GET")] == [429, 200]


def test_corrupted_blob_is_a_digest_error_and_nothing_is_stored(big, proxy, cli, store_dir):
    from fixtures.proxy import Fault

    img, layer = big
    proxy.add(Fault("corrupt", _blob_path(layer), times=None))
    r = cli("pull", f"{proxy.host}/faults/big:v1", env=pull_env())
    assert r.returncode == 1
    errors = [x for x in r.stderr.splitlines() if x.startswith("imagetool: error:")]
    assert len(errors) == 1 and layer.digest in errors[0] and "corrupt" in errors[0]
    hexd = layer.digest.split(":")[1]
    assert not (store_dir / "blobs/sha256" / hexd).exists()
    assert not (store_dir / "ingest" / f"{hexd}.partial").exists()
    assert refs(store_dir) == {}
    assert_consistent(store_dir)


def test_blob_redirect_to_other_host_never_carries_authorization(auth_registry, busybox, cli, store_dir):
    """Blobs 307 to a second loopback host (a "CDN", 127.0.0.2) that records what it receives."""
    from fixtures.proxy import Fault, FaultProxy

    auth_registry.push(busybox, "faults/redirect:latest")
    try:
        cdn = FaultProxy(auth_registry.url, bind="127.0.0.2", upstream_headers=auth_registry.auth_header())
    except OSError as e:
        pytest.skip(f"cannot bind 127.0.0.2: {e}")
    with cdn, FaultProxy(auth_registry.url) as front:
        front.add(Fault("redirect", r"/blobs/", times=None, to=cdn.url))
        cli.docker_config.mkdir(parents=True, exist_ok=True)
        import base64

        token = base64.b64encode(f"{auth_registry.username}:{auth_registry.password}".encode()).decode()
        (cli.docker_config / "config.json").write_text(json.dumps({"auths": {front.host: {"auth": token}}}))
        r = cli("pull", f"{front.host}/faults/redirect", env=pull_env())
        assert r.returncode == 0, r.stderr
        assert any("Authorization" in rec.headers for rec in front.records(r"/manifests/"))
        cdn_gets = cdn.records(r"/blobs/", "GET")
        assert len(cdn_gets) == len(busybox.blobs)
        assert all("Authorization" not in rec.headers for rec in cdn_gets), [rec.headers for rec in cdn_gets]
    assert assert_consistent(store_dir) == len(busybox.blobs) + 1


def test_registry_that_never_answers_fails_in_bounded_time(cli, store_dir):
    from fixtures.proxy import SilentServer

    with SilentServer() as silent:
        r = cli("pull", f"{silent.host}/faults/silent:v1", timeout=60,
                env=pull_env(IMAGETOOL_CONNECT_TIMEOUT=1, IMAGETOOL_READ_TIMEOUT=1, IMAGETOOL_RETRIES=2))
    assert r.returncode == 1
    errors = [x for x in r.stderr.splitlines() if x.startswith("imagetool: error:")]
    assert len(errors) == 1 and f"{silent.host} did not answer within 1s" in errors[0]


def test_throttled_serving_still_completes(big, proxy, cli, store_dir):
    from fixtures.proxy import Fault

    img, layer = big
    proxy.add(Fault("throttle", _blob_path(layer), times=None, rate=2_000_000))
    r = cli("pull", f"{proxy.host}/faults/big:v1", env=pull_env())
    assert r.returncode == 0, r.stderr
    assert proxy.body_bytes(_blob_path(layer)) == layer.size


def test_docker_io_mirror_from_registries_json(registry, busybox, cli, store_dir):
    """registries.json mirrors docker.io to the test registry: `busybox-mirror-test` resolves there."""
    registry.push(busybox, "library/busybox-mirror-test:latest")
    cli.config_dir.mkdir(parents=True, exist_ok=True)
    (cli.config_dir / "registries.json").write_text(json.dumps({"mirrors": {"docker.io": [registry.url]}}))
    r = cli("pull", "busybox-mirror-test", env=pull_env())
    assert r.returncode == 0, r.stderr
    assert refs(store_dir)["docker.io/library/busybox-mirror-test:latest"]["digest"] == busybox.manifest_digest


# ---------------------------------------------------------------- hostile or odd manifests

def _manifest_fault(proxy, body: bytes, content_type: str, extra: dict | None = None):
    from fixtures.proxy import Fault

    headers = {"Content-Type": content_type, **(extra or {})}
    proxy.add(Fault("status", r"/manifests/", times=None, status=200, method=None, body=body, headers=headers))


@pytest.mark.parametrize("case", ["too-big", "type-confusion", "schema1", "wrong-digest-header"])
def test_bad_manifests_are_refused_with_one_line(proxy, cli, store_dir, case):
    import hashlib

    from store import Store

    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": []}).encode()
    if case == "too-big":
        body, ctype, extra, needle = b" " * (5 << 20), "application/vnd.oci.image.manifest.v1+json", {}, "4 MiB"
    elif case == "type-confusion":
        body, ctype, extra, needle = index, "application/vnd.oci.image.manifest.v1+json", {}, "contradicts"
    elif case == "schema1":
        body = json.dumps({"schemaVersion": 1, "name": "x", "tag": "v1", "fsLayers": []}).encode()
        ctype, extra, needle = "application/vnd.docker.distribution.manifest.v1+prettyjws", {}, "schema 1"
    else:
        body, ctype, needle = index, "application/vnd.oci.image.index.v1+json", "digest"
        extra = {"Docker-Content-Digest": "sha256:" + hashlib.sha256(b"other").hexdigest()}
    _manifest_fault(proxy, body, ctype, extra)
    Store.open(store_dir)
    before = store_state(store_dir)
    r = cli("pull", f"{proxy.host}/faults/odd:v1", env=pull_env())
    assert r.returncode == 1
    errors = [x for x in r.stderr.splitlines() if x.startswith("imagetool: error:")]
    assert len(errors) == 1 and needle in errors[0], r.stderr
    assert store_state(store_dir) == before


def test_low_rate_limit_is_shown(big, proxy, cli, store_dir):
    from fixtures.proxy import Fault

    proxy.add(Fault("headers", r"/manifests/", times=None, method=None,
                    headers={"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "3;w=21600"}))
    r = cli("pull", f"{proxy.host}/faults/big:v1", env=pull_env())
    assert r.returncode == 0, r.stderr
    assert "3 pulls remaining" in r.stderr


def test_401_from_a_redirect_target_is_not_answered_with_credentials(registry, busybox, cli, store_dir):
    """A "CDN" that blobs redirect to answers 401 with a Bearer challenge naming its own realm:
    the client must not fetch a token there (with the registry's credentials) — ContainerDrip."""
    from fixtures.proxy import Fault, FaultProxy

    registry.push(busybox, "faults/cdn401:latest")
    try:
        cdn = FaultProxy(registry.url, bind="127.0.0.2")
    except OSError as e:
        pytest.skip(f"cannot bind 127.0.0.2: {e}")
    with cdn, FaultProxy(registry.url) as front:
        front.add(Fault("redirect", r"/blobs/", times=None, to=cdn.url))
        cdn.add(Fault("status", r"/blobs/", times=None, status=401,
                      headers={"WWW-Authenticate": f'Bearer realm="{cdn.url}/token",service="cdn"'}))
        cdn.add(Fault("status", r"^/token", times=None, status=200, body=b'{"token": "stolen"}'))
        _write_creds(cli, front.host)
        r = cli("pull", f"{front.host}/faults/cdn401", env=pull_env())
        assert r.returncode == 1
        errors = [x for x in r.stderr.splitlines() if x.startswith("imagetool: error:")]
        assert len(errors) == 1, r.stderr
        assert cdn.records(r"^/token") == [], [rec.headers for rec in cdn.records(r"^/token")]
    assert f"{front.host}/faults/cdn401:latest" not in refs(store_dir)


def _write_creds(cli, host: str) -> None:
    import base64

    cli.docker_config.mkdir(parents=True, exist_ok=True)
    token = base64.b64encode(b"someone:secret").decode()
    (cli.docker_config / "config.json").write_text(json.dumps({"auths": {host: {"auth": token}}}))


def test_oversized_token_answer_is_refused_without_reading_it_all(proxy, cli, store_dir):
    """Bodies read whole (here a token server's answer) are capped: a clear error, not a 20 MiB read."""
    from fixtures.proxy import Fault

    proxy.add(Fault("status", r"/manifests/", times=None, status=401, method=None,
                    headers={"WWW-Authenticate": f'Bearer realm="{proxy.url}/token",service="x"'}))
    body = b'{"token": "t", "pad": "' + b"a" * (20 << 20) + b'"}'
    proxy.add(Fault("status", r"^/token", times=None, status=200, body=body))
    r = cli("pull", f"{proxy.host}/faults/bigtoken:v1", env=pull_env())
    assert r.returncode == 1
    errors = [x for x in r.stderr.splitlines() if x.startswith("imagetool: error:")]
    assert len(errors) == 1 and "more than 4 MiB" in errors[0], r.stderr
    assert sum(rec.sent for rec in proxy.records(r"^/token")) < len(body)


def test_blob_read_to_the_end_returns_its_connection_to_the_pool(big, registry):
    """Blobs are read with read1(); a complete Content-Length body must leave a reusable
    keep-alive connection (else every layer pays a new TCP/TLS handshake): two blobs, one
    connection (urllib3's pool counts the connections it opened)."""
    from imagetool.registry.client import RegistryClient
    from imagetool.reference import parse

    from store import Digest

    img, layer = big
    client = RegistryClient(parse(f"{registry.host}/faults/big:v1"))
    try:
        for _ in range(2):
            with client.blob_stream(Digest.parse(layer.digest)) as s:
                assert sum(len(c) for c in s.chunks()) == layer.size
        url = client.transport.url("/v2/")
        pools = client.transport._http().get_adapter(url).poolmanager.pools
        [pool] = [pools[key] for key in pools.keys()]
        assert (pool.num_requests, pool.num_connections) == (2, 1)
    finally:
        client.close()


def test_206_with_the_wrong_range_start_is_never_appended(big, proxy, cli, store_dir):
    """After a reset mid-blob, a 206 whose Content-Range starts elsewhere than the Range asked for
    fails the pull clearly and leaves the partial as it was (a prefix); the next pull resumes it."""
    from fixtures.proxy import Fault

    img, layer = big
    hexd = layer.digest.split(":")[1]
    proxy.add(Fault("reset", _blob_path(layer), times=1, after=300_000))
    proxy.add(Fault("status", _blob_path(layer), times=1, status=206, body=layer.blob[:10],
                    headers={"Content-Range": f"bytes 0-9/{layer.size}"}))
    r = cli("pull", f"{proxy.host}/faults/big:v1", env=pull_env())
    assert r.returncode == 1
    errors = [x for x in r.stderr.splitlines() if x.startswith("imagetool: error:")]
    assert len(errors) == 1 and "range request" in errors[0], r.stderr
    partial = store_dir / "ingest" / f"{hexd}.partial"
    data = partial.read_bytes()
    assert 0 < len(data) <= 300_000 and data == layer.blob[: len(data)]
    r = cli("pull", f"{proxy.host}/faults/big:v1", env=pull_env())
    assert r.returncode == 0, r.stderr
    assert proxy.records(_blob_path(layer), "GET")[-1].headers.get("Range") == f"bytes={len(data)}-"
    assert assert_consistent(store_dir) == 3


def test_relative_redirects_are_followed_and_loops_are_bounded():
    """A relative Location resolves against the request URL (same origin: Authorization kept);
    a redirect loop ends with a clear TransportError after a bounded number of hops."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from imagetool.errors import TransportError
    from imagetool.registry.transport import MAX_REDIRECTS, Policy, Transport

    seen = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            status, headers, body = 200, {}, b"ok"
            if self.path == "/v2/loop":
                status, headers, body = 302, {"Location": "loop"}, b""
            elif self.path == "/v2/a/rel":
                status, headers, body = 307, {"Location": "../target?x=1"}, b""
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    t = Transport(f"127.0.0.1:{server.server_address[1]}", scheme="http", policy=Policy(attempts=1))
    try:
        r = t.request("GET", "/v2/a/rel", authorization="Bearer tok")
        assert (r.status_code, r.content) == (200, b"ok")
        r.close()
        assert seen == [("/v2/a/rel", "Bearer tok"), ("/v2/target?x=1", "Bearer tok")]
        seen.clear()
        with pytest.raises(TransportError, match="too many redirects"):
            t.request("GET", "/v2/loop")
        assert len(seen) == MAX_REDIRECTS + 1
    finally:
        t.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_registry_error_text_cannot_inject_terminal_escapes(proxy, cli, store_dir):
    """The registry's error message is shown, but without its control characters."""
    from fixtures.proxy import Fault

    body = json.dumps({"errors": [{"code": "DENIED\x1b[2J", "message": "go \x1b]0;owned\x07away\nimagetool: x"}]})
    proxy.add(Fault("status", r"/manifests/", times=None, status=403, method=None, body=body.encode()))
    r = cli("pull", f"{proxy.host}/faults/escape:v1", env=pull_env())
    assert r.returncode == 1
    errors = [x for x in r.stderr.splitlines() if x.startswith("imagetool: error:")]
    assert len(errors) == 1 and "denied: go" in errors[0] and "owned" in errors[0], r.stderr
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr
