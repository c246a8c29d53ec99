"""Rootless: what the built-in runtime does differently as uid 0 of a user namespace an ordinary user made.

The command entered that namespace first (imagetool/userns.py: uid 0 in it is the user, 1..N the
user's /etc/subuid range). There the runtime holds every capability over what the namespace owns
(the mount, PID, UTS, IPC, network and cgroup namespaces it unshares) and none over the host, so:

  /dev nodes      mknod is refused: the host's null, zero, full, random, urandom and tty are
                  bind-mounted instead (mounts.populate_dev, as runc rootless)
  rootfs          overlay mounted inside the container's mount namespace with `userxattr` (its
                  markers are user.overlay.*, Linux 5.11; unpack/rootfs.py), else the copy
  /sys            sysfs when the container has a network namespace of its own, else a read-only
                  bind of the host's /sys (mounts.mount_spec)
  /sys/fs/cgroup  v1 hierarchies cannot be mounted from a user namespace: a read-only bind of the
                  host's (mounts.mount_cgroupfs)
  cgroups         a delegated cgroup v2 subtree (the user's own cgroup, writable): limits apply;
                  otherwise none (every v1 host): one line on stderr, and the container runs
                  without limits, as podman does (cgroups/rootless.py)
  rlimits         no raising above the user's hard limits: clamped to them (as podman)
  capabilities    the spec's sets, valid inside the user namespace only: none on the host
  signals         PID 1 runs as the user (container root) or a subordinate id; the user outside
                  the namespace owns it, so has CAP_KILL and CAP_SYS_ADMIN over it: `kill`,
                  `stop` and `exec` run outside (userns.NEEDS_USERNS) and signal or setns(2)
                  into it; a command inside another user namespace (rm -f) kills PID 1 when it
                  runs as the user, else asks its owner (the monitor) with SIGTERM
"""

from __future__ import annotations

import os
import signal

from imagetool import userns


def active() -> bool:
    """Whether this process runs as root of a user namespace that is not the initial one."""
    return userns.inside()


def clamp_rlimit(which: int, soft: int, hard: int) -> tuple[int, int]:
    """(soft, hard) lowered to this process's hard limit (raising it needs CAP_SYS_RESOURCE in the
    initial namespace); RLIM_INFINITY counts as the largest."""
    import resource

    cur_hard = resource.getrlimit(which)[1]

    def key(v: int) -> float:
        return float("inf") if v == resource.RLIM_INFINITY else v

    hard = hard if key(hard) <= key(cur_hard) else cur_hard
    soft = soft if key(soft) <= key(hard) else hard
    return soft, hard


def kill_pid1(state: dict) -> bool:
    """SIGKILL a rootless container with no cgroup to kill it through: its PID 1 (the kernel then
    kills everything in its PID namespace); when this process may not signal it (PID 1 runs as a
    subordinate id and we are in another user namespace than its own), SIGTERM to its owner (the
    monitor or foreground imagetool, running as the user: it kills the container and cleans up).
    A container still being created (no PID 1 recorded) is its owner's to abort, asked the same
    way. Both are checked against their recorded start times. Whether a signal was sent (False:
    PID 1 is gone already)."""
    pid = state.get("pid")
    sent = _signal(pid, state.get("pid_start"), signal.SIGKILL) if pid else PermissionError
    if sent is not PermissionError:
        return sent is True
    owner = state.get("owner_pid")
    return owner != os.getpid() and _signal(owner, state.get("owner_start"), signal.SIGTERM) is True


def _signal(pid, start, sig: int):
    """True when sent, PermissionError when refused, None when `pid` is not that process (any more)."""
    from imagetool.runtime.supervise import proc_start

    if not pid:
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        if proc_start(pid) != start:
            return None
        if sig:
            signal.pidfd_send_signal(fd, sig)
        return True
    except PermissionError:
        return PermissionError
    except ProcessLookupError:
        return None
    finally:
        os.close(fd)


def runc_args() -> list[str]:
    """runc's global options here: rootless (inside the namespace, or the user outside it: ps, rm of
    a dead owner's container), its state in the user's runtime directory
    ($XDG_RUNTIME_DIR/imagetool/runc, else ~/.cache/imagetool/runc) instead of root's /run/runc."""
    if not active() and os.geteuid() == 0:
        return []
    base = os.environ.get("XDG_RUNTIME_DIR") or os.path.join(os.path.expanduser("~"), ".cache")
    return ["--root", os.path.join(base, "imagetool", "runc")]


def runc_spec(spec: dict) -> None:
    """The spec runc gets rootless: no cgroup path and no resources (the user has no cgroup runc
    could make; limits asked for are said not to apply, one line on stderr, as the built-in runtime)."""
    import sys

    linux = spec.get("linux", {})
    linux.pop("cgroupsPath", None)
    res = linux.pop("resources", None) or {}
    asked = [k for k in ("memory", "cpu") if res.get(k)] + (["pids"] if (res.get("pids") or {}).get("limit")
                                                                not in (None, 0, 2048) else [])
    if asked:
        sys.stderr.write(f"imagetool: warning: runc rootless: resource limits ({', '.join(asked)}) cannot apply "
                         "to a rootless container here; it runs without them\n")


def remove_tree(path) -> None:
    """shutil.rmtree(path, ignore_errors=True); an ordinary user outside its namespace (ps, logs,
    exec … reconciling a dead owner's --rm container) does it in a child that enters the user's
    namespace first: a rootless container's upper dir holds files of subordinate ids that only
    root of that namespace may remove. Nothing of the caller's buffered output is repeated."""
    import shutil

    if os.geteuid() == 0 or not os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    pid = os.fork()
    if pid == 0:
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            userns.enter()
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def limits_warning(reason: str) -> str:
    """The one line saying a rootless container runs without the limits asked for, and why."""
    return f"imagetool: warning: {reason}: resource limits cannot apply to a rootless container; it runs without them\n"


def warn_if_unlimited(memory, cpus, pids_limit) -> None:
    """run -d: the warning the monitor (its stderr is /dev/null) would print, on the CLI's stderr
    now, when limits are asked for and this user has no delegated cgroup."""
    import sys

    if not active():
        return
    if not (memory or cpus or pids_limit not in (None, 0, -1, 2048)):
        return
    from imagetool.runtime import cgroups

    reason = getattr(cgroups.create("limits-probe"), "reason", None)   # a manager: nothing made yet
    if reason:
        sys.stderr.write(limits_warning(reason))
