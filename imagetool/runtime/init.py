"""The container's init: the child side of `run`, from fork to execve, as numbered steps.

Runs in the forked child, which is already PID 1 of a new PID namespace (the parent unshared
CLONE_NEWPID before forking). Any failure is sent to the parent as a typed `error` message
(sync.py) and the child exits; it never returns to the caller's code.

  1. default signal dispositions, new session, parent-death signal, join the cgroup
  2. unshare mount, uts, ipc, cgroup (and net unless --network host) namespaces
  3. make `/` private, mount the rootfs, then the spec's mounts inside it (/proc, /dev, /sys, volumes)
  4. hostname; loopback up in a private network namespace
  5. pivot_root into the rootfs and detach the old root
  6. masked and read-only paths; a read-only root for --read-only
  7. rlimits; the user (resolved from the container's /etc/passwd and /etc/group); workdir
  8. stdio (the pty slave as controlling terminal with -t, /dev/null stdin without -i)
  9. capabilities: bounding set, then eff/perm/inh, ambient cleared; setgroups/setgid/setuid;
     the parent-death signal again (a new uid/gid clears it)
 10. no_new_privs; close every fd but 0-2 (and the close-on-exec sync pipe)
 11. look the command up in the container's PATH and execve it
"""

from __future__ import annotations

import errno
import fcntl
import os
import resource  # extension modules: import them before pivot_root takes the host's /usr away
import signal
import struct
import termios
import time
from dataclasses import dataclass, field

from imagetool.errors import CommandNotExecutable, CommandNotFound, ContainerError
from imagetool.runtime import capabilities, mounts, sync
from imagetool.runtime import syscalls as sc
from imagetool.runtime.spec import env_get
from imagetool.users import lookup as lookup_user

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGWINCH, signal.SIGPIPE, signal.SIGCHLD, signal.SIGTSTP,
             signal.SIGTTIN, signal.SIGTTOU)

_RLIMITS = ("RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_CORE", "RLIMIT_STACK", "RLIMIT_MEMLOCK", "RLIMIT_AS")

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


@dataclass
class ChildContext:
    """What the child needs besides the spec; filled by the parent before fork."""

    rootfs: mounts.RootfsPlan | None      # None until the parent sends it (child_main_ahead)
    sync_fd: int
    cgroup: object | None = None          # a cgroup manager with .enter()
    tty_slave: int | None = None
    keep_stdin: bool = False
    timing: bool = False
    marks: dict = field(default_factory=dict)


def child_main_ahead(config_fd: int, ctx: ChildContext) -> None:
    """Never returns: the init forked before its spec existed (process.prefork).

    Does step 1 (joining the cgroup is the slow part: the kernel's first cgroup attach waits for an
    RCU grace period) while the parent still looks up the image, then reads the JSON
    `{"spec", "rootfs", "keep_stdin"}` from `config_fd` and goes on with the remaining steps;
    a failure is reported to the parent over the sync pipe, never silently.
    EOF without a configuration (the parent gave up) exits 0 quietly.
    """
    try:
        _mark(ctx, "child.start")
        _prepare(ctx)
        _mark(ctx, "child.cgroup")
        data = sync.read_to_eof(config_fd)
        os.close(config_fd)
        if not data:
            os._exit(0)
        import json

        config = json.loads(data)
        ctx.rootfs = mounts.RootfsPlan(**config["rootfs"])
        ctx.keep_stdin = bool(config["keep_stdin"])
        _steps(config["spec"], ctx)
    except ContainerError as e:
        _report(ctx, e.exit_code, e.message)
    except OSError as e:
        _report(ctx, 125, str(e) if e.strerror is None or e.filename is None else f"{e.strerror}: {e.filename}")
    except BaseException as e:  # anything else still must reach the parent
        _report(ctx, 125, f"{type(e).__name__}: {e}")
    os._exit(125)


def _report(ctx: ChildContext, code: int, message: str) -> None:
    try:
        sync.send(ctx.sync_fd, "error", code=code, message=message)
    except OSError:
        pass
    os._exit(code)


def _mark(ctx: ChildContext, name: str) -> None:
    if ctx.timing:
        ctx.marks[name] = time.perf_counter()


def _prepare(ctx: ChildContext) -> None:
    """Step 1, which needs no spec: signals, session, parent death, cgroup."""
    for s in FORWARDED:
        signal.signal(s, signal.SIG_DFL)
    os.setsid()
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if ctx.cgroup is not None:
        ctx.cgroup.enter(0)


def _steps(spec: dict, ctx: ChildContext) -> None:
    """Steps 2-11 (`_prepare` did step 1)."""
    proc = spec["process"]
    linux = spec.get("linux", {})
    ns_types = {n["type"] for n in linux.get("namespaces", [])}
    annotations = spec.get("annotations", {})

    # 2. namespaces (pid was unshared by the parent before fork)
    flags = 0
    for t, bit in (("mount", sc.CLONE_NEWNS), ("uts", sc.CLONE_NEWUTS), ("ipc", sc.CLONE_NEWIPC),
                   ("cgroup", sc.CLONE_NEWCGROUP), ("network", sc.CLONE_NEWNET)):
        if t in ns_types:
            flags |= bit
    sc.unshare(flags)
    _mark(ctx, "child.unshare")

    # 3. filesystem
    root = ctx.rootfs.target
    mounts.make_private("/")
    mounts.mount_rootfs(ctx.rootfs)
    for m in spec.get("mounts", []):
        mounts.mount_one(root, m)
    _mark(ctx, "child.mounts")

    # 4. hostname, loopback
    if "uts" in ns_types and spec.get("hostname"):
        sc.sethostname(spec["hostname"])
    if "network" in ns_types and annotations.get("org.imagetool.network") == "loopback":
        loopback_up()

    # 5. pivot_root
    mounts.pivot(root)

    # 6. masked, read-only paths, read-only root
    mounts.mask_paths(linux.get("maskedPaths", []))
    mounts.readonly_paths(linux.get("readonlyPaths", []))
    if spec.get("root", {}).get("readonly"):
        mounts.readonly_root()
    _mark(ctx, "child.pivot")

    # 7. rlimits, user, workdir
    for rl in proc.get("rlimits", []):
        if rl["type"] in _RLIMITS:
            resource.setrlimit(getattr(resource, rl["type"]), (rl["soft"], rl["hard"]))
    env = list(proc.get("env", []))
    uid, gid = proc["user"].get("uid", 0), proc["user"].get("gid", 0)
    groups = list(proc["user"].get("additionalGids", []))
    uname = annotations.get("org.imagetool.user")
    if uname:
        u = lookup_user("/", uname)
        uid, gid, groups = u.uid, u.gid, list(u.additional_gids)
        if env_get(env, "HOME") is None:
            env.append(f"HOME={u.home or '/'}")
    cwd = proc.get("cwd") or "/"
    target = mounts.secure_join("/", cwd)
    if not os.path.isdir(target):
        try:
            os.makedirs(target, 0o755, exist_ok=True)
            if uid or gid:
                os.chown(target, uid, gid)
        except OSError as e:
            raise ContainerError(f"cannot create the working directory {cwd}: {e.strerror}") from None
    os.chdir(target)

    # 8. stdio
    if ctx.tty_slave is not None:
        fcntl.ioctl(ctx.tty_slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(ctx.tty_slave, fd)
    elif not ctx.keep_stdin:
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)

    # 9. capabilities and identity
    caps = proc.get("capabilities") or {}
    bounding = capabilities.mask(caps.get("bounding", []))
    capabilities.apply(bounding, capabilities.mask(caps.get("effective", [])),
                       capabilities.mask(caps.get("permitted", [])),
                       capabilities.mask(caps.get("inheritable", [])))
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)  # a change of uid/gid cleared it (as runc, set it again)

    # 10. no_new_privs, fds
    if proc.get("noNewPrivileges"):
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    _close_fds(ctx.sync_fd)
    _mark(ctx, "child.exec")
    if ctx.timing:
        sync.send(ctx.sync_fd, "timing", marks=ctx.marks)

    # 11. exec
    args = proc["args"]
    path = find_executable(args[0], env)
    try:
        os.execve(path, args, dict(e.split("=", 1) for e in env if "=" in e))
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise CommandNotFound(f"exec {args[0]}: no such file or directory") from None
        if e.errno in (errno.EACCES, errno.ENOEXEC, errno.EISDIR, errno.EPERM):
            raise CommandNotExecutable(f"exec {args[0]}: {e.strerror.lower()}") from None
        raise ContainerError(f"exec {args[0]}: {e.strerror}") from None


def _close_fds(keep: int) -> None:
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        names = [str(i) for i in range(3, 1024)]
    for n in names:
        fd = int(n)
        if fd > 2 and fd != keep:
            try:
                os.close(fd)
            except OSError:
                pass


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


def loopback_up() -> None:
    """Bring `lo` up with SIOCSIFFLAGS (no `ip` binary needed)."""
    fd = sc.socket_fd(2, 2)  # AF_INET, SOCK_DGRAM
    try:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(fd, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(fd, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))
    finally:
        os.close(fd)
