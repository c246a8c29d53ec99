"""An independent attack pass on networking, exec, logs and rootless (issues 11-13), round 2.

Every string from the user or the image is hostile: container names, --network-alias, --hostname,
--dns-search, IPv6 zones, -p, -P's EXPOSEd ports, network names (never a path), subnets, user ids,
durations and /etc/subuid lines must not inject lines into /etc/hosts, /etc/resolv.conf,
aardvark-dns's config or newuidmap's arguments, and bad ones are one-line errors with nothing left
behind. A hostile image whose /etc/hosts, /etc/resolv.conf or /etc/hostname are symlinks to host
paths must not get a host file written or bound over (run, and start again). A container process
with CAP_NET_RAW must not reach the host's loopback through route_localnet, another network's
names at its gateway, or become its neighbours' IPv6 router; a published port must not take a
host service's or another container's. An exec'd process, seen from inside the container,
carries no host fd, cwd, root, executable, session keyring, ignored signal, oom_score_adj or
nice value of the caller's, and no imagetool process of the host is visible there. A hostile
container's log lines stay one JSON object a line; a flooding healthcheck stays 4096 bytes.
Findings in files this pass does not own are xfail(strict) with the reason (PID 1's ignored
SIGXFSZ and inherited oom_score_adj were, until runtime/init.py fixed them).

The tests that make bridges run in a network namespace of their own (tests/test_network.py's
`netns` fixture) and leave nothing there (its `leftovers`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from imagetool.errors import NetworkError
from imagetool.network import dns, hosts, networks, ports
from tests.runhelpers import HostSnapshot, Imagetool, busybox_store, kernel_skip_reason
from tests.test_network import CLEAN, InNetns, leftovers, needs_netns, netns  # noqa: F401 (netns: a fixture)

needs_kernel = pytest.mark.skipif(kernel_skip_reason() is not None, reason=kernel_skip_reason() or "")

# names that would break a line-oriented or JSON file: a newline, a tab, a space, a quote, a slash, `..`
HOSTILE_NAMES = ["a\n10.0.0.66 victim", "a\tb", "a b", 'a"b', "a/b", "..", "a\rb", "a,b", "a\x00b", "-a"]


# ---------------------------------------------------------------- parsing: no root needed


@pytest.mark.parametrize("spec", ["-5:80", "-5:", "9" * 5000, "1:" + "9" * 5000, "99999:80", "80:-1",
                                  "0:0", "65535-1:80", "127.0.0.1:-5:80"])
def test_hostile_publish_specs_are_network_errors_not_tracebacks(spec):
    with pytest.raises(NetworkError):
        ports.parse(spec)


def test_a_publish_range_is_bounded():
    """-p 1-65535 would be 65535 mappings (65535 binds, as many iptables rules): refused with a
    clear bound rather than taking the machine's time."""
    with pytest.raises(NetworkError, match="at most"):
        ports.parse("1-65535")
    assert len(ports.parse("8000-8099:8000-8099")) == 100


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_for_the_etc_files_are_refused(name):
    for kw in ({"hostname": name}, {"names": ["ok", name]}, {"dns_search": [name]}):
        args = {"hostname": "ok", "names": [], "dns_search": []} | kw
        with pytest.raises(NetworkError):
            hosts.validate(args["hostname"], args["names"], args["dns_search"])
    hosts.validate("web-1.example", ["web_1", "abc123def456", "alias.one"], ["corp.example", "."])


def test_aardvark_config_never_carries_a_line_break_from_a_name():
    """Names come from caches other versions may have written: the config line drops what is not a
    plain name (a newline would add a record for another name, `victim`, to the network)."""
    text = dns.network_file("10.88.0.1", [("c1", ["10.88.0.2"], ["web", "a\nvictim", "b\r", "c\x00", "ok"])])
    assert text == "10.88.0.1\nc1 10.88.0.2  web,ok\n"


@pytest.mark.parametrize("name", ["aardvark.pid", "a\nb", "a/b", "..", "a" * 65, "-x", "x y"])
def test_network_names_that_collide_with_files_or_break_them_are_refused(name, tmp_path):
    from types import SimpleNamespace

    st = SimpleNamespace(root=tmp_path / "store")
    with pytest.raises(NetworkError):
        networks.create(st, name)
    assert not (tmp_path / "store" / "networks" / f"{name}.conflist").exists()


def test_subordinate_lines_that_newuidmap_would_refuse_are_left_out(tmp_path):
    """A hostile or broken /etc/subuid: signs, underscores, non-ASCII digits, ids past 2^32-2,
    ranges overlapping an earlier one or the user's own id; only sound ranges are used, and the
    ids inside stay below 2^32-1."""
    from imagetool import userns

    sub = tmp_path / "subuid"
    sub.write_text("\n".join([
        "u:-1000:10", "u:+5:10", "u:1_000:10", "u:\u0663\u0663:10", "u:4294967290:100", "u:100000:-5",
        "u:100000:65536", "u:100100:10",          # overlaps the line before
        "u:1000:10",                              # holds the user's own uid 1005
        "u:200000:65536 ", " u:300000:1", "other:400000:65536", "u:500000:4294000000", "u:1:" + "9" * 5000,
    ]) + "\n")
    got = userns.subordinate_ranges(str(sub), "u", 1005)
    assert got[:3] == [(100000, 65536), (200000, 65536), (300000, 1)]
    total = 1 + sum(c for _, c in got)
    assert total <= 2**32 - 1
    for (a, n), (b, m) in zip(got, got[1:]):
        assert a + n <= b or b + m <= a
    assert all(not (s <= 1005 < s + c) for s, c in got)


# ---------------------------------------------------------------- real containers


@pytest.fixture(scope="module")
def hostside(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostside")
    (d / "resolv-target").write_text("HOST FILE\n")
    (d / "marker").write_text("host\n")
    return d


@pytest.fixture(scope="module")
def store(tmp_path_factory, hostside):
    if kernel_skip_reason():
        pytest.skip(kernel_skip_reason())
    from fixtures.tarbuild import directory, symlink

    up = "/".join([".."] * 12)
    evil = [directory("etc"),
            symlink("etc/hosts", f"{hostside}/hosts-pwned"),                     # absolute: a host path
            symlink("etc/resolv.conf", f"{up}{hostside}/resolv-target"),         # relative, climbing out
            symlink("etc/hostname", f"/proc/self/root{hostside}/hostname-pwned"),
            symlink("escape", f"{up}{hostside}")]
    return busybox_store(tmp_path_factory.mktemp("imagetool-attack2") / "store",
                         {"evil": (evil, {"Cmd": ["sh"], "Env": ["PATH=/bin"]})})


@pytest.fixture
def it(store):
    return Imagetool(store)


@pytest.fixture
def detached(it, store):
    """`detached(*args)`: run -d; every container started is removed at the end, the host unchanged."""
    before = HostSnapshot(store)
    made = []

    def run(*args):
        r = it("run", "-d", "--network", "none", *args)
        assert r.returncode == 0, r.stderr
        made.append(r.stdout.strip())
        return made[-1]

    yield run
    for cid in made:
        it("rm", "-f", cid)
    before.assert_unchanged()


def _wait(check, what, limit=30.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _one_line_error(r, code=125):
    assert r.returncode == code, (r.returncode, r.stderr)
    assert r.stderr.startswith("imagetool: error: ") and "Traceback" not in r.stderr, r.stderr


@needs_netns
@pytest.mark.parametrize("flag", ["--network-alias", "--hostname", "--dns-search", "--name"])
def test_hostile_names_on_the_cli_are_one_line_errors_and_leave_nothing(store, netns, flag):  # noqa: F811
    it = InNetns(store, netns)
    before = HostSnapshot(store)
    r = it("run", "--rm", "--network", "bridge", flag, "x\n10.0.0.66 victim", "busybox", "cat", "/etc/hosts")
    _one_line_error(r)
    assert "victim" not in r.stdout
    assert leftovers(netns, store) == CLEAN
    before.assert_unchanged()


@needs_netns
@pytest.mark.parametrize("spec", ["-5:80", "9" * 5000, "1-65535"])
def test_hostile_publish_on_the_cli_is_one_line_error(store, netns, spec):  # noqa: F811
    it = InNetns(store, netns)
    r = it("run", "--rm", "--network", "bridge", "-p", spec, "busybox", "true")
    _one_line_error(r)
    assert leftovers(netns, store) == CLEAN


@needs_netns
@pytest.mark.parametrize("runtime", [None, "runc"])
def test_etc_symlinks_of_a_hostile_image_never_reach_the_host(store, netns, hostside, runtime):  # noqa: F811
    if runtime and shutil.which(runtime) is None:
        pytest.skip(f"needs {runtime}")
    it = InNetns(store, netns)
    before = HostSnapshot(store)
    extra = ["--runtime", runtime] if runtime else []
    r = it("run", "--rm", *extra, "--network", "bridge", "--name", "evil1", "--add-host", "db:192.0.2.9",
           "evil", "sh", "-c", "cat /etc/hosts /etc/resolv.conf /etc/hostname")
    # it runs, with the container's own files bound in the container (the links resolved in its root)
    assert r.returncode == 0, r.stderr
    assert "192.0.2.9\tdb" in r.stdout and "evil1" in r.stdout and "HOST FILE" not in r.stdout, r.stdout
    assert sorted(p.name for p in hostside.iterdir()) == ["marker", "resolv-target"]
    assert (hostside / "resolv-target").read_text() == "HOST FILE\n"
    assert leftovers(netns, store) == CLEAN
    before.assert_unchanged()


@needs_kernel
def test_an_execd_process_seen_from_the_container_holds_nothing_of_the_host(it, detached, hostside):
    cid = detached("--name", "seen", "busybox", "sleep", "1000")
    with open(hostside / "marker") as f:   # an fd and a cwd of the caller's, which must not go in
        r = it("exec", "-d", "seen", "sh", "-c", "exec sleep 777", pass_fds=(f.fileno(),), cwd=hostside)
    assert r.returncode == 0, r.stderr
    look = ("for p in /proc/[0-9]*; do grep -q '^sleep.777' $p/cmdline 2>/dev/null || "
            "[ \"$(tr '\\0' ' ' < $p/cmdline)\" = 'sleep 777 ' ] || continue; "
            "echo exe=$(readlink $p/exe) cwd=$(readlink $p/cwd) root=$(readlink $p/root); "
            "for fd in $p/fd/*; do echo fd=$(readlink $fd); done; done; "
            "echo comms; cat /proc/[0-9]*/comm")
    r = _wait(lambda: (lambda x: x if "exe=" in x.stdout else None)(it("exec", "seen", "sh", "-c", look)),
              "the exec'd sleep")
    out = r.stdout
    assert "exe=/bin/busybox cwd=/ root=/" in out or "exe=/bin/sleep cwd=/ root=/" in out, out
    fds = [line[3:] for line in out.splitlines() if line.startswith("fd=")]
    assert fds and all(t == "/dev/null" or re.fullmatch(r"(pipe|socket):\[\d+\]|/dev/pts/\d+", t) for t in fds), fds
    comms = out.split("comms\n", 1)[1].split()
    assert not [c for c in comms if c.startswith("python") or c == "imagetool"], comms
    assert str(hostside) not in out and "memfd" not in out and str(it.store) not in out


@needs_kernel
def test_exec_workdir_through_a_symlink_stays_in_the_container(it, detached, hostside):
    detached("--name", "wd", "evil", "sleep", "1000")
    r = it("exec", "-w", "/escape", "wd", "sh", "-c", "ls; readlink /proc/self/cwd")
    assert "marker" not in r.stdout and "resolv-target" not in r.stdout, r.stdout
    if r.returncode != 0:
        assert r.stderr.startswith("imagetool: error: ") and "Traceback" not in r.stderr, r.stderr


@needs_kernel
def test_hostile_log_lines_stay_one_json_object_a_line(it, detached, store):
    payload = ('"}\\n{"log":"forged","stream":"stderr"}\\n' + "\\r\\033[2J\\0\\342\\200\\250" +
               "\\377\\376 bad utf8\\n" + "no newline at the end")
    cid = detached("busybox", "sh", "-c", f"printf '{payload}'; printf 'x%.0s' $(seq 1 20000)")
    assert it("wait", cid).stdout == "0\n"
    raw = (store / "containers" / cid / "container.log").read_bytes()
    docs = [json.loads(line) for line in raw.splitlines()]
    assert all(set(d) == {"log", "stream", "time"} and d["stream"] == "stdout" for d in docs)
    r = it("logs", cid)
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.startswith('"}\n{"log":"forged","stream":"stderr"}\n'), r.stdout[:200]
    assert r.stdout.endswith("x" * 100) and r.stdout.count("x") >= 20000


@needs_kernel
@pytest.mark.parametrize("user", ["\u00b2", "0:\u00b2", "9" * 5000, "\u0663"])
def test_user_ids_python_alone_reads_as_digits_are_one_line_errors(it, store, user):
    """'²' and '٣' pass str.isdigit() but are no ids (int() fails on '²'); 5000 digits are too many
    for int(): each is docker's one-line error, never an internal error."""
    before = HostSnapshot(store)
    r = it("run", "--rm", "--network", "none", "-u", user, "busybox", "id")
    _one_line_error(r)
    assert "internal error" not in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    before.assert_unchanged()


@needs_kernel
def test_exec_user_and_workdir_that_are_no_ids_or_dirs_are_one_line_errors(it, detached):
    detached("--name", "bad-exec", "busybox", "sleep", "1000")
    for args in (["-u", "\u00b2"], ["-u", "9" * 5000], ["-w", "/proc/self/fd/0"], ["-w", "/proc/self/fd/3"]):
        r = it("exec", *args, "bad-exec", "id")
        assert r.returncode == 125 and r.stderr.startswith("imagetool: error: "), (args[0], r.stderr)
        assert "internal error" not in r.stderr and "invalid literal" not in r.stderr, r.stderr


@pytest.mark.parametrize("zone", ["a\nnameserver 6.6.6.6", "a b", "a\t6.6.6.6", "x" * 16])
def test_an_ipv6_zone_cannot_carry_another_line_into_resolv_conf_or_hosts(zone):
    """Python's ip_address takes any text after '%' as the zone of a link-local address."""
    with pytest.raises(NetworkError):
        hosts.resolv_text("", [f"fe80::1%{zone}"], [])
    with pytest.raises(NetworkError):
        hosts.parse_add_host(f"x:fe80::1%{zone}")
    assert hosts.resolv_text("", ["fe80::1%eth0"], []) == "nameserver fe80::1%eth0\n"


_RAW_UDP = r'''
import socket, struct, sys
ifname, dst_mac, src_ip, port = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", "")), sys.argv[3], int(sys.argv[4])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
src_mac = s.getsockname()[4]
payload = b"from-the-container"
udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
def csum(b):
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    t = (t >> 16) + (t & 0xffff); t += t >> 16
    return ~t & 0xffff
hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                  socket.inet_aton(src_ip), socket.inet_aton("127.0.0.1"))
hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
for _ in range(3):
    s.send(dst_mac + src_mac + b"\x08\x00" + hdr + udp)
'''

_UDP_SERVER = r'''
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
s.settimeout(float(sys.argv[1]))
try:
    print(s.recv(100).decode(), flush=True)
except socket.timeout:
    print("nothing", flush=True)
'''


@needs_netns
def test_a_container_cannot_reach_the_hosts_loopback_through_route_localnet(store, netns):  # noqa: F811
    """CVE-2020-8558's class: portmap turns route_localnet on for the bridge (so -p 127.0.0.1:… works);
    then a container process with CAP_NET_RAW (a default capability) can send a frame addressed to
    127.0.0.1 to its gateway, and the host would take it for its own loopback services. Such
    packets must be dropped where they come in."""
    import subprocess
    import sys

    it = InNetns(store, netns)
    before = HostSnapshot(store)
    r = it("run", "-d", "--network", "bridge", "--name", "rl", "-p", "127.0.0.1::80", "busybox", "sleep", "1000")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    server = None
    try:
        cdir = store / "containers" / cid
        doc = json.loads((cdir / "network.json").read_text())
        result = doc["attachments"][-1]["result"]
        bridge = next(i for i in result["interfaces"] if not i.get("sandbox") and i["name"].startswith("imagetool"))
        ip = result["ips"][0]["address"].split("/")[0]
        server = subprocess.Popen(["nsenter", f"--net=/run/netns/{netns}", sys.executable, "-c", _UDP_SERVER, "3"],
                                  stdout=subprocess.PIPE, text=True)
        port = int(server.stdout.readline())
        sent = subprocess.run(["nsenter", f"--net={cdir / 'netns'}", sys.executable, "-c", _RAW_UDP, "eth0",
                               bridge["mac"], ip, str(port)], capture_output=True, text=True)
        assert sent.returncode == 0, sent.stderr
        got = server.stdout.readline().strip()
        server.wait(timeout=30)
        assert got == "nothing", "the host's 127.0.0.1 took a packet from the container"
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.wait()
        assert it("rm", "-f", cid).returncode == 0
    assert leftovers(netns, store) == CLEAN
    before.assert_unchanged()


@needs_netns
def test_the_bridge_guards_are_set_once_and_go_with_their_network(store, netns):  # noqa: F811
    import subprocess

    it = InNetns(store, netns)
    assert it("network", "create", "guarded").returncode == 0
    bridge = json.loads((store / "networks" / "guarded.conflist").read_text())["plugins"][0]["bridge"]

    def rules():
        out = subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "iptables-save", "-t", "raw"],
                             capture_output=True, text=True).stdout
        return [line for line in out.splitlines() if f"-i {bridge} " in line]

    def filters():
        out = subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "iptables-save", "-t", "filter"],
                             capture_output=True, text=True).stdout
        return [line for line in out.splitlines() if f"-i {bridge} " in line and line.startswith("-A INPUT ")]

    try:
        r = it("run", "--rm", "--network", "guarded", "-p", "127.0.0.1::80", "busybox", "true")
        assert r.returncode == 0, r.stderr
        assert rules() == [f"-A PREROUTING -d 127.0.0.0/8 -i {bridge} -j DROP"]
        gw = json.loads((store / "networks" / "guarded.conflist").read_text())["plugins"][0]["ipam"]["ranges"][0][0]["gateway"]
        assert filters() == [f"-A INPUT -d {gw}/32 ! -i {bridge} -p {p} -m {p} --dport 53 -j DROP" for p in ("udp", "tcp")]
        assert it("run", "--rm", "--network", "guarded", "-p", "127.0.0.1::80", "busybox", "true").returncode == 0
        assert len(rules()) == 1 and len(filters()) == 2   # once per bridge
    finally:
        assert it("network", "rm", "guarded").returncode == 0
    assert rules() == [] and filters() == []
    assert leftovers(netns, store) == CLEAN


@needs_netns
def test_start_again_of_a_container_whose_etc_files_link_to_the_host_writes_nothing_there(store, netns, hostside):  # noqa: F811
    """The second start (a new monitor, the network set up again, the /etc files rewritten in the
    container's directory) of a container whose /etc/hosts, resolv.conf and hostname link out."""
    it = InNetns(store, netns)
    before = HostSnapshot(store)
    r = it("run", "-d", "--network", "bridge", "--name", "again", "evil", "sh", "-c", "cat /etc/hosts")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    try:
        assert it("wait", cid).stdout == "0\n"
        r = it("start", "-a", cid)
        assert r.returncode == 0 and "again" in r.stdout, r.stderr
    finally:
        assert it("rm", "-f", cid).returncode == 0
    assert sorted(p.name for p in hostside.iterdir()) == ["marker", "resolv-target"]
    assert (hostside / "resolv-target").read_text() == "HOST FILE\n"
    assert leftovers(netns, store) == CLEAN
    before.assert_unchanged()


@pytest.mark.parametrize("name", ["../../../../../../../../{victim}", "/{victim}"])
def test_a_network_name_is_never_a_path(it, store, tmp_path, name):
    """`--network`, `network inspect` and `network rm` read `<store>/networks/NAME.conflist` and rm
    removes `networks/ipam/NAME`: a name with a slash named a file (and a directory) anywhere."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("x")
    conf = networks.conflist("victim", "itvictim", "10.99.0.0/24", "10.99.0.1", tmp_path / "ipam")
    Path(f"{victim}.conflist").write_text(json.dumps(conf))
    arg = name.format(victim=str(victim).lstrip("/"))
    for args in (["network", "inspect", arg], ["network", "rm", arg],
                 ["run", "--rm", "--network", arg, "busybox", "true"]):
        r = it(*args)
        assert r.returncode != 0 and r.stderr.startswith("imagetool: error: ") and "Traceback" not in r.stderr, r.stderr
        assert "Bridge" not in r.stdout, r.stdout
    assert (victim / "keep").exists() and Path(f"{victim}.conflist").exists()


def _hwm_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1])


@needs_kernel
def test_a_flooding_healthcheck_keeps_4096_bytes_and_the_monitor_small(it, detached, store):
    """A healthcheck that writes 200 MB: its recorded output is cut at 4096 bytes and neither the
    monitor nor anything it keeps grows with the flood."""
    cid = detached("--health-cmd", "head -c 200000000 /dev/zero | tr '\\0' x", "--health-interval", "1s",
                   "--health-timeout", "60s", "busybox", "sleep", "1000")
    monitor = json.loads((store / "containers" / cid / "state.json").read_text())["owner_pid"]
    health = store / "containers" / cid / "health.json"
    doc = _wait(lambda: health.exists() and (lambda d: d if d.get("Log") else None)(json.loads(health.read_text())),
                "a healthcheck result", limit=120)
    assert all(len(e["Output"].encode()) <= 4096 for e in doc["Log"]), [len(e["Output"]) for e in doc["Log"]]
    assert doc["Log"][0]["ExitCode"] == 0 and doc["Log"][0]["Output"] == "x" * 4096
    assert _hwm_kb(monitor) < 64 * 1024
    assert health.stat().st_size < 64 * 1024


def test_a_host_port_range_skips_ports_other_containers_publish():
    """portmap's DNAT binds no socket: a port another container publishes binds fine here, so the
    choice in `-p A-B:80` must skip the published ones too (two DNATs of one port would let the
    second container take the first one's traffic), and say so when the whole range is taken."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        first = s.getsockname()[1]
    spec = f"127.0.0.1:{first}-{first + 1}:80"
    [m] = ports.allocate(ports.parse(spec), {("tcp", first)})
    assert m.host_port == first + 1
    with pytest.raises(NetworkError, match="in use"):
        ports.allocate(ports.parse(spec), {("tcp", first), ("tcp", first + 1)})


def test_a_udp_port_a_host_service_holds_with_so_reuseaddr_is_busy():
    """A host UDP service that set SO_REUSEADDR (avahi's mDNS, many DNS servers) would let a check
    that sets it too bind the same port: the container's DNAT would then take the service's traffic."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        busy = s.getsockname()[1]
        with pytest.raises(NetworkError, match="in use"):
            ports.allocate(ports.parse(f"127.0.0.1:{busy}:53/udp"))
        with pytest.raises(NetworkError, match="in use"):
            ports.allocate(ports.parse(f"{busy}:53/udp"))


def test_sctp_without_a_host_port_is_a_clear_error_not_host_port_0():
    with pytest.raises(NetworkError, match="needs a host port"):
        ports.allocate(ports.parse("80/sctp"))
    assert ports.allocate(ports.parse("9132:80/sctp"))[0].host_port == 9132


@pytest.mark.parametrize("subnet", ["0.0.0.0/0", "127.0.0.0/24", "10.0.0.0/1", "224.0.0.0/24", "169.254.0.0/24",
                                    "0.0.0.0/24", "255.255.255.0/24"])
def test_a_subnet_over_loopback_multicast_or_everything_is_refused(subnet, tmp_path):
    """A bridge network on 0.0.0.0/0 or 127.0.0.0/8 would take the host's routes or loopback."""
    from types import SimpleNamespace

    (tmp_path / "store").mkdir()
    with pytest.raises(NetworkError, match="subnet"):
        networks.create(SimpleNamespace(root=tmp_path / "store"), "n1", subnet)
    assert networks.create(SimpleNamespace(root=tmp_path / "store"), "n2", "192.0.2.0/24").subnet == "192.0.2.0/24"


@needs_netns
def test_a_container_cannot_resolve_another_networks_names_at_its_gateway(store, netns):  # noqa: F811
    """aardvark-dns listens on every network's gateway, all host addresses: a container of one
    network asking at the other network's gateway must not learn that network's names."""
    if dns.binary() is None:
        pytest.skip("needs aardvark-dns")
    it = InNetns(store, netns)
    before = HostSnapshot(store)
    made = []
    try:
        for n, subnet in (("neta", "10.97.1.0/24"), ("netb", "10.97.2.0/24")):
            assert it("network", "create", "--subnet", subnet, n).returncode == 0
        r = it("run", "-d", "--network", "netb", "--name", "secretb", "busybox", "sleep", "1000")
        assert r.returncode == 0, r.stderr
        made.append(r.stdout.strip())
        r = it("run", "--rm", "--network", "neta", "busybox", "sh", "-c",
               "timeout 3 nslookup secretb 10.97.2.1; echo ---; timeout 3 nslookup secretb 10.97.1.1; true")
        assert r.returncode == 0, r.stderr
        assert "10.97.2." not in r.stdout.replace("10.97.2.1", ""), r.stdout
    finally:
        for cid in made:
            it("rm", "-f", cid)
        for n in ("neta", "netb"):
            it("network", "rm", n)
    assert leftovers(netns, store) == CLEAN
    before.assert_unchanged()


_RA = r'''
import socket, struct, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
prefix = socket.inet_pton(socket.AF_INET6, "2001:db8:66::")
ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
ra += struct.pack("!BBBBIII", 3, 4, 64, 0xC0, 86400, 14400, 0) + prefix
for _ in range(3):
    s.sendto(ra, ("ff02::1", 0, 0, socket.if_nametoindex("eth0")))
'''


def _ras_received(netns_path: Path) -> int:
    import subprocess

    out = subprocess.run(["nsenter", f"--net={netns_path}", "cat", "/proc/net/snmp6"], capture_output=True,
                         text=True).stdout
    return int(next((line.split()[1] for line in out.splitlines() if line.startswith("Icmp6InRouterAdvertisements")), 0))


@needs_netns
def test_a_container_cannot_become_the_ipv6_router_of_its_neighbours(store, netns):  # noqa: F811
    """CVE-2020-13401's class: a container with CAP_NET_RAW sends IPv6 router advertisements on its
    bridge; a neighbour accepting them would take an address and a default route through it (a
    man in the middle for every IPv6 destination). Once the neighbour has received them, it has
    neither."""
    import subprocess
    import sys

    it = InNetns(store, netns)
    before = HostSnapshot(store)
    made = []
    try:
        for name in ("ra-victim", "ra-attacker"):
            r = it("run", "-d", "--network", "bridge", "--name", name, "busybox", "sleep", "1000")
            assert r.returncode == 0, r.stderr
            made.append(r.stdout.strip())
        victim_ns, attacker_ns = (store / "containers" / cid / "netns" for cid in made)
        sent = subprocess.run(["nsenter", f"--net={attacker_ns}", sys.executable, "-c", _RA], capture_output=True,
                              text=True)
        assert sent.returncode == 0, sent.stderr
        _wait(lambda: _ras_received(victim_ns) > 0, "the advertisements to reach the neighbour")
        r = it("exec", "ra-victim", "sh", "-c", "ip -6 route; ip -6 addr")
        assert r.returncode == 0, r.stderr
        assert "default" not in r.stdout and "2001:db8:66:" not in r.stdout, r.stdout
    finally:
        for cid in made:
            it("rm", "-f", cid)
    assert leftovers(netns, store) == CLEAN
    before.assert_unchanged()


@needs_kernel
@pytest.mark.parametrize("args", [["logs", "--since", "9" * 26], ["logs", "--since", "9" * 5000],
                                  ["logs", "--since", "9" * 5000 + "s"], ["logs", "--since", "99999999999h"]])
def test_out_of_range_times_are_one_line_errors(it, detached, args):
    cid = detached("busybox", "echo", "hi")
    r = it(*args, cid)
    assert r.returncode != 0 and r.stderr.startswith("imagetool: error: invalid --since"), r.stderr
    assert "internal error" not in r.stderr and len(r.stderr.splitlines()) <= 2, r.stderr


@needs_kernel
def test_an_out_of_range_health_interval_is_a_one_line_error(it, store):
    before = HostSnapshot(store)
    r = it("run", "-d", "--network", "none", "--health-cmd", "true", "--health-interval", "9" * 400 + "h",
           "busybox", "true")
    _one_line_error(r)
    assert "out of range" in r.stderr
    before.assert_unchanged()


def test_an_image_exposing_every_port_cannot_make_p_publish_them_all():
    """-P publishes what the image EXPOSEs: a hostile image's 64 ranges of 1024 ports would be
    65536 binds and DNAT rules. A bound on what one container publishes."""
    from types import SimpleNamespace

    from imagetool.network import attach
    from imagetool.specgen import EXPOSED_ANNOTATION

    exposed = ",".join(f"{a}-{a + 1023}/tcp" for a in range(1, 65536 - 1023, 1024))
    spec = {"annotations": {EXPOSED_ANNOTATION: exposed}}
    with pytest.raises(NetworkError, match="at most"):
        attach.wanted_ports(SimpleNamespace(publish=[], publish_all=True), spec)
    few = {"annotations": {EXPOSED_ANNOTATION: "80/tcp,53/udp"}}
    assert len(attach.wanted_ports(SimpleNamespace(publish=["8080:80"], publish_all=True), few)) == 3


def _with_oom_score_adj(value: int):
    def preexec():
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(value))
    return preexec


@needs_kernel
def test_an_execd_process_gets_its_containers_oom_score_adj_not_the_callers(it, detached):
    """exec run by a caller with another oom_score_adj (a service's -500 would shield the exec'd
    process from the OOM killer more than the container's PID 1 is): the exec'd process gets PID
    1's. The caller here takes +500 (lowering needs CAP_SYS_RESOURCE, which this sandbox lacks; the
    exec'd process going back to PID 1's 0 is the same path)."""
    detached("--name", "oom", "busybox", "sleep", "1000")
    pid1 = it("exec", "oom", "cat", "/proc/1/oom_score_adj").stdout.strip()
    r = it("exec", "oom", "cat", "/proc/self/oom_score_adj", preexec_fn=_with_oom_score_adj(500))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == pid1, (r.stdout, pid1)
    nice1 = it("exec", "oom", "cut", "-d", " ", "-f", "19", "/proc/1/stat").stdout
    r = it("exec", "oom", "cut", "-d", " ", "-f", "19", "/proc/self/stat", preexec_fn=lambda: os.nice(7))
    assert (r.returncode, r.stdout) == (0, nice1), (r.stdout, nice1, r.stderr)


@needs_kernel
def test_a_containers_pid1_does_not_inherit_the_callers_oom_score_adj(it, store):
    before = HostSnapshot(store)
    r = it("run", "--rm", "--network", "none", "busybox", "cat", "/proc/self/oom_score_adj",
           preexec_fn=_with_oom_score_adj(500))
    assert r.returncode == 0, r.stderr
    before.assert_unchanged()
    assert r.stdout.strip() == "0", r.stdout


_KEYRING_CALLER = r'''
import ctypes, json, subprocess, sys
from imagetool.runtime import syscalls as sc
libc = ctypes.CDLL(None, use_errno=True)
ADD_KEY = {"x86_64": 248, "aarch64": 217}[__import__("os").uname().machine]
KEYCTL_SETPERM, KEY_SPEC_SESSION_KEYRING = 5, -3
sc.join_session_keyring("it-attack-caller")
key = libc.syscall(ADD_KEY, b"user", b"it-caller-secret", b"hunter2", 7, ctypes.c_int(KEY_SPEC_SESSION_KEYRING))
assert key > 0 and libc.syscall(sc._SYS_keyctl, KEYCTL_SETPERM, key, 0x3f000000) == 0   # its possessor only
r = subprocess.run(json.loads(sys.argv[1]), capture_output=True, text=True)
print(json.dumps([r.returncode, r.stdout, r.stderr]))
'''


@needs_kernel
def test_an_execd_process_does_not_possess_the_callers_session_keyring(it, detached):
    """The caller's session keyring (a key only its possessor may see) must not go into the
    container with exec, even into a --privileged one (no seccomp to stop keyctl there)."""
    import subprocess
    import sys

    detached("--name", "keys", "--privileged", "busybox", "sleep", "1000")
    r = subprocess.run([sys.executable, "-c", _KEYRING_CALLER, json.dumps(it.argv("exec", "keys", "cat", "/proc/keys"))],
                       capture_output=True, text=True, env=it.env, timeout=120)
    assert r.returncode == 0, r.stderr
    code, out, err = json.loads(r.stdout)
    assert code == 0 and "keyring" in out, err
    assert "it-caller-secret" not in out, out


@needs_kernel
def test_an_execd_process_ignores_no_signal_it_was_not_told_to(it, detached):
    """Python ignores SIGPIPE and SIGXFSZ, the monitor SIGHUP and SIGINT: an ignored disposition
    survives exec, so `exec` and `exec -d` handed them on (a pipeline's writer never died of
    SIGPIPE; kill -INT did nothing to an exec -d'd process)."""
    detached("--name", "sigs", "busybox", "sleep", "1000")
    r = it("exec", "sigs", "grep", "-E", "SigIgn|SigBlk", "/proc/self/status")   # no sh: ash ignores SIGQUIT itself
    assert r.stdout.split() == ["SigBlk:", "0" * 16, "SigIgn:", "0" * 16], r.stdout
    assert it("exec", "-d", "sigs", "sleep", "999").returncode == 0
    look = ("for p in /proc/[0-9]*; do [ \"$(tr '\\0' ' ' < $p/cmdline)\" = 'sleep 999 ' ] && "
            "grep -E 'SigIgn|SigBlk' $p/status; done; true")
    out = _wait(lambda: it("exec", "sigs", "sh", "-c", look).stdout, "the exec -d'd sleep")
    assert out.split() == ["SigBlk:", "0" * 16, "SigIgn:", "0" * 16], out


@needs_kernel
def test_a_containers_pid1_ignores_no_signal(it, store):
    before = HostSnapshot(store)
    r = it("run", "--rm", "--network", "none", "busybox", "grep", "SigIgn", "/proc/self/status")
    before.assert_unchanged()
    assert r.stdout.split() == ["SigIgn:", "0" * 16], r.stdout


def test_a_host_ip_that_is_not_this_hosts_is_said_as_such():
    with pytest.raises(NetworkError, match="not an address of this host"):
        ports.allocate(ports.parse("192.0.2.77:8080:80"))


@needs_kernel
def test_runc_runs_a_store_reached_through_a_symlink(store, tmp_path):
    """--store through a symlink (/var/lib/imagetool -> /data/…): runc refused the rootfs path
    ('invalid rootfs: not an absolute path, or a symlink')."""
    if shutil.which("runc") is None:
        pytest.skip("needs runc")
    link = tmp_path / "store-link"
    link.symlink_to(store)
    before = HostSnapshot(store)
    r = Imagetool(link)("run", "--rm", "--runtime", "runc", "--network", "none", "busybox", "echo", "ok")
    before.assert_unchanged()
    assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr


@needs_kernel
def test_a_hostname_with_a_line_break_is_refused_without_a_network_too(it, store):
    before = HostSnapshot(store)
    r = it("run", "--rm", "--network", "none", "--hostname", "a\nb", "busybox", "hostname")
    before.assert_unchanged()
    _one_line_error(r)
