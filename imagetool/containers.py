"""Services for containers: `run` (foreground, no daemon), `ps`, `rm` and pruning exited ones.

A container is a directory `containers/<id>/` holding `state.json`, the overlay's `upper/`,
`work/`, `l/` links and the `rootfs/` mount point. state.json lists the snapshots (diff_ids) the
container uses, so store GC keeps them, the cgroup paths, and the PID of the imagetool process
that owns it: with no daemon, `ps`/`rm`/`prune` notice an owner that died (SIGKILL) and clean up
after it (runtime.destroy: kill what is left in its cgroups, mark it exited).

This module keeps records, names and options; everything below them goes through the runtime's
API (imagetool.runtime: reserve/create, start, state, kill, wait, delete, destroy).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import MISSING, dataclass, field, fields, replace
from operator import attrgetter
from pathlib import Path

from imagetool import health, jsonlog
from imagetool import network
from imagetool.errors import ContainerError, ImageNotFound, ImagetoolError
from imagetool.runtime.supervise import proc_start

_T0 = time.perf_counter()


@dataclass(frozen=True, slots=True, init=False, repr=False, eq=False)
class RunOptions:
    """Everything `imagetool run` accepts (docker's names and meanings): `RunOptions(image, **options)`.

    Defining it costs every `run`: the dataclass's generated functions are compiled at import.
    Its __init__ is written here instead (the same signature as the generated one, keyword-only
    after `image`; ~1.3 ms less), and its __eq__ (what dataclass generates: same class and every
    field equal, ~0.4 ms less); there is no __repr__ (50-odd fields: nobody prints it) and no
    __hash__ (list fields made it raise anyway); dataclasses.fields/replace/asdict work."""

    __hash__ = None

    image: str
    command: list = field(default_factory=list)
    rm: bool = False
    name: str | None = None
    env: list = field(default_factory=list)
    env_files: list = field(default_factory=list)
    workdir: str | None = None
    user: str | None = None
    entrypoint: str | None = None
    hostname: str | None = None
    volumes: list = field(default_factory=list)
    read_only: bool = False
    memory: str | None = None
    memory_swap: str | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    network: str | None = None   # None: the default network (network.default_mode: bridge, else private)
    # networking (issue 12; imagetool.network)
    publish: list = field(default_factory=list)        # -p [IP:][HOSTPORT:]CONTAINERPORT[/tcp|/udp]
    publish_all: bool = False                          # -P
    ip: str | None = None                              # --ip on a bridge/user network
    network_aliases: list = field(default_factory=list)
    dns: list = field(default_factory=list)
    dns_search: list = field(default_factory=list)
    add_hosts: list = field(default_factory=list)      # NAME:IP
    interactive: bool = False
    tty: bool = False
    runtime: str | None = None
    platform: str | None = None
    rootfs_mode: str = "auto"
    # the runtime made visible (runtime-shape issue)
    explain: bool = False        # print each step on stderr as it happens
    script: bool = False         # print a POSIX sh script doing the same, run nothing
    # hardening and docker's security options
    cap_add: list = field(default_factory=list)
    cap_drop: list = field(default_factory=list)
    privileged: bool = False
    security_opt: list = field(default_factory=list)   # seccomp=FILE|unconfined, no-new-privileges
    devices: list = field(default_factory=list)        # HOST[:CONTAINER][:rwm]
    tmpfs: list = field(default_factory=list)          # DST[:OPTIONS]
    shm_size: str | None = None
    ulimits: list = field(default_factory=list)        # NAME=SOFT[:HARD]
    sysctls: list = field(default_factory=list)        # KEY=VALUE (namespaced ones only)
    group_add: list = field(default_factory=list)
    # long-running containers (issue 11)
    detach: bool = False                               # run under its own monitor (monitor.py)
    restart: str = "no"                                # no | on-failure[:N] | always | unless-stopped
    log_opts: list = field(default_factory=list)       # max-size=SIZE, max-file=N (jsonlog.LogOptions)
    init: bool = False                                 # tini-static as PID 1 (static_init)
    stop_signal: str | None = None                     # default: the image's StopSignal, else SIGTERM
    stop_timeout: int | None = None                    # seconds `stop` waits before SIGKILL (default 10)
    health_cmd: str | None = None                      # healthchecks (health.py): CMD-SHELL
    health_interval: str | None = None                 # durations: 30s, 1m30s, 500ms
    health_timeout: str | None = None
    health_retries: int | None = None
    health_start_period: str | None = None
    no_healthcheck: bool = False

    def __init__(self, image: str, **options):
        object.__setattr__(self, "image", image)
        for f in _OPTIONS:
            if f.name in options:
                value = options.pop(f.name)
            else:
                value = f.default_factory() if f.default_factory is not MISSING else f.default
            object.__setattr__(self, f.name, value)
        if options:
            raise TypeError(f"RunOptions() got an unexpected keyword argument {next(iter(options))!r}")

    def __eq__(self, other):
        if other.__class__ is self.__class__:
            return _all_fields(self) == _all_fields(other)
        return NotImplemented


_OPTIONS = fields(RunOptions)[1:]   # every field after `image`: each has a default
_all_fields = attrgetter(*(f.name for f in fields(RunOptions)))   # the tuple of every field, in order


# ---------------------------------------------------------------- the read side (containerstates.py)
# Loaded on first use: a `run` without --name reads no other container's record.


def find(store, id_or_name: str) -> tuple[Path, dict]:
    """containerstates.find: (directory, state) of a container by id, name or unique id prefix."""
    from imagetool import containerstates

    return containerstates.find(store, id_or_name)


def read_state(cdir) -> dict | None:
    """containerstates.read_state: the container's state.json, or None."""
    from imagetool import containerstates

    return containerstates.read_state(cdir)


def _all_states(store) -> list[tuple[Path, dict]]:
    from imagetool import containerstates

    return containerstates.all_states(store)


def _owner_alive(state: dict) -> bool:
    from imagetool import containerstates

    return containerstates.owner_alive(state)


# ---------------------------------------------------------------- timing


class _Trace:
    """IMAGETOOL_TRACE_TIMING=1: a breakdown of `run` on stderr (milliseconds per step)."""

    def __init__(self):
        self.on = bool(os.environ.get("IMAGETOOL_TRACE_TIMING"))
        self.marks: list[tuple[str, float]] = [("import", _T0)]

    def mark(self, name: str, t: float | None = None) -> None:
        if self.on:
            self.marks.append((name, t if t is not None else time.perf_counter()))

    def step(self, step) -> None:
        """A runtime step as a mark (explain.Step: its end, relative to the import)."""
        self.mark(f"{step.where}.{step.name.replace(' ', '_')}", _T0 + step.at_ms / 1000)

    def line(self) -> str:
        """The breakdown so far: `imagetool-timing: step=ms ... total=ms` (a newline ends it)."""
        marks = sorted(self.marks, key=lambda m: m[1])
        parts = [f"{name}={1000 * (t - prev):.2f}" for (name, t), (_, prev) in zip(marks[1:], marks)]
        total = 1000 * (marks[-1][1] - marks[0][1])
        return f"imagetool-timing: {' '.join(parts)} total={total:.2f}ms\n"

    def report(self) -> None:
        if self.on:
            sys.stderr.write(self.line())


# ---------------------------------------------------------------- state


def _cdir(store, cid: str) -> Path:
    return Path(store.containers_dir) / cid


def _write_state(cdir: Path, state: dict) -> None:
    """Atomic replace; a container directory removed meanwhile (`rm -f`) is left alone."""
    write_json(cdir / "state.json", state)


def write_json(path: Path, doc: dict) -> None:
    """Replace `path` atomically with `doc` (compact: json.dumps in one go takes the C encoder; an
    `indent` would take the pure-Python one, ~1 ms for a spec). The temporary name carries the
    writer's PID: other processes write a container's records too (the lean monitor, conmon.py,
    state.json; each healthcheck probe, a short-lived process of its own, health.json)."""
    tmp = path.parent / f".imagetool-{path.name}-{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(doc))
        os.replace(tmp, path)
    except FileNotFoundError:
        pass


def target_of(cdir, state: dict, name: str | None = None):
    """What execin joins for a running container (exec, a healthcheck's probe); a clear error when
    it is not running or cannot be joined."""
    from imagetool.runtime import execin

    name = name or state.get("name")
    if state.get("status") != "running" or not state.get("pid_start"):
        raise ImagetoolError(f"container {name} is not running")
    try:
        spec = json.loads((cdir / SPEC).read_text())
    except (OSError, ValueError):
        raise ImagetoolError(f"container {name} cannot be joined: its spec is missing") from None
    if (state.get("runtime") or "imagetool") != "imagetool":   # runc/crun: its init from `runc state`
        return execin.runc_target(state["runtime"], state["id"], spec, (state["pid"], state["pid_start"]))
    return execin.Target(state["pid"], state["pid_start"], tuple(state.get("cgroups") or ()), spec)


class _Lock:
    """An exclusive flock on containers/.lock (name allocation, rm)."""

    def __init__(self, store):
        self.path = Path(store.containers_dir) / ".lock"

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


# ---------------------------------------------------------------- run


class _Interrupted(BaseException):
    def __init__(self, signum: int):
        self.signum = signum


def _raise_interrupted(signum, frame):
    raise _Interrupted(signum)


def _hold_signals() -> None:
    """Block SIGTERM/SIGHUP/SIGINT for the rest of the process: cleanup must not be cut short."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGHUP, signal.SIGINT})


def image_for(store, opts: RunOptions, pulling: list | None = None):
    """The image to run: from the store, else loaded from an archive argument, else pulled
    (then True is appended to `pulling` first)."""
    from imagetool import image as image_mod
    from imagetool.archive.loader import is_archive_arg

    name = opts.image
    archive_arg = is_archive_arg(name)
    if archive_arg:
        from imagetool import archive

        name = archive.load_for_run(store, name) or name
    try:
        return image_mod.load(store, name, platform=opts.platform)
    except ImageNotFound:
        if archive_arg:
            raise
    sys.stderr.write(f"Unable to find image '{opts.image}' locally\n")
    if pulling is not None:
        pulling.append(True)
    from imagetool import pull

    result = pull.pull(store, name, platform=opts.platform)
    return image_mod.load(store, result.name, platform=opts.platform)


def validate_name(name: str) -> None:
    import re

    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}", name):
        raise ImagetoolError(f"invalid container name {name!r}", hint="use [a-zA-Z0-9][a-zA-Z0-9_.-]*")


def run(store, opts: RunOptions, monitor=None, existing: str | None = None, restarts: int = 0) -> int:
    """Run a container in the foreground; the container's exit code (125/126/127 on failures).

    With `monitor` (monitor.Monitor: this process is a detached run's monitor) the output goes to
    the json-file log `container.log` instead of fds 1-2, SIGHUP is left ignored and no signal is
    forwarded, `monitor.ready(id)` is told once the container runs, and the state records
    started/finished times for ps and inspect. With `existing` (a container id: `start`, or a
    restart by the monitor) that exited container runs again on its own directory (its upper dir:
    the files it wrote are still there), its record kept on every path out; `restarts` is recorded
    as its RestartCount.

    Calls only the runtime's API (imagetool.runtime): reserve → prepare → create → start →
    wait → delete. The record and the reservation come first, so the built-in runtime's init
    joins its cgroup while the image is looked up. Everything created (cgroup, mounts in the
    init's namespace, the container directory with --rm) is removed on every path out. A run that
    fails before its spec exists (image not found, bad --user…) leaves no container behind, nor
    does an interrupted pull. With --explain every step is printed on stderr as it happens (the
    run is otherwise the same); with --script the script is printed and nothing runs.
    """
    if not opts.network:
        opts = replace(opts, network=network.default_mode(opts, script=opts.script))
    if opts.script:
        return _print_script(store, opts)
    from imagetool import runtime
    from imagetool.runtime import explain

    trace = _Trace()
    trace.mark("open_store")   # (since this module's import: the store opened, the runtime's API imported)
    narrator = explain.SILENT
    if opts.explain or trace.on:   # the trace shows the init's steps too (they come as the narrator's)
        narrator = explain.Narrator(2 if opts.explain else None, t0=_T0,
                                    on_step=trace.step if trace.on else None)
    caught = (signal.SIGTERM,) if monitor is not None else (signal.SIGTERM, signal.SIGHUP)
    old_handlers = {s: signal.signal(s, _raise_interrupted) for s in caught}
    cdir = None
    keep = False        # the container's record outlives an error only once its spec exists
    pulling: list = []  # an interrupt keeps the record too, unless it stopped a pull
    reservation = container = log = None
    state: dict = {}
    code = 125
    try:
        if opts.name:
            validate_name(opts.name)
        backend = opts.runtime or "imagetool"
        if backend not in runtime.BACKENDS:
            raise ImagetoolError(f"unknown runtime {opts.runtime!r}", hint="use runc or crun")
        if opts.rootfs_mode not in ("auto", "overlay", "copy"):
            raise ImagetoolError(f"unknown --rootfs {opts.rootfs_mode!r} (auto, overlay or copy)")
        init_binary = static_init() if opts.init else None
        cid = existing or os.urandom(32).hex()
        if existing is not None:
            state, reservation = _rerun(store, _cdir(store, cid), opts, backend, narrator, restarts)
            cdir, keep = _cdir(store, cid), True   # from here on its record is ours to keep
        else:
            with _Lock(store):
                if opts.name and any(s.get("name") == opts.name for _, s in _all_states(store)):
                    raise ImagetoolError(f"the container name {opts.name!r} is already in use",
                                         hint="remove that container (imagetool rm) or choose another --name")
                cdir = _cdir(store, cid)
                cdir.mkdir(mode=0o711)
                reservation = runtime.reserve(cid, runtime.IO(opts.interactive, opts.tty), backend=backend,
                                              narrator=narrator, bundle=str(cdir),
                                              memory_limit=bool(opts.memory or opts.memory_swap))
                state = {
                    "id": cid, "name": opts.name or cid[:12], "image": opts.image, "image_digest": "",
                    "command": "", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "status": "created", "exit_code": None, "owner_pid": os.getpid(),
                    "owner_start": proc_start(os.getpid()), "pid": None, "rm": opts.rm,
                    "runtime": backend, "cgroups": reservation.cgroup_paths, "snapshots": [],
                }   # the cgroups are recorded before they exist: ps cleans up after a SIGKILL
                _write_state(cdir, state)
        trace.mark("record")   # the lock, the record and the reservation (the runtime's modules imported)
        reservation.prepare()
        trace.mark("prefork")
        img = monitor.take_image() if monitor is not None else None
        img = img or image_for(store, opts, pulling)
        trace.mark("image")
        from imagetool.specgen import spec_from_image

        default_host = os.uname().nodename if opts.network == "host" else cid[:12]
        spec = spec_from_image(img.config, opts, hostname=default_host)
        trace.mark("spec")
        state.update(image=img.name, image_digest=str(img.digest), command=" ".join(spec["process"]["args"]),
                     snapshots=[str(d) for d in img.config.diff_ids], **_record(opts, img, spec, cdir, monitor))
        _write_state(cdir, state)
        if init_binary:
            _add_init(spec, init_binary)
        write_json(cdir / SPEC, spec)
        network.setup(store, cdir, cid, opts, spec, narrator, find)   # netns + CNI ADD; torn down below
        keep = True
        rootfs = _prepare_rootfs(store, img, cdir, opts.rootfs_mode, narrator)
        trace.mark("rootfs")
        container = reservation.create(spec, rootfs)
        trace.mark("created")
        if monitor is not None:
            log = jsonlog.Writer(cdir / LOG, jsonlog.LogOptions.parse(opts.log_opts))
        container.start()
        trace.mark("exec")
        state.update(status="running", pid=container.pid, pid_start=proc_start(container.pid),
                     started_at=jsonlog.now())
        _write_state(cdir, state)
        if monitor is None:
            code = container.wait()
        else:
            monitor.ready(cid, trace.line() if trace.on else None)   # (the monitor's stderr is /dev/null)
            monitor.hand_over(container, cdir, state)   # execs the lean monitor (conmon.py): no return
            code = container.wait(sink=log.write, forward=())
        trace.mark("exit")
        if container.oom_killed():
            sys.stderr.write("imagetool: container was killed: out of memory\n")
            code = 137
    except _Interrupted as e:
        code = 128 + e.signum
        keep = keep or not pulling
    except KeyboardInterrupt:
        code = 128 + signal.SIGINT
        keep = keep or not pulling
    except ContainerError as e:
        code = e.exit_code
        state["error"] = e.message
        raise
    finally:
        _hold_signals()
        if monitor is not None:
            monitor.ended()   # no healthcheck probe once it is being torn down
        for s, h in old_handlers.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        trace.mark("signals")
        try:
            if container is not None:
                container.delete()
            elif reservation is not None:
                reservation.abort()
            trace.mark("cgroup.destroy")
        finally:
            if cdir is not None:
                network.teardown(cdir)
                if opts.rm or not keep:
                    import shutil

                    shutil.rmtree(cdir, ignore_errors=True)
                else:
                    state.update(status="exited", exit_code=code, pid=None,
                                 finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                 finished_at=jsonlog.now())
                    _write_state(cdir, state)
            if log is not None:
                log.close()
            trace.mark("cleanup")
            trace.report()
    return code


LOG = "container.log"
SPEC = "spec.json"   # the OCI spec it runs with: what `exec` joins it with
STOPPED = "stopped"  # the marker `stop` and `rm -f` leave: its monitor runs it no more (--restart)


INIT_PATH = "/sbin/docker-init"   # where docker puts its init too
INIT_BINARIES = ("/usr/bin/tini-static",)


def static_init() -> str:
    """The host's static init for --init: Debian's tini-static (docker's --init is tini too). It
    must be static: a dynamic binary cannot run in an image without the host's libc (busybox)."""
    found = next((p for p in INIT_BINARIES if os.path.isfile(p)), None)
    if found is None:
        raise ImagetoolError("--init needs tini-static on the host", hint="apt-get install tini")
    return found


def _add_init(spec: dict, binary: str) -> None:
    """--init: `binary` bind-mounted read-only at INIT_PATH runs as PID 1, the command as its child:
    it forwards signals to it and reaps every orphan (what a bare `sh` or `sleep` as PID 1 never does)."""
    spec.setdefault("mounts", []).append({"destination": INIT_PATH, "type": "bind", "source": binary,
                                          "options": ["rbind", "ro", "nosuid", "nodev"]})
    spec["process"]["args"] = [INIT_PATH, "--", *spec["process"]["args"]]


def _rerun(store, cdir: Path, opts: RunOptions, backend: str, narrator, restarts: int):
    """(state, reservation) of an exited container made ready to run again (`start`, a restart by
    its monitor): this process owns it now. Refused while it runs (or another start has it)."""
    from imagetool import runtime

    with _Lock(store):
        state = read_state(cdir)
        state = reconcile(cdir, state) if state is not None else None
        if state is None:
            raise ImagetoolError(f"no such container: {cdir.name}")
        if state.get("status") in ("created", "running"):
            raise ImagetoolError(f"container {state.get('name')} is already running",
                                 hint="stop it first (imagetool stop), or use `imagetool restart`")
        if restarts and (cdir / STOPPED).exists():   # stopped (or rm -f) while its monitor waited
            raise ImagetoolError(f"container {state.get('name')} was stopped")
        reservation = runtime.reserve(state["id"], runtime.IO(opts.interactive, opts.tty), backend=backend,
                                      narrator=narrator, bundle=str(cdir),
                                      memory_limit=bool(opts.memory or opts.memory_swap))
        state.update(status="created", exit_code=None, pid=None, owner_pid=os.getpid(),
                     owner_start=proc_start(os.getpid()), cgroups=reservation.cgroup_paths, restart_count=restarts)
        state.pop("error", None)
        _write_state(cdir, state)
    return state, reservation


def add_marker(store, cid: str, name: str) -> None:
    """Leave the empty file `name` in the container's directory (e.g. STOPPED)."""
    try:
        os.close(os.open(_cdir(store, cid) / name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600))
    except FileNotFoundError:
        pass


def remove_marker(store, cid: str, name: str) -> bool:
    """Remove the marker `name`; whether it was there."""
    try:
        os.unlink(_cdir(store, cid) / name)
        return True
    except FileNotFoundError:
        return False


def options_of(state: dict) -> RunOptions:
    """The RunOptions a container was created with (recorded in its state), to run it again."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(RunOptions)}
    recorded = state.get("options")
    if not isinstance(recorded, dict):
        raise ImagetoolError(f"container {state.get('name')} cannot be started again: it was not created "
                             "by this version of imagetool")
    return RunOptions(**{k: v for k, v in recorded.items() if k in known})


def _record(opts: RunOptions, img, spec: dict, cdir: Path, monitor) -> dict:
    """What ps, inspect, stop and logs read from state.json besides the run's own bookkeeping."""

    from imagetool.runtime.spec import parse_volume

    args = spec["process"]["args"]
    volumes = [parse_volume(v) if isinstance(v, str) else v for v in opts.volumes]
    binds = [{"Type": "bind", "Source": v.source, "Destination": v.destination, "Mode": "ro" if v.readonly else "",
              "RW": not v.readonly, "Propagation": "rprivate"} for v in volumes]
    import dataclasses

    return {"detached": monitor is not None, "path": args[0] if args else "", "args": args[1:],
            "options": dataclasses.asdict(opts), "restart": opts.restart,
            "stop_signal": opts.stop_signal or img.config.stop_signal or "SIGTERM", "stop_timeout": opts.stop_timeout,
            "healthcheck": health.resolve(img.config.healthcheck, opts),
            "log_path": str(cdir / LOG) if monitor is not None else "",
            "resources": spec.get("linux", {}).get("resources", {}), "mounts": binds,
            "host_config": {"AutoRemove": opts.rm, "Privileged": opts.privileged, "ReadonlyRootfs": opts.read_only,
                            "NetworkMode": opts.network,
                            "LogConfig": {"Type": "json-file", "Config": dict(o.split("=", 1) for o in opts.log_opts)}}}


def _prepare_rootfs(store, img, cdir: Path, mode: str, narrator):
    """The container's rootfs as one Mount (unpack/rootfs.py), reported as the recipe's first step
    (its shell lines written only for a narrator that shows or times them)."""
    from imagetool.runtime import explain, shell
    from imagetool.unpack.rootfs import lowerdirs, prepare_rootfs

    started = time.perf_counter()
    rootfs = prepare_rootfs(store, img, cdir, mode)
    if narrator is explain.SILENT:
        return rootfs
    if rootfs.type == "overlay":
        lines = [shell.mkdir(str(cdir / d)) for d in ("l", "upper", "work", "rootfs")]
        lines += [shell.symlink(str(d), str(cdir / "l" / str(n)))
                  for n, d in enumerate(reversed(lowerdirs(rootfs)))]
    else:
        lines = [f"# the image flattened into {shell.q(rootfs.source)} (--rootfs copy)"]
    narrator.report("prepare rootfs", "\n".join(lines), started)
    return rootfs


def _print_script(store, opts: RunOptions) -> int:
    """run --script: the POSIX sh script doing what `run` would (runtime/script.py); runs nothing.
    The rootfs is laid out in a temporary directory only to name the image's snapshot dirs."""
    import shutil
    import tempfile

    from imagetool.runtime import script
    from imagetool.specgen import spec_from_image
    from imagetool.unpack.rootfs import prepare_rootfs

    network.refuse_in_script(opts)
    img = image_for(store, opts)
    cid = os.urandom(32).hex()
    spec = spec_from_image(img.config, opts, hostname=os.uname().nodename if opts.network == "host" else cid[:12])
    Path(store.containers_dir).mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="imagetool-script-", dir=store.containers_dir)
    try:
        rootfs = prepare_rootfs(store, img, tmp, "overlay" if opts.rootfs_mode == "auto" else opts.rootfs_mode)
        text = script.render(spec, rootfs, cid, image=img.name, interactive=opts.interactive)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


# ---------------------------------------------------------------- ps, rm, prune


def _stop(state: dict) -> None:
    """Kill what is left of a container (runtime.destroy: its cgroups, the runc/crun container)."""
    from imagetool import runtime

    runtime.destroy(state.get("id", ""), state.get("runtime") or "imagetool", state.get("cgroups") or [])
    if not state.get("cgroups") and state.get("status") in ("created", "running"):
        from imagetool.runtime import rootless   # a rootless container without a cgroup: through its PID 1

        rootless.kill_pid1(state)


def reconcile(cdir: Path, state: dict) -> dict | None:
    """A container whose imagetool died: kill what is left, remove its cgroups, mark it exited.

    Returns the updated state, or None when the container was --rm and is now gone."""
    if state.get("status") not in ("created", "running") or _owner_alive(state):
        return state
    _stop(state)
    network.teardown(cdir)
    if state.get("rm"):
        from imagetool.runtime import rootless   # (an ordinary user: in its namespace, for the upper dir)

        rootless.remove_tree(cdir)
        return None
    state.update(status="exited", exit_code=state.get("exit_code") if state.get("exit_code") is not None else 137,
                 pid=None, finished_at=jsonlog.now(),
                 error="its monitor was killed while it ran" if state.get("detached")
                 else "imagetool was killed while the container ran")
    _write_state(cdir, state)
    return state


def list_containers(store, all_: bool = False) -> list:
    """Running containers (all of them with all_: containerstates.ContainerInfo rows), oldest first;
    dead owners are reconciled first."""
    from imagetool import containerstates

    return containerstates.list_containers(store, all_, reconcile)


def remove(store, id_or_name: str, force: bool = False) -> str:
    """Remove a container; a running one (or one its monitor will restart) only with force: its
    processes are killed first and its monitor has ended."""
    with _Lock(store):
        cdir, state = find(store, id_or_name)
        state = reconcile(cdir, state)
        running = state is not None and state.get("status") in ("created", "running")
        busy = running or (state is not None and _owner_alive(state))
        if busy:
            if not force:
                raise ImagetoolError(f"container {id_or_name} is {'running' if running else 'restarting'}",
                                     hint="stop it first, or use `imagetool rm -f`")
            add_marker(store, state["id"], STOPPED)   # its restart policy ends here
            _stop(state)
    if busy:   # outside the lock: a monitor about to restart it takes the lock, sees STOPPED and ends
        _await_owner(state)
    import shutil

    with _Lock(store):
        network.teardown(cdir, strict=not force)
        shutil.rmtree(cdir, ignore_errors=True)
    return id_or_name


def _await_owner(state: dict, limit: float = 30.0) -> None:
    """Wait (up to `limit` s) for the imagetool that owns a container just killed (a detached run's
    monitor) to finish its cleanup, so its last write of state.json cannot come after the rm."""
    import select

    pid = state.get("owner_pid")
    if not pid or not _owner_alive(state):
        return
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        if _owner_alive(state):
            select.select([fd], [], [], limit)
    finally:
        os.close(fd)


def prune_exited(store) -> list[str]:
    """Remove every exited container (after reconciling dead owners) but those whose monitor will
    restart them; the removed ids."""
    import shutil

    removed = []
    with _Lock(store):
        for cdir, state in _all_states(store):
            state = reconcile(cdir, state)
            if state is not None and state.get("status") == "exited" and not _owner_alive(state):
                network.teardown(cdir)   # a DEL that failed at exit is retried here
                shutil.rmtree(cdir, ignore_errors=True)
                removed.append(state.get("id", cdir.name))
    return removed
