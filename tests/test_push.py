"""`push` against a real docker-registry: byte-identical blobs (skopeo as the oracle), HEAD before
upload, cross-repository mount, chunked uploads resumed from the registry's Range after a failure
and after SIGKILL, token scopes, indexes after their manifests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_pull_support import random_layer

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(tmp_path, monkeypatch):
    """No host configuration; quick retries (never asserted on)."""
    for k in list(os.environ):
        if k.startswith("IMAGETOOL_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("IMAGETOOL_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "docker" / "auth.json"))
    monkeypatch.setenv("IMAGETOOL_RETRY_BACKOFF", "0.05")
    monkeypatch.setenv("IMAGETOOL_RETRY_MAX_DELAY", "1")
    monkeypatch.setenv("IMAGETOOL_READ_TIMEOUT", "10")
    from imagetool.registry import auth

    auth.TOKENS._items.clear()


@pytest.fixture
def store(store_dir, env):
    from store import Store

    return Store.open(store_dir)


@pytest.fixture
def small_chunks(monkeypatch):
    """Blobs over 256 KiB go in 256 KiB PATCH chunks (the chunked path on small test images)."""
    from imagetool.transports import registry as tr

    monkeypatch.setattr(tr, "MONOLITHIC", 256 << 10)
    monkeypatch.setattr(tr, "CHUNK", 256 << 10)


def load(store, tmp_path, name: str, built) -> str:
    """Put `built` into the store under `name` (through an OCI layout and `load`)."""
    from fixtures.images import write_oci_layout

    from imagetool.archive import load_images

    layout = write_oci_layout(tmp_path / f"layout-{abs(hash(name))}", {"x": built}, {"x": name})
    load_images(store, str(layout))
    return name


def skopeo_raw(registry, ref: str) -> bytes:
    r = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/{ref}"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def skopeo_blobs(registry, ref: str, tmp_path: Path) -> dict:
    """Every blob of `ref` as skopeo copies it back (oci layout, digests preserved)."""
    out = tmp_path / "back"
    r = subprocess.run(["skopeo", "--policy", str(registry._policy()), "copy", "--all", "--preserve-digests",
                        "--src-tls-verify=false", f"docker://{registry.host}/{ref}", f"oci:{out}:x"],
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return {"sha256:" + p.name: p.read_bytes() for p in (out / "blobs" / "sha256").iterdir()}


def uploads(registry, since: int) -> list:
    return [(m, p) for m, p, s in registry.requests(since) if "/blobs/uploads" in p]


def test_push_stores_byte_identical_blobs_that_skopeo_reads_back(registry, store, tmp_path):
    from fixtures.images import Layer, build_image
    from fixtures.tarbuild import file

    from imagetool.push import push

    img = build_image([random_layer(300_000), Layer([file("etc/hello", b"hi\n")], compression=None)])
    load(store, tmp_path, f"{registry.host}/push/identical:v1", img)
    [res] = push(store, f"{registry.host}/push/identical:v1")
    assert res.digest == img.manifest_digest and res.sent == 3
    assert skopeo_raw(registry, "push/identical:v1") == img.manifest
    assert skopeo_blobs(registry, "push/identical:v1", tmp_path) == img.all_blobs()


def test_repush_sends_no_blob_bytes(registry, store, tmp_path):
    from imagetool.push import push

    img = _image()
    load(store, tmp_path, f"{registry.host}/push/again:v1", img)
    push(store, f"{registry.host}/push/again:v1")
    mark = registry.mark()
    [res] = push(store, f"{registry.host}/push/again:v1")
    assert res.sent == 0
    reqs = registry.requests(mark)
    assert uploads(registry, mark) == [], reqs
    assert {m for m, p, s in reqs if "/blobs/" in p} == {"HEAD"}


def test_push_to_another_repository_mounts_blobs_instead_of_uploading(registry, store, tmp_path):
    from imagetool.push import push

    img = _image()
    load(store, tmp_path, f"{registry.host}/push/mount-a:v1", img)
    push(store, f"{registry.host}/push/mount-a:v1")
    mark = registry.mark()
    [res] = push(store, f"{registry.host}/push/mount-a:v1", dest=f"docker://{registry.host}/push/mount-b:v1")
    assert res.sent == 0
    posts = [(m, p, s) for m, p, s in registry.requests(mark) if "/blobs/uploads" in p]
    assert posts and all(m == "POST" and s == 201 for m, p, s in posts), posts
    assert skopeo_raw(registry, "push/mount-b:v1") == img.manifest


def _image(size: int = 300_000):
    from fixtures.images import build_image

    return build_image([random_layer(size)])


class _LaterFaults:
    """Wrap a FaultProxy so its faults apply only after the first `skip` PATCH requests."""

    def __init__(self, proxy, skip: int):
        self.seen = 0
        take = proxy.take

        def later(method, path):
            if method == "PATCH":
                with proxy.lock:
                    self.seen += 1
                    if self.seen <= skip:
                        return None
            return take(method, path)

        proxy.take = later


def _forwarded_patch_bytes(proxy) -> int:
    return sum(int(r.headers.get("Content-Length", 0)) for r in proxy.records(r"/blobs/uploads/", "PATCH")
               if r.fault is None)


def test_a_failed_chunk_resumes_from_the_registrys_range_with_less_than_the_blob_resent(
        registry, store, tmp_path, small_chunks, monkeypatch):
    from fixtures.proxy import Fault, FaultProxy

    from imagetool.push import push

    img = _image(1_200_000)  # 5 chunks of 256 KiB
    layer = img.layers[0]
    monkeypatch.setenv("IMAGETOOL_RETRIES", "2")
    with FaultProxy(registry.url) as proxy:
        name = f"{proxy.host}/push/resume:v1"
        load(store, tmp_path, name, img)
        _LaterFaults(proxy, skip=2)
        proxy.add(Fault("status", r"/blobs/uploads/", times=2, status=500, method="PATCH"))
        [res] = push(store, name)
        failed = [r for r in proxy.records(r"/blobs/uploads/", "PATCH") if r.fault]
        assert res.digest == img.manifest_digest
        assert len(failed) == 2                                    # the transport's budget, spent
        assert _forwarded_patch_bytes(proxy) == len(layer.blob)    # every byte reached it once
        assert proxy.records(r"/blobs/uploads/", "GET")            # asked the registry's Range
    assert skopeo_blobs(registry, "push/resume:v1", tmp_path) == img.all_blobs()


def test_a_sigkilled_push_run_again_sends_only_the_rest(registry, store, store_dir, tmp_path, small_chunks):
    from fixtures.proxy import Fault, FaultProxy

    from imagetool.push import push

    img = _image(1_200_000)
    layer = img.layers[0]
    with FaultProxy(registry.url) as proxy:
        name = f"{proxy.host}/push/killed:v1"
        load(store, tmp_path, name, img)
        _LaterFaults(proxy, skip=2)
        proxy.add(Fault("hang", r"/blobs/uploads/", times=1, method="PATCH"))
        code = ("import sys; from store import Store; from imagetool.push import push; "
                "push(Store.open(sys.argv[1]), sys.argv[2])")
        env = {**os.environ, "PYTHONPATH": str(REPO), "IMAGETOOL_PUSH_CHUNK": str(256 << 10),
               "IMAGETOOL_PUSH_MONOLITHIC": str(256 << 10)}
        proc = subprocess.Popen([sys.executable, "-c", code, str(store_dir), name], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while not [r for r in proxy.records(r"/blobs/uploads/", "PATCH") if r.fault == "hang"]:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the push never reached its third chunk"
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)  # by PID: the process this test started
            proc.communicate()
        before = _forwarded_patch_bytes(proxy)
        assert 0 < before < len(layer.blob)
        [res] = push(store, name)
        after = _forwarded_patch_bytes(proxy) - before
        assert res.digest == img.manifest_digest
        assert before + after == len(layer.blob), (before, after)  # only the rest was sent
    assert not list(Path(store.ingest_dir).glob("push-*.session"))
    assert skopeo_blobs(registry, "push/killed:v1", tmp_path) == img.all_blobs()


def _image(size: int = 300_000):
    from fixtures.images import build_image

    return build_image([random_layer(size)])


@pytest.fixture(scope="module")
def token_registry():
    from test_registry_auth import token_pair

    yield from token_pair(users={"alice": "wonderland"}, anonymous=True)  # anonymous: pull only


def _credentials(tmp_path, host: str, user: str, password: str) -> None:
    import base64

    entry = {"auths": {host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}}}
    for f in (tmp_path / "docker" / "config.json", tmp_path / "docker" / "auth.json"):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(entry))


def test_push_to_a_token_registry_asks_for_the_push_scope(token_registry, store, tmp_path):
    from imagetool.push import push

    ts, reg = token_registry
    img = _image()
    name = f"{reg.host}/tok/pushed:v1"
    load(store, tmp_path, name, img)
    _credentials(tmp_path, reg.host, "alice", "wonderland")
    mark = len(ts.requests)
    [res] = push(store, name)
    assert res.digest == img.manifest_digest
    issued = ts.requests[mark:]
    assert issued and all(t.user == "alice" for t in issued)
    assert any("repository:tok/pushed:pull,push" in t.scopes for t in issued), issued
    status, _, _ = reg.get("/v2/tok/pushed/manifests/v1", auth=False)
    assert status == 401  # the registry really enforces tokens: the push above was authorised


def test_push_with_only_pull_rights_is_a_clear_auth_error_and_tags_nothing(token_registry, store, tmp_path):
    from imagetool.errors import AuthError
    from imagetool.push import push

    ts, reg = token_registry
    img = _image()
    name = f"{reg.host}/tok/denied:v1"
    load(store, tmp_path, name, img)
    mark = len(ts.requests)
    with pytest.raises(AuthError) as e:
        push(store, name)
    assert f"push access denied to {reg.host}/tok/denied" in e.value.message
    assert "imagetool login" in e.value.hint
    scopes = [s for t in ts.requests[mark:] for s in t.scopes]
    assert "repository:tok/denied:pull,push" in scopes      # it asked for push, and was re-challenged
    assert len(ts.requests) - mark >= 2
    assert not [r for r in reg.requests() if r[0] == "PUT" and "/tok/denied/manifests/" in r[1] and r[2] == 201]


def test_multi_platform_index_is_pushed_after_its_manifests_and_pulls_back_per_platform(
        registry, store, tmp_path, monkeypatch):
    from fixtures.images import Layer, build_image, build_index
    from fixtures.tarbuild import file

    from store import Digest, Store

    from imagetool.pull import pull
    from imagetool.push import push

    amd = build_image([Layer([file("arch", b"amd64\n")])], platform="linux/amd64")
    arm = build_image([Layer([file("arch", b"arm64\n")])], platform="linux/arm64/v8")
    index = build_index([amd, arm])
    name = f"{registry.host}/push/multi:v1"
    load(store, tmp_path, name, index)
    mark = registry.mark()
    [res] = push(store, name)
    assert res.digest == index.manifest_digest
    puts = [p for m, p, s in registry.requests(mark) if m == "PUT" and "/manifests/" in p]
    assert puts.index(f"/v2/push/multi/manifests/{index.manifest_digest}") > max(
        puts.index(f"/v2/push/multi/manifests/{amd.manifest_digest}"),
        puts.index(f"/v2/push/multi/manifests/{arm.manifest_digest}"))
    assert skopeo_raw(registry, "push/multi:v1") == index.manifest
    for platform, img in (("linux/amd64", amd), ("linux/arm64/v8", arm)):
        other = Store.open(tmp_path / f"other-{platform.replace('/', '-')}")
        pull(other, name, platform=platform)
        assert str(other.resolve(name).digest) == img.manifest_digest
        assert other.read(Digest.parse(img.layers[0].digest)) == img.layers[0].blob


def test_all_tags_pushes_every_tag_of_the_repository_and_nothing_else(registry, store, tmp_path):
    from imagetool.push import push

    one, two, other = _image(1000), _image(2000), _image(3000)
    load(store, tmp_path, f"{registry.host}/push/tags:one", one)
    load(store, tmp_path, f"{registry.host}/push/tags:two", two)
    load(store, tmp_path, f"{registry.host}/push/other:one", other)
    results = push(store, f"{registry.host}/push/tags:one", all_tags=True)
    assert [(r.name, r.digest) for r in results] == [
        (f"{registry.host}/push/tags:one", one.manifest_digest), (f"{registry.host}/push/tags:two", two.manifest_digest)]
    assert skopeo_raw(registry, "push/tags:two") == two.manifest
    assert registry.get("/v2/push/other/manifests/one")[0] == 404


@pytest.mark.parametrize("bad,error", [
    ({"format": "v1"}, "unknown manifest format"),
    ({"dest": "docker://localhost:5000/UPPER/case"}, "invalid reference"),
])
def test_bad_push_options_are_one_clear_error_and_send_nothing(bad, error, registry, store, tmp_path):
    from imagetool.errors import ImagetoolError
    from imagetool.push import push

    load(store, tmp_path, f"{registry.host}/push/bad:v1", _image(1000))
    mark = registry.mark()
    with pytest.raises(ImagetoolError, match=error):
        push(store, f"{registry.host}/push/bad:v1", **bad)
    assert [r for r in registry.requests(mark) if r[0] in ("POST", "PATCH", "PUT")] == []


def test_429_and_5xx_during_a_push_are_waited_out_as_pull_does(registry, store, tmp_path):
    from fixtures.proxy import Fault, FaultProxy

    from imagetool.push import push

    img = _image()
    with FaultProxy(registry.url) as proxy:
        name = f"{proxy.host}/push/busy:v1"
        load(store, tmp_path, name, img)
        proxy.add(Fault("status", r"/blobs/uploads/$", times=1, status=429, method="POST",
                        headers={"Retry-After": "0"}))
        proxy.add(Fault("status", r"/manifests/v1", times=2, status=503, method="PUT"))
        [res] = push(store, name)
        assert res.digest == img.manifest_digest
        assert [r.status for r in proxy.records(r"/manifests/v1", "PUT")] == [503, 503, 201]
        assert proxy.records(r"/blobs/uploads/$", "POST")[0].status == 429
    assert skopeo_raw(registry, "push/busy:v1") == img.manifest


def test_an_upload_session_the_registry_no_longer_knows_is_replaced_by_a_new_one(
        registry, store, tmp_path, small_chunks):
    from store import Descriptor, Digest

    from imagetool import reference
    from imagetool.push import push
    from imagetool.transports.registry import RegistrySink

    img = _image(600_000)
    name = f"{registry.host}/push/stale:v1"
    load(store, tmp_path, name, img)
    sink = RegistrySink(reference.parse(name), state_dir=store.ingest_dir)
    layer = img.layers[0]
    sink._save_session(Descriptor(layer.media_type, Digest.parse(layer.digest), layer.size),
                       f"{registry.url}/v2/push/stale/blobs/uploads/0000-gone?_state=forged")
    sink.close()
    [res] = push(store, name)
    assert res.digest == img.manifest_digest
    assert not list(Path(store.ingest_dir).glob("push-*.session"))
    assert skopeo_blobs(registry, "push/stale:v1", tmp_path) == img.all_blobs()


def test_push_format_docker_rewrites_only_the_manifests_and_oci_keeps_the_bytes(registry, store, tmp_path):
    from fixtures.images import Layer, build_image, build_index
    from fixtures.tarbuild import file

    from imagetool import mediatypes as mt
    from imagetool.push import push

    amd = build_image([Layer([file("arch", b"amd64\n")])], platform="linux/amd64")
    arm = build_image([Layer([file("arch", b"arm64\n")])], platform="linux/arm64/v8")
    index = build_index([amd, arm])
    name = f"{registry.host}/push/format:v1"
    load(store, tmp_path, name, index)
    [same] = push(store, name, format="oci")                     # already OCI: exact bytes
    assert same.digest == index.manifest_digest
    [res] = push(store, name, dest=f"{registry.host}/push/format-docker:v1", format="docker")
    top = json.loads(skopeo_raw(registry, "push/format-docker:v1"))
    assert top["mediaType"] == mt.DOCKER_MANIFEST_LIST and res.digest != index.manifest_digest
    for entry, img in zip(top["manifests"], (amd, arm)):
        assert entry["mediaType"] == mt.DOCKER_MANIFEST and entry["platform"] == img.platform
        m = json.loads(skopeo_raw(registry, f"push/format-docker@{entry['digest']}"))
        assert m["config"] == {**json.loads(img.manifest)["config"], "mediaType": mt.DOCKER_CONFIG}
        assert [(la["digest"], la["mediaType"]) for la in m["layers"]] == \
            [(la.digest, mt.DOCKER_LAYER) for la in img.layers]      # the same blobs, Docker names
    for img in (amd, arm):  # the registry holds the same blob bytes under the Docker manifests
        for digest, data in img.blobs.items():
            assert registry.get(f"/v2/push/format-docker/blobs/{digest}")[2] == data


def test_push_format_docker_refuses_a_layer_it_would_have_to_recompress(registry, store, tmp_path):
    from fixtures.images import Layer, build_image
    from fixtures.tarbuild import file

    from imagetool.errors import ManifestError
    from imagetool.push import push

    img = build_image([Layer([file("z", b"zstd\n")], compression="zstd")])
    name = f"{registry.host}/push/zstd:v1"
    load(store, tmp_path, name, img)
    mark = registry.mark()
    with pytest.raises(ManifestError, match="no docker form without recompressing"):
        push(store, name, format="docker")
    assert [r for r in registry.requests(mark) if r[0] in ("POST", "PATCH", "PUT")] == []


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.1/x", "http://203.0.113.9/v2/x/blobs/uploads/1"])
def test_an_upload_location_off_http_or_off_tls_is_refused(location, env):
    """A hostile registry's Location must not move the blob's bytes off TLS or off HTTP."""
    from imagetool import reference
    from imagetool.errors import RegistryError
    from imagetool.registry.upload import Uploader

    up = Uploader(reference.parse("registry.example/push/where:v1"))  # https: not loopback
    try:
        with pytest.raises(RegistryError, match="refuses"):
            up._url(location)
        assert up._url("/v2/push/where/blobs/uploads/1?_state=x").startswith("https://registry.example/")
    finally:
        up.close()
