"""A bridge's guard against packets for the host's loopback (CVE-2020-8558's class).

The portmap plugin turns `route_localnet` on for the bridge, so that `-p 127.0.0.1:PORT:…`
works (the host's own loopback traffic is DNATed out of the bridge). With it on, the host would
also take a frame that a container sends to its gateway addressed to 127.0.0.0/8 as one for its
loopback services: a container process with CAP_NET_RAW (one of the default capabilities) could
reach them. Kubernetes answered with a DROP rule (KUBE-FIREWALL); here one rule per bridge,
before conntrack and the NAT tables see the packet:

    iptables -w -t raw -I PREROUTING -i BRIDGE -d 127.0.0.0/8 -j DROP

Nothing legitimate arrives on a bridge for 127.0.0.0/8 (replies to DNATed loopback connections
are addressed to the bridge's address, which MASQUERADE chose). guard() adds it once (it lives as
long as the bridge, which the bridge plugin never removes); unguard() removes it with the bridge
(`network rm`).
"""

from __future__ import annotations

import shutil
import subprocess

from imagetool.errors import NetworkError

_RULE = ("PREROUTING", "-d", "127.0.0.0/8", "-j", "DROP")


def _argv(action: str, bridge: str) -> list[str]:
    binary = shutil.which("iptables") or shutil.which("iptables", path="/usr/sbin:/sbin")
    if binary is None:
        raise NetworkError("iptables is missing: the bridge's loopback guard cannot be set",
                           hint="install the package iptables (the CNI portmap plugin needs it too)")
    return [binary, "-w", "-t", "raw", action, _RULE[0], "-i", bridge, *_RULE[1:]]


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)


def guard(bridge: str) -> None:
    """Drop packets for 127.0.0.0/8 arriving on `bridge` (added once; a NetworkError if it cannot be)."""
    if _run(_argv("-C", bridge)).returncode == 0:
        return
    r = _run(_argv("-I", bridge))
    if r.returncode != 0:
        raise NetworkError(f"cannot add the loopback guard of bridge {bridge}: "
                           f"{(r.stderr.strip().splitlines() or ['iptables failed'])[-1]}")


def unguard(bridge: str) -> None:
    """Remove the rule of `bridge` (every copy; none is fine)."""
    try:
        for _ in range(8):
            if _run(_argv("-D", bridge)).returncode != 0:
                return
    except NetworkError:
        return
