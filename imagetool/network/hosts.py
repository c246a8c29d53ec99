"""The container's /etc/hosts, /etc/resolv.conf and /etc/hostname, written in its directory.

On a bridge or user network the containers find each other by DNS: resolv.conf names the
network's gateway, where aardvark-dns answers (dns.py). Only where aardvark-dns is missing does
each container's /etc/hosts list the other containers of its network (name, short id,
--network-alias), rewritten in place as they come and go.

They are bind-mounted over the image's files (as docker does), so the image is never changed
and the files go with the container's directory. resolv.conf is the host's without loopback
nameservers (they do not answer inside the container's namespace); --dns and --dns-search
replace the host's servers and search list; with no server left, docker's public defaults.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from imagetool.errors import NetworkError

FALLBACK_DNS = ("8.8.8.8", "8.8.4.4")   # docker's, when the host has only loopback resolvers
HOST_RESOLV = "/etc/resolv.conf"
_HOSTNAME = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9.-]{0,252})?")
# a name in /etc/hosts, aardvark-dns's config or a search list: one word of these characters, never
# a blank, a line break, a comma or a quote that would start another entry or field
NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,252}")
HOSTNAME_MAX = 64   # the kernel's (sethostname)


def _shown(text: str) -> str:
    return repr(text if len(text) <= 64 else text[:60] + "...")


def validate(hostname: str, names, dns_search) -> None:
    """Refuse a hostname, container name, --network-alias or --dns-search that is not one plain
    word (each goes into line-oriented files: /etc/hosts, resolv.conf, aardvark-dns's config)."""
    if not NAME.fullmatch(hostname) or len(hostname) > HOSTNAME_MAX:
        raise NetworkError(f"invalid hostname {_shown(hostname)}",
                           hint=f"use letters, digits, '.', '-' and '_', at most {HOSTNAME_MAX}")
    for n in names:
        if not NAME.fullmatch(n):
            raise NetworkError(f"invalid --network-alias or container name {_shown(n)}",
                               hint="use letters, digits, '.', '-' and '_'")
    for d in dns_search:
        if d != "." and not NAME.fullmatch(d):
            raise NetworkError(f"invalid --dns-search {_shown(d)}", hint="give a domain, or '.' for none")


_SCOPE = re.compile(r"[a-zA-Z0-9_.-]{1,15}")   # an IPv6 zone: an interface name or index


def _ip(text: str, what: str) -> str:
    try:
        ip = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        ip = None
    # Python takes any text after '%' as the zone ("fe80::1%a\nnameserver 6.6.6.6"): one word only
    if ip is None or (getattr(ip, "scope_id", None) is not None and not _SCOPE.fullmatch(ip.scope_id)):
        raise NetworkError(f"invalid IP address {_shown(text)} in {what}")
    return str(ip)


def parse_add_host(text: str) -> tuple[str, str]:
    """--add-host NAME:IP (IPv6 as NAME:[::1] or NAME:::1) -> (name, ip)."""
    name, sep, ip = text.partition(":")
    if not sep or not name or not _HOSTNAME.fullmatch(name):
        raise NetworkError(f"invalid --add-host {text!r}", hint="use NAME:IP")
    return name, _ip(ip, f"--add-host {text}")


def hosts_text(hostname: str, names: list[str], ips: list[str], add_hosts: list[str], peers=()) -> str:
    """/etc/hosts: localhost, the container's own names, --add-host entries, then `peers`
    ((ip, names) of the other containers on its network: how they find each other by name)."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    aliases = " ".join(dict.fromkeys([hostname] + list(names)))
    lines += [f"{ip}\t{aliases}" for ip in ips] or [f"127.0.1.1\t{aliases}"]
    lines += [f"{ip}\t{name}" for name, ip in (parse_add_host(h) for h in add_hosts)]
    lines += [f"{ip}\t{' '.join(peer_names)}" for ip, peer_names in peers]
    return "\n".join(lines) + "\n"


def rewrite(path: Path, text: str) -> None:
    """Replace a hosts file's content in place: the container sees its bind-mounted inode change
    (a rename would leave it the old file). Never follows a link."""
    import os

    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def resolv_text(host_text: str, dns: list[str], dns_search: list[str]) -> str:
    servers, search, options = [], [], []
    for line in host_text.splitlines():
        words = line.split()
        if not words or words[0].startswith(("#", ";")):
            continue
        if words[0] == "nameserver" and len(words) > 1:
            try:
                if not ipaddress.ip_address(words[1].split("%")[0]).is_loopback:
                    servers.append(words[1])
            except ValueError:
                continue
        elif words[0] in ("search", "domain"):
            search = words[1:]
        elif words[0] == "options":
            options += words[1:]
    if dns:
        servers = [_ip(s, "--dns") for s in dns]
    if dns_search:
        search = [] if list(dns_search) == ["."] else list(dns_search)
    servers = servers or list(FALLBACK_DNS)
    out = [f"nameserver {s}" for s in servers]
    if search:
        out.append("search " + " ".join(search))
    if options:
        out.append("options " + " ".join(options))
    return "\n".join(out) + "\n"


def write(cdir: Path, hostname: str, names: list[str], ips: list[str], add_hosts=(), dns=(), dns_search=()) -> list[dict]:
    """Write the three files in `cdir` and return the spec mounts (binds) that put them in /etc."""
    try:
        host_text = Path(HOST_RESOLV).read_text()
    except OSError:
        host_text = ""
    files = {"hosts": hosts_text(hostname, names, ips, list(add_hosts)),
             "resolv.conf": resolv_text(host_text, list(dns), list(dns_search)),
             "hostname": hostname + "\n"}
    mounts = []
    for name, text in files.items():
        path = cdir / name
        path.write_text(text)
        path.chmod(0o644)
        mounts.append({"destination": f"/etc/{name}", "type": "bind", "source": str(path),
                       "options": ["rbind", "rprivate"]})
    return mounts
