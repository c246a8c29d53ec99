"""`-p/--publish [IP:][HOSTPORT:]CONTAINERPORT[/tcp|/udp]` (ranges too) and host port checks.

A mapping with no host port gets a free one from the kernel (bound once to port 0, then
released); a host port that is already in use is refused before any container starts. The
mappings go to the portmap plugin as its `portMappings` runtime config.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
from dataclasses import dataclass

from imagetool.errors import NetworkError

_SPEC = re.compile(r"^(?:(?P<ip>\[[0-9a-fA-F:.]+\]|\d+\.\d+\.\d+\.\d+):)?(?:(?P<host>(?:\d{1,5}(?:-\d{1,5})?)?):)?"
                   r"(?P<cont>\d{1,5}(?:-\d{1,5})?)(?:/(?P<proto>[a-z]+))?$")
MAX_RANGE = 1024   # ports in one -p range: each is a bind check here and a DNAT rule of portmap's
MAX_MAPPINGS = 4096   # ports one container publishes (every -p, and -P's EXPOSEd ones)


@dataclass(frozen=True, slots=True)
class PortMapping:
    """One published port: host_port 0 until a free one is chosen."""

    container_port: int
    host_port: int = 0
    protocol: str = "tcp"
    host_ip: str = ""
    choices: tuple = ()   # -p 8000-8010:80: the host ports to pick one from (allocate)

    def to_cni(self) -> dict:
        out = {"hostPort": self.host_port, "containerPort": self.container_port, "protocol": self.protocol}
        if self.host_ip:
            out["hostIP"] = self.host_ip
        return out

    def __str__(self) -> str:
        ip = f"[{self.host_ip}]" if ":" in self.host_ip else (self.host_ip or "0.0.0.0")
        return f"{self.container_port}/{self.protocol} -> {ip}:{self.host_port}"


def _range(text: str, what: str, spec: str) -> list[int]:
    lo, _, hi = text.partition("-")
    a, b = int(lo), int(hi or lo)
    if not (1 <= a <= b <= 65535):
        raise NetworkError(f"invalid {what} {text!r} in -p {spec}: ports are 1-65535")
    if b - a >= MAX_RANGE:
        raise NetworkError(f"-p {spec}: a range of at most {MAX_RANGE} ports, please (give several -p for more)")
    return list(range(a, b + 1))


def parse(spec: str) -> list[PortMapping]:
    """One -p value as its mappings (a range gives one per port)."""
    m = _SPEC.match(spec.strip())
    if not m:
        shown = spec if len(spec) <= 64 else spec[:60] + "..."   # the error stays one short line
        raise NetworkError(f"invalid -p {shown!r}", hint="use [IP:][HOSTPORT:]CONTAINERPORT[/tcp|/udp]")
    proto = m.group("proto") or "tcp"
    if proto not in ("tcp", "udp", "sctp"):
        raise NetworkError(f"invalid protocol {proto!r} in -p {spec} (tcp, udp or sctp)")
    ip = (m.group("ip") or "").strip("[]")
    if ip:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            raise NetworkError(f"invalid host IP {ip!r} in -p {spec}") from None
        if addr.version != 4:
            raise NetworkError(f"-p {spec}: IPv6 host addresses are not supported yet (the networks are IPv4)")
        ip = str(addr)
    conts = _range(m.group("cont"), "container port", spec)
    hosts = _range(m.group("host"), "host port", spec) if m.group("host") else [0] * len(conts)
    if len(hosts) != len(conts):
        if len(conts) == 1:
            # docker: -p 8000-8010:80 picks one host port of the range; allocate takes the first free
            return [PortMapping(conts[0], 0, proto, ip, tuple(hosts))]
        raise NetworkError(f"-p {spec}: the host and container port ranges differ in length")
    return [PortMapping(c, h, proto, ip) for c, h in zip(conts, hosts)]


def parse_all(specs) -> list[PortMapping]:
    out: list[PortMapping] = []
    for s in specs or ():
        out += parse(s)
    return out


def _sock(proto: str, ip: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    return socket.socket(family, kind)


def _try_bind(proto: str, ip: str, port: int) -> int | None:
    """The port bound on (ip, port) then released, or None when it is in use."""
    if proto == "sctp":
        if port:
            return port   # no SCTP socket to check it with in most kernels (module not loaded)
        raise NetworkError("-p …/sctp needs a host port (HOSTPORT:CONTAINERPORT/sctp): "
                           "no free SCTP port can be chosen here")
    s = _sock(proto, ip)
    try:
        if proto == "tcp":   # TIME_WAIT leftovers are no user; for UDP it would share a live service's port
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip or ("::" if s.family == socket.AF_INET6 else "0.0.0.0"), port))
        return s.getsockname()[1]
    except OSError as e:
        if e.errno == errno.EADDRNOTAVAIL:
            raise NetworkError(f"-p {ip}:…: {ip} is not an address of this host") from None
        return None
    finally:
        s.close()


def allocate(mappings, published=()) -> list[PortMapping]:
    """The mappings with a free host port chosen for each 0; a host port that a process holds or
    that another container publishes (`published`: (protocol, port) pairs; portmap's DNAT binds
    no socket) is refused."""
    out, seen = [], set(published)
    for m in mappings:
        if m.choices:
            port = next((p for p in m.choices if (m.protocol, p) not in seen and _try_bind(m.protocol, m.host_ip, p)),
                        None)
            if port is None:
                raise NetworkError(f"every host port of {m.choices[0]}-{m.choices[-1]}/{m.protocol} is in use")
            seen.add((m.protocol, port))
            out.append(PortMapping(m.container_port, port, m.protocol, m.host_ip))
            continue
        for _ in range(20):
            port = _try_bind(m.protocol, m.host_ip, m.host_port)
            if m.host_port or port is None or (m.protocol, port) not in seen:
                break
        if port is None or (m.protocol, port) in seen:
            raise NetworkError(f"host port {m.host_port}/{m.protocol} is already in use",
                               hint="choose another host port, or -p CONTAINERPORT for a free one")
        seen.add((m.protocol, port))
        out.append(PortMapping(m.container_port, port, m.protocol, m.host_ip))
    return out
