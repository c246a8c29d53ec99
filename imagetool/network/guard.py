"""A bridge network's guards on the host's input: what reaches the host from a bridge, and from where.

Two holes the CNI plugins leave, each closed by rules per bridge that live as long as the bridge
(the bridge plugin never removes a bridge; `network rm` removes both):

  loopback  portmap turns `route_localnet` on for the bridge, so that `-p 127.0.0.1:PORT:…` works
            (the host's own loopback traffic is DNATed out of the bridge). With it on, the host
            also takes a frame that a container sends to its gateway addressed to 127.0.0.0/8 as
            one for its loopback services: a container process with CAP_NET_RAW (a default
            capability) reaches them (CVE-2020-8558's class; Kubernetes drops them too). Nothing
            legitimate arrives on a bridge for 127.0.0.0/8 (replies to DNATed loopback
            connections are addressed to the bridge's address, which MASQUERADE chose):
                iptables -t raw -I PREROUTING -i BRIDGE -d 127.0.0.0/8 -j DROP
  DNS       aardvark-dns (dns.py) listens on every network's gateway, addresses of the host: a
            container of another network (its packets reach the host's input from its own
            bridge) or a machine the host routes for would get this network's names there, and
            a forwarding resolver. Only this network's bridge may ask at its gateway:
                iptables -I INPUT -d GATEWAY ! -i BRIDGE -p udp --dport 53 -j DROP   (and tcp)

guard() checks for the last rule (one `iptables -C`: the common case) and adds whichever are
missing; unguard() removes them (none is fine).
"""

from __future__ import annotations

import shutil
import subprocess

from imagetool.errors import NetworkError


def rules(bridge: str, gateway: str) -> list[tuple[str, ...]]:
    """The (table, chain, match…) of each rule of `bridge`, the one checked first last."""
    return [("raw", "PREROUTING", "-i", bridge, "-d", "127.0.0.0/8", "-j", "DROP")] + [
        ("filter", "INPUT", "-d", f"{gateway}/32", "!", "-i", bridge, "-p", proto, "-m", proto, "--dport", "53",
         "-j", "DROP") for proto in ("tcp", "udp")]


def _iptables() -> str:
    binary = shutil.which("iptables") or shutil.which("iptables", path="/usr/sbin:/sbin")
    if binary is None:
        raise NetworkError("iptables is missing: the bridge's guards cannot be set",
                           hint="install the package iptables (the CNI plugins need it too)")
    return binary


def _run(binary: str, action: str, rule: tuple[str, ...]) -> subprocess.CompletedProcess:
    table, chain, *match = rule
    return subprocess.run([binary, "-w", "-t", table, action, chain, *match], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)


def guard(bridge: str, gateway: str) -> None:
    """Make sure the rules of `bridge` are there (a NetworkError when one cannot be added)."""
    binary = _iptables()
    wanted = rules(bridge, gateway)
    if _run(binary, "-C", wanted[-1]).returncode == 0:
        return
    for rule in wanted:
        if _run(binary, "-C", rule).returncode == 0:
            continue
        r = _run(binary, "-I", rule)
        if r.returncode != 0:
            raise NetworkError(f"cannot add a guard rule of bridge {bridge}: "
                               f"{(r.stderr.strip().splitlines() or ['iptables failed'])[-1]}")


def unguard(bridge: str, gateway: str) -> None:
    """Remove the rules of `bridge` (every copy; none is fine)."""
    try:
        binary = _iptables()
    except NetworkError:
        return
    for rule in rules(bridge, gateway):
        for _ in range(8):
            if _run(binary, "-D", rule).returncode != 0:
                break
