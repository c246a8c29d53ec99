"""Rootless networking with slirp4netns (issue 13; imagetool/network/slirp.py), as the test user.

Never the host's network: the containers run in a network namespace this module creates (`ip netns
add`, loopback up, the documentation address 192.0.2.1 on its loopback to stand for "an address of
the host that is not 127.0.0.1"); imagetool runs there through `nsenter --net=` then `runuser`, and
the test fetches only from that namespace's own addresses. slirp4netns's outbound sockets and its
`-p` listeners are in that namespace.

/dev/net/tun is 0600 on this machine (real machines ship 0666): the tests that need slirp4netns make
it 0666 for their duration and put the mode back on every path. One test runs first with it 0600,
to see the rootless default fall back to `private` with a notice.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagetool.errors import NetworkError
from imagetool.network import ports, slirp
from tests.rootless import rootless_user  # noqa: F401 (fixture)

OUTER_IP = "192.0.2.1"   # TEST-NET-1, on the loopback of the test's own namespace only
TUN = "/dev/net/tun"


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (a test user, a network namespace)"
    if not shutil.which("slirp4netns"):
        return "needs slirp4netns (apt-get install slirp4netns)"
    for tool in ("ip", "nsenter", "runuser"):
        if not shutil.which(tool):
            return f"needs {tool}"
    if not os.path.exists(TUN):
        return f"needs {TUN}"
    if not Path("/bin/busybox").is_file():
        return "needs /bin/busybox (busybox-static)"
    return None


_reason = _skip_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")


# ---------------------------------------------------------------- no user needed


def test_forward_request_is_slirp4netns_add_hostfwd():
    [m] = ports.parse("127.0.0.1:18081:80")
    assert slirp.forward_request(m) == {"execute": "add_hostfwd", "arguments": {
        "proto": "tcp", "host_addr": "127.0.0.1", "host_port": 18081, "guest_port": 80}}
    [m] = ports.parse("5353:53/udp")
    assert slirp.forward_request(m)["arguments"] == {"proto": "udp", "host_addr": "0.0.0.0", "host_port": 5353,
                                                     "guest_port": 53}


def test_other_networks_are_refused_for_slirp(tmp_path):
    class Opts:
        network = "bridge"

    with pytest.raises(NetworkError, match="needs root: a rootless container gets slirp4netns"):
        slirp.setup(None, tmp_path, "0" * 64, Opts(), {"mounts": []})
    Opts.network = "slirp4netns"
    Opts.ip = "10.0.2.5"
    with pytest.raises(NetworkError, match="--ip and --network-alias need a bridge network"):
        slirp.setup(None, tmp_path, "0" * 64, Opts(), {"mounts": []})
    assert list(tmp_path.iterdir()) == []


def test_stop_kills_the_recorded_process_only_while_it_is_that_process():
    from imagetool.runtime.supervise import proc_start

    p = subprocess.Popen(["sleep", "60"])
    try:
        start = proc_start(p.pid)
        slirp._stop(p.pid, "not-its-start-time")      # a reused PID: left alone
        assert p.poll() is None
        slirp._stop(p.pid, start)                     # killed and reaped (our child)
        assert proc_start(p.pid) is None
        with pytest.raises(ChildProcessError):
            os.waitpid(p.pid, os.WNOHANG)
    finally:
        if p.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.kill()


def test_as_root_slirp4netns_leaves_the_hosts_shared_mounts_alone(netns, tmp_path):
    """--network slirp4netns as real root: the forward works and slirp4netns's sandbox (which detaches
    its old root) unmounts nothing outside (`ip netns add` made /run/netns a shared mount: without a
    private mount namespace of its own, the named namespaces there would be unmounted)."""
    from imagetool.runtime.supervise import proc_start
    from tests.runhelpers import Imagetool, busybox_store, kernel_skip_reason, mounts_under

    if kernel_skip_reason():
        pytest.skip(kernel_skip_reason())
    store = busybox_store(tmp_path / "store")
    before = [line.split()[4] for line in mounts_under(Path("/run/netns"))]
    assert netns in before
    cli = Imagetool(store)
    port = free_port(netns)

    def in_ns(*args):
        return subprocess.run(["nsenter", f"--net={netns}", *cli.argv(*args)], env=cli.env, capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL)

    r = in_ns("run", "-d", "--name", "rootweb", "--network", "slirp4netns", "-p", f"127.0.0.1:{port}:80",
              "busybox", "sh", "-c", CGI)
    assert r.returncode == 0, r.stderr
    try:
        assert wait_for(lambda: fetch(netns, f"http://127.0.0.1:{port}/"), "httpd") == "hello-rootless\n"
        assert [line.split()[4] for line in mounts_under(Path("/run/netns"))] == before
        mine = [pid for pid in slirps_of(0) if str(store) in Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(mine) == 1
    finally:
        r = in_ns("rm", "-f", "rootweb")
    assert r.returncode == 0, r.stderr
    assert [line.split()[4] for line in mounts_under(Path("/run/netns"))] == before
    assert mounts_under(store) == []
    assert proc_start(mine[0]) is None


# ---------------------------------------------------------------- as the test user, in a namespace of ours


@pytest.fixture(scope="module")
def netns():
    name = f"itslirp-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", name, "addr", "add", f"{OUTER_IP}/32", "dev", "lo"], check=True)
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@contextlib.contextmanager
def tun_mode(mode: int):
    """/dev/net/tun with `mode` for the block, its old mode back on every way out."""
    old = stat.S_IMODE(os.stat(TUN).st_mode)
    os.chmod(TUN, mode)
    try:
        yield
    finally:
        os.chmod(TUN, old)


@pytest.fixture
def tun_open():
    with tun_mode(0o666):
        yield


@pytest.fixture(scope="module")
def user(rootless_user, registry, busybox):  # noqa: F811
    """The test user, with busybox pulled (in the suite's namespace: the registry is on its loopback)."""
    ref = registry.push(busybox, "rootless/slirp-busybox:latest")
    r = rootless_user.imagetool("pull", ref)
    assert r.returncode == 0, r.stderr
    rootless_user.image = ref
    return rootless_user


def _argv(user, ns: str, args, env: dict | None = None) -> list[str]:
    return ["nsenter", f"--net={ns}", "runuser", "-u", user.name, "--", "env", "-i",
            *(f"{k}={v}" for k, v in user.environment(env).items()), *user.argv(args)]


def it(user, ns: str, *args, env: dict | None = None, timeout=120) -> subprocess.CompletedProcess:
    """imagetool ARGS as the user, in the test's namespace."""
    return subprocess.run(_argv(user, ns, args, env), capture_output=True, text=True, timeout=timeout,
                          cwd=user.home, stdin=subprocess.DEVNULL)


_GET = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"


def fetch(ns: str, url: str) -> str | None:
    """GET `url` with urllib from inside the test's namespace; None when it cannot connect."""
    r = subprocess.run(["nsenter", f"--net={ns}", sys.executable, "-c", _GET, url], capture_output=True, text=True,
                       timeout=30)
    return r.stdout if r.returncode == 0 else None


def free_port(ns: str) -> int:
    r = subprocess.run(["nsenter", f"--net={ns}", sys.executable, "-c",
                        "import socket; s = socket.socket(); s.bind(('0.0.0.0', 0)); print(s.getsockname()[1])"],
                       capture_output=True, text=True, check=True)
    return int(r.stdout)


def slirps_of(uid: int) -> list[int]:
    """PIDs of the slirp4netns processes running as `uid` (zombies left to init's reaper excluded)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if comm == "slirp4netns" and int(fields["Uid"].split()[0]) == uid and fields["State"].split()[0] != "Z":
            out.append(int(pid))
    return out


def wait_for(predicate, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def containers_left(user) -> list[str]:
    d = user.store / "containers"
    return sorted(n for n in os.listdir(d) if not n.startswith(".")) if d.exists() else []


@pytest.fixture
def clean(user):
    """No container of the test and no slirp4netns of the user left after it."""
    before = containers_left(user)
    yield
    assert slirps_of(user.uid) == []
    assert containers_left(user) == before


CGI = ("mkdir -p /www/cgi-bin && echo hello-rootless > /www/index.html"
       " && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > /www/cgi-bin/peer"
       " && chmod +x /www/cgi-bin/peer && exec httpd -f -p 80 -h /www")


def test_publish_reaches_httpd_of_a_detached_rootless_container(user, netns, tun_open, clean):
    """-p 127.0.0.1:PORT:80 on the rootless default network (slirp4netns): urllib from the host side
    reaches busybox httpd; the container sees the connection come from slirp's gateway 10.0.2.2,
    not from the client's 127.0.0.1; `port` lists the forward; rm stops slirp4netns."""
    port = free_port(netns)
    r = it(user, netns, "run", "-d", "--name", "web", "-p", f"127.0.0.1:{port}:80", user.image, "sh", "-c", CGI)
    assert r.returncode == 0, r.stderr
    try:
        assert wait_for(lambda: fetch(netns, f"http://127.0.0.1:{port}/"), "httpd") == "hello-rootless\n"
        peer = fetch(netns, f"http://127.0.0.1:{port}/cgi-bin/peer").strip()
        assert peer.removeprefix("[::ffff:").rstrip("]") == slirp.GATEWAY, peer
        assert it(user, netns, "port", "web").stdout == f"80/tcp -> 127.0.0.1:{port}\n"
        [pid] = slirps_of(user.uid)
        assert f"--api-socket {slirp.SOCKET}" in Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    finally:
        r = it(user, netns, "rm", "-f", "web")
    assert r.returncode == 0, r.stderr
    assert fetch(netns, f"http://127.0.0.1:{port}/") is None   # nothing listens there any more


def _serve(ns: str, port: int) -> subprocess.Popen:
    """A host-side HTTP server on every address of the test's namespace (0.0.0.0:port)."""
    root = Path(f"/tmp/itslirp-www-{os.getpid()}")
    root.mkdir(exist_ok=True)
    (root / "index.html").write_text("hello-from-the-host\n")
    p = subprocess.Popen(["nsenter", f"--net={ns}", sys.executable, "-m", "http.server", "--bind", "0.0.0.0",
                          "--directory", str(root), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: fetch(ns, f"http://127.0.0.1:{port}/"), "the host-side server")
    except BaseException:
        p.kill()
        p.wait()
        raise
    return p


def test_outbound_reaches_the_host_but_not_its_loopback(user, netns, tun_open, clean):
    """From the container: its address 10.0.2.100 on tap0 with a route via 10.0.2.2, resolv.conf naming
    slirp's DNS 10.0.2.3; a host address other than loopback is reached (outbound through slirp's
    sockets), the same server through 10.0.2.2 (the host's 127.0.0.1) is not: --disable-host-loopback."""
    port = free_port(netns)
    server = _serve(netns, port)
    try:
        get = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5"   # busybox-static's wget cannot resolve here
        script = (f"ip -o -4 addr show tap0; ip route; cat /etc/resolv.conf; "
                  f"echo outer=$({get} {OUTER_IP} {port} | tail -n 1 || echo FAILED); "
                  f"echo loopback=$({get} {slirp.GATEWAY} {port} 2>&1 | tail -n 1; echo FAILED)")
        r = it(user, netns, "run", "--rm", "--network", "slirp4netns", user.image, "sh", "-c", script)
    finally:
        server.kill()
        server.wait()
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"inet {slirp.GUEST_IP}/24" in out
    assert f"default via {slirp.GATEWAY} dev tap0" in out
    assert f"nameserver {slirp.DNS}" in out.splitlines()
    assert "outer=hello-from-the-host" in out
    refused = out.split("loopback=")[1]
    assert "hello-from-the-host" not in refused and "can't connect to remote host (10.0.2.2)" in refused, out


def test_killed_owner_takes_slirp4netns_with_it_and_rm_cleans_up(user, netns, tun_open, clean, tmp_path):
    """SIGKILL of the foreground run's process (the one in the user namespace that owns the container):
    its slirp4netns ends too (PR_SET_PDEATHSIG); `rm` then removes what is left."""
    port = free_port(netns)
    with open(tmp_path / "out", "wb") as out:   # a file, not a pipe: nothing can hold the test up
        p = subprocess.Popen(_argv(user, netns, ["run", "--name", "victim", "-p", f"127.0.0.1:{port}:80",
                                                 user.image, "sh", "-c", CGI]),
                             cwd=user.home, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    owner = None
    try:
        wait_for(lambda: fetch(netns, f"http://127.0.0.1:{port}/"), "httpd")
        owner = _state_of(user, "victim")["owner_pid"]
        assert slirps_of(user.uid)
        os.kill(owner, signal.SIGKILL)
        wait_for(lambda: not slirps_of(user.uid), "slirp4netns to end with its owner")
        assert fetch(netns, f"http://127.0.0.1:{port}/") is None
        p.wait(timeout=60)
    finally:
        for pid in filter(None, (owner, p.pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        p.wait()
    r = it(user, netns, "rm", "-f", "victim")
    assert r.returncode == 0, r.stderr


def _state_of(user, name: str) -> dict:
    for f in (user.store / "containers").glob("*/state.json"):
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads(f.read_text())
            if doc.get("name") == name:
                return doc
    raise AssertionError(f"no container {name}")


def test_without_a_usable_tun_the_default_is_private_and_publishing_fails(user, netns, clean):
    """/dev/net/tun 0600 (this machine's own mode): the rootless default network falls back to private
    (loopback only) with a one-line notice; -p and --network slirp4netns fail with one clear line."""
    with tun_mode(0o600):
        r = it(user, netns, "run", "--rm", user.image, "sh", "-c", "ip -o link show | cut -d: -f2")
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["lo"]
        assert f"{TUN} cannot be opened by this user" in r.stderr and "loopback only" in r.stderr
        for args in (["-p", "8080:80"], ["--network", "slirp4netns"]):
            r = it(user, netns, "run", "--rm", *args, user.image, "true")
            assert r.returncode == 125, r.stderr
            lines = r.stderr.strip().splitlines()
            assert lines[-1].startswith("imagetool: error: ") and TUN in lines[-1], r.stderr


def test_without_slirp4netns_publishing_names_the_package(user, netns, clean, tmp_path):
    """PATH without slirp4netns: the rootless default is private with a notice naming the package;
    -p is one error line naming it."""
    empty = tmp_path / "bin"
    empty.mkdir()
    os.chmod(tmp_path, 0o755)
    env = {"PATH": str(empty)}
    r = it(user, netns, "run", "--rm", user.image, "true", env=env)
    assert r.returncode == 0, r.stderr
    assert "apt-get install slirp4netns" in r.stderr and "loopback only" in r.stderr
    r = it(user, netns, "run", "--rm", "-p", "8080:80", user.image, "true", env=env)
    assert r.returncode == 125
    assert r.stderr.strip().splitlines()[-1].startswith("imagetool: error: ")
    assert "apt-get install slirp4netns" in r.stderr


def test_bridge_and_user_networks_are_a_clear_error_rootless(user, netns, clean):
    r = it(user, netns, "run", "--rm", "--network", "bridge", user.image, "true")
    assert r.returncode == 125
    assert "needs root: a rootless container gets slirp4netns" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_privileged_host_port_is_a_clear_error_rootless(user, netns, tun_open, clean):
    r = it(user, netns, "run", "--rm", "-p", "127.0.0.1:80:80", user.image, "true")
    assert r.returncode == 125
    assert "host port 80 is privileged: a rootless container can publish host ports from 1024" in r.stderr, r.stderr
    assert "already in use" not in r.stderr


def test_explain_shows_slirp4netns_and_the_forward(user, netns, tun_open, clean):
    port = free_port(netns)
    r = it(user, netns, "run", "--rm", "--explain", "-p", f"127.0.0.1:{port}:80", user.image, "true")
    assert r.returncode == 0, r.stderr
    assert "--disable-host-loopback" in r.stderr and "--netns-type=path" in r.stderr
    assert f'"host_port": {port}' in r.stderr


def test_sigkill_of_a_detached_containers_monitor_takes_slirp4netns_with_it(user, netns, tun_open, clean):
    """run -d rootless with -p: SIGKILL of its monitor (the owner of slirp4netns, after its exec
    hand-over to the lean monitor) ends slirp4netns too, so the port is closed; rm cleans up."""
    port = free_port(netns)
    r = it(user, netns, "run", "-d", "--name", "orphan", "-p", f"127.0.0.1:{port}:80", user.image, "sh", "-c", CGI)
    assert r.returncode == 0, r.stderr
    try:
        wait_for(lambda: fetch(netns, f"http://127.0.0.1:{port}/"), "httpd")
        assert slirps_of(user.uid)
        os.kill(_state_of(user, "orphan")["owner_pid"], signal.SIGKILL)
        wait_for(lambda: not slirps_of(user.uid), "slirp4netns to end with the monitor")
        assert fetch(netns, f"http://127.0.0.1:{port}/") is None
    finally:
        r = it(user, netns, "rm", "-f", "orphan")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("flag", ["--hostname", "--dns-search"])
def test_hostile_names_are_one_line_errors_on_slirp4netns_too(user, netns, tun_open, clean, flag):
    r = it(user, netns, "run", "--rm", flag, "x\n10.0.0.66 victim", user.image, "cat", "/etc/hosts")
    assert r.returncode == 125 and r.stderr.startswith("imagetool: error: ") and "Traceback" not in r.stderr, r.stderr
    assert "victim" not in r.stdout
