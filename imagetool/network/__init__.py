"""Container networks on the CNI reference plugins (issue 12).

    cni.py       the CNI protocol: run a plugin chain (ADD/CHECK/DEL), results cached for DEL
    netns.py     a network namespace bind-mounted on a file (made, joined by path, removed)
    networks.py  the network configs: the default `imagetool` bridge, create/ls/inspect/rm
    ports.py     -p/--publish parsing, free and busy host ports
    hosts.py     the container's /etc/hosts, /etc/resolv.conf and /etc/hostname (names checked)
    guard.py     a bridge's iptables guards: no host loopback, DNS at its gateway from it only
    attach.py    the one glue containers.run calls: setup before create, teardown on every exit
    slirp.py     rootless (issue 13): slirp4netns on the container's namespace, -p through its API

The default network (a --network left out) is `bridge`, as in docker and podman: default_mode()
resolves it, falling back to `private` with a one-line notice where the CNI plugins are missing.
Rootless (rootless()), the default is slirp4netns instead, as podman's, and CNI networks are refused.
`private` (loopback only), `none` and `host` need none of this: setup() below returns at once
for them, and teardown() costs one stat when a container had no CNI network.
"""

from __future__ import annotations

from pathlib import Path

_CNI_FREE = ("private", "none", "host")
_EXTRAS = ("publish", "publish_all", "ip", "network_aliases", "dns", "dns_search", "add_hosts")
_BRIDGE_ONLY = ("publish", "publish_all", "ip", "network_aliases")
DEFAULT_PLUGINS = ("bridge", "host-local", "portmap", "firewall")   # networks.conflist's chain


def plugins_present() -> bool:
    """Whether the default network's CNI plugins are installed (a few stats)."""
    import os

    from imagetool.network.cni import plugin_path

    dirs = plugin_path()
    return all(any(os.access(os.path.join(d, p), os.X_OK) for d in dirs) for p in DEFAULT_PLUGINS)


def default_mode(opts, script: bool = False) -> str:
    """The --network a run gets when none was given: `bridge` (the default network `imagetool`),
    as docker and podman do. Without the CNI plugins: `private` (loopback only) with a one-line
    notice on stderr, unless the run asks for something only a bridge gives (-p, -P, --ip,
    --network-alias): then `bridge`, whose setup fails naming the package to install. `--script`
    renders no CNI calls: its default is `private`."""
    if script:
        return "private"
    if rootless():   # podman rootless's default: slirp4netns (network/slirp.py)
        from imagetool.network import slirp

        return slirp.default_mode(opts)
    if plugins_present() or any(getattr(opts, n, None) for n in _BRIDGE_ONLY):
        return "bridge"
    import sys

    from imagetool.network.cni import PACKAGE

    sys.stderr.write(f"imagetool: notice: no CNI plugins (apt-get install {PACKAGE}): "
                     "the container gets --network private (loopback only)\n")
    return "private"


def rootless() -> bool:
    """Whether this process is not root of the initial user namespace: a non-root user, or root
    of the user namespace a rootless command runs in (userns.py)."""
    import os

    from imagetool import userns

    return os.geteuid() != 0 or userns.inside()


def _slirp(mode: str) -> bool:
    """slirp4netns for --network slirp4netns, and for every CNI network when rootless (whose
    setup then says that needs root)."""
    return mode == "slirp4netns" or (mode not in _CNI_FREE and not mode.startswith("container:") and rootless())


def setup(store, cdir: Path, cid: str, opts, spec: dict, narrator=None, find=None) -> None:
    """containers.run's hook before create: attach.setup when the options need a network or
    /etc files; nothing is imported or done for a plain private/none/host run. `find(store,
    name) -> (cdir, state)` looks up another container (for --network container:NAME): the
    caller's, so network never imports containers."""
    if (getattr(opts, "network", None) or "private") in _CNI_FREE and not any(getattr(opts, n, None) for n in _EXTRAS):
        return
    if _slirp(getattr(opts, "network", None) or "private"):
        from imagetool.network import slirp

        slirp.setup(store, cdir, cid, opts, spec, narrator)
        return
    from imagetool.network import attach

    attach.setup(store, cdir, cid, opts, spec, narrator, find)


def refuse_in_script(opts) -> None:
    """run --script renders no CNI plugin calls (yet): a bridge network or -p is refused there
    rather than silently left out of the script."""
    mode = getattr(opts, "network", None) or "private"
    if mode not in _CNI_FREE or any(getattr(opts, n, None) for n in _EXTRAS):
        from imagetool.errors import NetworkError

        raise NetworkError("--script does not render bridge networks, -p or the /etc files yet",
                           hint="use --explain to see the plugin calls of a real run")


def teardown(cdir: Path, strict: bool = False) -> None:
    """containers' hook on every way out (run's finally, rm, reconcile): attach.teardown when
    the container has a cached attachment; one stat otherwise."""
    if not (Path(cdir) / "network.json").exists():
        return
    if (Path(cdir) / "slirp.json").exists():   # its slirp4netns first, then the namespace
        from imagetool.network import slirp

        slirp.teardown(cdir)
    from imagetool.network import attach

    attach.teardown(cdir, strict)


def ports_text(cdir: Path) -> str:
    """ps's PORTS column (docker's format); one stat when the container has no CNI network now."""
    if not (Path(cdir) / "network.json").exists():
        return ""
    from imagetool.network import attach

    return attach.ports_text(cdir)


def network_settings(cdir: Path) -> dict:
    """inspect's NetworkSettings in docker's shape (Ports, IPAddress, Gateway, Networks…), from
    the cached attachment (attach.py's network.json); docker's empty values when the container has
    no CNI network now. Here rather than in attach.py: `inspect` reads one file and loads none of
    the set-up code (~8 ms)."""
    import json

    try:
        doc = json.loads((Path(cdir) / "network.json").read_text())
    except (OSError, ValueError):
        doc = None
    doc = doc or {}
    result = ((doc.get("attachments") or [{}])[-1].get("result") or {}) if doc else {}
    ip = next(iter(result.get("ips", [])), {})
    address, _, prefix = ip.get("address", "").partition("/")
    macs = [i.get("mac", "") for i in result.get("interfaces", []) if i.get("sandbox")]
    ports: dict = {}
    for p in doc.get("ports", []):
        ports.setdefault(f"{p['containerPort']}/{p['protocol']}", []).append(
            {"HostIp": p.get("hostIP") or "0.0.0.0", "HostPort": str(p["hostPort"])})
    endpoint = {"IPAddress": address, "IPPrefixLen": int(prefix or 0), "Gateway": ip.get("gateway", ""),
                "MacAddress": macs[0] if macs else ""}
    networks_ = ({doc["network"]: endpoint | {"Aliases": (doc.get("hosts") or {}).get("names", [])}}
                 if doc.get("network") else {})   # container:NAME: the other one's network, none of its own
    return {"SandboxKey": doc.get("netns", ""), "Ports": ports, **endpoint, "Networks": networks_}
