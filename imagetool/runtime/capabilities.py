"""Linux capability names, Docker's default set, docker's --cap-add/--cap-drop rules, and dropping to a set."""

from __future__ import annotations

from imagetool.errors import ImagetoolError
from imagetool.runtime import syscalls

CAPS = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3,
    "CAP_FSETID": 4, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_CHROOT": 18, "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21, "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25, "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27,
    "CAP_LEASE": 28, "CAP_AUDIT_WRITE": 29, "CAP_AUDIT_CONTROL": 30, "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32, "CAP_MAC_ADMIN": 33, "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36, "CAP_AUDIT_READ": 37, "CAP_PERFMON": 38, "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}

# Docker's (and containerd's) default set: 14 capabilities, CapEff mask 00000000a80425fb.
DEFAULT_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)


def normalize(name: str) -> str:
    """docker's spelling rules: any case, with or without `CAP_`; `ALL` stays `ALL`."""
    name = name.strip().upper()
    if name == "ALL":
        return name
    name = name if name.startswith("CAP_") else "CAP_" + name
    if name not in CAPS:
        raise ImagetoolError(f"unknown capability: {name!r}", hint="see capabilities(7) for the names")
    return name


def all_caps() -> list[str]:
    """Every capability this kernel knows that this process may still give (its bounding set):
    what --privileged and --cap-add ALL give."""
    top, bounding = last_cap(), (1 << 64) - 1
    try:
        with open("/proc/self/status") as f:
            bounding = next((int(line.split()[1], 16) for line in f if line.startswith("CapBnd:")), bounding)
    except OSError:
        pass
    return [n for n, bit in CAPS.items() if bit <= top and bounding & (1 << bit)]


def resolve(add=(), drop=(), privileged: bool = False, base=DEFAULT_CAPS) -> list[str]:
    """The container's capability set from --cap-add/--cap-drop/--privileged, as docker does.

    --privileged: all. `--cap-add ALL`: all but the dropped ones. `--cap-drop ALL`: only the added
    ones. Otherwise `base` minus the dropped plus the added (a name in both is kept).
    Unknown names raise ImagetoolError.
    """
    if privileged:
        return all_caps()
    adds = [normalize(n) for n in add]
    drops = [normalize(n) for n in drop]
    if "ALL" in adds:
        return [c for c in all_caps() if c not in drops]
    if "ALL" in drops:
        caps = []
    else:
        caps = [c for c in base if c not in drops]
    for c in adds:
        if c not in caps:
            caps.append(c)
    return caps


def mask(names) -> int:
    """The bit mask of capability names; unknown names raise ValueError."""
    m = 0
    for n in names:
        try:
            m |= 1 << CAPS[n]
        except KeyError:
            raise ValueError(f"unknown capability {n!r}") from None
    return m


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return max(CAPS.values())


def drop_bounding(keep: int) -> None:
    """Drop every capability not in `keep` from the bounding set (needs CAP_SETPCAP)."""
    for cap in range(last_cap() + 1):
        if not keep & (1 << cap):
            try:
                syscalls.prctl(syscalls.PR_CAPBSET_DROP, cap)
            except OSError as e:
                if e.errno != 22:  # EINVAL: the kernel does not know this capability
                    raise


def apply(bounding: int, effective: int, permitted: int, inheritable: int) -> None:
    """Bounding set first, then eff/perm/inh with capset, then clear the ambient set."""
    drop_bounding(bounding)
    syscalls.capset(effective, permitted, inheritable)
    try:
        syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError:
        pass  # kernels before 4.3 have no ambient set
