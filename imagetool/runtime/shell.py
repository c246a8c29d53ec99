"""Each step of the container recipe as the POSIX shell command a person would type, real values in.

Pure functions, value in, string out: nothing here touches the system. `--explain` (the
runtime's narrator) prints them next to each step it performs, and `--script` (script.py) strings
them together into a script that builds the same container by hand, so both show the same
commands. Every value is quoted with `shlex.quote`; a returned string is one command line (or a
few joined with `&&`), without a trailing newline. Paths are used as given: pass them relative
(`proc`, `dev/urandom`) for a command run inside the rootfs directory, absolute otherwise.
"""

from __future__ import annotations

import itertools
import shlex
from collections.abc import Iterable, Mapping

from imagetool.mount import Mount

# spec namespace type -> unshare(1) flag, in the order a person types them
NAMESPACE_FLAGS = (("mount", "--mount"), ("uts", "--uts"), ("ipc", "--ipc"), ("network", "--net"),
                   ("pid", "--pid"), ("cgroup", "--cgroup"), ("user", "--user"))

# spec rlimit type -> prlimit(1) option
RLIMIT_OPTIONS = {"RLIMIT_NOFILE": "nofile", "RLIMIT_NPROC": "nproc", "RLIMIT_CORE": "core",
                  "RLIMIT_STACK": "stack", "RLIMIT_MEMLOCK": "memlock", "RLIMIT_AS": "as",
                  "RLIMIT_CPU": "cpu", "RLIMIT_DATA": "data", "RLIMIT_FSIZE": "fsize",
                  "RLIMIT_LOCKS": "locks", "RLIMIT_MSGQUEUE": "msgqueue", "RLIMIT_NICE": "nice",
                  "RLIMIT_RSS": "rss", "RLIMIT_RTPRIO": "rtprio", "RLIMIT_RTTIME": "rttime",
                  "RLIMIT_SIGPENDING": "sigpending"}

_UNLIMITED = (1 << 64) - 1  # RLIM_INFINITY as a spec writes it


def q(value) -> str:
    """One shell word for `value` (str() of it, quoted only when needed). Characters a terminal
    acts on (ESC, BEL, C1 controls …: anything unprintable but newline and tab) never appear raw:
    each run of them is written `"$(printf '\\033')"` (POSIX octal escapes, no $'…'), so a printed
    script or --explain line is inert on a terminal and still gives the exact value when run."""
    text = str(value)
    if text.isprintable() or all(_shown(c) for c in text):   # (the first: one C call for the usual word)
        return shlex.quote(text)
    words = []
    for shown, run in itertools.groupby(text, key=_shown):
        s = "".join(run)
        if shown:
            words.append(shlex.quote(s))
        else:
            octal = "".join(f"\\{b:03o}" for b in s.encode("utf-8", "surrogateescape"))
            words.append(f"\"$(printf '{octal}')\"")
    return "".join(words)


def _shown(c: str) -> bool:
    return c.isprintable() or c in "\n\t"


def join(words: Iterable) -> str:
    """A command line from words, each quoted."""
    return " ".join(q(w) for w in words)


# ---------------------------------------------------------------- cgroups


def cgroup_create(group: str) -> str:
    """Create a cgroup directory (one per v1 hierarchy; the v2 group, its parent enabled first)."""
    return f"mkdir -p {q(group)}"


def cgroup_enable(group: str, controllers: Iterable[str]) -> str:
    """v2: let `group`'s children use `controllers` (`echo '+memory +pids' > …/cgroup.subtree_control`)."""
    return f"echo {q(' '.join('+' + c for c in controllers))} > {q(group + '/cgroup.subtree_control')}"


def cgroup_write(path: str, value) -> str:
    """Write one control file: `echo 7340032 > /sys/fs/cgroup/memory/…/memory.limit_in_bytes`."""
    return f"echo {q(value)} > {q(path)}"


def cgroup_limits(version: int, groups: Mapping[str, str], resources: Mapping) -> list[str]:
    """The writes for a spec's `linux.resources` (memory, memory+swap, cpu quota, pids; v1 device rules).

    `groups`: v1 {controller: group dir}, v2 {"": group dir}. The values are the ones the
    runtime writes (cgroups/v1.py, cgroups/v2.py): v1 memsw = max(swap, limit) or -1, v2
    swap.max = swap - limit or max, v1 cfs period then quota, v2 `cpu.max` "QUOTA PERIOD".
    A limit whose controller is absent is left out (the runtime refuses it before this is shown).
    """
    out: list[str] = []

    def file(controller: str, name: str) -> str | None:
        g = groups.get("" if version == 2 else controller)
        return f"{g}/{name}" if g else None

    mem = resources.get("memory") or {}
    if mem.get("limit") is not None:
        limit, swap = mem["limit"], mem.get("swap")
        if version == 2:
            out.append(cgroup_write(file("memory", "memory.max"), limit))
            if swap is not None:
                out.append(cgroup_write(file("memory", "memory.swap.max"), "max" if swap < 0 else max(swap - limit, 0)))
        elif file("memory", ""):
            out.append(cgroup_write(file("memory", "memory.limit_in_bytes"), limit))
            if swap is not None:
                out.append(cgroup_write(file("memory", "memory.memsw.limit_in_bytes"), -1 if swap < 0 else max(swap, limit)))
    cpu = resources.get("cpu") or {}
    if cpu.get("quota") and file("cpu", ""):
        period = cpu.get("period", 100000)
        if version == 2:
            out.append(cgroup_write(file("cpu", "cpu.max"), f"{cpu['quota']} {period}"))
        else:
            out.append(cgroup_write(file("cpu", "cpu.cfs_period_us"), period))
            out.append(cgroup_write(file("cpu", "cpu.cfs_quota_us"), cpu["quota"]))
    pids = resources.get("pids") or {}
    if pids.get("limit") and file("pids", ""):
        out.append(cgroup_write(file("pids", "pids.max"), pids["limit"]))
    if version == 1 and file("devices", ""):
        for d in resources.get("devices") or ():
            rule = f"{d.get('type', 'a')} {d.get('major', '*')}:{d.get('minor', '*')} {d.get('access', 'rwm')}"
            out.append(cgroup_write(file("devices", "devices.allow" if d.get("allow") else "devices.deny"), rule))
    return out


def cgroup_join(group: str, pid: str | int = "$$") -> str:
    """Move a process into the group: `echo $$ > …/cgroup.procs` (the default is the shell itself)."""
    who = pid if pid == "$$" else q(pid)
    return f"echo {who} > {q(group + '/cgroup.procs')}"


def cgroup_kill(group: str, version: int) -> str:
    """Kill what is left in the group: v2 `cgroup.kill`, v1 a SIGKILL per pid in `cgroup.procs`."""
    if version == 2:
        return f"echo 1 > {q(group + '/cgroup.kill')}"
    return f"kill -9 $(cat {q(group + '/cgroup.procs')})"


def cgroup_remove(group: str) -> str:
    """Remove an (empty) cgroup directory: `rmdir`, never `rm -r` (cgroupfs has no files to delete)."""
    return f"rmdir {q(group)}"


# ---------------------------------------------------------------- namespaces


def unshare_flags(namespaces: Iterable[str], fork: bool = True) -> list[str]:
    """unshare(1)'s flags for spec namespace types (`--fork` with a pid namespace, so the
    command is PID 1 of it)."""
    types = set(namespaces)
    flags = [flag for t, flag in NAMESPACE_FLAGS if t in types]
    if fork and "pid" in types:
        flags.insert(flags.index("--pid") + 1, "--fork")
    return flags


def unshare(namespaces: Iterable[str], fork: bool = True) -> str:
    """`unshare --mount --uts --ipc --net --pid --fork --cgroup` for spec namespace types."""
    return join(["unshare", *unshare_flags(namespaces, fork)])


# ---------------------------------------------------------------- mounts


def mount(m: Mount) -> str:
    """`mount` for a Mount value. Overlay with `cwd`: `(cd CWD && mount -t overlay overlay -o … TARGET)`
    (its relative lowerdirs resolve against CWD); bind: `mount --bind|--rbind SRC TARGET`, then a
    `mount -o remount,bind,…` for flags a bind mount ignores on its first call (ro, nosuid, …)."""
    opts = [o for o in m.options if o not in ("bind", "rbind") and o not in _PROPAGATION]
    if m.type == "bind" or "bind" in m.options or "rbind" in m.options:
        cmd = join(["mount", "--rbind" if "rbind" in m.options else "--bind", m.source, m.target])
        flags = [o for o in opts if o in _BIND_FLAGS]
        if flags:
            cmd += " && " + join(["mount", "-o", ",".join(["remount", "bind", *flags]), m.target])
        locks = [o for o in flags if o in _LOCK_FLAGS]
        if locks and "rbind" in m.options:
            cmd += " && " + lock_submounts(m.target, locks)
        return cmd
    words = ["mount", "-t", m.type]
    if opts:
        words += ["-o", ",".join(opts)]
    cmd = join([*words, m.source or m.type, m.target])
    if m.cwd:
        cmd = f"(cd {q(m.cwd)} && {cmd})"
    return cmd


_PROPAGATION = ("private", "rprivate", "slave", "rslave", "shared", "rshared")
_BIND_FLAGS = ("ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec")
_LOCK_FLAGS = ("ro", "nosuid", "nodev", "noexec")


def lock_submounts(target: str, flags: Iterable[str] = ("ro", "nosuid", "nodev", "noexec")) -> str:
    """The same flags on every mount below `target` (what mount_setattr(AT_RECURSIVE) does):
    a remount reaches the top mount of an rbind only."""
    opts = ",".join(["remount", "bind", *flags])
    return (f"findmnt -Rlno TARGET -- {q(target)} | tail -n +2 | "
            f"while IFS= read -r m; do mount -o {opts} \"$m\"; done")


def make_private(path: str = "/") -> str:
    """Stop mount events from propagating to the host: `mount --make-rprivate /`."""
    return f"mount --make-rprivate {q(path)}"


def mount_cgroupfs(dest: str, hierarchies: Iterable | None) -> list[str]:
    """The container's own cgroups at `dest` (/sys/fs/cgroup), read-only, through its cgroup
    namespace. `hierarchies` None: cgroup v2, one `mount -t cgroup2`. Otherwise (v1/hybrid) the
    host's hierarchies (`cgroups.Hierarchy`: .fstype, .dirname, .data): a tmpfs, one read-only
    mount per hierarchy in it (`mount -t cgroup -o ro,…,memory cgroup DEST/memory`), the tmpfs
    remounted read-only last."""
    ro = "ro,nosuid,nodev,noexec"
    if hierarchies is None:
        return [join(["mount", "-t", "cgroup2", "-o", ro, "cgroup2", dest])]
    out = [join(["mount", "-t", "tmpfs", "-o", "nosuid,nodev,noexec,mode=755", "tmpfs", dest])]
    for h in hierarchies:
        sub = f"{dest}/{h.dirname}"
        opts = ro if h.fstype == "cgroup2" else f"{ro},{h.data}"
        out += [mkdir(sub), join(["mount", "-t", h.fstype, "-o", opts, h.fstype, sub])]
    out.append(join(["mount", "-o", "remount,bind,ro", dest]))
    return out


def mknod(path: str, kind: str, major: int, minor: int, mode: int = 0o666) -> str:
    """`mknod -m 666 dev/urandom c 1 9` (kind "c" or "b")."""
    return f"mknod -m {mode:o} {q(path)} {q(kind)} {int(major)} {int(minor)}"


def symlink(target: str, path: str) -> str:
    """`ln -s TARGET PATH`."""
    return f"ln -s {q(target)} {q(path)}"


def mkdir(path: str, mode: int | None = None) -> str:
    """`mkdir [-m MODE] PATH`."""
    return f"mkdir -m {mode:o} {q(path)}" if mode is not None else f"mkdir {q(path)}"


def pivot_root(root: str) -> str:
    """Switch the mount namespace's root to `root` and detach the old one (runc's `pivot_root . .`):
    `cd ROOT && pivot_root . . && umount -l .`."""
    return f"cd {q(root)} && pivot_root . . && umount -l ."


def move_root(root: str) -> str:
    """Mount `root` over `/` (the switch_root way; the process enters it with chroot afterwards):
    `cd ROOT && mount --move . /`."""
    return f"cd {q(root)} && mount --move . /"


def mask(path: str, is_dir: bool) -> str:
    """Hide a path: an empty read-only tmpfs over a directory, /dev/null bound over a file."""
    if is_dir:
        return f"mount -t tmpfs -o ro tmpfs {q(path)}"
    return f"mount --bind /dev/null {q(path)}"


def readonly(path: str) -> str:
    """Make a path read-only: bind it onto itself, then remount that bind read-only."""
    return (f"mount --bind {q(path)} {q(path)} && "
            f"mount -o remount,bind,ro,nosuid,nodev,noexec {q(path)}")


def readonly_root(root: str = "/") -> str:
    """`mount -o remount,bind,ro /` (--read-only)."""
    return f"mount -o remount,bind,ro {q(root)}"


def umount(target: str, lazy: bool = True) -> str:
    """`umount -l TARGET` (detach now, free when the last user is gone)."""
    return f"umount -l {q(target)}" if lazy else f"umount {q(target)}"


# ---------------------------------------------------------------- the rest of the init


def hostname(name: str) -> str:
    return f"hostname {q(name)}"


def loopback_up() -> str:
    return "ip link set lo up"


def sysctl(key: str, value) -> str:
    """`echo VALUE > /proc/sys/KEY` (`net.ipv4.ip_forward` → `net/ipv4/ip_forward`)."""
    return cgroup_write("/proc/sys/" + key.replace(".", "/"), value)


def rlimit_options(rlimits: Iterable[Mapping]) -> list[str]:
    """prlimit(1) options for spec `process.rlimits`: `--nofile=1024:1024`."""
    out = []
    for rl in rlimits:
        name = RLIMIT_OPTIONS.get(rl["type"])
        if name:
            soft, hard = (("unlimited" if v >= _UNLIMITED else v) for v in (rl["soft"], rl["hard"]))
            out.append(f"--{name}={soft}:{hard}")
    return out


def setpriv_options(*, bounding: Iterable[str] | None = None, inheritable: Iterable[str] | None = (),
                    uid: int | None = None, gid: int | None = None, groups: Iterable[int] | None = None,
                    no_new_privs: bool = False) -> list[str]:
    """setpriv(1) options: capability names as the spec writes them (`CAP_CHOWN`).

    `bounding`/`inheritable` None leave that set alone, () empties it; `groups` None clears the
    supplementary groups when `gid` is given (`--clear-groups`), else sets them (`--groups=…`).
    """
    out = []
    if uid is not None:
        out.append(f"--reuid={int(uid)}")
    if gid is not None:
        out.append(f"--regid={int(gid)}")
    if groups is not None and list(groups):
        out.append("--groups=" + ",".join(str(int(g)) for g in groups))
    elif gid is not None or uid is not None:
        out.append("--clear-groups")
    if bounding is not None:
        out.append("--bounding-set=" + ",".join(["-all", *("+" + _cap(c) for c in bounding)]))
    if inheritable is not None:
        out.append("--inh-caps=" + ",".join(["-all", *("+" + _cap(c) for c in inheritable)]))
    if no_new_privs:
        out.append("--no-new-privs")
    return out


def setpriv(**kw) -> str:
    """`setpriv --reuid=… --regid=… --clear-groups --bounding-set=-all,+chown,… --inh-caps=-all --no-new-privs`
    (keyword arguments as `setpriv_options`)."""
    return join(["setpriv", *setpriv_options(**kw)])


def _cap(name: str) -> str:
    name = name.lower()
    return name[4:] if name.startswith("cap_") else name


def exec_command(args: Iterable[str], env: Iterable[str] | None = None) -> str:
    """`exec env -i K=V … CMD ARG…` (with `env` None: `exec CMD ARG…`)."""
    if env is None:
        return join(["exec", *args])
    return join(["exec", "env", "-i", *env, *args])
