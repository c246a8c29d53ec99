"""Networking on the CNI plugins (issue 12): -p parsing, /etc files, network configs, and real
bridges, veths, NAT and port mappings made by the Debian plugins.

Never the host's network: every test that creates a bridge, a veth, an address or a firewall
rule runs imagetool inside a network namespace this module creates (`ip netns add`, then
`nsenter --net=`), and sends traffic only to that namespace's loopback and to the containers'
addresses inside it. After each of those tests nothing of its containers is left there: no
veth, no per-container iptables rule, no IPAM lease, no namespace mount under the store.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagetool.errors import NetworkError
from imagetool.network import hosts, networks, ports
from tests.runhelpers import HostSnapshot, Imagetool, busybox_store, kernel_skip_reason, mounts_under

PLUGINS = Path("/usr/lib/cni")


def _netns_skip_reason() -> str | None:
    reason = kernel_skip_reason()
    if reason:
        return reason
    if not (PLUGINS / "bridge").exists():
        return "needs the CNI plugins (apt-get install containernetworking-plugins)"
    for tool in ("ip", "nsenter", "iptables-save"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


_reason = _netns_skip_reason()
needs_netns = pytest.mark.skipif(_reason is not None, reason=_reason or "")


# ---------------------------------------------------------------- -p, /etc files, subnets (no root)


@pytest.mark.parametrize("spec,expected", [
    ("80", [(80, 0, "tcp", "")]),
    ("8080:80", [(80, 8080, "tcp", "")]),
    ("127.0.0.1:18080:80/udp", [(80, 18080, "udp", "127.0.0.1")]),
    ("127.0.0.1::80", [(80, 0, "tcp", "127.0.0.1")]),
    ("1000-1001:2000-2001", [(2000, 1000, "tcp", ""), (2001, 1001, "tcp", "")]),
    ("53/udp", [(53, 0, "udp", "")]),
])
def test_publish_spec_parses_as_docker_reads_it(spec, expected):
    assert [(m.container_port, m.host_port, m.protocol, m.host_ip) for m in ports.parse(spec)] == expected


@pytest.mark.parametrize("spec", ["", "http", "80/icmp", "0", "70000", "1.2.3.4:80:", "999.1.1.1:80:80",
                                  "1-3:1-2", "80:", "-p", "[::1]:81:80"])
def test_bad_publish_spec_is_a_clear_error(spec):
    with pytest.raises(NetworkError):
        ports.parse(spec)


def test_a_busy_host_port_is_refused_and_a_free_one_is_chosen():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        with pytest.raises(NetworkError, match="already in use"):
            ports.allocate(ports.parse(f"127.0.0.1:{busy}:80"))
        chosen = ports.allocate(ports.parse("127.0.0.1::80"))[0]
        assert chosen.host_port not in (0, busy)


def test_resolv_conf_drops_loopback_nameservers_and_dns_options_replace_the_hosts():
    host = "# generated\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 192.0.2.1\nsearch corp.example\noptions ndots:2\n"
    assert hosts.resolv_text(host, [], []) == "nameserver 192.0.2.1\nsearch corp.example\noptions ndots:2\n"
    assert hosts.resolv_text(host, ["198.51.100.7"], ["a.example", "b.example"]) == \
        "nameserver 198.51.100.7\nsearch a.example b.example\noptions ndots:2\n"
    assert hosts.resolv_text("nameserver 127.0.0.1\n", [], ["."]) == "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
    with pytest.raises(NetworkError):
        hosts.resolv_text(host, ["not-an-ip"], [])


def test_hosts_file_names_the_container_and_add_host_entries():
    text = hosts.hosts_text("web", ["web", "abc123", "alias1"], ["10.88.0.5"], ["db:192.0.2.9", "v6:[2001:db8::1]"])
    lines = text.splitlines()
    assert lines[0] == "127.0.0.1\tlocalhost"
    assert "10.88.0.5\tweb abc123 alias1" in lines
    assert "192.0.2.9\tdb" in lines and "2001:db8::1\tv6" in lines
    for bad in ("nocolon", ":1.2.3.4", "db:notanip", "bad name:1.2.3.4"):
        with pytest.raises(NetworkError):
            hosts.parse_add_host(bad)


def test_aardvark_dns_config_is_its_documented_format():
    from imagetool.network import dns

    rows = [("c1", ["10.88.0.2"], ["web", "c1short", "web", "bad name", "a,b"]), ("c2", ["10.88.0.3", "fd00::3"], ["db"]),
            ("c3", [], ["noaddress"])]
    assert dns.network_file("10.88.0.1", rows) == "10.88.0.1\nc1 10.88.0.2  web,c1short\nc2 10.88.0.3 fd00::3 db\n"


def test_default_subnet_avoids_routes_and_other_networks():
    import ipaddress

    taken = [ipaddress.ip_network("10.88.0.0/16"), ipaddress.ip_network("10.89.0.0/24")]
    assert str(networks._pick_subnet(taken)) == "10.89.1.0/24"


@pytest.fixture
def it_store(tmp_path):
    return Imagetool(tmp_path / "store")


def test_network_create_ls_inspect_rm(it_store):
    it = it_store
    assert it("network", "create", "--subnet", "10.91.0.0/24", "front").stdout == "front\n"
    r = it("network", "create", "--subnet", "10.91.0.128/25", "overlapping")
    assert r.returncode == 1 and "overlaps another network" in r.stderr
    assert it("network", "create", "--subnet", "10.92.0.0/24", "--gateway", "10.92.0.254", "back").returncode == 0
    auto = it("network", "create", "auto")
    assert auto.returncode == 0, auto.stderr
    rows = json.loads(it("network", "ls", "--format", "json").stdout)
    by_name = {r["Name"]: r for r in rows}
    assert by_name["front"]["Subnets"] == [{"Subnet": "10.91.0.0/24", "Gateway": "10.91.0.1"}]
    assert by_name["back"]["Subnets"] == [{"Subnet": "10.92.0.0/24", "Gateway": "10.92.0.254"}]
    assert by_name["auto"]["Subnets"][0]["Subnet"] not in ("10.91.0.0/24", "10.92.0.0/24")
    assert len({r["Bridge"] for r in rows}) == 3 and all(len(r["Bridge"]) <= 15 for r in rows)
    [doc] = json.loads(it("network", "inspect", "front").stdout)
    assert doc["Containers"] == [] and [p["type"] for p in doc["CNI"]["plugins"]] == ["bridge", "portmap", "firewall"]
    assert doc["CNI"]["plugins"][0]["ipam"]["dataDir"].startswith(str(it.store))   # leases in the store, not /var/lib/cni
    assert it("network", "rm", "front", "back", "auto").returncode == 0
    assert it("network", "ls").stdout.splitlines()[1:] == []


@pytest.mark.parametrize("args,message", [
    (["create", "bridge"], "reserved"),
    (["create", "bad/name"], "invalid network name"),
    (["create", "--subnet", "10.0.0.0/31", "tiny"], "/30 or larger"),
    (["create", "--subnet", "nonsense", "x"], "invalid --subnet"),
    (["create", "--subnet", "10.93.0.0/24", "--gateway", "10.94.0.1", "x"], "not a host address"),
    (["rm", "nosuch"], "no such network"),
    (["inspect", "nosuch"], "no such network"),
    (["frobnicate"], "unknown network command"),
])
def test_bad_network_commands_are_one_line_errors(it_store, args, message):
    r = it_store("network", *args)
    assert r.returncode != 0 and r.stderr.startswith("imagetool: error: ") and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------- real networks, in a namespace of our own


@pytest.fixture(scope="module")
def netns():
    if _reason:
        pytest.skip(_reason)
    name = f"imagetool-test-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    if _reason:
        pytest.skip(_reason)
    exposer = ([], {"Cmd": ["sh", "-c", HTTPD.format(name="exposer")], "Env": ["PATH=/bin"],
                    "ExposedPorts": {"80/tcp": {}, "53/udp": {}}})
    return busybox_store(tmp_path_factory.mktemp("imagetool-network") / "store", {"exposer": exposer})


class InNetns(Imagetool):
    """imagetool run in the test's network namespace (nsenter --net: same mount namespace)."""

    def __init__(self, store: Path, ns: str):
        super().__init__(store)
        self.ns = ns

    def argv(self, *args) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.ns}", *super().argv(*args)]


def in_ns(ns: str, *cmd, timeout=30) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net=/run/netns/{ns}", *cmd], capture_output=True, text=True,
                          timeout=timeout)


_GET = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"


def fetch(ns: str, url: str) -> str:
    """GET url from the test namespace; '' when it cannot connect."""
    r = in_ns(ns, sys.executable, "-c", _GET, url)
    return r.stdout if r.returncode == 0 else ""


def leftovers(ns: str, store: Path) -> dict:
    """What containers may leave in the namespace and store; every value empty when clean."""
    veths = in_ns(ns, "ip", "-o", "link", "show", "type", "veth").stdout.splitlines()
    rules = [line for line in in_ns(ns, "iptables-save").stdout.splitlines()
             if ' id: \\"' in line or line.startswith(("-A CNI-DN-", ":CNI-DN-"))]
    leases = [str(p) for p in (store / "networks" / "ipam").glob("*/*")
              if p.name not in ("lock",) and not p.name.startswith("last_reserved_ip")]
    caches = [str(p) for p in (store / "containers").glob("*/network.json")]
    return {"veths": veths, "rules": rules, "leases": leases, "caches": caches, "mounts": mounts_under(store),
            "resolvers": aardvarks(store)}


def aardvarks(store: Path) -> list[int]:
    """PIDs of the aardvark-dns processes serving this store (zombies left out)."""
    out = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if argv[0].endswith(b"aardvark-dns") and str(store / "networks").encode() in b" ".join(argv) and state != "Z":
            out.append(int(proc.name))
    return out


CLEAN = {"veths": [], "rules": [], "leases": [], "caches": [], "mounts": [], "resolvers": []}


@pytest.fixture
def it(store, netns):
    return InNetns(store, netns)


@pytest.fixture
def clean_after(store, netns):
    """The host's mounts and cgroups unchanged, and nothing of the test's containers left in the namespace."""
    before = HostSnapshot(store)
    yield
    assert leftovers(netns, store) == CLEAN
    before.assert_unchanged()


def wait_for(predicate, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def running(store: Path, name: str) -> dict | None:
    for p in (store / "containers").glob("*/state.json"):
        try:
            st = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if st.get("name") == name and st.get("status") == "running":
            return st
    return None


# not PID 1 (it ignores SIGTERM), and no -T (busybox 1.35's wget -T crashes)
WGET = "timeout 5 wget -q -O - {url}; exit $?"
HTTPD = "mkdir -p /www && echo hello-from-{name} > /www/index.html && exec httpd -f -p 80 -h /www"


def serve(it, name: str, *args):
    """A container serving /index.html with busybox httpd (its imagetool runs in the background)."""
    p = it.popen("run", "--rm", "--name", name, *args, "busybox", "sh", "-c", HTTPD.format(name=name))
    wait_for(lambda: running(it.store, name) or p.poll() is not None, f"container {name}")
    assert p.poll() is None, p.communicate()
    return p


def stop(it, p, name: str) -> None:
    r = it("rm", "-f", name)
    assert r.returncode == 0, r.stderr
    p.communicate(timeout=30)


@needs_netns
def test_bridge_container_has_an_address_a_route_and_its_etc_files(it, netns, clean_after):
    r = it("run", "--rm", "--name", "etc", "--network", "bridge", "--network-alias", "web",
           "--add-host", "db:192.0.2.9", "--dns", "192.0.2.53", "--dns-search", "test.example", "busybox", "sh", "-c",
           "ip -4 -o addr show eth0; ip route; cat /etc/hostname; echo ---; cat /etc/hosts; echo ---; cat /etc/resolv.conf")
    assert r.returncode == 0, r.stderr
    addr, rest = r.stdout.split("\n", 1)
    ip = addr.split()[3].split("/")[0]
    subnet = json.loads(it("network", "inspect", "imagetool").stdout)[0]["Subnets"][0]
    assert ip.rsplit(".", 1)[0] == subnet["Subnet"].rsplit(".", 1)[0]
    assert f"default via {subnet['Gateway']} dev eth0" in rest
    hostname, hosts_file, resolv = rest.split("---\n")
    hostname = hostname.splitlines()[-1]
    assert f"{ip}\t{hostname} etc web" in hosts_file.splitlines()
    assert "192.0.2.9\tdb" in hosts_file.splitlines()
    assert resolv == "nameserver 192.0.2.53\nsearch test.example\n"


@needs_netns
def test_published_port_serves_on_the_namespaces_loopback_and_bridge_address(it, netns, clean_after):
    p = serve(it, "web", "--network", "bridge", "-p", "127.0.0.1:18080:80", "-p", "80")
    try:
        lines = it("port", "web").stdout.splitlines()
        assert lines[0] == "80/tcp -> 127.0.0.1:18080"
        free = int(lines[1].rsplit(":", 1)[1])
        assert lines[1] == f"80/tcp -> 0.0.0.0:{free}" and free != 0
        gateway = json.loads(it("network", "inspect", "imagetool").stdout)[0]["Subnets"][0]["Gateway"]
        assert wait_for(lambda: fetch(netns, "http://127.0.0.1:18080/"), "httpd on 127.0.0.1:18080") == "hello-from-web\n"
        assert fetch(netns, f"http://{gateway}:{free}/") == "hello-from-web\n"
        # the same port again is refused before a second container starts
        r = it("run", "--rm", "--network", "bridge", "-p", "127.0.0.1:18080:80", "busybox", "true")
        assert r.returncode == 125 and "18080/tcp is already in use" in r.stderr, r.stderr
    finally:
        stop(it, p, "web")


def _busy_port_in(ns: str):
    """A process listening on 127.0.0.1:PORT inside `ns`; (process, port)."""
    p = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-c",
                          "import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
                          "print(s.getsockname()[1], flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    return p, int(p.stdout.readline())


@needs_netns
def test_failed_starts_leave_nothing(it, netns, clean_after):
    r = it("run", "--rm", "--network", "bridge", "busybox", "/nonexistent")
    assert r.returncode == 127, r.stderr
    r = it("run", "--network", "bridge", "busybox", "/nonexistent")   # its record stays, its network does not
    assert r.returncode == 127
    assert it("rm", _last_id(it.store)).returncode == 0
    listener, port = _busy_port_in(netns)
    try:
        r = it("run", "--rm", "--network", "bridge", "-p", f"127.0.0.1:{port}:80", "busybox", "true")
        assert r.returncode == 125 and f"host port {port}/tcp is already in use" in r.stderr
        assert r.stderr.count("\n") <= 2 and "Traceback" not in r.stderr
    finally:
        listener.kill()
        listener.wait()
    r = it("run", "--rm", "--network", "nosuchnet", "busybox", "true")
    assert r.returncode == 125 and "no such network: nosuchnet" in r.stderr
    assert list((it.store / "containers").glob("*/state.json")) == []


def _last_id(store: Path) -> str:
    [p] = list((store / "containers").glob("*/state.json"))
    return p.parent.name


@needs_netns
def test_missing_plugins_are_named_and_nothing_is_made(it, netns, tmp_path, clean_after):
    it.env["IMAGETOOL_CNI_PATH"] = str(tmp_path)
    r = it("run", "--rm", "--network", "bridge", "busybox", "true")
    assert r.returncode == 125
    assert r.stderr.startswith("imagetool: error: the CNI plugin") and "containernetworking-plugins" in r.stderr
    assert list((it.store / "containers").iterdir()) in ([], [it.store / "containers" / ".lock"])
    # the default network falls back to private (loopback only), saying so in one line
    r = it("run", "--rm", "busybox", "ls", "/sys/class/net")
    assert (r.returncode, r.stdout.split()) == (0, ["lo"]), r.stderr
    assert r.stderr.count("\n") == 1 and "notice: no CNI plugins (apt-get install containernetworking-plugins)" in r.stderr
    # ... but -p (which only a bridge gives) is an error naming the package
    r = it("run", "--rm", "-p", "80", "busybox", "true")
    assert r.returncode == 125 and "apt-get install containernetworking-plugins" in r.stderr, r.stderr


@needs_netns
def test_the_default_network_is_the_bridge_with_dns_at_its_gateway(it, netns, clean_after):
    r = it("run", "--name", "dflt", "busybox", "sh", "-c", "ip -4 -o addr show eth0; cat /etc/resolv.conf")
    assert r.returncode == 0, r.stderr
    [subnet] = json.loads(it("network", "inspect", "imagetool").stdout)[0]["Subnets"]
    assert f" inet {subnet['Gateway'].rsplit('.', 1)[0]}." in r.stdout
    assert f"nameserver {subnet['Gateway']}\n" in r.stdout
    [doc] = json.loads(it("inspect", "dflt").stdout)
    assert doc["HostConfig"]["NetworkMode"] == "bridge"
    assert doc["NetworkSettings"]["Networks"] == {}   # it has exited: no network now (docker's empty values)
    assert it("rm", "dflt").returncode == 0


@needs_netns
def test_aardvark_dns_is_started_again_after_sigkill_and_stopped_after_the_last_container(it, netns, clean_after):
    p = serve(it, "named", "--network-alias", "alias1")
    try:
        [first] = aardvarks(it.store)
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: aardvarks(it.store) == [], "aardvark-dns's end")
        # the next container on the network starts it again, with every container's names
        r = it("run", "--rm", "busybox", "sh", "-c", "nslookup alias1 && " + WGET.format(url="http://named/"))
        assert r.returncode == 0 and "hello-from-named" in r.stdout, (r.stdout, r.stderr)
        [second] = aardvarks(it.store)
        assert second != first
    finally:
        stop(it, p, "named")
    assert aardvarks(it.store) == []   # the last one left: stopped (clean_after checks the rest)


@needs_netns
def test_without_aardvark_dns_the_peers_are_in_etc_hosts(it, netns, clean_after):
    it.env["IMAGETOOL_AARDVARK_DNS"] = ""   # as on a machine without the package
    p = serve(it, "hostsonly")
    try:
        srv_hosts = it.store / "containers" / running(it.store, "hostsonly")["id"] / "hosts"
        r = it("run", "--rm", "--name", "visitor", "busybox", "sh", "-c",
               "cat /etc/resolv.conf; grep -c hostsonly /etc/hosts; " + WGET.format(url="http://hostsonly/"))
        assert r.returncode == 0 and r.stdout.endswith("1\nhello-from-hostsonly\n"), (r.stdout, r.stderr)
        gateway = json.loads(it("network", "inspect", "imagetool").stdout)[0]["Subnets"][0]["Gateway"]
        assert f"nameserver {gateway}" not in r.stdout and aardvarks(it.store) == []
        assert "visitor" not in srv_hosts.read_text()   # gone again once it left
    finally:
        stop(it, p, "hostsonly")


@needs_netns
def test_explain_prints_the_network_steps(it, netns, clean_after):
    r = it("run", "--rm", "--explain", "busybox", "true")
    assert r.returncode == 0, r.stderr
    for step in ("network namespace", "cni ADD bridge (eth0)", "cni ADD firewall (eth0)",
                 "start aardvark-dns"):
        assert f"  {step} (" in r.stderr, (step, r.stderr)
    assert "CNI_COMMAND=ADD" in r.stderr and "/usr/lib/podman/aardvark-dns --config" in r.stderr


def _check(it, netns: str, cdir: Path) -> subprocess.CompletedProcess:
    """CNI CHECK of every cached attachment of a container, run in the namespace."""
    return subprocess.run(["nsenter", f"--net=/run/netns/{netns}", sys.executable, "-c",
                           "import sys; from imagetool.network import attach, cni; "
                           "[cni.check(cni.Attachment.from_json(a)) for a in attach.read(sys.argv[1])['attachments']]",
                           str(cdir)], env=it.env, capture_output=True, text=True, timeout=60)


@needs_netns
def test_sigkill_of_imagetool_then_ps_runs_del_from_the_cache(it, netns, clean_after):
    p = it.popen("run", "--name", "victim", "--network", "bridge", "busybox", "sleep", "600")
    st = wait_for(lambda: running(it.store, "victim"), "the container")
    cache = it.store / "containers" / st["id"] / "network.json"
    assert json.loads(cache.read_text())["attachments"][-1]["result"]["ips"]
    assert leftovers(netns, it.store)["veths"] != []
    # CHECK agrees with the live attachment (not with -p: portmap 1.1.1's CHECK wants IPv6 chains)
    assert _check(it, netns, cache.parent).returncode == 0
    in_ns(netns, "ip", "link", "delete", json.loads(cache.read_text())["attachments"][-1]["result"]["interfaces"][0]["name"])
    assert "CNI plugin bridge (CHECK) failed" in _check(it, netns, cache.parent).stderr
    p.send_signal(signal.SIGKILL)
    p.wait()
    rows = json.loads(it("ps", "-a", "--format", "json").stdout)
    assert [r["name"] for r in rows] == ["victim"]
    assert leftovers(netns, it.store) == CLEAN
    assert it("rm", "victim").returncode == 0


@needs_netns
def test_containers_on_a_user_network_reach_each_other_by_ip_and_name_and_no_one_else(it, netns, clean_after):
    for net, subnet in (("front", "10.91.0.0/24"), ("back", "10.92.0.0/24")):
        assert it("network", "create", "--subnet", subnet, net).returncode == 0
    p = serve(it, "srv", "--network", "front", "--ip", "10.91.0.10", "--network-alias", "www")
    srv_hosts = it.store / "containers" / running(it.store, "srv")["id"] / "hosts"
    try:
        for url in ("http://10.91.0.10/", "http://srv/", "http://www/"):
            r = it("run", "--rm", "--network", "front", "busybox", "sh", "-c", WGET.format(url=url))
            assert (r.returncode, r.stdout) == (0, "hello-from-srv\n"), (url, r.stderr)
        # by DNS: the resolver is the gateway, where aardvark-dns answers with the network's names
        r = it("run", "--rm", "--network", "front", "busybox", "sh", "-c", "cat /etc/resolv.conf; nslookup www")
        assert r.stdout.startswith("nameserver 10.91.0.1\n") and "Address: 10.91.0.10\n" in r.stdout, r.stdout
        [resolver] = aardvarks(it.store)
        # a newcomer is found by name while it runs (DNS, not srv's /etc/hosts), and no more once it left
        q = serve(it, "newcomer", "--network", "front")
        try:
            assert "newcomer" not in srv_hosts.read_text()
            for probe in ("nslookup newcomer", WGET.format(url="http://newcomer/")):
                r = it("run", "--rm", "--network", "front", "busybox", "sh", "-c", probe)
                assert r.returncode == 0 and ("hello-from-newcomer" in r.stdout or "Name:\tnewcomer" in r.stdout), r
        finally:
            stop(it, q, "newcomer")
        assert aardvarks(it.store) == [resolver]   # reloaded (SIGHUP), not restarted
        r = it("run", "--rm", "--network", "front", "busybox", "nslookup", "newcomer")
        assert r.returncode != 0 and "NXDOMAIN" in r.stdout, r.stdout
        # another network: neither srv's address nor its name
        r = it("run", "--rm", "--network", "back", "busybox", "sh", "-c", WGET.format(url="http://10.91.0.10/"))
        assert r.returncode != 0 and r.stdout == ""
        r = it("run", "--rm", "--network", "back", "busybox", "nslookup", "srv")
        assert r.returncode != 0 and "NXDOMAIN" in r.stdout, r.stdout
        r = it("network", "rm", "front")
        assert r.returncode == 1 and "in use" in r.stderr
    finally:
        stop(it, p, "srv")
    assert it("network", "rm", "front", "back").returncode == 0
    assert "it-" not in in_ns(netns, "ip", "-o", "link").stdout    # their bridges went with them


@needs_netns
def test_containers_started_at_once_get_distinct_addresses(it, netns, clean_after):
    procs = [it.popen("run", "--rm", "--network", "bridge", "busybox", "ip", "-4", "-o", "addr", "show", "eth0")
             for _ in range(20)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 20, outs
    addrs = [o.split()[3] for o, _ in outs]
    assert len(set(addrs)) == 20


@needs_netns
@pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc")
def test_runc_joins_the_prepared_namespace(it, netns, clean_after):
    r = it("run", "--rm", "--runtime", "runc", "--network", "bridge", "busybox", "ip", "-4", "-o", "addr", "show", "eth0")
    assert r.returncode == 0, r.stderr
    assert " inet 10." in r.stdout


@needs_netns
def test_private_and_none_stay_as_they_were(it, netns, clean_after):
    r = it("run", "--rm", "--network", "none", "busybox", "ls", "/sys/class/net")
    assert r.stdout.split() == ["lo"]
    r = it("run", "--rm", "--network", "private", "busybox", "sh", "-c", "ls /sys/class/net; cat /sys/class/net/lo/operstate")
    assert r.stdout.split() == ["lo", "unknown"]
    for args in (["-p", "80"], ["-P"]):
        r = it("run", "--rm", "--network", "private", *args, "busybox", "true")
        assert r.returncode == 125 and "need a bridge network" in r.stderr, args
    r = it("run", "--rm", "--network", "none", "-p", "80", "busybox", "true")
    assert r.returncode == 125 and "need a bridge network" in r.stderr
    r = it("run", "--rm", "--network", "host", "--add-host", "db:192.0.2.9", "busybox", "true")
    assert r.returncode == 125 and "not supported with --network host" in r.stderr
    for args in (["--ip", "10.88.0.9"], ["--network-alias", "x"]):
        r = it("run", "--rm", "--network", "private", *args, "busybox", "true")
        assert r.returncode == 125 and "need a bridge network" in r.stderr, args
    r = it("run", "--script", "--network", "bridge", "-p", "80", "busybox", "true")
    assert r.returncode == 125 and "--script does not render bridge networks" in r.stderr and r.stdout == ""
    r = it("run", "--rm", "--network", "private", "--add-host", "db:192.0.2.9", "--dns", "192.0.2.53", "busybox", "sh", "-c",
           "grep db /etc/hosts; cat /etc/resolv.conf")
    assert r.stdout == "192.0.2.9\tdb\nnameserver 192.0.2.53\n", r.stderr


@needs_netns
def test_publish_all_maps_every_exposed_port_to_a_free_one(it, netns, clean_after):
    p = it.popen("run", "--rm", "--name", "exposer", "--network", "bridge", "-P", "exposer")
    try:
        wait_for(lambda: running(it.store, "exposer") or p.poll() is not None, "container exposer")
        lines = sorted(it("port", "exposer").stdout.splitlines())
        assert [line.split(" -> ")[0] for line in lines] == ["53/udp", "80/tcp"]
        tcp = int(lines[1].rsplit(":", 1)[1])
        assert wait_for(lambda: fetch(netns, f"http://127.0.0.1:{tcp}/"), "the exposed port") == "hello-from-exposer\n"
    finally:
        stop(it, p, "exposer")


@needs_netns
def test_detached_container_serves_its_port_and_its_monitor_tears_the_network_down(it, netns, clean_after):
    r = it("run", "-d", "--name", "dweb", "--network", "bridge", "-p", "127.0.0.1:18082:80", "busybox", "sh", "-c",
           HTTPD.format(name="dweb"))
    assert r.returncode == 0, r.stderr
    try:
        assert wait_for(lambda: fetch(netns, "http://127.0.0.1:18082/"), "httpd of dweb") == "hello-from-dweb\n"
        assert it("port", "dweb").stdout == "80/tcp -> 127.0.0.1:18082\n"
        from imagetool.network import attach

        cdir = it.store / "containers" / running(it.store, "dweb")["id"]
        assert attach.ports_text(cdir) == "127.0.0.1:18082->80/tcp"
        [row] = [line for line in it("ps").stdout.splitlines() if " dweb " in line]
        assert row.endswith("   127.0.0.1:18082->80/tcp") and it("ps").stdout.splitlines()[0].split()[-1] == "PORTS"
        assert json.loads(it("ps", "--format", "json").stdout)[0]["ports"] == "127.0.0.1:18082->80/tcp"
        [doc] = json.loads(it("inspect", "dweb").stdout)
        settings = doc["NetworkSettings"]
        assert settings == attach.network_settings(cdir)
        assert settings["Ports"] == {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18082"}]}
        assert settings["IPAddress"].startswith("10.") and settings["IPPrefixLen"] == 24
        assert settings["Networks"]["imagetool"]["Aliases"][0] == "dweb" and settings["MacAddress"]
        assert fetch(netns, f"http://{settings['IPAddress']}:80/") == "hello-from-dweb\n"
        assert it("stop", "-t", "1", "dweb").returncode == 0
        wait_for(lambda: leftovers(netns, it.store) == CLEAN, "the monitor's teardown")   # before any rm
    finally:
        it("rm", "-f", "dweb")


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


@needs_netns
def test_sigkill_of_the_monitor_then_ps_runs_del(it, netns, clean_after):
    r = it("run", "-d", "--name", "orphan", "--network", "bridge", "-p", "127.0.0.1::80", "busybox", "sleep", "600")
    assert r.returncode == 0, r.stderr
    try:
        st = wait_for(lambda: running(it.store, "orphan"), "the container")
        assert leftovers(netns, it.store)["rules"] != []
        os.kill(st["owner_pid"], signal.SIGKILL)
        wait_for(lambda: _gone(st["pid"]), "the container's end (PR_SET_PDEATHSIG)")
        it("ps", "-a")
        assert leftovers(netns, it.store) == CLEAN
    finally:
        it("rm", "-f", "orphan")


@needs_netns
@pytest.mark.parametrize("mode", ["bridge", "private"])   # its netns file, or its PID 1's namespace
def test_network_container_name_shares_the_other_containers_namespace(it, netns, clean_after, mode):
    p = serve(it, "host1", "--network", mode)
    try:
        r = it("run", "--rm", "--network", "container:host1", "busybox", "sh", "-c",
               WGET.format(url="http://127.0.0.1:80/"))
        assert (r.returncode, r.stdout) == (0, "hello-from-host1\n"), r.stderr
        if mode == "bridge":   # its /etc/hosts too
            r = it("run", "--rm", "--network", "container:host1", "busybox", "grep", "host1", "/etc/hosts")
            assert r.stdout.endswith(" host1\n"), r.stderr
        r = it("run", "--rm", "--network", "container:host1", "-p", "80", "busybox", "true")
        assert r.returncode == 125 and "need a bridge network" in r.stderr
    finally:
        stop(it, p, "host1")
    r = it("run", "--rm", "--network", "container:host1", "busybox", "true")
    assert r.returncode == 125 and "no such container: host1" in r.stderr
