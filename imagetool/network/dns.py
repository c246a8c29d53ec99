"""Name resolution on bridge networks by DNS: aardvark-dns, podman's resolver, fed by the store.

One aardvark-dns process per store answers on the gateway address of every network that has
containers (port 53, in the network namespace the bridges live in), from its config directory
`<store>/networks/aardvark/`: one file per network, named after it, whose first line is the
gateway and whose other lines are `ID IPV4 IPV6 NAME,ALIAS,...` (aardvark-dns's config.md). A
container's /etc/resolv.conf names its gateway; a name that is not a container's is forwarded to
the host's resolvers (aardvark reads /etc/resolv.conf itself). aardvark answers a container only
with the names of its own networks, so two networks stay apart in DNS too.

sync() makes the process and its files match the containers attached now (networks.json caches):
files written (atomically, from outside the directory aardvark reads) and the process started
(`aardvark-dns --config DIR -p 53 run`: it forks, writes DIR/aardvark.pid and serves) when the
first container joins, told to reload (SIGHUP) as containers come and go, stopped by its PID
(checked to be that aardvark-dns of this directory) when the last one leaves. A killed aardvark
is started again by the next sync (a container's setup or teardown, ps/rm/prune's reconcile).
Callers hold the networks lock.

Why aardvark-dns rather than a resolver of our own: it is the packaged, maintained resolver
podman uses with the same one-file-per-network format, handles A/AAAA/PTR, forwarding, and
per-network scoping; a Python resolver would be another long-lived interpreter (~15 MB, ~40 ms
to start) to write and keep correct.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from imagetool.errors import NetworkError
from imagetool.network import hosts

SEARCH = ("/usr/lib/podman/aardvark-dns", "/usr/libexec/podman/aardvark-dns")
PACKAGE = "aardvark-dns"
DIR = "aardvark"
PID_FILE = "aardvark.pid"   # aardvark-dns writes it there (config/constants.rs)
PORT = 53


def binary() -> str | None:
    """aardvark-dns's path ($IMAGETOOL_AARDVARK_DNS, else Debian's and Fedora's places), or None."""
    env = os.environ.get("IMAGETOOL_AARDVARK_DNS")
    for path in ([env] if env is not None else list(SEARCH)):
        if path and os.access(path, os.X_OK):
            return path
    return None


def config_dir(net_dir: Path) -> Path:
    return Path(net_dir) / DIR


def network_file(gateway: str, members) -> str:
    """One network's config: its gateway, then `ID IPV4 IPV6 NAMES` per member ((id, ips, names)),
    names deduplicated, in order."""
    lines = [gateway]
    for cid, ips, names in members:
        v4 = [ip for ip in ips if ":" not in ip]
        v6 = [ip for ip in ips if ":" in ip]
        wanted = ",".join(dict.fromkeys(n for n in names if n and hosts.NAME.fullmatch(n)))   # one plain word each
        if v4 or v6:
            lines.append(f"{cid} {','.join(v4)} {','.join(v6)} {wanted}")
    return "\n".join(lines) + "\n"


def running_pid(d: Path) -> int | None:
    """The PID of the aardvark-dns serving directory `d`, when it still runs (its pid file, checked
    against the process's command line: a reused PID is not it)."""
    try:
        pid = int((d / PID_FILE).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    if state in ("Z", "X") or not cmdline or not cmdline[0].endswith(b"aardvark-dns") or str(d).encode() not in cmdline:
        return None
    return pid


def sync(net_dir: Path, members: dict, trace=None) -> None:
    """Make aardvark-dns serve `members` ({network: (gateway, [(id, ips, names)…])}, networks
    without containers left out): files rewritten, the process started, reloaded or stopped."""
    d = config_dir(net_dir)
    pid = running_pid(d)
    if not members:
        if pid is not None:
            _stop(pid)
        if d.is_dir():
            for p in d.iterdir():
                p.unlink(missing_ok=True)
        return
    path = binary()
    if path is None:
        raise NetworkError("DNS on bridge networks needs aardvark-dns, which is missing",
                           hint=f"install the package {PACKAGE} (apt-get install {PACKAGE})")
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    changed = False
    for name, (gateway, rows) in members.items():
        text = network_file(gateway, rows)
        target = d / name
        try:
            if target.read_text() == text:
                continue
        except OSError:
            pass
        tmp = Path(net_dir) / f".{DIR}.{name}.{os.getpid()}.tmp"   # outside d: aardvark reads every file there
        tmp.write_text(text)
        os.replace(tmp, target)
        changed = True
    for p in d.iterdir():
        if p.name != PID_FILE and p.name not in members:
            p.unlink(missing_ok=True)
            changed = True
    if pid is None:
        _start(path, d, [gw for gw, _ in members.values()], trace)
    elif changed:
        os.kill(pid, signal.SIGHUP)
        _wait_listening(pid, [gw for gw, _ in members.values()])


def _start(path: str, d: Path, gateways: list[str], trace=None) -> None:
    (d / PID_FILE).unlink(missing_ok=True)
    started = time.perf_counter()
    argv = [path, "--config", str(d), "-p", str(PORT), "run"]
    try:   # it forks; the parent exits once the child has written its pid file
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, close_fds=True)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetworkError(f"aardvark-dns did not start: {e}") from None
    if p.returncode != 0:
        text = (p.stderr or p.stdout).decode(errors="replace").strip().splitlines()
        raise NetworkError(f"aardvark-dns did not start: {text[-1] if text else f'exit status {p.returncode}'}")
    pid = running_pid(d)
    if pid is None:
        raise NetworkError(f"aardvark-dns did not start (no live process in {d / PID_FILE})")
    _wait_listening(pid, gateways)
    if trace is not None:
        import shlex

        trace("start aardvark-dns", " ".join(shlex.quote(a) for a in argv), started)


def _listening(pid: int) -> set[str]:
    """The addresses with a UDP socket bound on port 53 in the network namespace of process
    `pid` (aardvark's own: the caller may be in another one, as `rm` run from elsewhere)."""
    out = set()
    try:
        lines = Path(f"/proc/{pid}/net/udp").read_text().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        local = line.split()[1]
        hexip, _, port = local.partition(":")
        if int(port, 16) == PORT:
            out.add(".".join(str(b) for b in reversed(bytes.fromhex(hexip))))
    return out


def _wait_listening(pid: int, gateways: list[str], limit: float = 2.0) -> None:
    """aardvark binds its sockets after it said it is ready (and again after a reload): wait a
    little for them, so the container's first lookup finds it."""
    deadline = time.monotonic() + limit
    while not set(gateways) <= _listening(pid):
        if time.monotonic() > deadline:
            missing = ", ".join(sorted(set(gateways) - _listening(pid)))
            import sys

            sys.stderr.write(f"imagetool: warning: aardvark-dns does not answer on {missing} port {PORT} "
                             "(is the port taken there?): container names will not resolve\n")
            return
        time.sleep(0.005)


def _stop(pid: int) -> None:
    """SIGTERM, then SIGKILL after 2 s, by PID (pidfd: never another process that reused it)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        signal.pidfd_send_signal(fd, signal.SIGTERM)
        import select

        if not select.select([fd], [], [], 2.0)[0]:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
            select.select([fd], [], [], 2.0)
    except OSError:
        pass
    finally:
        os.close(fd)
