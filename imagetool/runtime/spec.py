"""Helpers for building and reading an OCI runtime spec: sizes, env, volumes, defaults.

Pure functions on strings and dicts; no syscalls. `imagetool.specgen` assembles the spec with them
and `imagetool.runtime.init` reads it back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from imagetool.errors import ImagetoolError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
    "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# Docker's (runc's) device allow-list after a deny-all: mknod of any node, but read/write only of
# null zero full random urandom tty console ptmx, the pty slaves (136:*) and tun (10:200).
ALLOWED_DEVICES = (("c", None, None, "m"), ("b", None, None, "m"), ("c", 1, 3, "rwm"), ("c", 1, 5, "rwm"),
                   ("c", 1, 7, "rwm"), ("c", 1, 8, "rwm"), ("c", 1, 9, "rwm"), ("c", 5, 0, "rwm"),
                   ("c", 5, 1, "rwm"), ("c", 5, 2, "rwm"), ("c", 136, None, "rwm"), ("c", 10, 200, "rwm"))


def device_rules() -> list[dict]:
    """linux.resources.devices: deny everything, then allow ALLOWED_DEVICES (None: any number)."""
    rules: list[dict] = [{"allow": False, "access": "rwm"}]
    for type_, major, minor, access in ALLOWED_DEVICES:
        rule = {"allow": True, "type": type_, "access": access}
        if major is not None:
            rule["major"] = major
        if minor is not None:
            rule["minor"] = minor
        rules.append(rule)
    return rules

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_RE = r"^\s*(\d+(?:\.\d+)?)\s*([kmgtb]?)b?\s*$"   # (compiled on first use: re's cache)


def parse_memory(text: str, what: str = "memory") -> int:
    """Docker's memory strings: `7m`, `1g`, `512k`, `1.5g`, `7mb`, plain bytes (binary units)."""
    m = re.match(_SIZE_RE, str(text), re.IGNORECASE)
    if not m:
        raise ImagetoolError(f"invalid {what} size {text!r}", hint="use bytes or a number with k, m, g (e.g. 7m)")
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0:
        raise ImagetoolError(f"invalid {what} size {text!r}: must be positive")
    return value


@dataclass(frozen=True, slots=True, eq=False, repr=False, init=False)
class Volume:
    """A bind mount from the host: `-v SRC:DST[:ro|rw]` (ro: read-only all the way down, "rro",
    submounts of SRC included). Never compared: no generated __eq__/__hash__ to compile at `run`;
    __init__ and __repr__ written out as dataclass would generate them."""

    source: str
    destination: str
    readonly: bool = False

    def __init__(self, source: str, destination: str, readonly: bool = False) -> None:
        _set = object.__setattr__   # frozen: as the generated __init__ does
        _set(self, "source", source)
        _set(self, "destination", destination)
        _set(self, "readonly", readonly)

    def __repr__(self) -> str:
        return f"Volume(source={self.source!r}, destination={self.destination!r}, readonly={self.readonly!r})"

    def to_mount(self) -> dict:
        return {"destination": self.destination, "type": "bind", "source": self.source,
                "options": ["rbind", "ro", "rro"] if self.readonly else ["rbind", "rw"]}


def parse_volume(text: str) -> Volume:
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise ImagetoolError(f"invalid volume {text!r}", hint="use -v /host/path:/container/path[:ro]")
    src, dst = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise ImagetoolError(f"invalid volume mode {mode!r} in {text!r} (use ro or rw)")
    if not src.startswith("/"):
        raise ImagetoolError(f"invalid volume {text!r}: named volumes are not supported",
                             hint="give an absolute host path")
    if not dst.startswith("/"):
        raise ImagetoolError(f"invalid volume {text!r}: the destination must be an absolute path")
    if _clean(dst) == "/":
        raise ImagetoolError(f"invalid volume {text!r}: the destination can't be '/'")
    if not Path(src).exists():
        raise ImagetoolError(f"volume source {src} does not exist")
    return Volume(str(Path(src).resolve()), _clean(dst), mode == "ro")


def _clean(path: str) -> str:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    out: list[str] = []
    for p in parts:
        if p == "..":
            if out:
                out.pop()
        else:
            out.append(p)
    return "/" + "/".join(out)


def read_env_file(path: str) -> list[str]:
    """docker's --env-file: KEY=VALUE lines, `#` comments, a bare KEY takes the host's value."""
    import os

    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ImagetoolError(f"cannot read env file {path}: {e.strerror}") from None
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" in line:
            out.append(line)
        elif line in os.environ:
            out.append(f"{line}={os.environ[line]}")
    return out


def merge_env(base: list[str], overrides: list[str]) -> list[str]:
    """Later KEY=VALUE entries replace earlier ones with the same key; order of first appearance kept."""
    import os

    result: dict[str, str] = {}
    for item in list(base) + list(overrides):
        if "=" in item:
            k, v = item.split("=", 1)
        elif item in os.environ:  # `-e NAME`: the host's value, like docker
            k, v = item, os.environ[item]
        else:
            continue
        if not k:
            raise ImagetoolError(f"invalid environment variable {item!r}")
        result[k] = v
    return [f"{k}={v}" for k, v in result.items()]


def env_get(env: list[str], key: str) -> str | None:
    for item in env:
        if item.startswith(key + "="):
            return item[len(key) + 1:]
    return None


# ------------------------------------------------------------------ docker's security options


RLIM_INFINITY = (1 << 64) - 1
ULIMITS = ("core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc",
           "rss", "rtprio", "rttime", "sigpending", "stack")


def parse_ulimit(text: str) -> dict:
    """`--ulimit NAME=SOFT[:HARD]` -> a process.rlimits entry (-1: unlimited; HARD defaults to SOFT)."""
    name, sep, values = text.partition("=")
    name = name.strip().lower()
    if not sep or name not in ULIMITS:
        raise ImagetoolError(f"invalid ulimit {text!r}",
                             hint=f"use NAME=SOFT[:HARD] with NAME one of {', '.join(ULIMITS)}")
    soft_text, _, hard_text = values.partition(":")
    try:
        soft, hard = int(soft_text), int(hard_text or soft_text)
    except ValueError:
        raise ImagetoolError(f"invalid ulimit {text!r}: the limits must be integers (-1: unlimited)") from None
    soft, hard = (RLIM_INFINITY if v == -1 else v for v in (soft, hard))
    if not (0 <= soft <= RLIM_INFINITY and 0 <= hard <= RLIM_INFINITY):
        raise ImagetoolError(f"invalid ulimit {text!r}: a limit is out of range")
    if soft > hard:
        raise ImagetoolError(f"invalid ulimit {text!r}: the soft limit is above the hard limit")
    return {"type": f"RLIMIT_{name.upper()}", "hard": hard, "soft": soft}


_TMPFS_DEFAULTS = ("nosuid", "nodev", "noexec")
_TMPFS_OPPOSITES = {"suid": "nosuid", "dev": "nodev", "exec": "noexec"}


def parse_tmpfs(text: str) -> dict:
    """`--tmpfs DST[:OPTIONS]` -> a tmpfs mount (docker's defaults nosuid,nodev,noexec unless
    the options say suid, dev or exec)."""
    dst, _, opts = text.partition(":")
    if not dst.startswith("/") or _clean(dst) == "/":
        raise ImagetoolError(f"invalid tmpfs {text!r}: the destination must be an absolute path other than /")
    options = [o.strip() for o in opts.split(",") if o.strip()]
    defaults = [d for d in _TMPFS_DEFAULTS if not any(_TMPFS_OPPOSITES.get(o) == d for o in options)]
    return {"destination": _clean(dst), "type": "tmpfs", "source": "tmpfs", "options": defaults + options}


# docker's namespaced sysctls: IPC's (the container has its own IPC namespace), fs.mqueue.*
# (same), net.* (its own network namespace, so not with --network host)
_IPC_SYSCTLS = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
                "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced")
_SYSCTL_RE = r"^[A-Za-z0-9_][A-Za-z0-9_@:+-]*(\.[A-Za-z0-9_@:+-]+)+$"   # (compiled on first use)


def parse_sysctl(text: str, host_network: bool = False) -> tuple[str, str]:
    """`--sysctl KEY=VALUE` -> (key with dots, value); a sysctl that is not namespaced is refused."""
    key, sep, value = text.partition("=")
    key = key.strip().replace("/", ".")
    if not sep or not re.match(_SYSCTL_RE, key):
        raise ImagetoolError(f"invalid sysctl {text!r}", hint="use --sysctl KEY=VALUE, e.g. net.ipv4.ip_forward=1")
    if key in _IPC_SYSCTLS or key.startswith("fs.mqueue."):
        return key, value
    if key.startswith("net."):
        if host_network:
            raise ImagetoolError(f"sysctl {key} is not allowed with --network host: it would change the host's network")
        return key, value
    raise ImagetoolError(f"sysctl {key} is not allowed in a container: it is not namespaced",
                         hint="namespaced ones: kernel.msg*, kernel.sem, kernel.shm*, fs.mqueue.*, net.*")


def parse_security_opts(items) -> tuple[str | None, bool | None]:
    """`--security-opt` values -> (seccomp: None (default) | "unconfined" | FILE, no_new_privileges:
    None (default) | True | False). `apparmor=unconfined` and `label=disable` are accepted and do
    nothing (imagetool uses neither); any other option is refused."""
    seccomp_opt: str | None = None
    nnp: bool | None = None
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep and ":" in item:  # docker's old `seccomp:FILE` spelling
            key, sep, value = item.partition(":")
        key = key.strip()
        if key == "seccomp":
            if not value:
                raise ImagetoolError("invalid --security-opt seccomp: give a profile file or unconfined")
            seccomp_opt = value
        elif key == "no-new-privileges":
            if value.lower() in ("", "true"):
                nnp = True
            elif value.lower() == "false":
                nnp = False
            else:
                raise ImagetoolError(f"invalid --security-opt {item!r}: no-new-privileges takes true or false")
        elif (key, value) in (("apparmor", "unconfined"), ("label", "disable")):
            continue
        else:
            raise ImagetoolError(f"unsupported --security-opt {item!r}",
                                 hint="use seccomp=FILE, seccomp=unconfined or no-new-privileges")
    return seccomp_opt, nnp
