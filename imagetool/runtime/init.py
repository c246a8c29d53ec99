"""The container's init: the seed's recipe, one function per step, in the order they happen.

Runs in the child imagetool forked as PID 1 of a new PID namespace (process.py). Each step does
its one job and returns the shell command a person would type for it (or None when it had
nothing to do); `_run` hands that to the narrator (explain.py) — the only thing the steps know
about explaining. A failure is sent to imagetool as a typed `error` message (sync.py) and the
child exits; it never returns to the caller's code.

Before the spec exists (while imagetool still looks up the image):
   1. new_session            default signals, setsid, parent-death signal SIGKILL, umask 0022
   2. connect_stdio          fds 0-2 become the pipes (or an empty pipe until the pty exists): the
                             host's own stdout/stderr never stay in the container
   3. join_cgroup            every hierarchy (see cgroups/), before the cgroup namespace; the
                             cgroup2 group the init was cloned into is joined already (process.py)
Then, with the spec (read from the config pipe):
   4. unshare_namespaces     mount, uts, ipc, cgroup, network, one by one (pid: imagetool, before the fork);
                             a namespace the spec names by path is joined (setns) instead
   5. make_private           nothing propagates back to the host
   6. mount_rootfs           the overlay (or the bind of a flat copy)
   7. mount_each             the spec's mounts in order, by fd inside the root: /proc, /dev
                             (then populate_dev: every node, /dev/urandom among them, and links),
                             /dev/pts, /dev/shm, /dev/mqueue, /sys, /sys/fs/cgroup, volumes
   8. create_devices         linux.devices
   9. open_console           -t: a pty from the container's own devpts, its master sent to
                             imagetool over the console socket (runc's console socket)
  10. set_hostname, loopback_up
  11. pivot_root             and detach the old root
  12. write_sysctls          linux.sysctl, before /proc/sys is made read-only
  13. mask_paths, readonly_paths, readonly_root
  14. join_session_keyring   a keyring of its own (as runc)
  15. set_rlimits, set_oom_score_adj (the spec's, else 0: never imagetool's own)
  16. resolve_user, enter_workdir   (the user from the container's /etc, read through the root)
  17. attach_terminal        -t: the pty slave as controlling terminal and fds 0-2
  18. load_seccomp_with_capabilities   when noNewPrivileges is NOT set (it needs CAP_SYS_ADMIN)
  19. drop_capabilities      bounding, eff/perm/inh, ambient; setgroups/setgid/setuid
  20. set_no_new_privs
  21. close_fds              every fd but 0-2, the sync pipe and the sealed trampoline
  22. wait_for_start         "created"; `start` lets it go on
  23. load_seccomp           here when noNewPrivileges is set: the last step before exec
  24. exec_command           through the sealed trampoline (sealed.py), never the host's binary
"""

from __future__ import annotations

import errno
import fcntl
import os
import resource  # extension modules: import them before pivot_root takes the host's /usr away
import signal
import struct
import time
from dataclasses import dataclass, field

from imagetool.errors import CommandNotExecutable, CommandNotFound, ContainerError, ImagetoolError
from imagetool.mount import Mount
from imagetool.runtime import capabilities, console, mounts, rootless, sealed, shell, sync
from imagetool.runtime import syscalls as sc
from imagetool.runtime.spec import env_get
from imagetool.safepath import Root
from imagetool.users import lookup as lookup_user

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGWINCH, signal.SIGPIPE, signal.SIGCHLD, signal.SIGTSTP,
             signal.SIGTTIN, signal.SIGTTOU)

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_NS_FLAGS = (("mount", sc.CLONE_NEWNS), ("uts", sc.CLONE_NEWUTS), ("ipc", sc.CLONE_NEWIPC),
             ("cgroup", sc.CLONE_NEWCGROUP), ("network", sc.CLONE_NEWNET))


@dataclass(eq=False, repr=False)
class Init:
    """The init's working state: the fds imagetool gave it, then what the spec and the steps add.
    Mutable working state, never compared or printed whole: only __init__ is generated (each
    generated method is compiled in the child at every run), the __repr__ below is short."""

    sync_fd: int                      # child -> imagetool: JSON lines (sync.py), close-on-exec
    config_fd: int                    # imagetool -> child: the config, then the start byte
    narrator: object                  # explain.SILENT or explain.Forwarder
    cgroup: object | None = None      # a cgroup manager (cgroups/): .enter()
    born_in: object | None = None     # the cgroup2 group the init was cloned into (CLONE_INTO_CGROUP)
    stdio: tuple = ()                 # (stdin or None, stdout, stderr) pipe ends, () with a tty
    console_socket: int | None = None  # with a tty: where the pty master goes
    spec: dict = field(default_factory=dict)
    rootfs: Mount | None = None
    cgroup_layout: str | None = None
    seccomp: bytes | None = None
    root: Root | None = None
    tty_slave: int | None = None
    null_fd: int | None = None
    trampoline_fd: int | None = None  # the sealed memfd the command is exec'd through (imagetool made it)
    uid: int = 0
    gid: int = 0
    groups: list = field(default_factory=list)
    env: list = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Init(sync_fd={self.sync_fd}, config_fd={self.config_fd}, uid={self.uid}, gid={self.gid})"


def main(init: Init) -> None:
    """Never returns: the steps above, then exec (or an `error` message and exit)."""
    try:
        for step in (new_session, connect_stdio, join_cgroup):
            _run(init, step)
        if not _read_config(init):
            os._exit(0)   # imagetool gave up before sending a spec (the image was not found …)
        for step in RECIPE:
            _run(init, step)
    except ContainerError as e:
        _report(init, e.exit_code, e.message)
    except OSError as e:
        _report(init, 125, str(e) if e.strerror is None or e.filename is None else f"{e.strerror}: {e.filename}")
    except BaseException as e:  # anything else still must reach imagetool
        _report(init, 125, f"{type(e).__name__}: {e}")
    os._exit(125)


def _run(init: Init, step) -> None:
    started = time.perf_counter()
    command = step(init)
    if command is not None:
        init.narrator.report(step.__name__.replace("_", " "), command, started)


def _report(init: Init, code: int, message: str) -> None:
    try:
        sync.send(init.sync_fd, "error", code=code, message=message)
    except OSError:
        pass
    os._exit(code)


def _read_config(init: Init) -> bool:
    """The config frame: 8-byte length, then JSON {spec, rootfs, cgroup_layout, seccomp}."""
    import json

    head = sync.read_exact(init.config_fd, 8)
    if len(head) < 8:
        return False
    config = json.loads(sync.read_exact(init.config_fd, int.from_bytes(head, "big")))
    init.spec = config["spec"]
    init.rootfs = Mount.from_dict(config["rootfs"])
    init.cgroup_layout = config.get("cgroup_layout")
    init.seccomp = bytes.fromhex(config["seccomp"]) if config.get("seccomp") else None
    if init.seccomp is not None:
        import imagetool.runtime.seccomp  # noqa: F401 (before pivot_root takes the host's files away)
    if init.spec["process"].get("terminal"):
        import socket  # noqa: F401 (idem)
    return True


# ---------------------------------------------------------------- 1-3: before the spec


def default_signals() -> None:
    """Every signal's default action and none blocked: an ignored disposition survives exec, and
    Python ignores SIGPIPE and SIGXFSZ (a detached run's monitor SIGHUP and SIGINT too), which the
    container's PID 1 must not inherit (docker's and runc's PID 1 ignores nothing)."""
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:   # unconditionally: getsignal does not know what was set outside Python's signal module
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def new_session(init: Init) -> str:
    default_signals()
    os.setsid()
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    os.umask(0o022)   # the mount points the init makes are 0755 whatever imagetool's umask is
    return "setsid; umask 0022  # and PR_SET_PDEATHSIG=SIGKILL: the init dies with imagetool"


def empty_input() -> int:
    """The read end of a pipe whose write end is closed: reads give EOF, writes EBADF, and no
    host inode (never the host's /dev/null, which container root could chmod or chown)."""
    r, w = os.pipe()
    os.close(w)
    return r


def connect_stdio(init: Init) -> str:
    """fds 0-2: the pipes imagetool copies; without -i stdin is an empty pipe; with -t all three
    are that empty pipe until attach_terminal puts the pty slave there. Never a host file."""
    empty = empty_input()
    stdin, stdout, stderr = init.stdio or (None, empty, empty)
    for fd, src in ((0, stdin if stdin is not None else empty), (1, stdout), (2, stderr)):
        os.dup2(src, fd)
    for fd in {empty, *(f for f in init.stdio if f is not None)} - {0, 1, 2}:
        os.close(fd)
    if init.stdio:
        return "exec 0<{} 1>&PIPE 2>&PIPE  # imagetool copies the pipes; its own fds never reach the container".format(
            "PIPE" if stdin is not None else "EMPTY_PIPE")
    return "exec 0<EMPTY_PIPE 1<&0 2<&0  # an empty pipe (no host file) until the pty exists (-t)"


def join_cgroup(init: Init) -> str | None:
    if init.cgroup is None:
        return None
    lines = [f"echo $$ > {shell.q(path)}" for path in init.cgroup.enter(0, born_in=init.born_in)]
    if init.born_in is not None:
        lines.insert(0, f"# in {shell.q(str(init.born_in))} from birth: cloned into it (clone3 CLONE_INTO_CGROUP)")
    return "\n".join(lines) or None


# ---------------------------------------------------------------- 4-11: namespaces and mounts


def _ns_types(init: Init) -> list[str]:
    return [n["type"] for n in init.spec.get("linux", {}).get("namespaces", [])]


def unshare_namespaces(init: Init) -> None:
    """One unshare(2) per namespace, each its own reported step (the pid namespace: imagetool
    unshared it before forking this init; the cgroup one comes after join_cgroup, so the
    container's groups are its root)."""
    paths = {n["type"]: n.get("path") for n in init.spec.get("linux", {}).get("namespaces", [])}
    for t, bit in _NS_FLAGS:
        if t in paths:
            started = time.perf_counter()
            if paths[t]:
                join_namespace(t, bit, paths[t])
                init.narrator.report(f"setns {t}", f"nsenter --{'net' if t == 'network' else t}={shell.q(paths[t])}", started)
                continue
            sc.unshare(bit)
            init.narrator.report(f"unshare {t}", shell.unshare([t], fork=False), started)
    return None


def join_namespace(kind: str, bit: int, path: str) -> None:
    """setns(2) into the namespace file the spec names (linux.namespaces[].path), as runc does:
    the network namespace imagetool prepared and its CNI plugins configured."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise ContainerError(f"cannot open the {kind} namespace {path}: {e.strerror}") from None
    try:
        sc.setns(fd, bit)
    except OSError as e:
        raise ContainerError(f"cannot join the {kind} namespace {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def make_private(init: Init) -> str:
    return mounts.make_private()


def mount_rootfs(init: Init) -> str:
    cmd = mounts.mount_rootfs(init.rootfs)
    init.root = Root(init.rootfs.target)
    return cmd


def mount_each(init: Init) -> None:
    """The spec's mounts in the spec's order, each through its own named step (/proc, /dev and its
    nodes, /sys, the container's cgroup at /sys/fs/cgroup, volumes and the rest)."""
    for m in init.spec.get("mounts", []):
        _MOUNT_STEPS.get(m["destination"].rstrip("/"), mount_volume)(init, m)
    return None


def _mount(init: Init, m: dict) -> None:
    started = time.perf_counter()
    cmd = mounts.mount_spec(init.root, m, init.cgroup_layout)
    init.narrator.report(f"mount {m['destination']}", cmd, started)


def mount_proc(init: Init, m: dict) -> None:
    """`mount -t proc proc /proc`: the processes of the container's own PID namespace."""
    _mount(init, m)


def mount_dev(init: Init, m: dict) -> None:
    """A small tmpfs at /dev, then its device nodes and links (populate_dev)."""
    _mount(init, m)
    if m.get("type") == "tmpfs":
        populate_dev(init)


def mount_sys(init: Init, m: dict) -> None:
    """sysfs at /sys, read-only (writable only with --privileged)."""
    _mount(init, m)


def mount_cgroupfs(init: Init, m: dict) -> None:
    """The container's own cgroup at /sys/fs/cgroup, read-only, through the cgroup namespace."""
    _mount(init, m)


def mount_volume(init: Init, m: dict) -> None:
    """Any other spec mount: -v binds, --tmpfs, /dev/pts, /dev/shm, /dev/mqueue, /etc files."""
    _mount(init, m)


def populate_dev(init: Init) -> None:
    for name, major, minor, mode in mounts.DEVICES:
        started = time.perf_counter()
        cmd = mounts.populate_dev(init.root, name, major, minor, mode)
        init.narrator.report(f"create /dev/{name}", cmd, started)
    started = time.perf_counter()
    init.narrator.report("link /dev/fd, stdin, stdout, stderr, ptmx", mounts.dev_links(init.root), started)


def create_devices(init: Init) -> str | None:
    lines = []
    for d in init.spec.get("linux", {}).get("devices") or []:
        mode = d.get("fileMode", 0o666)
        lines.append(mounts.populate_dev(init.root, d["path"], d.get("major", 0), d.get("minor", 0), mode,
                                         d.get("type", "c"), d.get("uid", 0), d.get("gid", 0)))
    return "\n".join(lines) or None


def open_console(init: Init) -> str | None:
    """-t: a pty from the container's own devpts; the master goes to imagetool (console.py)."""
    if not init.spec["process"].get("terminal"):
        return None
    pfd, _ = init.root.resolve_dir(("dev", "pts"))
    size = init.spec["process"].get("consoleSize") or {}
    master, init.tty_slave = console.allocate(pfd, size.get("height", 0), size.get("width", 0))
    console.send_master(init.console_socket, master)
    init.console_socket = None
    return (f"# open {init.rootfs.target}/dev/pts/ptmx (the container's own devpts): "
            f"the master goes to imagetool over the console socket, the slave becomes fds 0-2")


def set_hostname(init: Init) -> str | None:
    name = init.spec.get("hostname")
    if "uts" not in _ns_types(init) or not name:
        return None
    sc.sethostname(name)
    return shell.hostname(name)


def loopback_up(init: Init) -> str | None:
    if "network" not in _ns_types(init) or init.spec.get("annotations", {}).get("org.imagetool.network") != "loopback":
        return None
    fd = sc.socket_fd(2, 2)  # AF_INET, SOCK_DGRAM (no `ip` binary needed)
    try:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(fd, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(fd, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))
    finally:
        os.close(fd)
    return shell.loopback_up()


def _open_null(root: Root) -> int:
    """The /dev/null the masks bind, opened before pivot_root: the container's own node, and
    only when it is the null device (char 1:3). Never the host's node (container root could
    chmod it through the mask) and never whatever an image or --device put at dev/null: then
    the run is refused."""
    import stat

    try:
        pfd, _ = root.resolve_dir(("dev",))
        fd = os.open("null", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
    except (OSError, ImagetoolError):
        fd = None
    if fd is not None:
        st = os.fstat(fd)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3):
            return fd
        os.close(fd)
    raise ContainerError("cannot mask paths: the container's /dev/null is not the null device (char 1:3)",
                         hint="do not replace /dev/null (e.g. with --device), or run with --privileged")


def pivot_root(init: Init) -> str:
    if init.spec.get("linux", {}).get("maskedPaths"):
        init.null_fd = _open_null(init.root)
    init.root.close()
    init.root = None
    return mounts.pivot(init.rootfs.target)


# ---------------------------------------------------------------- 12-24: inside the new root


def write_sysctls(init: Init) -> str | None:
    lines = []
    for key, value in (init.spec.get("linux", {}).get("sysctl") or {}).items():
        path = "/proc/sys/" + key.replace(".", "/")
        if ".." in key.split(".") or "/" in key:
            raise ContainerError(f"invalid sysctl {key!r}")
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.write(fd, str(value).encode())
        finally:
            os.close(fd)
        lines.append(shell.sysctl(key, value))
    return "\n".join(lines) or None


def mask_paths(init: Init) -> str | None:
    lines = [mounts.mask_path(p, init.null_fd) for p in init.spec.get("linux", {}).get("maskedPaths", [])]
    if init.null_fd is not None:
        os.close(init.null_fd)
        init.null_fd = None
    return "\n".join(x for x in lines if x) or None


def readonly_paths(init: Init) -> str | None:
    lines = [mounts.readonly_path(p) for p in init.spec.get("linux", {}).get("readonlyPaths", [])]
    return "\n".join(x for x in lines if x) or None


def readonly_root(init: Init) -> str | None:
    return mounts.readonly_root() if init.spec.get("root", {}).get("readonly") else None


def join_session_keyring(init: Init) -> str:
    try:
        sc.join_session_keyring()
    except OSError as e:
        if e.errno != errno.ENOSYS:   # keyrings compiled out or filtered (as runc: go on without)
            raise
        return "# keyctl is not available here: no session keyring to replace"
    return "keyctl new_session  # a session keyring of the container's own, never the host's"


def set_rlimits(init: Init) -> str | None:
    rlimits = init.spec["process"].get("rlimits") or []
    for rl in rlimits:
        which = getattr(resource, rl["type"], None)
        if which is None:
            raise ContainerError(f"unknown rlimit {rl['type']}")
        soft, hard = (resource.RLIM_INFINITY if v >= (1 << 63) - 1 else v for v in (rl["soft"], rl["hard"]))
        if rootless.active():   # no raising above the user's own hard limit there: clamped to it (as podman)
            soft, hard = rootless.clamp_rlimit(which, soft, hard)
        resource.setrlimit(which, (soft, hard))
    return ("prlimit --pid $$ " + " ".join(shell.rlimit_options(rlimits))) if rlimits else None


def set_oom_score_adj(init: Init) -> str | None:
    """The spec's process.oomScoreAdj, else 0 (docker's default for a container), never
    imagetool's own: the caller's score is not the container's. Lowering it needs
    CAP_SYS_RESOURCE over the host: rootless, a lower value than the caller's stays the caller's."""
    value = int(init.spec["process"].get("oomScoreAdj", 0))
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(value))
    except OSError:
        if not rootless.active():
            raise
        return None
    return f"echo {value} > /proc/self/oom_score_adj"


def resolve_user(init: Init) -> str:
    proc = init.spec["process"]
    init.env = list(proc.get("env", []))
    user = proc.get("user") or {}
    init.uid, init.gid = user.get("uid", 0), user.get("gid", 0)
    init.groups = list(user.get("additionalGids", []))
    umask = user.get("umask", 0o022)   # as runc: the spec's, else 0022, never imagetool's own
    os.umask(umask)
    name = init.spec.get("annotations", {}).get("org.imagetool.user")
    if name:
        with Root("/") as root:
            u = lookup_user(root, name)
        init.uid, init.gid = u.uid, u.gid
        init.groups = list(dict.fromkeys([*u.additional_gids, *init.groups]))
        if env_get(init.env, "HOME") is None:
            init.env.append(f"HOME={u.home or '/'}")
    return (f"umask {umask:04o}\n"
            f"# user {name or init.uid}: uid={init.uid} gid={init.gid} groups={','.join(map(str, init.groups)) or '-'}")


def enter_workdir(init: Init) -> str:
    cwd = init.spec["process"].get("cwd") or "/"
    made: list[str] = []

    def mkdir(pfd, name, canon, st):
        mounts.mkdir_hook(pfd, name, canon, st)
        made.append(canon)

    with Root("/") as root:
        try:
            fd, _ = root.resolve_dir(mounts.components(cwd), mkdir)
            os.fchdir(fd)
        except (ContainerError, OSError) as e:
            reason = e.message if isinstance(e, ContainerError) else e.strerror
            raise ContainerError(f"cannot create the working directory {cwd}: {reason}") from None
    if made and (init.uid or init.gid):
        os.chown(".", init.uid, init.gid)
    return f"mkdir -p {shell.q(cwd)} && cd {shell.q(cwd)}" if made else f"cd {shell.q(cwd)}"


def attach_terminal(init: Init) -> str | None:
    if init.tty_slave is None:
        return None
    console.attach(init.tty_slave)
    init.tty_slave = None
    return "exec 0<>/dev/pts/0 1>&0 2>&0  # the pty slave, controlling terminal of the session"


def _nnp(init: Init) -> bool:
    return bool(init.spec["process"].get("noNewPrivileges"))


def load_seccomp_with_capabilities(init: Init) -> str | None:
    """Without no_new_privs, loading the filter needs CAP_SYS_ADMIN: before the drop (as runc)."""
    return None if _nnp(init) else _load_seccomp(init)


def drop_capabilities(init: Init) -> str:
    caps = init.spec["process"].get("capabilities") or {}
    capabilities.apply(capabilities.mask(caps.get("bounding", [])), capabilities.mask(caps.get("effective", [])),
                       capabilities.mask(caps.get("permitted", [])), capabilities.mask(caps.get("inheritable", [])))
    try:
        os.setgroups(init.groups)
    except PermissionError:
        # rootless with a single-id mapping: setgroups(2) is denied in that namespace (its setgroups
        # file says so); the process keeps no supplementary group of its own there anyway
        if init.groups or not rootless.active():
            raise ContainerError("cannot set supplementary groups: this user namespace denies setgroups "
                                 "(no subordinate ids)", hint="give the user a range in /etc/subgid") from None
    os.setgid(init.gid)
    os.setuid(init.uid)
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)  # a change of uid/gid cleared it (as runc, set it again)
    return shell.setpriv(bounding=caps.get("bounding", []), inheritable=caps.get("inheritable", []),
                         uid=init.uid, gid=init.gid, groups=init.groups)


def set_no_new_privs(init: Init) -> str | None:
    if not _nnp(init):
        return None
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    return "setpriv --no-new-privs  # prctl(PR_SET_NO_NEW_PRIVS, 1)"


def close_fds(init: Init) -> str:
    if init.trampoline_fd is None:
        init.trampoline_fd = sealed.sealed_trampoline()
    keep = {0, 1, 2, init.sync_fd, init.config_fd, init.trampoline_fd}
    for n in os.listdir("/proc/self/fd"):
        fd = int(n)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    return "# close every fd but 0, 1, 2 (and the init's close-on-exec sync pipe and sealed trampoline)"


def wait_for_start(init: Init) -> str:
    sync.send(init.sync_fd, "created")
    go = sync.read_exact(init.config_fd, 1)
    if go != b"S":
        os._exit(0)   # imagetool deleted the container instead of starting it
    os.close(init.config_fd)
    return "# created: waiting for imagetool's start"


def _load_seccomp(init: Init) -> str | None:
    if init.seccomp is None:
        return None
    from imagetool.runtime import seccomp

    flags = seccomp.filter_flags(init.spec.get("linux", {}).get("seccomp") or {})
    seccomp.load(init.seccomp, flags)
    return f"# seccomp(SECCOMP_SET_MODE_FILTER, {flags}, <{len(init.seccomp) // 8} BPF instructions>)"


def load_seccomp(init: Init) -> str | None:
    """With no_new_privs: the last step before exec, so nothing after it needs a refused syscall."""
    return _load_seccomp(init) if _nnp(init) else None


def exec_command(init: Init) -> None:
    args = init.spec["process"]["args"]
    path = find_executable(args[0], init.env)
    init.narrator.report("exec", shell.exec_command(args, init.env), time.perf_counter())
    try:
        sealed.exec_command(path, args, init.env, trampoline_fd=init.trampoline_fd)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise CommandNotFound(f"exec {args[0]}: no such file or directory") from None
        if e.errno in (errno.EACCES, errno.ENOEXEC, errno.EISDIR, errno.EPERM):
            raise CommandNotExecutable(f"exec {args[0]}: {e.strerror.lower()}") from None
        raise ContainerError(f"exec {args[0]}: {e.strerror}") from None


_MOUNT_STEPS = {"/proc": mount_proc, "/dev": mount_dev, "/sys": mount_sys, "/sys/fs/cgroup": mount_cgroupfs}

RECIPE = (unshare_namespaces, make_private, mount_rootfs, mount_each, create_devices, open_console,
          set_hostname, loopback_up, pivot_root, write_sysctls, mask_paths, readonly_paths, readonly_root,
          join_session_keyring, set_rlimits, set_oom_score_adj, resolve_user, enter_workdir, attach_terminal, load_seccomp_with_capabilities,
          drop_capabilities, set_no_new_privs, close_fds, wait_for_start, load_seccomp, exec_command)


def find_executable(cmd: str, env: list[str]) -> str:
    """The path execve should use: `cmd` itself when it has a `/`, else the first match in PATH."""
    if "/" in cmd:
        if not os.path.lexists(cmd):
            raise CommandNotFound(f"exec: {cmd!r}: no such file or directory")
        if os.path.isdir(cmd) or not os.access(cmd, os.X_OK):
            raise CommandNotExecutable(f"exec: {cmd!r}: permission denied")
        return cmd
    path_value = next((e[5:] for e in env if e.startswith("PATH=")), "")
    denied = None
    for d in path_value.split(":"):
        candidate = os.path.join(d or ".", cmd)
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return candidate
            denied = denied or candidate
    if denied:
        raise CommandNotExecutable(f"exec: {cmd!r}: permission denied")
    raise CommandNotFound(f"exec: {cmd!r}: executable file not found in $PATH")
