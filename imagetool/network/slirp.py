"""Rootless networking with slirp4netns (issue 13), as podman gives it before pasta.

A container of an ordinary user cannot have a veth into the host's network: its network
namespace belongs to the user's user namespace. slirp4netns (Debian's `slirp4netns`) opens a TAP
device `tap0` inside that namespace and relays its packets through ordinary sockets of the
user in the host's namespace: outbound connections, and `-p` forwards (a listening socket of
slirp4netns on the host, one `add_hostfwd` request each through its API socket).

setup() makes the namespace file `netns` in the container's directory (network/netns.py, as a
bridge network does), records it with the published ports in `network.json` (attach's cache:
`port`, `ps` and `inspect` read the ports from it, and attach.teardown removes the namespace
file), starts slirp4netns on it

    slirp4netns --configure --mtu=65520 --disable-host-loopback --enable-sandbox --enable-seccomp
                --ready-fd=R --api-socket slirp.sock --netns-type=path NETNS tap0

waits until it has configured the namespace (tap0 10.0.2.100/24, route via 10.0.2.2, lo up)
and adds the forwards; the container's /etc/resolv.conf names slirp's DNS forwarder 10.0.2.3.
`--disable-host-loopback`: the container cannot reach the host's 127.0.0.1 through 10.0.2.2.

slirp4netns never outlives its owner (the foreground `run`, or the monitor of `run -d`): it
starts with PR_SET_PDEATHSIG=SIGKILL, so the owner's end, even by SIGKILL, ends it. (Not
--exit-fd: the monitor execs its lean self (conmon.py) and then `monitor.resume`, the same
process, which would close a close-on-exec pipe end, and an inheritable one would reach every
child it spawns.) teardown() stops it by its recorded PID (checked against its start time: never
a reused PID) on every way out: the end of a run, `--rm`, `rm`, `prune`, the monitor's exit.

The client's source address: a connection through a `-p` forward reaches the container from
10.0.2.2 (slirp's gateway), not from the client's address: slirp4netns accepts it on the host
and opens a new connection into the namespace (tests/test_rootless_net.py checks this).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from imagetool.errors import NetworkError
from imagetool.network import attach, hosts, netns, networks, ports
from imagetool.runtime import syscalls as sc

MODE = "slirp4netns"             # --network slirp4netns: podman's name
PACKAGE = "slirp4netns"          # the Debian package to install
TUN = "/dev/net/tun"
STATE = "slirp.json"             # {pid, pid_start}: who to stop
SOCKET = "slirp.sock"            # its API socket, in the container's directory
LOG = "slirp.log"                # its stdout and stderr
GUEST_IP = "10.0.2.100"
GATEWAY = "10.0.2.2"
DNS = "10.0.2.3"
MTU = 65520
READY_TIMEOUT = 30.0             # a bound on a hung start, not an expectation

_owned: dict[str, subprocess.Popen] = {}   # str(cdir) -> the slirp4netns this process started


@dataclass(frozen=True, slots=True)
class Availability:
    """Whether this machine gives slirp4netns to this user; `why` says what is missing."""

    binary: str | None
    why: str | None

    @property
    def ok(self) -> bool:
        return self.why is None


def available() -> Availability:
    """The binary on PATH and a TUN device this process may open."""
    binary = shutil.which("slirp4netns")
    if binary is None:
        return Availability(None, f"slirp4netns is not installed (apt-get install {PACKAGE})")
    if not os.access(TUN, os.R_OK | os.W_OK):
        return Availability(binary, f"{TUN} cannot be opened by this user (it is usually mode 0666; "
                                    f"here: {_mode(TUN)})")
    return Availability(binary, None)


def _mode(path: str) -> str:
    try:
        return oct(os.stat(path).st_mode & 0o7777)
    except OSError:
        return "missing"


def _opt(opts, name, default=()):
    return getattr(opts, name, None) or default


def default_mode(opts) -> str:
    """The network of a rootless run that names none: slirp4netns, as podman rootless; where it
    cannot run, `private` (loopback only) with a one-line notice, unless the run publishes ports
    (then slirp4netns, whose setup fails saying what is missing)."""
    have = available()
    if have.ok or _opt(opts, "publish") or getattr(opts, "publish_all", False):
        return MODE
    sys.stderr.write(f"imagetool: notice: {have.why}: the container gets --network private (loopback only)\n")
    return "private"


def setup(store, cdir: Path, cid: str, opts, spec: dict, narrator=None) -> None:
    """Give the container its slirp4netns network (see the module docstring). Any other network
    than `private`, `none`, `host` and `container:NAME` is refused when rootless (`rootless`)."""
    mode = getattr(opts, "network", None) or MODE
    if mode != MODE:
        raise NetworkError(f"--network {mode} needs root: a rootless container gets slirp4netns "
                           "(podman rootless uses pasta or slirp4netns)",
                           hint="use --network slirp4netns (the rootless default), private or none")
    if getattr(opts, "ip", None) or _opt(opts, "network_aliases"):
        raise NetworkError("--ip and --network-alias need a bridge network, not slirp4netns")
    have = available()
    if not have.ok:
        raise NetworkError(f"--network slirp4netns: {have.why}")
    cdir = Path(cdir)
    hostname = spec.get("hostname") or cid[:12]
    names = [n for n in [getattr(opts, "name", None), cid[:12]] if n]
    etc = (_opt(opts, "add_hosts"), _opt(opts, "dns"), _opt(opts, "dns_search"))
    hosts.validate(hostname, names, etc[2])
    wanted = attach.wanted_ports(opts, spec)
    _refuse_privileged(wanted)
    started = time.perf_counter()
    path = str(cdir / attach.NETNS)
    with networks.Locked(networks.net_dir(store)):
        mappings = ports.allocate(wanted, attach.published_ports(store)) if wanted else []
        doc = {"netns": path, "network": MODE, "ports": [m.to_cni() for m in mappings], "attachments": []}
        attach.save_cache(cdir, doc)   # from here on, teardown() removes the namespace file
    try:
        netns.create(path)
        argv = _start(have.binary, cdir, path)
        if narrator is not None:
            narrator.report("slirp4netns", " ".join(argv), started)
        for m in mappings:
            t = time.perf_counter()
            request = forward_request(m)
            _api(cdir, request)
            if narrator is not None:
                narrator.report("port forward", f"echo '{json.dumps(request)}' | socat - UNIX:{cdir / SOCKET}", t)
        spec["mounts"] += hosts.write(cdir, hostname, names, [GUEST_IP], etc[0], etc[1] or [DNS], etc[2])
    except BaseException:
        teardown(cdir)
        attach.teardown(cdir)
        raise
    attach.name_in_spec(spec, path)


def _refuse_privileged(mappings) -> None:
    """A rootless user cannot listen below net.ipv4.ip_unprivileged_port_start (1024): said as
    such, not as a port in use."""
    from imagetool import userns

    if not mappings or not (os.geteuid() != 0 or userns.inside()):
        return
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            first = int(f.read())
    except (OSError, ValueError):
        first = 1024
    low = sorted({m.host_port for m in mappings if 0 < m.host_port < first})
    if low:
        raise NetworkError(f"host port {low[0]} is privileged: a rootless container can publish host ports "
                           f"from {first} (net.ipv4.ip_unprivileged_port_start)",
                           hint=f"publish on a host port >= {first}, e.g. -p {first + 7080}:CONTAINERPORT")


def forward_request(m: ports.PortMapping) -> dict:
    """slirp4netns's add_hostfwd request for one published port (host address 0.0.0.0 when -p
    named none: every address of the host)."""
    return {"execute": "add_hostfwd", "arguments": {"proto": m.protocol, "host_addr": m.host_ip or "0.0.0.0",
                                                     "host_port": m.host_port, "guest_port": m.container_port}}


def _start(binary: str, cdir: Path, path: str) -> list[str]:
    """Start slirp4netns on the namespace at `path`, record its PID, wait until it is ready.
    The argv it ran."""
    from imagetool.runtime.supervise import proc_start

    ready_r, ready_w = os.pipe()   # close-on-exec here; handed on by pass_fds
    argv = [binary, "--configure", f"--mtu={MTU}", "--disable-host-loopback", "--enable-sandbox",
            "--enable-seccomp", f"--ready-fd={ready_w}", "--api-socket", SOCKET, "--netns-type=path", path, "tap0"]
    try:
        with open(cdir / LOG, "wb") as log:
            # its own session: a ^C of the terminal reaches imagetool, which then stops it in order;
            # the relative --api-socket with cwd: the container's path may be too long for a socket's
            proc = subprocess.Popen(argv, cwd=cdir, pass_fds=(ready_w,), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, start_new_session=True, preexec_fn=_own_mounts)
    except OSError as e:
        for fd in (ready_r, ready_w):
            os.close(fd)
        raise NetworkError(f"cannot start slirp4netns: {e.strerror}") from None
    os.close(ready_w)
    _owned[str(cdir)] = proc
    _write_state(cdir, {"pid": proc.pid, "pid_start": proc_start(proc.pid)})
    try:
        poller = select.poll()
        poller.register(ready_r, select.POLLIN)
        got = os.read(ready_r, 1) if poller.poll(int(READY_TIMEOUT * 1000)) else None
    finally:
        os.close(ready_r)
    if got != b"1":
        raise NetworkError(f"slirp4netns did not start: {_log_tail(cdir) or 'no message'}")
    return argv


def _own_mounts() -> None:
    """In the child before exec: a mount namespace of its own, every mount private, and SIGKILL
    when imagetool's thread that started it ends.

    --enable-sandbox unshares a mount namespace, pivots into a tmpfs and detaches the old root,
    having made only `/`, /etc and /run private or slaves: run in the caller's mount namespace as
    root of the initial user namespace, that detach would propagate to every shared mount's peers
    (`ip netns add` makes /run/netns shared: the host's named network namespaces would be
    unmounted). In a private copy nothing propagates back."""
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)


def _write_state(cdir: Path, doc: dict) -> None:
    tmp = cdir / f".{STATE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, cdir / STATE)


def _log_tail(cdir: Path) -> str:
    try:
        lines = [line for line in (cdir / LOG).read_text(errors="replace").splitlines()
                 if line.strip() and not line.startswith("WARNING: Support for seccomp")]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _api(cdir: Path, request: dict) -> dict:
    """One request on the API socket; its `return`, or a NetworkError with slirp's description."""
    dirfd = os.open(cdir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
            s.settimeout(READY_TIMEOUT)
            s.connect(f"/proc/self/fd/{dirfd}/{SOCKET}")   # short whatever the container's path
            s.sendall(json.dumps(request).encode())
            s.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
    except OSError as e:
        raise NetworkError(f"slirp4netns's API socket did not answer: {e.strerror or e}") from None
    finally:
        os.close(dirfd)
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        raise NetworkError("slirp4netns's API socket gave no JSON answer") from None
    if "error" in answer:
        desc = (answer["error"] or {}).get("desc", answer["error"])
        args = request.get("arguments", {})
        raise NetworkError(f"slirp4netns cannot forward {args.get('host_addr')}:{args.get('host_port')}"
                           f"/{args.get('proto')}: {desc}")
    return answer.get("return", {})


def read_state(cdir: Path) -> dict | None:
    try:
        return json.loads((Path(cdir) / STATE).read_text())
    except (OSError, ValueError):
        return None


def _stop(pid: int, start: str) -> None:
    """SIGKILL `pid` if it still is the process that started at `start`, and wait until it is
    gone (reaped, when it is this process's child: the monitor's, after its exec hand-over)."""
    from imagetool.runtime.supervise import proc_start

    if proc_start(pid) != start:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5   # a bound, not an expectation: SIGKILL is not ignored
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:   # someone else's child: its reaper reaps it
            if proc_start(pid) != start:
                return
        time.sleep(0.005)


def teardown(cdir: Path) -> None:
    """Stop the container's slirp4netns (by its recorded PID, if it still is that process) and
    remove its state and socket; nothing to do when it has none. attach.teardown removes the
    namespace file after this."""
    cdir = Path(cdir)
    proc = _owned.pop(str(cdir), None)
    doc = read_state(cdir)
    if proc is not None:
        proc.kill()
        proc.wait()
    elif doc and doc.get("pid") and doc.get("pid_start"):
        _stop(doc["pid"], doc["pid_start"])
    for name in (SOCKET, STATE):
        try:
            (cdir / name).unlink()
        except FileNotFoundError:
            pass
