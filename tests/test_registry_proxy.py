"""A pull and a push through an HTTP CONNECT proxy named by HTTPS_PROXY: the TLS session (and its
certificate check) ends at the registry, the proxy sees only `CONNECT host:port`; NO_PROXY
bypasses it. The registry is `registry.test` (not resolvable: only the proxy knows where it is)."""

from __future__ import annotations

import shutil
import socket
import threading

import pytest

from test_push import env  # noqa: F401 - the fixture: no host configuration

NAME = "registry.test"


class ConnectProxy:
    """A tiny CONNECT-only proxy on loopback that maps NAME to 127.0.0.1 and records the targets."""

    def __init__(self):
        self.targets: list[str] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self._closing = False
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()

    def _accept(self) -> None:
        while not self._closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            self.targets.append(f"{method} {target}")
            host, _, port = target.rpartition(":")
            if method != "CONNECT" or host != NAME:
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            with socket.create_connection(("127.0.0.1", int(port))) as up:
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                pump = threading.Thread(target=self._pipe, args=(up, conn), daemon=True)
                pump.start()
                self._pipe(conn, up)
                pump.join(5)

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            try:
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        self._closing = True
        self.sock.close()


@pytest.fixture(scope="module")
def named_registry():
    from fixtures.registry import RegistryServer, RegistryUnavailable

    try:
        server = RegistryServer.start(tls=True, dns_name=NAME)
    except RegistryUnavailable as e:
        pytest.skip(str(e))
    yield server
    server.stop()


@pytest.fixture
def proxy():
    p = ConnectProxy()
    yield p
    p.close()


def test_pull_and_push_go_through_the_connect_proxy_from_the_environment(
        named_registry, proxy, busybox, tmp_path, env, monkeypatch):
    from store import Store

    from imagetool.pull import pull
    from imagetool.push import push
    from imagetool.registry import transport

    transport._CONTEXTS.clear()
    named_registry.push(busybox, "px/bb:v1")
    port = named_registry.port
    certs = tmp_path / "config" / "certs.d" / f"{NAME}:{port}"
    certs.mkdir(parents=True)
    shutil.copy(named_registry.ca_cert, certs / "ca.crt")
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    store = Store.open(tmp_path / "store")
    result = pull(store, f"{NAME}:{port}/px/bb:v1")
    assert result.digest == busybox.manifest_digest
    [pushed] = push(store, f"{NAME}:{port}/px/bb:v1", dest=f"{NAME}:{port}/px/copy:v1")
    assert pushed.digest == busybox.manifest_digest
    assert proxy.targets and set(proxy.targets) == {f"CONNECT {NAME}:{port}"}
    assert named_registry.manifest("px/copy:v1")[2] == busybox.manifest_digest


def test_no_proxy_bypasses_the_proxy(named_registry, proxy, tmp_path, env, monkeypatch):
    from store import Store

    from imagetool.errors import TransportError
    from imagetool.pull import pull

    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", NAME)
    with pytest.raises(TransportError, match=f"cannot resolve registry host {NAME}"):
        pull(Store.open(tmp_path / "store"), f"{NAME}:{named_registry.port}/px/bb:v1")
    assert proxy.targets == []
