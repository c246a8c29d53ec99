"""A registry that demands mutual TLS (`http.tls.clientcas`): reached with the client certificate
and key of certs.d/<host>/ (docker's `*.cert` / `*.key` names), refused without them."""

from __future__ import annotations

import shutil

import pytest

from test_push import env  # noqa: F401 - the fixture: no host configuration


@pytest.fixture(scope="module")
def mtls_registry():
    from fixtures.registry import RegistryServer, RegistryUnavailable

    try:
        server = RegistryServer.start(mtls=True)
    except RegistryUnavailable as e:
        pytest.skip(str(e))
    yield server
    server.stop()


def _certs_d(tmp_path, reg, client: bool, key: bool = True):
    d = tmp_path / "config" / "certs.d" / reg.host
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(reg.ca_cert, d / "ca.crt")
    if client:
        shutil.copy(reg.client_cert, d / "client.cert")
        if key:
            shutil.copy(reg.client_key, d / "client.key")


@pytest.mark.parametrize("client,key,ok", [(True, True, True), (False, False, False), (True, False, False)],
                         ids=["with-client-pair", "without-client-cert", "cert-without-key"])
def test_mutual_tls_registry_needs_the_certs_d_client_pair(client, key, ok, mtls_registry, busybox, tmp_path, env):
    from store import Store

    from imagetool.errors import TransportError
    from imagetool.pull import pull
    from imagetool.push import push
    from imagetool.registry import transport

    transport._CONTEXTS.clear()
    mtls_registry.push(busybox, "mtls/busybox:v1")
    _certs_d(tmp_path, mtls_registry, client, key)
    store = Store.open(tmp_path / "store")
    name = f"{mtls_registry.host}/mtls/busybox:v1"
    if ok:
        result = pull(store, name)
        assert result.digest == busybox.manifest_digest
        [pushed] = push(store, name, dest=f"{mtls_registry.host}/mtls/again:v1")   # uploads too
        assert pushed.digest == busybox.manifest_digest
        return
    with pytest.raises(TransportError) as e:
        pull(store, name)
    assert ("has no key" in e.value.message) == (client and not key), e.value.message
    if not client:
        assert "client.cert and client.key" in e.value.hint
    assert Store.open(tmp_path / "store").refs() == []
