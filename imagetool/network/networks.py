"""Network configs: the default `imagetool` bridge and user networks (create, ls, inspect, rm).

Each network is a CNI conflist kept in `<store>/networks/<name>.conflist`: a bridge (the host
side of every container's veth, the gateway, outbound NAT with ipMasq), host-local IPAM with
its leases in `<store>/networks/ipam/<name>/`, portmap (-p) and firewall (forwarding to the
containers allowed, and `ingressPolicy: same-bridge`: one network's containers cannot reach
another's, the plugin's CNI-ISOLATION chains as docker's). A subnet left out is
the first /24 of 10.88.0.0/14 that overlaps no route of the current network namespace and no
other network's subnet. The default network is made on first use.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from imagetool.errors import NetworkError

DEFAULT = "imagetool"
DEFAULT_BRIDGE = "imagetool"   # + 6 hex digits (_bridge_name)
RESERVED = ("private", "none", "host", "bridge", "default")   # modes, not networks
CANDIDATES = ipaddress.ip_network("10.88.0.0/14")
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}")
MIN_PREFIX = 8
_NOT_FOR_BRIDGES = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4"))
_LOCK = ".lock"


@dataclass(frozen=True, slots=True)
class Network:
    """A network as `network ls/inspect` show it."""

    name: str
    bridge: str
    subnet: str
    gateway: str
    conflist: dict

    def to_dict(self) -> dict:
        return {"Name": self.name, "Driver": "bridge", "Bridge": self.bridge,
                "Subnets": [{"Subnet": self.subnet, "Gateway": self.gateway}], "CNI": self.conflist}


def net_dir(store) -> Path:
    return Path(store.root) / "networks"


def is_cni(mode: str | None) -> bool:
    """Whether --network MODE names a CNI network (bridge or a user network)."""
    return bool(mode) and mode not in ("private", "none", "host") and not mode.startswith("container:")


def resolve_name(mode: str) -> str:
    """--network bridge|default -> the default network's name; a user network's name as given."""
    return DEFAULT if mode in ("bridge", "default") else mode


def _validate(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise NetworkError(f"invalid network name {name!r}", hint="use [a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 64")
    if name in RESERVED:
        raise NetworkError(f"network name {name!r} is reserved (a --network mode)")
    from imagetool.network.dns import PID_FILE

    if name == PID_FILE:   # each network's aardvark-dns config is a file named after it, beside this one
        raise NetworkError(f"network name {name!r} is reserved (aardvark-dns's pid file)")


def _bridge_name(name: str) -> str:
    """A bridge name of its own for each network made (`imagetool` + 6 hex for a store's default
    network, `it-` + 12 hex for a user network): two stores on one host, or a store made again
    where an older one's bridge is still up, never share (and fight over) a bridge."""
    return (DEFAULT_BRIDGE if name == DEFAULT else "it-") + os.urandom(6 if name != DEFAULT else 3).hex()


def _host_routes() -> list:
    """The IPv4 routes of the current network namespace (/proc/net/route), as networks."""
    out = []
    try:
        with open("/proc/net/route") as f:
            next(f)
            for line in f:
                cols = line.split()
                dst, mask = int(cols[1], 16), int(cols[7], 16)
                if mask == 0:
                    continue  # the default route overlaps everything; it is no collision
                a = ipaddress.IPv4Address(dst.to_bytes(4, "little"))
                m = ipaddress.IPv4Address(mask.to_bytes(4, "little"))
                out.append(ipaddress.ip_network(f"{a}/{m}", strict=False))
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    return out


def _pick_subnet(taken) -> ipaddress.IPv4Network:
    for cand in CANDIDATES.subnets(new_prefix=24):
        if not any(cand.overlaps(t) for t in taken):
            return cand
    raise NetworkError("no free subnet in 10.88.0.0/14", hint="give one with network create --subnet CIDR")


def conflist(name: str, bridge: str, subnet: str, gateway: str, ipam_dir: Path) -> dict:
    """The CNI config list of a bridge network."""
    return {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": True, "hairpinMode": True,
             "capabilities": {"ips": True},
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet, "gateway": gateway}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(ipam_dir)}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "firewall", "backend": "iptables", "ingressPolicy": "same-bridge"},   # networks isolated
        ],
    }


def _from_conflist(doc: dict) -> Network:
    bridge = doc["plugins"][0]
    r = bridge["ipam"]["ranges"][0][0]
    return Network(doc["name"], bridge["bridge"], r["subnet"], r["gateway"], doc)


class Locked:
    """An exclusive flock on the networks directory (configs, host port choice)."""

    def __init__(self, d: Path):
        self.d = d

    def __enter__(self):
        import fcntl

        self.d.mkdir(mode=0o700, exist_ok=True)
        self.fd = os.open(self.d / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def _read(d: Path, name: str) -> Network | None:
    if not _NAME.fullmatch(name):   # never a path: `--network ../../x` or `network rm /x` named files outside
        raise NetworkError(f"invalid network name {name[:64]!r}", hint="use [a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 64")
    try:
        return _from_conflist(json.loads((d / f"{name}.conflist").read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise NetworkError(f"network {name}: unreadable config {d / (name + '.conflist')}: {e}") from None


def _all(d: Path) -> list[Network]:
    try:
        names = sorted(n for n in (p[:-len(".conflist")] for p in os.listdir(d) if p.endswith(".conflist"))
                       if _NAME.fullmatch(n))
    except FileNotFoundError:
        return []
    return [n for n in (_read(d, name) for name in names) if n is not None]


def _create_locked(d: Path, name: str, subnet: str | None, gateway: str | None) -> Network:
    if _read(d, name) is not None:
        raise NetworkError(f"network {name} already exists")
    others = [ipaddress.ip_network(n.subnet) for n in _all(d)]
    if subnet:
        try:
            net = ipaddress.ip_network(subnet, strict=False)
        except ValueError:
            raise NetworkError(f"invalid --subnet {subnet!r}: give a CIDR like 10.90.0.0/24") from None
        if net.version != 4 or net.prefixlen > 30:
            raise NetworkError(f"--subnet {subnet}: an IPv4 subnet of /30 or larger is needed")
        if net.prefixlen < MIN_PREFIX:
            raise NetworkError(f"--subnet {net}: at most a /{MIN_PREFIX} (a bridge's subnet is routed to it alone)")
        special = next((r for r in _NOT_FOR_BRIDGES if r.overlaps(net)), None)
        if special is not None:
            raise NetworkError(f"--subnet {net} overlaps {special} (this host's, loopback, link-local or multicast)")
        clash = next((o for o in others if o.overlaps(net)), None)
        if clash:
            raise NetworkError(f"--subnet {net} overlaps another network's subnet {clash}")
    else:
        net = _pick_subnet(others + _host_routes())
    if gateway:
        try:
            gw = ipaddress.ip_address(gateway)
        except ValueError:
            raise NetworkError(f"invalid --gateway {gateway!r}") from None
        if gw not in net or gw in (net.network_address, net.broadcast_address):
            raise NetworkError(f"--gateway {gw} is not a host address of the subnet {net}")
    else:
        gw = net.network_address + 1
    doc = conflist(name, _bridge_name(name), str(net), str(gw), d / "ipam")
    tmp = d / f".{name}.conflist.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, d / f"{name}.conflist")
    return _from_conflist(doc)


def create(store, name: str, subnet: str | None = None, gateway: str | None = None) -> Network:
    """A new user network (its bridge is made when the first container joins)."""
    _validate(name)
    with Locked(net_dir(store)) as lk:
        return _create_locked(lk.d, name, subnet, gateway)


def get(store, mode: str) -> Network:
    """The network a --network value names; the default one is created on first use."""
    name = resolve_name(mode)
    d = net_dir(store)
    found = _read(d, name)
    if found is not None:
        return found
    if name != DEFAULT:
        raise NetworkError(f"no such network: {name}", hint="create it with `imagetool network create NAME`")
    with Locked(d):
        return _read(d, name) or _create_locked(d, name, None, None)


def list_networks(store) -> list[Network]:
    return _all(net_dir(store))


def inspect(store, name: str) -> dict:
    """docker network inspect's essentials: the config and the ids of the containers on it."""
    net = _read(net_dir(store), name)
    if net is None:
        raise NetworkError(f"no such network: {name}")
    return net.to_dict() | {"Containers": users(store, name)}


def users(store, name: str) -> list[str]:
    """The ids of containers attached to network `name` (from their cached attachments)."""
    out = []
    try:
        entries = list(os.scandir(store.containers_dir))
    except FileNotFoundError:
        return out
    for e in entries:
        try:
            doc = json.loads(Path(e.path, "network.json").read_text())
        except (OSError, ValueError):
            continue
        if any(a.get("conflist", {}).get("name") == name for a in doc.get("attachments", [])):
            out.append(e.name)
    return out


def remove(store, name: str) -> str:
    """Remove a user network that no container uses (its bridge too, when it exists here)."""
    d = net_dir(store)
    with Locked(d):
        net = _read(d, name)
        if net is None:
            raise NetworkError(f"no such network: {name}")
        used = users(store, name)
        if used:
            raise NetworkError(f"network {name} is in use by {len(used)} container(s): {used[0][:12]}",
                               hint="remove those containers first")
        (d / f"{name}.conflist").unlink()
        import shutil
        import subprocess

        shutil.rmtree(d / "ipam" / name, ignore_errors=True)
        subprocess.run(["ip", "link", "delete", net.bridge, "type", "bridge"], capture_output=True)
        from imagetool.network import guard

        guard.unguard(net.bridge, net.gateway)
    return name
