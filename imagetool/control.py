"""Acting on a container from any CLI process, with no daemon: kill, stop, wait, logs, inspect, ps's status.

Each reads state.json (containers.find, reconciled first: a dead monitor's container is cleaned up
and reported exited) and then signals the container's PID 1 through a pidfd opened before its
start time is checked against the one recorded, so a recycled PID is never signalled. Exits are
recorded by the container's monitor (monitor.py); `wait` and `stop` watch the monitor's pidfd and
the state file until it has written them.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

from imagetool import containers, health, jsonlog
from imagetool.runtime import supervise
from imagetool.errors import ImagetoolError


def parse_signal(text: str | int) -> int:
    """SIGTERM, TERM, term or 15 → 15; anything else is a clear error."""
    name = str(text).strip().upper()
    if name.isdigit() and 0 < int(name) < signal.NSIG:
        return int(name)
    name = name if name.startswith("SIG") else "SIG" + name
    sig = getattr(signal.Signals, name, None) if name.isidentifier() else None
    if sig is None:
        raise ImagetoolError(f"invalid signal: {text}", hint="use a name (SIGTERM, KILL) or a number")
    return int(sig)


def _current(store, id_or_name: str) -> tuple:
    cdir, state = containers.find(store, id_or_name)
    state = containers.reconcile(cdir, state)
    if state is None:
        raise ImagetoolError(f"no such container: {id_or_name}")
    return cdir, state


def _pidfd(state: dict, key: str = "pid") -> int | None:
    """A pidfd for the process recorded under `key` (its start time under `key`_start), or None
    when that process is gone (or the PID now names another one)."""
    pid = state.get(key)
    if not pid:
        return None
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return None
    start_key = "owner_start" if key == "owner_pid" else f"{key}_start"
    if supervise.proc_start(pid) != state.get(start_key):
        os.close(fd)
        return None
    return fd


def _send(state: dict, sig: int) -> bool:
    """Send `sig` to the container's PID 1; False when it is no longer running."""
    fd = _pidfd(state)
    if fd is None:
        return False
    try:
        signal.pidfd_send_signal(fd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)


def _wait_gone(fd: int | None, timeout: float | None) -> bool:
    """Whether the process of pidfd `fd` ended within `timeout` seconds (None: no limit)."""
    if fd is None:
        return True
    return bool(select.select([fd], [], [], timeout)[0])


def kill(store, id_or_name: str, sig: str | int = "SIGKILL") -> str:
    """Send a signal to a running container's PID 1 (docker kill)."""
    number = parse_signal(sig)
    _, state = _current(store, id_or_name)
    if state.get("status") != "running" or not _send(state, number):
        raise ImagetoolError(f"container {id_or_name} is not running")
    return id_or_name


def stop(store, id_or_name: str, timeout: int | None = None) -> str:
    """docker stop: the container's stop signal (the image's StopSignal, default SIGTERM), then
    SIGKILL after `timeout` seconds (default: run's --stop-timeout, else 10); returns once the exit is recorded and its monitor
    is gone. The marker containers.STOPPED tells the monitor not to run it again (restart policies):
    a container waiting for its restart is not restarted. One that is not running is left as it is."""
    _, state = _current(store, id_or_name)
    if state.get("status") != "running" and _pidfd_closed(state, "owner_pid"):
        return id_or_name
    if timeout is None:
        timeout = state.get("stop_timeout")   # run --stop-timeout
    containers.add_marker(store, state["id"], containers.STOPPED)
    while True:
        try:
            _, state = _current(store, state["id"])
        except ImagetoolError:
            return id_or_name   # --rm: gone
        if state.get("status") == "running":
            _signal_then_kill(state, timeout)
        owner = _pidfd(state, "owner_pid")
        if owner is None:
            if state.get("status") != "running":
                return id_or_name
            continue   # its owner just died: the next look reconciles it
        try:   # no polling: its owner records the exit and ends (the marker allows no other run)
            _wait_gone(owner, None)
        finally:
            os.close(owner)


def _pidfd_closed(state: dict, key: str) -> bool:
    """Whether the process recorded under `key` is gone."""
    fd = _pidfd(state, key)
    if fd is None:
        return True
    os.close(fd)
    return False


def _signal_then_kill(state: dict, timeout: int | None) -> None:
    fd = _pidfd(state)
    if fd is None:
        return
    try:
        try:
            signal.pidfd_send_signal(fd, parse_signal(state.get("stop_signal") or "SIGTERM"))
        except ProcessLookupError:
            return
        except PermissionError:   # rootless, from another user namespace (restart): its owner stops it
            from imagetool.runtime import rootless

            rootless.kill_pid1(state)
            return
        if not _wait_gone(fd, 10 if timeout is None else max(timeout, 0)):
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except ProcessLookupError:
                pass
    finally:
        os.close(fd)


def _await_exit(store, state: dict) -> dict | None:
    """The container's state once its exit is recorded (None when --rm removed it meanwhile):
    waits for its monitor to record it, or reconciles after a monitor that died."""
    cid = state["id"]
    owner = _pidfd(state, "owner_pid")
    try:
        while True:
            try:
                cdir, state = containers.find(store, cid)
            except ImagetoolError:
                return None
            state = containers.reconcile(cdir, state)
            if state is None or state.get("status") == "exited":
                return state
            if owner is None:   # not ours to wait for (a foreground run's imagetool): look again soon
                time.sleep(0.05)
            else:
                _wait_gone(owner, 0.05)
    finally:
        if owner is not None:
            os.close(owner)


def start(store, id_or_name: str) -> None:
    """docker start: an exited container runs again under a new monitor, on its own directory
    (files it wrote are still there; its log goes on). `start -a`/`-ai` attach to it afterwards
    through its monitor's socket (attach.start_attached)."""
    from imagetool.monitor import detach

    _, state = _current(store, id_or_name)
    if state.get("status") in ("created", "running"):
        raise ImagetoolError(f"container {id_or_name} is already running",
                             hint="stop it first (imagetool stop), or use `imagetool restart`")
    detach(store, containers.options_of(state), existing=state["id"])


def exec_(store, id_or_name: str, command: list, env=(), user: str | None = None, workdir: str | None = None,
          interactive: bool = False, tty: bool = False, detach: bool = False) -> int:
    """docker exec: `command` in the running container (runtime/execin.py); its exit code. With
    `tty` its stdio is a pty of the container's devpts; with `detach` it runs on in a process of its
    own (monitor.spawn: its output discarded) and 0 is returned once it has been exec'd; as docker,
    -d with -i keeps its stdin open (nothing writes to it) and with -t gives it the pty."""
    from imagetool.runtime import execin

    cdir, state = _current(store, id_or_name)
    target = containers.target_of(cdir, state, id_or_name)
    kw = dict(env=list(env), user=user, cwd=workdir)
    if not detach:
        return execin.execute(target, list(command), interactive=interactive, tty=tty, **kw)
    from imagetool.monitor import Reply, spawn

    def body(fd: int) -> int:
        reply = Reply(fd)
        try:
            execin.execute(target, list(command), sink=lambda stream, data: None, interactive=interactive,
                           tty=tty, started=lambda: reply.send({"started": True}), **kw)
        except ImagetoolError as e:
            reply.failed(e.message, e.exit_code if e.exit_code != 1 else 125, e.hint)
        finally:
            reply.failed("the exec'd process ended before it started", 125)   # a no-op once started
        return 0

    spawn(body, "the exec'd process was lost before it started")
    return 0


def wait(store, id_or_name: str) -> int:
    """docker wait: block until the container exits; its exit code."""
    _, state = _current(store, id_or_name)
    done = _await_exit(store, state)
    if done is None:
        raise ImagetoolError(f"container {id_or_name} was removed when it exited (--rm): its exit code is gone")
    return int(done.get("exit_code") if done.get("exit_code") is not None else 137)


def logs(store, id_or_name: str, follow: bool = False, tail: int | None = None, timestamps: bool = False,
         offset: int | None = None, since: str | None = None) -> None:
    """docker logs: the container's json-file log (rotated files first; only the current file from
    byte `offset` when given) to stdout and stderr, each entry to its stream; with `follow`, until
    the container has exited for good (its monitor is gone) and its log is read to the end. With
    `since` (ages.since_stamp: an RFC 3339 or Unix time, or a duration before now) only the entries
    written from then on (of the last `tail`)."""
    from imagetool import ages

    after = ages.since_stamp(since) if since is not None else None
    cdir, state = _current(store, id_or_name)
    if not state.get("log_path"):
        raise ImagetoolError(f"container {id_or_name} has no log: only detached containers (run -d) keep one")

    def done() -> bool:   # exited, and its monitor gone (one waiting to restart it keeps the log going)
        st = containers.read_state(cdir)
        st = containers.reconcile(cdir, st) if st is not None else None
        return st is None or (st.get("status") != "running" and _pidfd_closed(st, "owner_pid"))

    outs = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
    for e in jsonlog.entries(cdir / containers.LOG, tail=tail, follow=follow, done=done, offset=offset):
        if after is not None and e.get("time", "") < after:
            continue
        out = outs[e["stream"]]
        out.write(((e.get("time", "") + " ") if timestamps else "").encode() + e["log"].encode())
        out.flush()


# ---------------------------------------------------------------- ps and inspect


def _restart_policy(text: str | None) -> dict:
    from imagetool.monitor import RestartPolicy

    try:
        p = RestartPolicy.parse(text or "no")
    except ImagetoolError:
        p = RestartPolicy()
    return {"Name": p.name, "MaximumRetryCount": p.limit}


_ZERO_TIME = "0001-01-01T00:00:00Z"


def inspect(store, id_or_name: str) -> dict:
    """The container as `docker inspect` shows it (its field names, for scripts written for it)."""
    from imagetool.network import network_settings as _network_settings

    cdir, state = _current(store, id_or_name)
    status = state.get("status", "created")
    running = status == "running"
    res = state.get("resources") or {}
    cpu = res.get("cpu") or {}
    nano_cpus = int(cpu["quota"] * 1e9 / cpu["period"]) if cpu.get("quota") and cpu.get("period") else 0
    host = dict(state.get("host_config") or {})
    host.update(Memory=(res.get("memory") or {}).get("limit") or 0,
                MemorySwap=(res.get("memory") or {}).get("swap") or 0, NanoCpus=nano_cpus,
                PidsLimit=(res.get("pids") or {}).get("limit") or None,
                RestartPolicy=_restart_policy(state.get("restart")))
    return {
        "Id": state.get("id", ""),
        "Created": state.get("created", ""),
        "Path": state.get("path", ""),
        "Args": state.get("args", []),
        "State": {
            "Status": status, "Running": running, "Paused": False, "Restarting": False,
            "OOMKilled": False, "Dead": False, "Pid": state.get("pid") or 0 if running else 0,
            "ExitCode": state.get("exit_code") or 0, "Error": state.get("error", ""),
            "StartedAt": state.get("started_at") or _ZERO_TIME,
            "FinishedAt": state.get("finished_at") or _ZERO_TIME,
            **({"Health": health.read(cdir) or {"Status": "starting", "FailingStreak": 0, "Log": []}}
               if state.get("healthcheck") else {}),
        },
        "Image": state.get("image_digest", ""),
        "Name": "/" + state.get("name", ""),
        "RestartCount": state.get("restart_count", 0),
        "Driver": "overlay",
        "LogPath": state.get("log_path", ""),
        "Mounts": state.get("mounts", []),
        "Config": {"Image": state.get("image", ""), "Cmd": [state.get("path", ""), *state.get("args", [])],
                   "StopSignal": state.get("stop_signal", "SIGTERM"),
                   **({"StopTimeout": state["stop_timeout"]} if state.get("stop_timeout") is not None else {}),
                   **({"Healthcheck": state["healthcheck"]} if state.get("healthcheck") else {})},
        "HostConfig": host,
        "NetworkSettings": _network_settings(cdir),
    }
