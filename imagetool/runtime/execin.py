"""`exec`: a new process in a running container, confined as its PID 1 is (runc exec's role).

    code = execute(Target(pid, pid_start, cgroups, spec), args, env=[...], user=None, cwd=None,
                   interactive=False, tty=False, sink=None, timeout=None, started=None)

Steps, in order (the lessons of runc's CVE-2016-9962 and CVE-2024-21626 in brackets):
  imagetool   compile the spec's seccomp filter, make the sealed trampoline, stdio pipes and a
              close-on-exec error pipe; open a pidfd of the container's PID 1 and check its start
              time against the one recorded (a recycled PID is never joined); fork
  joiner      make_non_dumpable [the container cannot ptrace it or open its /proc files], close
              every fd but its stdio and those it hands on [no host fd goes in], join
              every cgroup of the container (born in the cgroup2 one: cgroups.fork_into; `tasks`
              of the v1 ones), setns(pidfd, every namespace that
              differs from imagetool's) in one call; that resets root and cwd to the container's
              root [no host cwd]; with -t open a pty of the container's own /dev/pts (resolved
              in its root) and send the master back over a socket (console.py); fork (a child is in the container's PID namespace); reap it and
              exit with its status
  process     parent-death signal, new session, the pipes (or the pty slave) as fds 0-2, every other fd closed but the
              error pipe and the trampoline [no host fd], the spec's rlimits, cd to the working
              directory inside the root, the user (looked up in the container's /etc), seccomp
              before the capability drop when no_new_privs is not set, the spec's capability sets,
              setgroups/setgid/setuid, no_new_privs, seccomp last when it is set, exec through the
              sealed trampoline (sealed.py)
A failure before the exec comes back on the error pipe as the init's would (sync.py):
127 not found, 126 not executable, 125 anything else.
"""

from __future__ import annotations

import errno
import os
import resource  # every import before the setns: after it, / is the container's
import select
import signal
import time
from dataclasses import dataclass

from imagetool.errors import CommandNotExecutable, CommandNotFound, ContainerError
from imagetool.runtime import capabilities, cgroups, console, sealed, seccomp, stdio, supervise, sync
from imagetool.runtime import syscalls as sc
from imagetool.runtime.init import default_signals, find_executable
from imagetool.runtime.spec import env_get
from imagetool.safepath import Root
from imagetool.users import lookup as lookup_user

_NAMESPACES = (("user", sc.CLONE_NEWUSER), ("mnt", sc.CLONE_NEWNS), ("uts", sc.CLONE_NEWUTS), ("ipc", sc.CLONE_NEWIPC),
               ("net", sc.CLONE_NEWNET), ("pid", sc.CLONE_NEWPID), ("cgroup", sc.CLONE_NEWCGROUP))


@dataclass(frozen=True, slots=True)
class Target:
    """The running container to join: its PID 1 (host PID and start time), cgroups, OCI spec."""

    pid: int
    pid_start: str
    cgroups: tuple
    spec: dict


def runc_target(backend: str, container_id: str, spec: dict, runner: tuple[int, str]) -> Target:
    """The Target of a container run by runc or crun: its init's PID from `runc state`, its
    cgroups from /proc/PID/cgroup under each hierarchy's mount point (runc makes them). `runner`:
    the recorded (pid, start time) of its `runc run` process; while that runs and the container
    is still being created (just after `run -d`), `runc state` is asked again (up to 10 s). A PID
    whose cgroups are not the container's (it ended, the PID reused) is refused; so is a
    container that is not running. Rootless, runc keeps its state where rootless.runc_args says
    and makes no cgroup (none is joined then)."""
    import json
    import shutil
    import subprocess

    from imagetool.runtime import cgroups, rootless

    binary = shutil.which(backend) or shutil.which(backend, path="/usr/local/sbin:/usr/sbin:/sbin")
    if binary is None:
        raise ContainerError(f"{backend} is not installed")
    deadline = time.monotonic() + 10
    while True:
        r = subprocess.run([binary, *rootless.runc_args(), "state", container_id], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        try:
            doc = json.loads(r.stdout) if r.returncode == 0 else {}
        except ValueError:
            doc = {}
        pid = doc.get("pid")
        if doc.get("status") == "running" and isinstance(pid, int) and pid > 0:
            break
        if doc.get("status") == "stopped" or supervise.proc_start(runner[0]) != runner[1] \
                or time.monotonic() > deadline:
            raise ContainerError("the container is not running")
        time.sleep(0.01)   # runc has not made it yet
    start = supervise.proc_start(pid)
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            own = cgroups.own_cgroups(f.read())
    except OSError:
        raise ContainerError("the container is not running") from None
    paths = tuple(os.path.join(h.mountpoint, own[h.key].lstrip("/")) for h in cgroups.hierarchies()
                  if h.key in own and own[h.key].rstrip("/").endswith("/" + container_id))
    if start is None or not (paths or rootless.active()):   # rootless runc makes no cgroup to check it by
        raise ContainerError("the container is not running")
    return Target(pid, start, paths, spec)


def _open_target(target: Target) -> int:
    try:
        fd = os.pidfd_open(target.pid)
    except OSError:
        fd = None
    if fd is not None and supervise.proc_start(target.pid) == target.pid_start:
        return fd
    if fd is not None:
        os.close(fd)
    raise ContainerError("the container is not running")


def _ns_flags(pid: int) -> int:
    """The namespaces of `pid` that differ from this process's (those to join)."""
    flags = 0
    for name, bit in _NAMESPACES:
        if os.stat(f"/proc/{pid}/ns/{name}").st_ino != os.stat(f"/proc/self/ns/{name}").st_ino:
            flags |= bit
    return flags


def execute(target: Target, args: list[str], env: list[str] = (), user: str | None = None,
            cwd: str | None = None, interactive: bool = False, sink=None, timeout: float | None = None,
            tty: bool = False, started=None) -> int | None:
    """Run `args` in the container and copy its stdio (and stdin with `interactive`) until it
    ends; its exit code (docker's: 128+signal; 126/127 raised as CommandNotExecutable/NotFound).
    With `sink` its output goes to `sink(stream, data)` instead (a healthcheck's probe, exec -d;
    with `tty` the pty's output, as stdout, and nothing is typed into it);
    with `timeout` (seconds) a process still running then is killed (its joiner, so
    PR_SET_PDEATHSIG kills it) and None is returned. With `tty` its stdio is a pty of the
    container's own devpts (as run -t: console.py), relayed to imagetool's terminal. `started()`
    is called once the command has been exec'd."""
    if not args:
        raise ContainerError("exec needs a command")
    spec = target.spec
    section = spec.get("linux", {}).get("seccomp")
    program = seccomp.compile(section) if section else None
    pidfd = _open_target(target)
    flags = _ns_flags(target.pid)
    oom = _oom_score_adj(target.pid)
    try:
        nice = os.getpriority(os.PRIO_PROCESS, target.pid)   # PID 1's, not the caller's either
    except OSError:
        nice = None
    fds: list[int] = [pidfd]
    pipes = None
    try:
        trampoline = sealed.sealed_trampoline()
        fds.append(trampoline)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        fds += [err_r, err_w]
        if tty:
            sock, child_sock = console.socketpair()
            fds += [sock, child_sock]
        else:
            pipes = stdio.Pipes.make(interactive)
        pid, born_in = cgroups.fork_into(_cgroup2_group(target.cgroups))
        if pid == 0:
            code = 125
            try:
                os.close(err_r)
                if tty:
                    os.close(sock)
                    pipes = _Console(child_sock)
                else:
                    pipes.close_parent_ends()
                code = _joiner(target, pidfd, flags, pipes, err_w, trampoline, program, args, env, user, cwd, oom, nice,
                               born_in)
            except BaseException as e:
                _send_error(err_w, e)
            finally:
                os._exit(code)
        for fd in (pidfd, trampoline, err_w) + ((child_sock,) if tty else ()):
            stdio._close(fd)
        fds = [err_r] + ([sock] if tty else [])
        if pipes is not None:
            pipes.close_child_ends()
        try:
            supervise.receive_until(sync.Reader(err_r), None, _Silent())
            master = console.receive_master(sock) if tty else None
        except BaseException:
            supervise.kill_and_reap(pid)
            raise
        if started is not None:
            started()
        if tty and sink is not None:   # exec -d -t: the pty is held, its output discarded, nothing typed
            _drain_master(master, sink)
            return supervise.reap(pid)
        if tty:
            console.relay(master, interactive)   # closes the master
            return supervise.reap(pid)
        child_pipes, pipes = pipes, None
        if sink is None and timeout is None:
            stdio.copy(child_pipes)
            return supervise.reap(pid)
        deadline = None if timeout is None else time.monotonic() + timeout
        if not _drain_until(child_pipes, sink or (lambda stream, data: None), deadline):
            supervise.kill_and_reap(pid)
            return None
        return supervise.reap(pid)
    finally:
        for fd in fds:
            stdio._close(fd)
        if pipes is not None:
            pipes.close_parent_ends()


def _drain_until(pipes, sink, deadline: float | None) -> bool:
    """Hand the output to `sink` until both pipes reach EOF; False once `deadline` passed first
    (a background child of the process that keeps them open counts against the timeout too)."""
    names = {pipes.stdout_r: "stdout", pipes.stderr_r: "stderr"}
    try:
        while names:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            ready = select.select(list(names), [], [], left)[0]
            for fd in ready:
                data = os.read(fd, 65536)
                if data:
                    sink(names[fd], data)
                else:
                    stdio._close(fd)
                    del names[fd]
        return True
    finally:
        for fd in names:
            stdio._close(fd)


def _drain_master(master: int, sink) -> None:
    """Hand a pty's output to `sink` as stdout until every slave is closed (EIO); closes `master`."""
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            sink("stdout", data)
    finally:
        os.close(master)


def _close_all_but(keep: set) -> None:
    for name in os.listdir("/proc/self/fd"):
        if int(name) not in keep:
            stdio._close(int(name))


class _Console:
    """-t in the joiner: in place of the pipes, a pty of the container's devpts (opened once it
    has joined the mount namespace); the master goes back over `sock`, the slave becomes the
    process's controlling terminal and fds 0-2."""

    def __init__(self, sock: int):
        self.sock, self.slave = sock, None

    def open(self) -> None:
        with Root("/") as root:   # the container's /dev/pts, symlinks followed in its root only
            pfd, _ = root.resolve_dir(("dev", "pts"))
            master, self.slave = console.allocate(pfd)
        console.send_master(self.sock, master)   # closes both

    def close_child_ends(self) -> None:
        if self.slave is not None:
            os.close(self.slave)


class _Silent:
    def emit_message(self, m) -> None:
        pass


def _send_error(fd: int, e: BaseException) -> None:
    code = {CommandNotFound: 127, CommandNotExecutable: 126}.get(type(e), 125)
    message = getattr(e, "message", None) or str(e) or type(e).__name__
    try:
        sync.send(fd, "error", code=code, message=message)
    except OSError:
        pass


def _oom_score_adj(pid: int) -> str | None:
    """The container's PID 1's oom_score_adj (the exec'd process gets it, not imagetool's own: a
    caller run with a negative one would make the container's process the last the OOM killer picks)."""
    try:
        with open(f"/proc/{pid}/oom_score_adj") as f:
            return f.read().strip()
    except OSError:
        return None


def _cgroup2_group(groups) -> str | None:
    """The cgroup2 group among the container's (v2's only one, the hybrid's unified one): the
    joiner is cloned into it (cgroups.fork_into)."""
    return next((g for g in groups if os.path.exists(os.path.join(g, "cgroup.controllers"))), None)


def _joiner(target, pidfd, flags, pipes, err_w, trampoline, program, args, env, user, cwd, oom=None,
            nice=None, born_in=None) -> int:
    """In the forked child: join the container, fork the process, reap it; its exit status."""
    sealed.make_non_dumpable()
    if oom is not None:   # before the setns: /proc is still the host's, and the process inherits it
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write(oom)
        except OSError:   # below the floor a privileged ancestor set (EACCES): the caller's stays
            pass
    if nice is not None:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        except OSError:   # a lower nice than the caller's needs CAP_SYS_NICE
            pass
    ends = (pipes.sock,) if isinstance(pipes, _Console) else pipes.child_ends()
    _close_all_but({0, 1, 2, pidfd, err_w, trampoline, *ends})   # nothing else of the caller's goes in
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    for group in target.cgroups:   # single-threaded: `tasks` moves all of it, without cgroup.procs' RCU wait
        if group != born_in:
            tasks = os.path.join(group, "tasks")
            with open(tasks if os.path.exists(tasks) else os.path.join(group, "cgroup.procs"), "w") as f:
                f.write("0")
    sc.setns(pidfd, flags)   # root and cwd become the container's
    os.close(pidfd)
    if isinstance(pipes, _Console):
        pipes.open()
    pid = os.fork()
    if pid == 0:
        try:
            _process(target.spec, pipes, err_w, trampoline, program, args, env, user, cwd)
        except BaseException as e:
            _send_error(err_w, e)
        finally:
            os._exit(125)
    for fd in (err_w, trampoline):
        os.close(fd)
    pipes.close_child_ends()
    return supervise.reap(pid)


def _process(spec: dict, pipes, err_w, trampoline, program, args, env, user, cwd) -> None:
    """In the container's namespaces and cgroup: become the exec'd process (never returns)."""
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setsid()
    default_signals()   # nothing ignored or blocked that the caller was (the init's own)
    try:   # a session keyring of its own, never the caller's (as the init; runc exec does it too)
        sc.join_session_keyring()
    except OSError as e:
        if e.errno != errno.ENOSYS:
            raise
    if isinstance(pipes, _Console):
        console.attach(pipes.slave)
    else:
        for target_fd, fd in zip((0, 1, 2), pipes.child_ends()):
            if fd is None:
                fd = os.open(os.devnull, os.O_RDONLY)
            os.dup2(fd, target_fd)
    _close_all_but({0, 1, 2, err_w, trampoline})
    proc = spec["process"]
    for rl in proc.get("rlimits") or []:
        which = getattr(resource, rl["type"], None)
        if which is not None:
            resource.setrlimit(which, tuple(resource.RLIM_INFINITY if v >= (1 << 63) - 1 else v
                                            for v in (rl["soft"], rl["hard"])))
    environ = list(proc.get("env", []))
    u = proc.get("user") or {}
    uid, gid, groups = u.get("uid", 0), u.get("gid", 0), list(u.get("additionalGids", []))
    name = user or spec.get("annotations", {}).get("org.imagetool.user")
    if name:
        with Root("/") as root:
            found = lookup_user(root, name)
        uid, gid, groups = found.uid, found.gid, list(found.additional_gids)
        environ = [e for e in environ if not e.startswith("HOME=")] + [f"HOME={found.home or '/'}"]
    for e in env:
        key = e.split("=", 1)[0]
        value = e if "=" in e else f"{e}={os.environ.get(e, '')}"   # -e NAME: the host's value
        environ = [x for x in environ if x.split("=", 1)[0] != key] + [value]
    try:
        os.chdir(cwd or proc.get("cwd") or "/")
        os.getcwd()   # CVE-2024-21626: a cwd outside the container's root has no path ("(unreachable)")
    except OSError as e:
        raise ContainerError(f"cannot enter the working directory {cwd or proc.get('cwd')}: {e.strerror}") from None
    nnp = bool(proc.get("noNewPrivileges"))
    flags = None
    if program is not None:
        flags = seccomp.filter_flags(spec.get("linux", {}).get("seccomp") or {})
        if not nnp:
            seccomp.load(program, flags)
    caps = proc.get("capabilities") or {}
    capabilities.apply(capabilities.mask(caps.get("bounding", [])), capabilities.mask(caps.get("effective", [])),
                       capabilities.mask(caps.get("permitted", [])), capabilities.mask(caps.get("inheritable", [])))
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if nnp:
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
        if program is not None:
            seccomp.load(program, flags)
    path = find_executable(args[0], environ)
    if env_get(environ, "PATH") is None:
        environ.append("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    try:
        sealed.exec_command(path, args, environ, trampoline_fd=trampoline)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise CommandNotFound(f"exec {args[0]}: no such file or directory") from None
        raise CommandNotExecutable(f"exec {args[0]}: {e.strerror.lower()}") from None
