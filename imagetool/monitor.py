"""`run -d`: the per-container monitor, double-forked away from the CLI (the role of conmon / a shim).

    detach(store, opts) -> cid      the CLI's side: returns once the container runs (or raises
                                    its error), having printed nothing
    Monitor                         what containers.run is told in the monitor process; it runs the
                                    healthcheck thread (health.Checker) while the container runs
    spawn(body, lost) -> dict       the double fork itself, also used by `exec -d`

The CLI looks the image up (pulling it on its own terminal when missing), then forks; the child
calls setsid() and forks the monitor, then exits, so the monitor is nobody's child but init's
and has no controlling terminal: the CLI's exit, SIGKILL or SIGHUP, and the terminal closing do
not reach it. The monitor's stdio is /dev/null and its cwd `/`. It runs containers.run itself:
it owns the container (its PID is state.json's owner_pid), holds its stdio pipes and writes them
to `container.log` (jsonlog.py), reaps it, records the exit code and time, removes it with --rm.
The container's init has PR_SET_PDEATHSIG=SIGKILL with the monitor as its parent: a monitor that
is killed takes its container with it, and the next ps/rm/prune reconciles (containers.py).
The monitor ignores SIGHUP and SIGINT; SIGTERM ends it after killing and cleaning up the container.
Once the container runs, the monitor writes `{"id": …}` on a close-on-exec pipe to the CLI;
a failure before that arrives as `{"error": …, "code": …}` and becomes the CLI's error.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass

from imagetool import health, jsonlog
from imagetool.errors import CommandNotExecutable, CommandNotFound, ContainerError, ImagetoolError


class Reply:
    """A spawned process's one message to the CLI waiting in spawn(): `send` a JSON object once
    (later calls do nothing); `failed` sends {"error", "code", "hint"}."""

    def __init__(self, fd: int):
        self._ready_fd = fd

    def failed(self, message: str, code: int, hint: str | None = None) -> None:
        self.send({"error": message, "code": code, "hint": hint})

    def send(self, doc: dict) -> None:
        if self._ready_fd is None:
            return
        fd, self._ready_fd = self._ready_fd, None
        try:
            os.write(fd, json.dumps(doc).encode())
        except OSError:
            pass   # the CLI is gone: the container runs on
        finally:
            os.close(fd)


class Monitor(Reply):
    """Handed to containers.run in the monitor: how to say "running" (which also starts the run's
    healthcheck thread, health.Checker, when it has one) and "ended" (which stops it)."""

    def __init__(self, ready_fd: int, store=None):
        super().__init__(ready_fd)
        self.store = store
        self.cid: str | None = None
        self._checker = None

    def ready(self, cid: str) -> None:
        self.cid = cid
        self._start_health(cid)
        self.send({"id": cid})

    def ended(self) -> None:
        """The run is over (or being torn down): no more probes."""
        checker, self._checker = self._checker, None
        if checker is not None:
            checker.stop()

    def _start_health(self, cid: str) -> None:
        from imagetool import containers, health

        if self.store is None:
            return
        cdir, state = containers.find(self.store, cid)
        if not state.get("healthcheck"):
            return
        try:
            target = containers.target_of(cdir, state)
        except ImagetoolError:   # it ended already: nothing to check
            return
        self._checker = health.Checker(cdir, target, state["healthcheck"], time.time(), containers.write_json)
        self._checker.start()


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """docker's --restart: no | on-failure[:N] | always | unless-stopped (`limit` 0: no limit)."""

    name: str = "no"
    limit: int = 0

    @classmethod
    def parse(cls, text: str) -> "RestartPolicy":
        name, _, count = (text or "no").partition(":")
        if name not in ("no", "on-failure", "always", "unless-stopped") or (count and name != "on-failure"):
            raise ImagetoolError(f"invalid restart policy {text!r}",
                                 hint="use no, on-failure[:N], always or unless-stopped")
        if count and not (count.isdigit() and int(count) >= 0):
            raise ImagetoolError(f"invalid restart policy {text!r}: the count must be a number")
        return cls(name, int(count or 0))

    def again(self, code: int, restarts: int, stopped: bool) -> bool:
        """Whether the monitor runs the container again after it exited with `code` (`stopped`: by
        `imagetool stop`, which no policy overrides while the monitor lives)."""
        if stopped or self.name == "no":
            return False
        if self.name == "on-failure":
            return code != 0 and (self.limit == 0 or restarts < self.limit)
        return True


def detach(store, opts, existing: str | None = None) -> str:
    """Start `opts` (run -d) under its own monitor; the container's full id once it runs. With
    `existing`, that exited container starts again (`imagetool start`)."""
    import dataclasses

    from imagetool import containers

    policy = RestartPolicy.parse(opts.restart)
    jsonlog.LogOptions.parse(opts.log_opts)   # refused here, before anything runs
    health.resolve(None, opts)
    if policy.name != "no" and opts.rm:
        raise ImagetoolError("conflicting options: --restart and --rm")
    if opts.tty or opts.interactive:
        raise ImagetoolError("run -d with -i or -t is not supported yet", hint="drop -i/-t; read the output "
                             "with `imagetool logs`")
    if opts.explain or opts.script:
        raise ImagetoolError("run -d cannot be combined with --explain or --script")
    if opts.name and existing is None:
        containers.validate_name(opts.name)
    img = containers.image_for(store, opts)   # a pull happens here, on the CLI's terminal
    opts = dataclasses.replace(opts, image=img.name)
    doc = spawn(lambda fd: _monitor_main(store, opts, fd, existing),
                "the container's monitor exited before the container ran")
    return doc["id"]


def spawn(body, lost: str) -> dict:
    """Run `body(fd)` in a process nobody waits for (setsid and a double fork: init's child, no
    controlling terminal; stdio /dev/null, cwd `/`, the caller's inherited fds closed, SIGHUP and
    SIGINT ignored); the JSON object it writes on `fd` (a Reply), once `fd` is closed. One saying
    {"error", "code"} is raised here as the CLI's error; none at all is ContainerError(`lost`)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:   # the child: setsid, fork the process, exit
        code = 0
        try:
            os.close(r)
            os.setsid()
            if os.fork() == 0:
                _daemon_stdio()
                code = body(w)
        except BaseException:
            code = 125
        finally:
            os._exit(code)
    os.close(w)
    try:
        os.waitpid(pid, 0)
        from imagetool.runtime import sync

        data = sync.read_to_eof(r)
    finally:
        os.close(r)
    try:
        doc = json.loads(data)
    except ValueError:
        raise ContainerError(lost) from None
    if "error" not in doc:
        return doc
    cls = {126: CommandNotExecutable, 127: CommandNotFound, 125: ContainerError}.get(doc.get("code"), ImagetoolError)
    raise cls(doc.get("error") or "the container failed to start", hint=doc.get("hint"))


def _stopped(store, cid: str) -> bool:
    """Whether `imagetool stop` (or rm -f) asked for no more runs; the marker is used up."""
    from imagetool import containers

    return containers.remove_marker(store, cid, containers.STOPPED)


def _close_inherited() -> None:
    """Close every fd the CLI was given by its caller (all but 0-2 without close-on-exec: imagetool's
    own are close-on-exec): the monitor lives long, and a caller waiting for EOF on a pipe it
    handed to `run -d` must get it."""
    import fcntl

    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                if not fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC:
                    os.close(fd)
            except OSError:
                pass


def _daemon_stdio() -> None:
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    _close_inherited()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _monitor_main(store, opts, ready_fd: int, existing: str | None) -> int:
    """The monitor's whole life: run the container to its end, again as its restart policy says
    (after 0.1 s, doubling up to 10 s); its last exit code."""
    from imagetool import containers

    monitor = Monitor(ready_fd, store)
    try:
        if existing is not None:
            containers.remove_marker(store, existing, containers.STOPPED)
        code = containers.run(store, opts, monitor=monitor, existing=existing)
        policy, restarts, delay = RestartPolicy.parse(opts.restart), 0, 0.1
        while monitor.cid is not None and policy.again(code, restarts, _stopped(store, monitor.cid)):
            time.sleep(delay)
            if _stopped(store, monitor.cid):   # `stop` while it waited
                break
            delay = min(delay * 2, 10.0)
            restarts += 1
            code = containers.run(store, opts, monitor=monitor, existing=monitor.cid, restarts=restarts)
        return code
    except ImagetoolError as e:
        monitor.failed(e.message, e.exit_code if e.exit_code != 1 else 125, e.hint)
    except BaseException as e:
        monitor.failed(f"the container's monitor failed: {e}", 125)
    finally:
        monitor.failed("the container ended before it ran", 125)   # a no-op once ready() was sent
    return 125
