"""registries.conf (containers-registries.conf(5) v2) for any registry: a pull-through cache
(`docker-registry` with proxy.remoteurl) as the mirror of another loopback registry, the fallback
when the mirror is down, a location rewrite, and a blocked registry."""

from __future__ import annotations

import socket

import pytest

from test_push import env  # noqa: F401 - the fixture: no host configuration


@pytest.fixture(scope="module")
def cache(registry):
    from fixtures.registry import RegistryServer

    server = RegistryServer.start(remote=registry.url)
    yield server
    server.stop()


def _conf(tmp_path, text: str) -> None:
    d = tmp_path / "config"
    d.mkdir(parents=True, exist_ok=True)
    (d / "registries.conf").write_text(text)


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # closed again when this returns: refused


def test_a_pull_through_cache_mirror_serves_the_pull_and_the_name_stays(registry, cache, busybox, tmp_path, env):
    from store import Store

    from imagetool.pull import pull

    registry.push(busybox, "mirrored/bb:v1")
    _conf(tmp_path, f'[[registry]]\nlocation = "{registry.host}"\n\n[[registry.mirror]]\nlocation = "{cache.host}"\n')
    store = Store.open(tmp_path / "store")
    mark = cache.mark()
    result = pull(store, f"{registry.host}/mirrored/bb:v1")
    assert result.served_by == cache.host and result.digest == busybox.manifest_digest
    assert str(store.resolve(f"{registry.host}/mirrored/bb:v1").digest) == busybox.manifest_digest
    served = [(m, p) for m, p, s in cache.requests(mark) if s == 200]
    assert ("GET", f"/v2/mirrored/bb/blobs/{busybox.layers[0].digest}") in served
    from imagetool.commands import served_by_mirror

    assert served_by_mirror(result) == cache.host   # `pull` says so on stderr: Pulled from the mirror HOST


def test_a_mirror_that_is_down_falls_back_to_the_registry(registry, busybox, tmp_path, env, monkeypatch):
    from store import Store

    from imagetool.pull import pull

    monkeypatch.setenv("IMAGETOOL_RETRIES", "1")
    registry.push(busybox, "mirrored/down:v1")
    _conf(tmp_path, f'[[registry]]\nlocation = "{registry.host}"\n\n'
                    f'[[registry.mirror]]\nlocation = "{_closed_port()}"\n')
    result = pull(Store.open(tmp_path / "store"), f"{registry.host}/mirrored/down:v1")
    assert result.served_by == registry.host and result.digest == busybox.manifest_digest
    from imagetool.commands import served_by_mirror

    assert served_by_mirror(result) is None


def test_a_prefix_is_rewritten_to_its_location(registry, busybox, tmp_path, env):
    from store import Store

    from imagetool.pull import pull

    registry.push(busybox, "real/path/bb:v1")
    _conf(tmp_path, f'[[registry]]\nprefix = "example.test/team"\nlocation = "{registry.host}/real/path"\n')
    store = Store.open(tmp_path / "store")
    result = pull(store, "example.test/team/bb:v1")
    assert result.served_by == registry.host
    assert str(store.resolve("example.test/team/bb:v1").digest) == busybox.manifest_digest


@pytest.mark.parametrize("op", ["pull", "push"])
def test_a_blocked_registry_is_a_clear_error_and_is_never_contacted(op, registry, busybox, tmp_path, env):
    from fixtures.images import write_oci_layout
    from store import Store

    from imagetool.archive import load_images
    from imagetool.errors import RegistryError
    from imagetool.pull import pull
    from imagetool.push import push

    name = f"{registry.host}/blocked/bb:v1"
    store = Store.open(tmp_path / "store")
    load_images(store, str(write_oci_layout(tmp_path / "l", {"v1": busybox}, {"v1": name})))
    _conf(tmp_path, f'[[registry]]\nprefix = "{registry.host}/blocked"\nblocked = true\n')
    mark = registry.mark()
    with pytest.raises(RegistryError, match="is blocked in .*registries.conf"):
        (pull if op == "pull" else push)(store, name)
    assert registry.requests(mark) == []


@pytest.mark.parametrize("text,error", [
    ("[[registry]]\nblocked = true\n", "needs a prefix or a location"),
    ('[[registry]]\nlocation = "a.io"\npull-from-mirror = "sometimes"\n', "pull-from-mirror"),
    ('[[registry]]\nlocation = "a.io"\n[[registry.mirror]]\ninsecure = true\n', "needs a location"),
    ("[[registry]\n", "cannot read"),
])
def test_a_bad_registries_conf_is_one_clear_error(text, error, tmp_path, env):
    from imagetool import reference
    from imagetool.errors import ImagetoolError
    from imagetool.registry.mirrors import endpoints

    _conf(tmp_path, text)
    with pytest.raises(ImagetoolError, match=error):
        endpoints(reference.parse("a.io/x:1"))
