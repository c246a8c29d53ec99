"""The glue containers.run calls: a container's networks set up before create, torn down after.

setup(): for a CNI network (`--network bridge` or a user network) the published ports are
checked first, then the cache `network.json` is written, the namespace file `netns` made (its lo up), the
network's plugin chain run (ADD), the namespace's path put in the spec, and
/etc/hosts, /etc/resolv.conf and /etc/hostname bound in. For `private`, `none` and `host` it
only writes the /etc files when --add-host, --dns or --dns-search ask for them.

teardown(): DEL of every cached attachment in reverse, then the namespace file unmounted and
removed. It reads only the cache, so it serves `rm`, `--rm`, a failed start and the next
`ps`/`rm`/`prune` after imagetool was killed; whoever renames the cache first does the work, so
two callers never both run DEL. A failed DEL puts the cache back for the next caller to retry.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import time
from pathlib import Path

from imagetool.errors import NetworkError
from imagetool.network import cni, dns, guard, hosts, netns, networks, ports

CACHE = "network.json"
NETNS = "netns"


def _opt(opts, name, default=()):
    return getattr(opts, name, None) or default


def save_cache(cdir: Path, doc: dict) -> None:
    """Write the container's attachment cache `network.json` atomically (slirp.py's too)."""
    tmp = cdir / f".{CACHE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, cdir / CACHE)


def _static_ip(text: str | None, net: networks.Network) -> dict:
    if not text:
        return {}
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise NetworkError(f"invalid --ip {text!r}") from None
    subnet = ipaddress.ip_network(net.subnet)
    if ip not in subnet or ip in (subnet.network_address, subnet.broadcast_address) or str(ip) == net.gateway:
        raise NetworkError(f"--ip {ip} is not a free host address of network {net.name} ({net.subnet})")
    return {"ips": [f"{ip}/{subnet.prefixlen}"]}


def container_ips(result: dict | None) -> list[str]:
    """The container's addresses from a CNI result (without their prefix length)."""
    return [ip["address"].split("/")[0] for ip in (result or {}).get("ips", []) if "address" in ip]


def published_ports(store) -> set:
    """(protocol, host port) of every port the store's containers publish now."""
    out = set()
    try:
        entries = list(os.scandir(store.containers_dir))
    except FileNotFoundError:
        return out
    for e in entries:
        doc = read(Path(e.path)) or {}
        out.update((p.get("protocol", "tcp"), p.get("hostPort")) for p in doc.get("ports", []))
    return out


def setup(store, cdir: Path, cid: str, opts, spec: dict, narrator=None, find=None) -> None:
    """Attach the container to its network and make the spec use it (see the module docstring)."""
    mode = getattr(opts, "network", None) or "private"
    hostname = spec.get("hostname") or cid[:12]
    names = [n for n in [getattr(opts, "name", None), cid[:12]] + list(_opt(opts, "network_aliases")) if n]
    etc = (_opt(opts, "add_hosts"), _opt(opts, "dns"), _opt(opts, "dns_search"))
    hosts.validate(hostname, names, etc[2])   # before anything is made: nothing to undo
    if mode.startswith("container:"):
        _refuse_without_bridge(opts, mode)
        if any(etc):
            raise NetworkError(f"--add-host, --dns and --dns-search conflict with --network {mode}")
        _join_container(store, cdir, mode.partition(":")[2], spec, find)
        return
    if not networks.is_cni(mode):
        _refuse_without_bridge(opts, mode)
        if mode == "host" and any(etc):
            raise NetworkError("--add-host, --dns and --dns-search are not supported with --network host yet",
                               hint="the container uses the host's own /etc/hosts and /etc/resolv.conf")
        if any(etc):
            spec["mounts"] += hosts.write(cdir, hostname, names, [], *etc)
        return
    started = time.perf_counter()
    net = networks.get(store, mode)
    cni.require(p["type"] for p in net.conflist["plugins"])
    runtime_config = _static_ip(getattr(opts, "ip", None), net)
    wanted = wanted_ports(opts, spec)
    path = str(cdir / NETNS)
    with networks.Locked(networks.net_dir(store)):   # no two containers take the same host port
        mappings = ports.allocate(wanted, published_ports(store)) if wanted else []
        doc = {"netns": path, "network": net.name, "ports": [m.to_cni() for m in mappings], "attachments": []}
        save_cache(cdir, doc)   # from here on, teardown() knows what to undo
    if mappings:
        runtime_config["portMappings"] = [m.to_cni() for m in mappings]
    try:
        guard.guard(net.bridge, net.gateway)   # before portmap turns route_localnet on (guard.py)
        netns.create(path)   # lo up in it: the loopback plugin's job, without its two execs
        if narrator is not None:
            narrator.report("network namespace", f"touch {path} && unshare --net={path} ip link set lo up", started)
        # portmap only when ports are published: its DEL costs iptables calls even with no mapping
        chain = net.conflist if mappings else dict(net.conflist, plugins=[
            p for p in net.conflist["plugins"] if p.get("type") != "portmap"])
        result = _add_chains(cdir, doc, cid, path, ((chain, "eth0", runtime_config),),
                             narrator.report if narrator is not None else None)
        ips = container_ips(result)
        resolver = dns.binary() is not None   # without aardvark-dns: the peers in /etc/hosts only
        nameservers = list(etc[1]) or ([net.gateway] if resolver else [])
        spec["mounts"] += hosts.write(cdir, hostname, names, ips, etc[0], nameservers, etc[2])
        doc["hosts"] = {"hostname": hostname, "names": names, "ips": ips, "add_hosts": list(etc[0]),
                        "gateway": net.gateway, "dns": resolver}
        with networks.Locked(networks.net_dir(store)):
            save_cache(cdir, doc)
            _refresh_peers(cdir.parent, net.name, networks.net_dir(store),
                           narrator.report if narrator is not None else None)
    except BaseException:
        teardown(cdir)
        raise
    name_in_spec(spec, path)


def _join_container(store, cdir: Path, other: str, spec: dict, find) -> None:
    """--network container:NAME: the other container's network namespace, pinned on this one's
    `netns` file (checked to be that container's PID 1 still: no reused PID), and its /etc files."""
    from imagetool.runtime.supervise import proc_start

    ocdir, state = find(store, other)
    pid = state.get("pid")
    if state.get("status") != "running" or not pid:
        raise NetworkError(f"cannot join the network of container {other}: it is not running")
    path = str(cdir / NETNS)
    save_cache(cdir, {"netns": path, "network": "", "ports": [], "attachments": []})
    try:
        own = ocdir / NETNS
        if netns.is_mounted(str(own)):
            netns.adopt(str(own), path)
        else:
            netns.adopt(f"/proc/{pid}/ns/net", path)
            if proc_start(pid) != state.get("pid_start"):
                raise NetworkError(f"cannot join the network of container {other}: it has stopped")
    except BaseException:
        teardown(cdir)
        raise
    name_in_spec(spec, path)
    for name in ("hosts", "resolv.conf"):
        if (ocdir / name).is_file():
            spec["mounts"].append({"destination": f"/etc/{name}", "type": "bind", "source": str(ocdir / name),
                                   "options": ["rbind", "ro"]})


def name_in_spec(spec: dict, path: str) -> None:
    """The spec's network namespace becomes the one at `path` (joined by path, not unshared)."""
    for ns in spec["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = path
    spec.setdefault("annotations", {}).pop("org.imagetool.network", None)


def _refuse_without_bridge(opts, mode: str) -> None:
    if _opt(opts, "publish") or getattr(opts, "publish_all", False):
        raise NetworkError(f"-p/-P need a bridge network, not --network {mode}",
                           hint="use --network bridge (or a user network) to publish ports")
    if _opt(opts, "network_aliases") or getattr(opts, "ip", None):
        raise NetworkError(f"--ip and --network-alias need a bridge network, not --network {mode}")


def wanted_ports(opts, spec: dict) -> list:
    """-p's mappings, and with -P every EXPOSEd port (specgen put them in an annotation)."""
    wanted = ports.parse_all(_opt(opts, "publish"))
    if getattr(opts, "publish_all", False):
        from imagetool.specgen import EXPOSED_ANNOTATION

        exposed = spec.get("annotations", {}).pop(EXPOSED_ANNOTATION, "")
        wanted += ports.parse_all(p for p in exposed.split(",") if p)
    if len(wanted) > ports.MAX_MAPPINGS:   # a hostile image's EXPOSE 1-1024 1025-2048 … with -P
        raise NetworkError(f"{len(wanted)} ports to publish: at most {ports.MAX_MAPPINGS} per container")
    return wanted


def _add_chains(cdir: Path, doc: dict, cid: str, path: str, chains, trace) -> dict | None:
    """ADD each (conflist, ifname, runtime config) in order, every attachment saved in the cache
    before and after its plugins run; the last chain's result."""
    att = None
    for conflist, ifname, rc in chains:
        att = cni.Attachment(cid, path, ifname, conflist, rc)
        doc["attachments"].append(att.to_json())

        def save(a, _i=len(doc["attachments"]) - 1):
            doc["attachments"][_i] = a.to_json()
            save_cache(cdir, doc)

        att = cni.add(att, save, trace)
    return att.result if att is not None else None


def _refresh_peers(containers_dir: Path, network: str, net_dir: Path, trace=None) -> None:
    """After a container joined or left `network` (under the networks lock): aardvark-dns made to
    serve the containers attached now (dns.sync), and, where it is missing, the /etc/hosts of
    every container on `network` rewritten so each lists all the others."""
    attached = []
    for e in os.scandir(containers_dir):
        doc = read(Path(e.path))
        if doc and doc.get("hosts"):
            attached.append((Path(e.path), doc["network"], doc["hosts"]))
    served: dict = {}
    for cdir, net, own in attached:
        if own.get("dns") and own.get("gateway"):
            served.setdefault(net, (own["gateway"], []))[1].append((cdir.name, own["ips"], own["names"]))
    dns.sync(net_dir, served, trace)
    members = [(cdir, own) for cdir, net, own in attached if net == network and not own.get("dns")]
    for cdir, own in members:
        peers = [(ip, other["names"]) for d, other in members if d != cdir for ip in other["ips"]]
        try:
            hosts.rewrite(cdir / "hosts", hosts.hosts_text(own["hostname"], own["names"], own["ips"],
                                                            own.get("add_hosts", []), peers))
        except (OSError, NetworkError):
            continue   # a container going away meanwhile


def read(cdir: Path) -> dict | None:
    """The cached attachments of a container (None when it has no CNI network now)."""
    try:
        return json.loads((Path(cdir) / CACHE).read_text())
    except (OSError, ValueError):
        return None


def port_lines(cdir: Path) -> list[str]:
    """`port CONTAINER`: one `80/tcp -> 127.0.0.1:18080` line per published port (none when the
    container is not attached now)."""
    doc = read(cdir) or {}
    return [str(ports.PortMapping(p["containerPort"], p["hostPort"], p["protocol"], p.get("hostIP", "")))
            for p in doc.get("ports", [])]


def ports_text(cdir: Path) -> str:
    """ps's PORTS column, as docker prints it: `127.0.0.1:18080->80/tcp, 0.0.0.0:41151->80/tcp`."""
    doc = read(cdir) or {}
    return ", ".join(f"{p.get('hostIP') or '0.0.0.0'}:{p['hostPort']}->{p['containerPort']}/{p['protocol']}"
                     for p in doc.get("ports", []))


def network_settings(cdir: Path) -> dict:
    """inspect's NetworkSettings (imagetool.network.network_settings: it reads this module's cache
    without loading the set-up code)."""
    from imagetool import network

    return network.network_settings(cdir)


def teardown(cdir: Path, strict: bool = False) -> None:
    """DEL every cached attachment, remove the namespace file (see the module docstring).
    A failure is a warning on stderr, or a NetworkError with `strict` (rm)."""
    cdir = Path(cdir)
    cache = cdir / CACHE
    claimed = cdir / f".{CACHE}.del.{os.getpid()}"
    try:
        os.rename(cache, claimed)
    except FileNotFoundError:
        return
    try:
        doc = json.loads(claimed.read_text())
    except (OSError, ValueError):
        doc = {}
    if doc.get("hosts"):   # the others on its network forget it (aardvark-dns too: stopped after the last)
        net_dir = cdir.parent.parent / "networks"   # <store>/containers/<id> -> <store>/networks
        try:
            with networks.Locked(net_dir):
                _refresh_peers(cdir.parent, doc.get("network"), net_dir)
        except (OSError, NetworkError) as e:
            sys.stderr.write(f"imagetool: warning: {e}\n")
    first = None
    path = doc.get("netns") or str(cdir / NETNS)
    gone = not netns.is_mounted(path)   # the namespace is gone already: DEL releases leases and rules only
    for a in reversed(doc.get("attachments") or []):
        try:
            att = cni.Attachment.from_json(a)
            if gone:
                att = cni.Attachment(att.container_id, "", att.ifname, att.conflist, att.runtime_config, att.result)
            cni.delete(att)
        except (NetworkError, KeyError, TypeError) as e:
            first = first or e
    try:
        netns.remove(path)
    except NetworkError as e:
        first = first or e
    if first is None:
        claimed.unlink()
        return
    os.replace(claimed, cache)
    if strict:
        raise NetworkError(f"network teardown failed: {first}")
    sys.stderr.write(f"imagetool: warning: network teardown failed (retried by rm/prune): {first}\n")
