"""The lean monitor: what a detached container's monitor becomes once its container runs.

The monitor (monitor.py) starts the container with all of imagetool imported (~19 MB resident).
Once it runs, the monitor execs a fresh interpreter (`python -I -S`: the standard library and
this package's directory only) running `main()` here, with one JSON argument (`launch()` builds
the argv). exec keeps the PID: the container's init (or runc) stays its child, so
PR_SET_PDEATHSIG still kills the container with its monitor, and state.json's owner_pid and
owner_start still name it. It is handed the container's output pipes (or the pty master of -t)
and, with -i, stdin's write end (held open, so the container never sees EOF). Idle it holds about
10 MB: it imports os, select, signal, json and jsonlog only. It

  - writes the container's output to the json-file log (jsonlog.Writer, --log-opt rotation),
  - runs the healthcheck: one interval after the start and after each probe's end it spawns
    `monitor.probe` in a full interpreter (python -c; nothing stays imported here), its pidfd
    in the same select; an unfinished probe is killed once the container has exited,
  - on SIGTERM kills the container (SIGHUP and SIGINT stay ignored, as the monitor left them),
  - once the output reaches EOF and the container is reaped, tears it down and records its exit
    (finish(): importing only what that needs, so `stop` does not wait for a full imagetool to
    load), and with a restart policy execs `monitor.resume` in a full interpreter, still the
    same PID, which applies it (a restart hands over to a new lean monitor).

Every fd it was handed is made close-on-exec on arrival: nothing of the container's reaches a
probe or the interpreter that resumes.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time

_MAIN = "import sys; sys.path.insert(0, sys.argv[1]); from imagetool.conmon import main; main()"
RESUME = "from imagetool.monitor import resume; resume()"
PROBE = "from imagetool.monitor import probe; probe()"


def package_parent() -> str:
    """The directory holding the imagetool package (what `-I -S` needs on sys.path)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(doc: dict) -> list[str]:
    """The argv that execs the lean monitor with `doc` (see main())."""
    return [sys.executable, "-I", "-S", "-c", _MAIN, package_parent(), json.dumps(doc)]


def full(code: str, *args: str) -> list[str]:
    """The argv of a full interpreter running `code` (imports as the CLI's do: site, PYTHONPATH)."""
    return [sys.executable, "-P", "-c", code, *args]


class _Probe:
    """A healthcheck probe under way: its process and pidfd."""

    def __init__(self, pid: int):
        self.pid = pid
        self.fd = os.pidfd_open(pid)

    def reap(self) -> None:
        os.close(self.fd)
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass

    def kill(self) -> None:
        try:
            signal.pidfd_send_signal(self.fd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.reap()


def main() -> None:
    """doc: cid, cdir, pid (the container's process: its init, or runc), streams {fd: "stdout" |
    "stderr"}, hold [fds], log, max_size, max_file, health (Config.Healthcheck or null),
    started (time.time() of the start) and `resume`, handed on to monitor.resume."""
    doc = json.loads(sys.argv[-1])
    pid = doc["pid"]
    pidfd = os.pidfd_open(pid)   # our child: signalled through it, never a recycled PID
    terminated = []

    def term(signum, frame):
        terminated.append(signum)
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, term)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})   # the monitor blocked it across the exec
    streams = {int(fd): name for fd, name in doc["streams"].items()}
    held = list(doc.get("hold") or ())
    for fd in (*streams, *held):
        os.set_inheritable(fd, False)
    from imagetool import jsonlog

    log = jsonlog.Writer(doc["log"], jsonlog.LogOptions(doc.get("max_size"), doc.get("max_file") or 1))
    check = doc.get("health")
    interval = check["Interval"] / 1e9 if check else None
    next_probe = doc["started"] + interval if check else None
    probe = None
    while streams:
        timeout = None
        if next_probe is not None and probe is None:
            timeout = max(0.0, next_probe - time.time())
        waiting = list(streams) + ([probe.fd] if probe is not None else [])
        ready = select.select(waiting, [], [], timeout)[0]
        for fd in ready:
            if probe is not None and fd == probe.fd:
                probe.reap()
                probe, next_probe = None, time.time() + interval
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:   # EIO: the pty's slave side is closed everywhere
                data = b""
            if data:
                log.write(streams[fd], data)
            else:
                os.close(fd)
                del streams[fd]
        if streams and probe is None and next_probe is not None and time.time() >= next_probe and not terminated:
            probe = _spawn_probe(doc)
    from imagetool.runtime.supervise import reap   # the end: what it imports no longer counts

    code = reap(pid)
    if probe is not None:
        probe.kill()
    log.close()
    for fd in held:
        os.close(fd)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGHUP, signal.SIGINT})   # cleanup is not cut short
    code = finish(doc["cdir"], code)
    if doc.get("restart", "no") != "no" and not terminated and os.path.exists(os.path.join(doc["cdir"], "state.json")):
        os.execv(sys.executable, full(RESUME, json.dumps(dict(doc["resume"], code=code))))
    os._exit(code)


def finish(cdir: str, code: int) -> int:
    """Tear down the exited container of `cdir` and record its exit as containers.run does on its
    way out: what is left in its cgroups (runtime.destroy; runc's container), its network,
    the directory with --rm, else state.json's exit code and times. `code` becomes 137 when the
    built-in runtime's cgroup saw an OOM kill, 127/126 when runc could not exec the command; the
    code recorded. Imports only what this needs (the lean monitor calls it; so does
    monitor.resume): no store, no containers module."""
    import shutil

    from imagetool import jsonlog, network, runtime

    state = _read(cdir)
    if state is None:   # rm -f took it meanwhile
        return code
    backend = state.get("runtime") or "imagetool"
    if backend == "imagetool":
        from imagetool.runtime import cgroups

        try:
            if cgroups.create(state["id"]).oom_killed():
                code = 137
        except Exception:
            pass
    elif code == 1:
        from imagetool.runtime import runc

        code = runc.exec_failure_code(os.path.join(cdir, f"{backend}.log")) or code
    try:
        runtime.destroy(state["id"], backend, state.get("cgroups") or [])
    finally:
        network.teardown(cdir)
        if state.get("rm"):
            shutil.rmtree(cdir, ignore_errors=True)
        else:
            state.update(status="exited", exit_code=code, pid=None,
                         finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), finished_at=jsonlog.now())
            _write(cdir, state)
    return code


def _read(cdir: str) -> dict | None:
    try:
        with open(os.path.join(cdir, "state.json")) as f:
            doc = json.load(f)
        return doc if isinstance(doc, dict) else None
    except (OSError, ValueError):
        return None


def _write(cdir: str, state: dict) -> None:
    """state.json replaced atomically, as containers.write_json does (the same temporary name)."""
    path = os.path.join(cdir, "state.json")
    tmp = os.path.join(cdir, f".imagetool-state.json-{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(state))
        os.replace(tmp, path)
    except FileNotFoundError:
        pass

def _spawn_probe(doc: dict):
    try:
        return _Probe(os.posix_spawn(sys.executable, full(PROBE, doc["cdir"], str(doc["started"])), os.environ))
    except OSError:
        return None

