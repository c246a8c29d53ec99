"""`run -d`: the per-container monitor, double-forked away from the CLI (the role of conmon / a shim).

    detach(store, opts) -> cid      the CLI's side: returns once the container runs (or raises
                                    its error), having printed nothing
    Monitor                         what containers.run is told in the monitor process: ready(),
                                    then hand_over() execs the lean monitor (conmon.py)
    spawn(body, lost) -> dict       the double fork itself, also used by `exec -d`
    resume(), probe()               what the lean monitor execs (restart policy) or spawns
                                    (one healthcheck probe) in a full interpreter

The CLI forks first; the child calls setsid() and forks the monitor, then exits, so the monitor
is nobody's child but init's
and has no controlling terminal: the CLI's exit, SIGKILL or SIGHUP, and the terminal closing do
not reach it. The monitor's stdio is /dev/null and its cwd `/`. While it loads the run's
modules, the CLI looks the image up (pulling it on its own terminal when missing) and then hands
it the run over a pipe (_Started: the options, the image's digest); a CLI that fails or is killed
before closes the pipe empty and the monitor exits. It runs containers.run itself:
it owns the container (its PID is state.json's owner_pid). Once the container runs it execs the
lean monitor (conmon.py, the same PID, ~10 MB), which holds its stdio and writes it to
`container.log` (jsonlog.py), runs the healthcheck probes, reaps it, records the exit code and
time, removes it with --rm, and for a restart policy execs resume() here again.
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
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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
    """Handed to containers.run in the monitor: how to say "running" (`ready`), then `hand_over`
    the running container to the lean monitor (conmon.py). `restarts` and `delay` are the restart
    policy's count and next wait, carried across the hand-overs."""

    def __init__(self, ready_fd: int | None, store=None, restarts: int = 0, delay: float = 0.1, image=None,
                 cli: int | None = None):
        super().__init__(ready_fd)
        self.store = store
        self.cid: str | None = None
        self.restarts, self.delay = restarts, delay
        self._image = image   # the image.Image the CLI looked up before the fork (its first run only)
        self.cli = cli   # a pidfd of the CLI waiting for ready() (its first run only; closed by _let_exit)

    def take_image(self):
        """The image the CLI already loaded (inherited through the fork), once; None after."""
        img, self._image = self._image, None
        return img

    def ready(self, cid: str, timing: str | None = None) -> None:
        """The container runs: the CLI prints its id (and with IMAGETOOL_TRACE_TIMING, `timing`:
        the run's breakdown in the monitor, whose own stderr is /dev/null)."""
        self.cid = cid
        self.send({"id": cid, "timing": timing} if timing else {"id": cid})

    def ended(self) -> None:
        """The run is over (or being torn down): nothing to stop here (the lean monitor probes)."""

    def hand_over(self, container, cdir, state: dict) -> None:
        """Exec the lean monitor (conmon.py) for the running `container`: the same PID, its init
        still our child, its output fds handed on; never returns unless the exec cannot be done
        (another thread runs, or the interpreter is not there): then the caller waits as before."""
        cli, self.cli = self.cli, None
        _let_exit(cli)
        import threading

        from imagetool import containers

        pipes, master = container._pipes, container._master   # the Supervised's ends of its stdio
        if threading.active_count() != 1 or self.store is None or (pipes is None and master is None):
            return
        if master is not None:
            streams, hold = {master: "stdout"}, []
        else:
            streams = {pipes.stdout_r: "stdout", pipes.stderr_r: "stderr"}
            hold = [pipes.stdin_w] if pipes.stdin_w is not None else []
        check = state.get("healthcheck")
        if check:   # each run begins at `starting`
            containers.write_json(cdir / health.FILE, {"Status": "starting", "FailingStreak": 0, "Log": []})
        options = jsonlog.LogOptions.parse((state.get("options") or {}).get("log_opts"))
        from imagetool import conmon

        doc = {"cid": state["id"], "cdir": str(cdir), "pid": container.pid,
               "streams": {str(fd): name for fd, name in streams.items()}, "hold": hold,
               "log": str(cdir / containers.LOG), "max_size": options.max_size, "max_file": options.max_file,
               "health": check, "started": time.time(), "restart": state.get("restart") or "no",
               "resume": {"store": str(self.store.root), "cid": state["id"], "restarts": self.restarts,
                          "delay": self.delay}}
        signal.signal(signal.SIGHUP, signal.SIG_IGN)   # ignored stays ignored across the exec
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})   # until conmon's handler is in place
        try:
            for fd in (*streams, *hold):
                os.set_inheritable(fd, True)
            os.execv(sys.executable, conmon.launch(doc))
        except OSError:
            for fd in (*streams, *hold):
                os.set_inheritable(fd, False)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


@dataclass(frozen=True, slots=True, eq=False, repr=False, init=False)
class RestartPolicy:
    """docker's --restart: no | on-failure[:N] | always | unless-stopped (`limit` 0: no limit).
    Asked (`again`), never compared: no generated __eq__/__hash__ to compile at every `run -d`;
    __init__ and __repr__ written out as dataclass would generate them."""

    name: str = "no"
    limit: int = 0

    def __init__(self, name: str = "no", limit: int = 0) -> None:
        _set = object.__setattr__   # frozen: as the generated __init__ does
        _set(self, "name", name)
        _set(self, "limit", limit)

    def __repr__(self) -> str:
        return f"RestartPolicy(name={self.name!r}, limit={self.limit!r})"

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


def _cli_pidfd(pid: int) -> int | None:
    """A pidfd of the CLI `pid`, opened while it waits for its monitor (so it is that process, not a
    later one given its PID); None when it is gone already or the kernel has no pidfds."""
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def _let_exit(cli: int | None, limit: float = 0.05) -> None:
    """Wait (at most `limit` s) for the CLI of pidfd `cli`, told the container runs, to print the id
    and exit, then close `cli`: the lean monitor's exec (a new interpreter's start) would otherwise
    take the core the CLI's last few ms want (measured: `run -d` ~1 ms faster). The container's
    output waits in its pipe meanwhile. Nothing to wait for without a pidfd."""
    if cli is None:
        return
    import select

    try:
        poller = select.poll()
        poller.register(cli, select.POLLIN)   # readable once the process has exited
        poller.poll(int(limit * 1000))
    finally:
        os.close(cli)


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
    if opts.tty and (opts.runtime or "imagetool") != "imagetool":
        raise ImagetoolError(f"run -d -t is not supported with --runtime {opts.runtime}",
                             hint="drop -t, or use the built-in runtime")
    if opts.explain or opts.script:
        raise ImagetoolError("run -d cannot be combined with --explain or --script")
    if opts.name and existing is None:
        containers.validate_name(opts.name)
    started = _Started(store, existing)   # loads the runtime's modules while this process finds the image
    try:
        img = containers.image_for(store, opts)   # a pull happens here, on the CLI's terminal
        from imagetool.runtime import rootless   # (the monitor's stderr is /dev/null: said here)

        rootless.warn_if_unlimited(opts.memory, opts.cpus, opts.pids_limit)
    except BaseException:
        started.cancel()
        raise
    doc = started.go(dataclasses.replace(opts, image=img.name), img)
    if doc.get("timing"):
        sys.stderr.write(doc["timing"])
    return doc["id"]


class _Started:
    """run -d's monitor, forked (spawn's double fork) before the CLI looks the image up: while the
    CLI reads it (or pulls it), the monitor loads the modules the run needs on the other core,
    the init's among them (the init it forks inherits them). `go(opts, img)` hands it the run: the
    options as `start` reads them back from a record, and the image's digest (it reads the image
    from the store again: the same one, or the error says it changed); its reply as spawn()'s.
    `cancel()`, on any error before, ends it: EOF on its work pipe, it exits having done nothing."""

    LOST = "the container's monitor exited before the container ran"

    def __init__(self, store, existing: str | None):
        work_r, self._work_w = os.pipe2(os.O_CLOEXEC)
        cli = os.getpid()
        try:
            self._reply_r = _fork_away(lambda fd: _prewarmed_main(store, work_r, self._work_w, fd, existing, cli))
        except BaseException:
            os.close(self._work_w)
            raise
        finally:
            os.close(work_r)

    def go(self, opts, img) -> dict:
        import dataclasses

        try:
            data = json.dumps({"options": dataclasses.asdict(opts), "digest": str(img.digest)}).encode()
        except BaseException:
            self.cancel()
            raise
        try:
            while data:
                data = data[os.write(self._work_w, data):]
        except OSError:   # it is gone already: its reply (or none) says why
            pass
        finally:
            os.close(self._work_w)
        return _reply(self._reply_r, self.LOST)

    def cancel(self) -> None:
        os.close(self._work_w)
        os.close(self._reply_r)


def _prewarmed_main(store, work_r: int, work_w: int, ready_fd: int, existing: str | None, cli: int) -> int:
    """The monitor's start for run -d (see _Started): the modules, then the run it is handed."""
    os.close(work_w)   # (close-on-exec, not closed by the fork): the CLI's end only
    cli = _cli_pidfd(cli)   # alive now (looking the image up, or waiting for this process)
    reply = Reply(ready_fd)
    try:
        from imagetool import containers, image
        from imagetool.runtime import process, sync   # noqa: F401  (what the run uses)

        data = sync.read_to_eof(work_r)
        if not data:
            _let_exit(cli, 0)
            return 0   # the CLI gave up before the run (its error is its own)
        doc = json.loads(data)
        opts = containers.options_of({"options": doc["options"]})
        img = image.load(store, opts.image, platform=opts.platform)
        if str(img.digest) != doc["digest"]:
            raise ContainerError(f"the image {opts.image} changed while the container was being created",
                                 hint="run it again")
    except BaseException as e:
        _let_exit(cli, 0)
        if isinstance(e, ImagetoolError):
            reply.failed(e.message, e.exit_code if e.exit_code != 1 else 125, e.hint)
        else:
            reply.failed(f"the container's monitor failed: {e}", 125)
        return 125
    finally:
        os.close(work_r)
    return _monitor_main(store, opts, ready_fd, existing, img, cli)


def spawn(body, lost: str) -> dict:
    """Run `body(fd)` in a process nobody waits for (setsid and a double fork: init's child, no
    controlling terminal; stdio /dev/null, cwd `/`, the caller's inherited fds closed, SIGHUP and
    SIGINT ignored); the JSON object it writes on `fd` (a Reply), once `fd` is closed. One saying
    {"error", "code"} is raised here as the CLI's error; none at all is ContainerError(`lost`)."""
    return _reply(_fork_away(body), lost)


def _fork_away(body) -> int:
    """The double fork of spawn(); the read end of `body`'s reply pipe."""
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
    except BaseException:
        os.close(r)
        raise
    return r


def _reply(r: int, lost: str) -> dict:
    """spawn()'s reading of the reply on `r` (closed here)."""
    try:
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


def _monitor_main(store, opts, ready_fd: int, existing: str | None, img=None, cli: int | None = None) -> int:
    """The monitor's start: run the container (containers.run hands it over to the lean monitor,
    conmon.py, once it runs: no return then); a run that ended before that goes on as resume()'s.
    `img`: the image the CLI looked up (not read again); `cli`: a pidfd of it (closed here)."""
    from imagetool import containers

    monitor = Monitor(ready_fd, store, image=img, cli=cli)
    try:
        if existing is not None:
            containers.remove_marker(store, existing, containers.STOPPED)
        code = containers.run(store, opts, monitor=monitor, existing=existing)
        return _carry_on(store, opts, monitor, code)
    except ImagetoolError as e:
        monitor.failed(e.message, e.exit_code if e.exit_code != 1 else 125, e.hint)
    except BaseException as e:
        monitor.failed(f"the container's monitor failed: {e}", 125)
    finally:
        monitor.failed("the container ended before it ran", 125)   # a no-op once ready() was sent
        cli, monitor.cli = monitor.cli, None
        _let_exit(cli, 0)   # (closed: a run that ended before it was handed over)
    return 125


def _carry_on(store, opts, monitor: Monitor, code: int) -> int:
    """After a run ended with `code`: run it again as its restart policy says (after 0.1 s,
    doubling up to 10 s; each run hands over to a lean monitor again); the last exit code."""
    from imagetool import containers

    policy = RestartPolicy.parse(opts.restart)
    while monitor.cid is not None and policy.again(code, monitor.restarts, _stopped(store, monitor.cid)):
        time.sleep(monitor.delay)
        if _stopped(store, monitor.cid):   # `stop` while it waited
            break
        monitor.delay = min(monitor.delay * 2, 10.0)
        monitor.restarts += 1
        code = containers.run(store, opts, monitor=monitor, existing=monitor.cid, restarts=monitor.restarts)
    return code


def resume() -> None:
    """The lean monitor's end when the container has a restart policy (conmon.py execs this, the
    same PID, once it has torn the run down and recorded doc["code"]): carry on with the policy."""
    from store import Store

    from imagetool import containers

    doc = json.loads(sys.argv[-1])
    code = doc["code"]
    try:
        store = Store.open(doc["store"])
        state = containers.read_state(Path(store.containers_dir) / doc["cid"])
        if state is not None:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGHUP, signal.SIGINT})
            monitor = Monitor(None, store, doc.get("restarts", 0), doc.get("delay", 0.1))
            monitor.cid = doc["cid"]
            code = _carry_on(store, containers.options_of(state), monitor, code)
    except BaseException:
        pass
    os._exit(code)


def probe() -> None:
    """One healthcheck probe of the running container of argv's cdir (the lean monitor spawns this
    each interval): health.Checker runs it and records the result in health.json."""
    from imagetool import containers

    cdir, started = Path(sys.argv[-2]), float(sys.argv[-1])
    state = containers.read_state(cdir)
    if state is None or not state.get("healthcheck"):
        return
    try:
        target = containers.target_of(cdir, state)
    except ImagetoolError:   # it ended already: nothing to check
        return
    health.Checker(cdir, target, state["healthcheck"], started, containers.write_json).check()
