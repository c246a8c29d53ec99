"""The runc/crun backend: the same spec handed over as config.json, behind the same API.

Steps (each reported to the narrator):
  create():  a helper process unshares a mount namespace of its own (make_private), mounts the
             rootfs there (the one Mount), resolves a user name through the rootfs (users.lookup:
             inside the root, regular files only — never the host's /etc/passwd), writes
             `<bundle>/config.json` and waits for `start`
  start():   the helper execs `runc run --bundle <bundle> <id>` with the container's stdio on
             pipes imagetool copies (with -t runc's own console: the container gets runc's pty)
  wait():    copy stdio, forward signals to runc (it forwards them), reap: runc's exit code
  delete():  `runc delete --force <id>`, then the empty `imagetool/` cgroup parents
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

from imagetool.errors import ContainerError
from imagetool.mount import Mount
from imagetool.runtime import explain, mounts, rootless, shell, stdio, supervise, sync
from imagetool.runtime import syscalls as sc
from imagetool.safepath import Root



class Reservation:
    """For runc/crun nothing happens before the spec exists (runc makes its own cgroups)."""

    def __init__(self, backend: str, container_id: str, io, narrator, bundle: str | None):
        self.backend = backend
        self.id = container_id
        self.io = io
        self.narrator = narrator
        self.bundle = bundle
        self.cgroup_paths: list[str] = []
        self._handed_over = False

    def prepare(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def create(self, spec: dict, rootfs: Mount) -> "Container":
        from imagetool.runtime import cgroups

        binary = shutil.which(self.backend)
        if not binary:
            raise ContainerError(f"{self.backend} is not installed")
        if not self.bundle:
            raise ContainerError(f"internal error: {self.backend} needs a bundle directory")
        if bool(spec["process"].get("terminal")) != bool(self.io.tty):
            raise ContainerError("internal error: the spec's terminal setting differs from the io's")
        spec = json.loads(json.dumps(spec))
        spec["root"]["path"] = os.path.realpath(rootfs.target)   # runc refuses a path through a symlink
        spec["linux"]["cgroupsPath"] = f"/{cgroups.PARENT}/{self.id}"
        if rootless.active():   # runc in the user's namespace: no cgroup (as the built-in runtime undelegated)
            rootless.runc_spec(spec)
        user_name = (spec.pop("annotations", None) or {}).get("org.imagetool.user")
        pipes = None if self.io.tty else stdio.Pipes.make(self.io.interactive)
        sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
        log = os.path.join(self.bundle, f"{self.backend}.log")   # its exec failure is read back from here
        argv = [self.backend, *rootless.runc_args(), "--log", log, "--log-format", "json", "run", "--bundle",
                self.bundle, self.id]
        pending: list[int] = []
        saved = supervise.hold_signals(pending)
        pid = os.fork()
        if pid == 0:
            try:
                os.close(sync_r)
                os.close(go_w)
                narrator = explain.Forwarder(sync_w) if self.narrator is not explain.SILENT else explain.SILENT
                _helper(narrator, sync_w, go_r, pipes, spec, rootfs, user_name, self.bundle, binary, argv)
            except ContainerError as e:
                _send_error(sync_w, e.exit_code, e.message)
            except BaseException as e:
                _send_error(sync_w, 125, f"{self.backend}: {e}")
            finally:
                os._exit(125)
        os.close(sync_w)
        os.close(go_r)
        if pipes is not None:
            pipes.close_child_ends()
        reader = sync.Reader(sync_r)
        try:
            supervise.receive_until(reader, "created", self.narrator)
        except BaseException:
            supervise.kill_and_reap(pid)
            for fd in (sync_r, go_w):
                stdio._close(fd)
            if pipes is not None:
                pipes.close_parent_ends()
            supervise.restore_signals(saved)
            raise
        self._handed_over = True
        container = Container(self.backend, self.id, pid, self.io, self.narrator, reader, go_w, pipes, None, saved,
                              pending)
        container.log = log
        return container


def _send_error(fd: int, code: int, message: str) -> None:
    try:
        sync.send(fd, "error", code=code, message=message)
    except OSError:
        pass


def _helper(narrator, sync_w, go_r, pipes, spec, rootfs, user_name, bundle, binary, argv) -> None:
    """The helper process: never returns (exec of runc, or an error message and exit)."""
    from imagetool.runtime.init import empty_input
    from imagetool.runtime.spec import env_get
    from imagetool.users import lookup

    os.setsid()
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    os.umask(0o022)   # runc makes the mount points with the umask it inherits: never imagetool's
    if pipes is not None:   # the container (and runc) get the pipes, never imagetool's fds
        for fd, src in ((0, pipes.stdin_r), (1, pipes.stdout_w), (2, pipes.stderr_w)):
            os.dup2(src if src is not None else empty_input(), fd)   # never the host's /dev/null
    t = time.perf_counter()
    sc.unshare(sc.CLONE_NEWNS)
    narrator.report("unshare mount namespace", shell.unshare(["mount"], fork=False), t)
    t = time.perf_counter()
    narrator.report("make private", mounts.make_private(), t)
    t = time.perf_counter()
    narrator.report("mount rootfs", mounts.mount_rootfs(rootfs), t)
    t = time.perf_counter()
    with Root(rootfs.target) as root:   # runc 1.1 would follow an image's /dev symlink onto the host
        mounts.check_mount_points(root, spec)
    narrator.report("check mount points", "# /proc, /dev, /sys and every mount destination: ordinary directories", t)
    if user_name:
        t = time.perf_counter()
        u = lookup(rootfs.target, user_name)
        spec["process"]["user"].update(uid=u.uid, gid=u.gid, additionalGids=list(u.additional_gids))
        if env_get(spec["process"]["env"], "HOME") is None:
            spec["process"]["env"].append(f"HOME={u.home or '/'}")
        narrator.report("resolve user", f"# {user_name}: uid={u.uid} gid={u.gid} (read through the rootfs)", t)
    t = time.perf_counter()
    path = os.path.join(bundle, "config.json")
    text = json.dumps(spec, indent=1)
    with open(path, "w") as f:
        f.write(text)
    narrator.report("write config.json", f"cat > {shell.q(path)} <<'EOF'\n{text}\nEOF", t)
    sync.send(sync_w, "created")
    if sync.read_exact(go_r, 1) != b"S":
        os._exit(0)
    narrator.report("exec runtime", shell.join(argv), time.perf_counter())
    os.execv(binary, argv)


class Container(supervise.Supervised):
    """A created runc/crun container: its `runc run` waits for start in the helper (`pid`)."""

    def __init__(self, backend, *args):
        super().__init__(*args)
        self.backend = backend
        self.log: str | None = None

    def wait(self, *args, **kwargs) -> int:
        """As the built-in runtime: a command runc could not exec gives 127 (not found) or 126
        (not executable), not runc's 1."""
        code = super().wait(*args, **kwargs)
        return exec_failure_code(self.log) or code if code == 1 and self.log else code

    def _cleanup(self) -> None:
        started = time.perf_counter()
        force_delete(self.backend, self.id)
        self.narrator.report("delete", shell.join([self.backend, "delete", "--force", self.id]), started)


_EXEC_FAILED = "unable to start container process: exec: "


def exec_failure_code(log: str) -> int | None:
    """127 or 126 when runc's JSON log ends with its failure to exec the command, else None."""
    try:
        with open(log, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        msg = str(entry.get("msg", ""))
        if entry.get("level") != "error" or _EXEC_FAILED not in msg:
            continue
        if msg.endswith(("no such file or directory", "executable file not found in $PATH")):
            return 127
        return 126
    return None


def force_delete(backend: str, container_id: str) -> None:
    """`runc delete --force ID` (kills what is left) and the empty imagetool/ cgroup parents."""
    import subprocess

    from imagetool.runtime import cgroups

    binary = shutil.which(backend)
    if binary:
        subprocess.run([binary, *rootless.runc_args(), "delete", "--force", container_id], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    cgroups.remove_empty_parents()
