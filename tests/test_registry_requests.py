"""The transport on requests: what it sends (sized streamed bodies, nothing taken from ~/.netrc or
cookies), what it refuses (truncated or ambiguously framed bodies, unbounded redirect bodies,
redirects off http(s) or down to plain http) and that requests loads only when the network is used.
A scripted HTTP/1.1 server on loopback answers each request with the bytes a test chooses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field

import pytest

from test_pull_support import pull_env


@dataclass
class Seen:
    method: str
    path: str
    headers: dict
    body: bytes = b""


@dataclass
class Scripted:
    """A loopback HTTP/1.1 server: `answer(seen)` returns (raw response bytes, close after it)."""

    answer: object
    seen: list = field(default_factory=list)

    def __post_init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.host = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = dict(line.split(": ", 1) for line in lines[1:])
                n = int(headers.get("Content-Length", 0))
                while len(buf) < n:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                seen = Seen(method, path, headers, buf[:n])
                buf = buf[n:]
                self.seen.append(seen)
                raw, close = self.answer(seen)
                try:
                    conn.sendall(raw)
                except OSError:
                    return
                if close:
                    return

    def close(self) -> None:
        self.sock.close()
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def reply(status: int, body: bytes = b"", headers: dict | None = None, length: int | None = None) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body) if length is None else length}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@pytest.fixture
def scripted():
    servers = []

    def make(answer):
        servers.append(Scripted(answer))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _refused(server, match: str, path: str = "/v2/") -> None:
    """A GET of `path` fails with a TransportError matching `match`."""
    from imagetool.errors import TransportError

    t = _transport(server.host)
    try:
        with pytest.raises(TransportError, match=match):
            t.request("GET", path)
    finally:
        t.close()


def _transport(host: str, attempts: int = 1):
    from imagetool.registry.transport import Policy, Transport

    return Transport(host, scheme="http", policy=Policy(attempts=attempts, backoff=0.01, connect_timeout=5,
                                                        read_timeout=5))


# ---------------------------------------------------------------- bodies received


def test_truncated_manifest_is_a_transport_error_not_a_digest_error(scripted):
    """A manifest body cut short (Content-Length not reached, then EOF) is a failed transfer,
    not content that "does not match its digest"."""
    import hashlib

    from imagetool.errors import TransportError
    from imagetool.reference import parse
    from imagetool.registry.client import RegistryClient

    body = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}'
    server = scripted(lambda seen: (reply(200, body[:40], {
        "Content-Type": "application/vnd.oci.image.index.v1+json",
        "Docker-Content-Digest": "sha256:" + hashlib.sha256(body).hexdigest()}, length=len(body)), True))
    client = RegistryClient(parse(f"{server.host}/faults/short:v1"), transport=_transport(server.host))
    try:
        with pytest.raises(TransportError, match=f"closed after 40 of {len(body)} bytes"):
            client.get_manifest("v1")
    finally:
        client.close()


def test_a_body_cut_short_is_retried_and_a_whole_one_read(scripted):
    """Bodies read whole (tokens, errors) that end early are a failed request, retried."""
    answers = iter([(reply(200, b"half", length=8), True), (reply(200, b"complete"), False)])
    server = scripted(lambda seen: next(answers))
    t = _transport(server.host, attempts=2)
    try:
        r = t.request("GET", "/v2/token")
        assert (r.status_code, r.content) == (200, b"complete")
        r.close()
    finally:
        t.close()
    assert len(server.seen) == 2


# ---------------------------------------------------------------- requests sent


def test_streamed_upload_is_sized_not_chunked_and_sent_whole_again_on_retry(scripted):
    """A PATCH/PUT body given as a callable streams with the caller's Content-Length (registries
    reject chunked uploads with a Content-Range) and starts afresh when a 503 is retried."""
    statuses = iter([503, 202])
    server = scripted(lambda seen: (reply(next(statuses)), False))
    data = [os.urandom(70_000), os.urandom(30_000)]
    t = _transport(server.host, attempts=2)
    try:
        r = t.request("PATCH", "/v2/x/blobs/uploads/u1", {"Content-Length": "100000", "Content-Range": "0-99999"},
                      body=lambda: iter(data))
        r.close()
    finally:
        t.close()
    assert r.status_code == 202
    assert [s.method for s in server.seen] == ["PATCH", "PATCH"]
    for s in server.seen:
        assert s.headers.get("Content-Length") == "100000" and "Transfer-Encoding" not in s.headers
        assert s.body == b"".join(data)


def test_nothing_from_netrc_or_cookies_is_sent(scripted, tmp_path, monkeypatch):
    """requests would read ~/.netrc and keep cookies: a registry (or a CDN it names) must not get
    credentials imagetool was never given, nor cookies another answer set."""
    (tmp_path / ".netrc").write_text("machine 127.0.0.1 login someone password secret\n")
    (tmp_path / ".netrc").chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    server = scripted(lambda seen: (reply(200, b"{}", {"Set-Cookie": "session=abc; Path=/"}), False))
    t = _transport(server.host)
    try:
        for _ in range(2):
            t.request("GET", "/v2/").close()
    finally:
        t.close()
    assert len(server.seen) == 2
    assert all("Authorization" not in s.headers and "Cookie" not in s.headers for s in server.seen), \
        [s.headers for s in server.seen]


def test_malformed_framing_is_refused_not_guessed(scripted):
    """Two different Content-Length headers (request-smuggling shape) fail the request."""
    server = scripted(lambda seen: (b"HTTP/1.1 200 X\r\nContent-Length: 4\r\nContent-Length: 2\r\n\r\nokok", True))
    _refused(server, "Content-Length")


# ---------------------------------------------------------------- redirects


@pytest.mark.parametrize("url, target, refused", [
    ("https://reg.example/v2/a", "https://cdn.example/b", None),
    ("https://reg.example/v2/a", "http://cdn.example/b", "from https to plain http"),
    ("https://reg.example/v2/a", "http://127.0.0.1:9/b", None),
    ("http://127.0.0.1:5000/v2/a", "http://cdn.example/b", None),
    ("https://reg.example/v2/a", "file:///etc/shadow", "to an unsupported URL scheme"),
    ("https://reg.example/v2/a", "ftp://cdn.example/b", "to an unsupported URL scheme"),
])
def test_redirect_and_upload_targets_off_http_or_down_to_plain_http_are_refused(url, target, refused):
    from imagetool.registry.transport import refused_target

    assert refused_target(url, target) == refused


def test_a_redirect_to_another_scheme_is_refused_before_it_is_followed(scripted):
    server = scripted(lambda seen: (reply(302, headers={"Location": "file:///etc/passwd"}), False))
    _refused(server, "redirected to an unsupported URL scheme", "/v2/x/blobs/sha256:aa")
    assert len(server.seen) == 1


def test_a_request_with_a_body_is_not_redirected(scripted):
    """An upload answered 307 gets the 307 back: its bytes are never sent on to the Location."""
    server = scripted(lambda seen: (reply(307, headers={"Location": "/v2/elsewhere"}), False))
    t = _transport(server.host)
    try:
        r = t.request("PUT", "/v2/x/blobs/uploads/u1?digest=sha256:aa", {"Content-Length": "3"}, body=b"abc")
        r.close()
    finally:
        t.close()
    assert r.status_code == 307
    assert [(s.method, s.path, s.body) for s in server.seen] == [("PUT", "/v2/x/blobs/uploads/u1?digest=sha256:aa",
                                                                  b"abc")]


def test_a_redirect_body_is_read_bounded(scripted):
    """requests reads a redirect's body before following it: more than 4 MiB is refused unread."""
    big = 20 << 20
    server = scripted(lambda seen: (reply(302, b"x" * 65536, {"Location": "/v2/elsewhere"}, length=big), True))
    _refused(server, "more than 4 MiB", "/v2/x")
    assert [s.path for s in server.seen] == ["/v2/x"]


# ---------------------------------------------------------------- cost: loaded only when used


def test_requests_loads_only_when_a_transport_sends(scripted):
    """Importing the registry modules (as run/images/ps reach them) loads neither requests nor
    urllib3; the first request does."""
    server = scripted(lambda seen: (reply(200, b"{}"), False))
    code = (
        "import sys\n"
        "import imagetool.pull, imagetool.push, imagetool.registry.client, imagetool.registry.upload\n"
        "from imagetool.registry.transport import Transport, Policy\n"
        f"t = Transport({server.host!r}, scheme='http', policy=Policy(attempts=1))\n"
        "before = sorted(m for m in ('requests', 'urllib3') if m in sys.modules)\n"
        "t.request('GET', '/v2/').close()\n"
        "after = sorted(m for m in ('requests', 'urllib3') if m in sys.modules)\n"
        "print(before, after)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[] ['requests', 'urllib3']"


def test_pull_uses_requests(registry, busybox, cli):
    """The positive control of the lazy import: a pull does load requests (the cost it pays)."""
    registry.push(busybox, "lazy/busybox:v1")
    argv = cli.argv("pull", f"{registry.host}/lazy/busybox:v1")
    r = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], env={**cli.env, **pull_env()},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert {"requests", "urllib3", "imagetool.registry.session"} <= imported
