"""Services for containers: `run` (foreground, no daemon), `ps`, `rm` and pruning exited ones.

A container is a directory `containers/<id>/` holding `state.json`, the overlay's `upper/`,
`work/`, `l/` links and the `rootfs/` mount point. state.json lists the snapshots (diff_ids) the
container uses, so store GC keeps them, the cgroup paths, and the PID of the imagetool process
that owns it: with no daemon, `ps`/`rm`/`prune` notice an owner that died (SIGKILL) and clean up
after it (kill what is left in its cgroups, mark it exited).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from imagetool.errors import ContainerError, ImageNotFound, ImagetoolError

_T0 = time.perf_counter()


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Everything `imagetool run` accepts (docker's names and meanings)."""

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
    network: str = "private"
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


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    id: str
    name: str
    image: str
    command: str
    status: str
    exit_code: int | None
    created: str

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "image": self.image, "command": self.command,
                "status": self.status, "exit_code": self.exit_code, "created": self.created}


# ---------------------------------------------------------------- timing


class _Trace:
    """IMAGETOOL_TRACE_TIMING=1: a breakdown of `run` on stderr (milliseconds per step)."""

    def __init__(self):
        self.on = bool(os.environ.get("IMAGETOOL_TRACE_TIMING"))
        self.marks: list[tuple[str, float]] = [("import", _T0)]

    def mark(self, name: str, t: float | None = None) -> None:
        if self.on:
            self.marks.append((name, t if t is not None else time.perf_counter()))

    def report(self) -> None:
        if not self.on:
            return
        marks = sorted(self.marks, key=lambda m: m[1])
        parts = [f"{name}={1000 * (t - prev):.2f}" for (name, t), (_, prev) in zip(marks[1:], marks)]
        total = 1000 * (marks[-1][1] - marks[0][1])
        sys.stderr.write(f"imagetool-timing: {' '.join(parts)} total={total:.2f}ms\n")


# ---------------------------------------------------------------- state


def _cdir(store, cid: str) -> Path:
    return Path(store.containers_dir) / cid


def _write_state(cdir: Path, state: dict) -> None:
    """Atomic replace; a container directory removed meanwhile (`rm -f`) is left alone."""
    tmp = cdir / f".imagetool-state-{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, cdir / "state.json")
    except FileNotFoundError:
        pass


def _read_state(cdir: Path) -> dict | None:
    try:
        with open(cdir / "state.json") as f:
            doc = json.load(f)
        return doc if isinstance(doc, dict) else None
    except (OSError, ValueError):
        return None


def _proc_start(pid: int) -> str | None:
    """The start time of `pid` (field 22 of /proc/PID/stat), to tell a live owner from PID reuse."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_alive(state: dict) -> bool:
    pid = state.get("owner_pid")
    return bool(pid) and _proc_start(pid) == state.get("owner_start")


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


def _is_archive_arg(text: str) -> bool:
    from imagetool.archive.loader import is_archive_arg  # the one detector (cheap to import)

    return is_archive_arg(text)


def _image_for(store, opts: RunOptions, pulling: list | None = None):
    """The image to run: from the store, else loaded from an archive argument, else pulled
    (then True is appended to `pulling` first)."""
    from imagetool import image as image_mod

    name = opts.image
    if _is_archive_arg(name):
        from imagetool import archive

        name = archive.load_for_run(store, name) or name
    try:
        return image_mod.load(store, name, platform=opts.platform)
    except ImageNotFound:
        if _is_archive_arg(opts.image):
            raise
    sys.stderr.write(f"Unable to find image '{opts.image}' locally\n")
    if pulling is not None:
        pulling.append(True)
    from imagetool import pull

    result = pull.pull(store, name, platform=opts.platform)
    return image_mod.load(store, result.name, platform=opts.platform)


def _validate_name(name: str) -> None:
    import re

    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}", name):
        raise ImagetoolError(f"invalid container name {name!r}", hint="use [a-zA-Z0-9][a-zA-Z0-9_.-]*")


def run(store, opts: RunOptions) -> int:
    """Run a container in the foreground; the container's exit code (125/126/127 on failures).

    Everything created here (cgroup, mounts in the child's namespace, the container directory
    with --rm) is removed on every path out. A run that fails before its spec exists (image not
    found, bad --user…) leaves no container behind, as before, nor does an interrupted pull; with
    imagetool's own runtime the
    container's directory, cgroup and init (process.prefork) are created first, so the init joins
    its cgroup while the image is looked up.
    """
    trace = _Trace()
    old_handlers = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM, signal.SIGHUP)}
    cdir = None
    keep = False        # the container's record outlives an error only once its spec exists
    pulling: list = []  # an interrupt keeps the record too, unless it stopped a pull
    cgroup = ahead = None
    state: dict = {}
    code = 125
    try:
        if opts.name:
            _validate_name(opts.name)
        if opts.runtime and opts.runtime not in ("runc", "crun"):
            raise ImagetoolError(f"unknown runtime {opts.runtime!r}", hint="use runc or crun")
        if opts.rootfs_mode not in ("auto", "overlay", "copy"):
            raise ImagetoolError(f"unknown --rootfs {opts.rootfs_mode!r} (auto, overlay or copy)")
        cid = os.urandom(32).hex()
        with _Lock(store):
            if opts.name and any(s.get("name") == opts.name for _, s in _all_states(store)):
                raise ImagetoolError(f"the container name {opts.name!r} is already in use",
                                     hint="remove that container (imagetool rm) or choose another --name")
            cdir = _cdir(store, cid)
            cdir.mkdir(mode=0o711)
            state = {
                "id": cid, "name": opts.name or cid[:12], "image": opts.image, "image_digest": "",
                "command": "", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "status": "created", "exit_code": None, "owner_pid": os.getpid(),
                "owner_start": _proc_start(os.getpid()), "pid": None, "rm": opts.rm,
                "runtime": opts.runtime or "imagetool", "cgroups": [], "snapshots": [],
            }
            if not opts.runtime:
                from imagetool.runtime import cgroups

                cgroup = cgroups.create(cid)
                state["cgroups"] = cgroup.paths      # recorded before they exist: ps cleans up after a SIGKILL
                state["cgroup_version"] = cgroup.version
            _write_state(cdir, state)
        if cgroup is not None:
            from imagetool.runtime import process

            cgroup.create()
            ahead = process.prefork(cgroup, bool(opts.tty), timing=trace.on)
            trace.mark("prefork")
        img = _image_for(store, opts, pulling)
        trace.mark("image")
        from imagetool.specgen import spec_from_image

        default_host = os.uname().nodename if opts.network == "host" else cid[:12]
        spec = spec_from_image(img.config, opts, hostname=default_host)
        trace.mark("spec")
        state.update(image=img.name, image_digest=str(img.digest), command=" ".join(spec["process"]["args"]),
                     snapshots=[str(d) for d in img.config.diff_ids])
        _write_state(cdir, state)
        keep = True
        from imagetool.unpack.rootfs import prepare_rootfs

        plan = prepare_rootfs(store, img, cdir, opts.rootfs_mode)
        trace.mark("rootfs")
        if opts.runtime:
            code = _run_runtime(opts.runtime, spec, plan, cdir, cid, state, trace)
        else:
            code = _run_own(spec, plan, cdir, opts, state, trace, cgroup, ahead)
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
        for s, h in old_handlers.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        trace.mark("signals")
        try:
            if ahead is not None:
                ahead.abort()  # a no-op once it was started
            if cgroup is not None:
                cgroup.destroy()
                trace.mark("cgroup.destroy")
        finally:
            if cdir is not None:
                if opts.rm or not keep:
                    shutil.rmtree(cdir, ignore_errors=True)
                else:
                    state.update(status="exited", exit_code=code, pid=None,
                                 finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                    _write_state(cdir, state)
            trace.mark("cleanup")
            trace.report()
    return code


def _to_mount_plan(plan):
    from imagetool.runtime.mounts import RootfsPlan

    if plan.kind == "overlay":
        data = dict(kv.split("=", 1) for kv in plan.data.split(","))
        return RootfsPlan(target=str(plan.target), lowerdir=data["lowerdir"], upper=data["upperdir"],
                          work=data["workdir"], cwd=str(plan.cwd))
    return RootfsPlan(target=str(plan.target), source=str(plan.target))


def _run_own(spec: dict, plan, cdir: Path, opts: RunOptions, state: dict, trace: _Trace, cgroup, ahead) -> int:
    """Limit the cgroup the pre-forked init (`ahead`) has joined, send it the spec, wait for it.
    The caller destroys the cgroup."""
    cgroup.apply(spec["linux"].get("resources", {}))
    trace.mark("cgroup")
    ctx = {"rootfs": _to_mount_plan(plan), "cgroup": cgroup, "keep_stdin": opts.interactive}
    container = ahead.start(spec, ctx)
    for name, t in container.timing.items():
        trace.mark(name, t)
    state.update(status="running", pid=container.pid)
    _write_state(cdir, state)
    code = container.wait()
    trace.mark("exit")
    if cgroup.oom_killed():
        sys.stderr.write("imagetool: container was killed: out of memory\n")
        code = 137
    return code


def _run_runtime(runtime: str, spec: dict, plan, cdir: Path, cid: str, state: dict, trace: _Trace) -> int:
    """Hand the spec to runc/crun: mount the rootfs in a private mount namespace, exec the runtime there."""
    from imagetool.runtime import cgroups, mounts, process
    from imagetool.runtime import syscalls as sc

    binary = shutil.which(runtime)
    if not binary:
        raise ContainerError(f"{runtime} is not installed")
    spec = json.loads(json.dumps(spec))
    spec["root"]["path"] = str(plan.target)
    spec["linux"]["cgroupsPath"] = f"/{cgroups.PARENT}/{cid}"
    user_name = (spec.pop("annotations", None) or {}).get("org.imagetool.user")
    mplan = _to_mount_plan(plan)
    pid = os.fork()
    if pid == 0:
        try:
            sc.unshare(sc.CLONE_NEWNS)
            mounts.make_private("/")
            mounts.mount_rootfs(mplan)
            _resolve_user_for_runtime(spec, plan.target, user_name)
            with open(cdir / "config.json", "w") as f:
                json.dump(spec, f, indent=1)
            os.execv(binary, [runtime, "run", "--bundle", str(cdir), cid])
        except BaseException as e:
            sys.stderr.write(f"imagetool: error: {runtime}: {e}\n")
        finally:
            os._exit(125)
    state.update(status="running", pid=pid)
    _write_state(cdir, state)
    container = process.Container(pid, None, [], {}, {s: signal.getsignal(s) for s in process.FORWARD})
    try:
        return container.wait()
    finally:
        _hold_signals()
        _stop(state)


def _resolve_user_for_runtime(spec: dict, rootfs: Path, user_name: str | None) -> None:
    """runc wants numeric ids: resolve a user name against the mounted rootfs's /etc files."""
    if not user_name:
        return
    from imagetool.runtime.spec import env_get
    from imagetool.users import lookup as lookup_user

    u = lookup_user(rootfs, user_name)
    spec["process"]["user"] = {"uid": u.uid, "gid": u.gid, "additionalGids": list(u.additional_gids)}
    if env_get(spec["process"]["env"], "HOME") is None:
        spec["process"]["env"].append(f"HOME={u.home or '/'}")


# ---------------------------------------------------------------- ps, rm, prune


def _all_states(store) -> list[tuple[Path, dict]]:
    out = []
    try:
        entries = sorted(os.scandir(store.containers_dir), key=lambda e: e.name)
    except FileNotFoundError:
        return out
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            st = _read_state(Path(e.path))
            if st is not None:
                out.append((Path(e.path), st))
    return out


def _stop(state: dict) -> None:
    """Kill what is left of a container: its cgroups and, under --runtime, the runtime's container."""
    from imagetool.runtime import cgroups

    cgroups.destroy_paths(state.get("cgroups") or [])
    runtime = state.get("runtime")
    binary = shutil.which(runtime) if runtime in ("runc", "crun") and state.get("id") else None
    if binary:
        import subprocess

        subprocess.run([binary, "delete", "-f", state["id"]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cgroups.remove_empty_parents()


def _reconcile(cdir: Path, state: dict) -> dict | None:
    """A container whose imagetool died: kill what is left, remove its cgroups, mark it exited.

    Returns the updated state, or None when the container was --rm and is now gone."""
    if state.get("status") not in ("created", "running") or _owner_alive(state):
        return state
    _stop(state)
    if state.get("rm"):
        shutil.rmtree(cdir, ignore_errors=True)
        return None
    state.update(status="exited", exit_code=state.get("exit_code") if state.get("exit_code") is not None else 137,
                 pid=None, error="imagetool was killed while the container ran")
    _write_state(cdir, state)
    return state


def _info(state: dict) -> ContainerInfo:
    status = state.get("status", "unknown")
    if status == "exited" and state.get("exit_code") is not None:
        status = f"exited ({state['exit_code']})"
    return ContainerInfo(state.get("id", ""), state.get("name", ""), state.get("image", ""),
                         state.get("command", ""), status, state.get("exit_code"), state.get("created", ""))


def list_containers(store, all_: bool = False) -> list[ContainerInfo]:
    """Running containers (all of them with all_), oldest first; dead owners are reconciled first."""
    rows = []
    for cdir, state in _all_states(store):
        state = _reconcile(cdir, state)
        if state is None:
            continue
        if all_ or state.get("status") == "running":
            rows.append(_info(state))
    rows.sort(key=lambda r: r.created)
    return rows


def _find(store, id_or_name: str) -> tuple[Path, dict]:
    states = _all_states(store)
    for cdir, st in states:
        if st.get("id") == id_or_name or st.get("name") == id_or_name:
            return cdir, st
    matches = [(c, s) for c, s in states if len(id_or_name) >= 3 and s.get("id", "").startswith(id_or_name)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ImagetoolError(f"container id prefix {id_or_name!r} is ambiguous")
    raise ImagetoolError(f"no such container: {id_or_name}", hint="list them with `imagetool ps -a`")


def remove(store, id_or_name: str, force: bool = False) -> str:
    """Remove a container; a running one only with force (its processes are killed first)."""
    with _Lock(store):
        cdir, state = _find(store, id_or_name)
        state = _reconcile(cdir, state)
        if state is not None and state.get("status") in ("created", "running"):
            if not force:
                raise ImagetoolError(f"container {id_or_name} is running",
                                     hint="stop it first, or use `imagetool rm -f`")
            _stop(state)
        shutil.rmtree(cdir, ignore_errors=True)
    return id_or_name


def prune_exited(store) -> list[str]:
    """Remove every exited container (after reconciling dead owners); the removed ids."""
    removed = []
    with _Lock(store):
        for cdir, state in _all_states(store):
            state = _reconcile(cdir, state)
            if state is not None and state.get("status") == "exited":
                shutil.rmtree(cdir, ignore_errors=True)
                removed.append(state.get("id", cdir.name))
    return removed
