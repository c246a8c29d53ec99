"""The built-in backend: imagetool's own side of a container (the init's side is init.py).

Steps on this side, in order (each reported to the narrator):
  prepare():  create_cgroup (every hierarchy) → fork_init (unshare --pid, then fork: the init is
              PID 1 of a new PID namespace and joins the cgroup while the caller still looks up
              the image — the first cgroup attach waits ~10 ms for an RCU grace period; rootless,
              through a middle process, the init adopted in create(): _fork_through_middle)
  create():   write_limits → compile_seccomp → send the config → the init's steps arrive as it
              does them, up to "created" (with -t, the pty master arrives over the console socket)
  start():    the start byte → the init's last steps → exec (EOF on the close-on-exec sync pipe)
  wait():     copy stdio (or relay the pty), forward signals, reap PID 1: docker's exit code
  delete():   kill what is left in the cgroup and remove it (on every path out, whatever the
              container did: PID 1 may have cleared its parent-death signal)
"""

from __future__ import annotations

import json
import os
import time

from imagetool.errors import ContainerError
from imagetool.mount import Mount
from imagetool.runtime import cgroups, console, explain, rootless, shell, stdio, supervise, sync
from imagetool.runtime import syscalls as sc


class Reservation:
    """The first half of `create` for the built-in runtime: nothing happens until `prepare()`.

    `cgroup_paths` are known before anything exists, so the caller can record them first (a
    later `ps` cleans up after an imagetool killed in between)."""

    def __init__(self, container_id: str, io, narrator, cgroup_layout: str | None = None,
                 born_in_group: bool = True):
        """`born_in_group`: the init is cloned into its cgroup2 group (cgroups.fork_into). On v2
        not for a container with a memory limit: what the forked interpreter touches from its
        birth (its imports, the pages it copies) would be charged to that group, a few MB a small
        limit (`-m 7m`) set afterwards may not leave; joined after the imports, as before, it is
        not. (A hybrid's cgroup2 group has no memory controller: the v1 one is joined later.)"""
        self.id = container_id
        self.io = io
        self.narrator = narrator
        self.cgroup = cgroups.create(container_id, cgroup_layout)
        self.cgroup_layout = cgroup_layout or ("v2" if self.cgroup.version == 2 else "v1")
        self.cgroup_paths = self.cgroup.paths
        self.born_in_group = born_in_group or self.cgroup.version == 1
        self.pid: int | None = None
        self._fds: dict = {}
        self._handed_over = False   # a Container owns the init and the cgroup now
        self._aborted = False

    # -- prepare: create_cgroup, fork_init

    def prepare(self) -> None:
        """Create the cgroup and fork the init (it joins the cgroup and waits for its config).
        Call before starting threads."""
        create_cgroup(self.cgroup, self.narrator)
        self.pid, self._fds = fork_init(self.cgroup, self.io, self.narrator, self.born_in_group)
        self._reader = sync.Reader(self._fds["sync"])
        if self.narrator is not explain.SILENT:
            self.narrator.sources.append(self._reader.ready_steps)

    def abort(self) -> None:
        """Kill the waiting init and remove the cgroup, on every path out before `create()`
        succeeded (a no-op after it: the Container's `delete()` does it then). Idempotent."""
        if self._handed_over or self._aborted:
            return
        self._aborted = True
        if "adopt" in self._fds:   # rootless: the init is imagetool's child only once the middle process is reaped
            self.pid = self._fds.pop("adopt").abort()
        if self.pid is not None:
            supervise.kill_and_reap(self.pid)
            self.pid = None
        self._close_all()
        delete_cgroup(self.cgroup, self.narrator)

    def _forget_reader(self) -> None:
        """From "created" on, the caller reads the init's messages itself (start())."""
        if self._reader.ready_steps in self.narrator.sources:
            self.narrator.sources.remove(self._reader.ready_steps)

    def _close_all(self) -> None:
        if getattr(self, "_reader", None) is not None:
            self._forget_reader()
        for key, fd in self._fds.items():
            if key == "pipes":
                fd.close_parent_ends()
            elif key == "adopt":
                pid = fd.abort()
                if pid is not None:
                    supervise.kill_and_reap(pid)
            elif fd is not None:
                stdio._close(fd)
        self._fds = {}

    # -- create: write_limits, compile_seccomp, send the config, the init's steps

    def create(self, spec: dict, rootfs: Mount) -> "Container":
        """Limit the cgroup, send the spec and the rootfs, return once the init is "created"
        (everything done but seccomp-with-no_new_privs and the exec). Raises ContainerError with
        the init's own message (and cleans up) when a step failed."""
        if self._handed_over or self._aborted or (self.pid is None and "adopt" not in self._fds):
            raise ContainerError("internal error: this container was already created or aborted")
        if bool(spec["process"].get("terminal")) != bool(self.io.tty):
            raise ContainerError("internal error: the spec's terminal setting differs from the io's")
        pending: list[int] = []
        saved = supervise.hold_signals(pending)
        reader = self._reader
        try:
            if "adopt" in self._fds:   # rootless: the middle process is long gone; the init goes on
                self.pid = self._fds.pop("adopt").finish()
            write_limits(self.cgroup, spec["linux"].get("resources", {}), self.narrator)
            program = compile_seccomp(spec, self.narrator)
            config = {"spec": spec, "rootfs": rootfs.to_dict(), "cgroup_layout": self.cgroup_layout,
                      "seccomp": program.hex() if program else None}
            _send_config(self._fds["config"], json.dumps(config).encode())
            supervise.receive_until(reader, "created", self.narrator)
            master = console.receive_master(self._fds["console"]) if self.io.tty else None
            if master is not None:
                console.copy_size(0, master)   # before the command runs: its first `stty size` is right
        except BaseException:
            self._forget_reader()
            if self.pid is not None:
                supervise.kill_and_reap(self.pid)
            self.pid = None
            self._close_all()
            supervise.restore_signals(saved)
            raise   # the caller's abort() removes the cgroup
        self._handed_over = True
        self._forget_reader()
        if self._fds.get("console") is not None:
            stdio._close(self._fds.pop("console"))
        return Container(self.cgroup, self.id, self.pid, self.io, self.narrator, reader, self._fds["config"],
                         self._fds.get("pipes"), master, saved, pending)


class Container(supervise.Supervised):
    """A created container of the built-in runtime; delete() empties and removes its cgroup
    (every process in it, whatever PID 1 did: no cooperation needed)."""

    def __init__(self, cgroup, *args):
        super().__init__(*args)
        self.cgroup = cgroup

    def oom_killed(self) -> bool:
        return self.cgroup.oom_killed()

    def _cleanup(self) -> None:
        delete_cgroup(self.cgroup, self.narrator)


# ---------------------------------------------------------------- the steps on this side


def create_cgroup(cgroup, narrator) -> None:
    started = time.perf_counter()
    made = cgroup.create()
    if getattr(cgroup, "reason", None):
        narrator.report("create cgroup", f"# none: {cgroup.reason} (rootless)", started)
        return
    narrator.report("create cgroup", "\n".join(shell.cgroup_create(d) for d in made) or "# exists", started)


def fork_init(cgroup, io, narrator, born_in_group: bool = True) -> tuple[int, dict]:
    """unshare(CLONE_NEWPID) and fork: the child is PID 1 of the new namespace and runs
    init.main; imagetool goes back to its own PID namespace for later children."""
    from imagetool.runtime import explain

    started = time.perf_counter()
    fds: dict = {}
    try:
        fds["sync"], sync_w = os.pipe2(os.O_CLOEXEC)        # init → imagetool: messages
        fds["_sync_w"] = sync_w
        config_r, fds["config"] = os.pipe2(os.O_CLOEXEC)    # imagetool → init: config, start
        fds["_config_r"] = config_r
        if io.tty:
            fds["console"], fds["_console_child"] = console.socketpair()
        else:
            fds["pipes"] = stdio.Pipes.make(io.interactive)
        from imagetool.runtime import sealed

        fds["_trampoline"] = sealed.sealed_trampoline()    # what the init execs last (sealed.py)

        def child(born_in=None) -> None:  # the init: never returns
            try:
                from imagetool.runtime import init   # here: imported while imagetool looks up the image

                for key in ("sync", "config", "console"):
                    if fds.get(key) is not None:
                        os.close(fds[key])
                pipes = fds.get("pipes")
                if pipes is not None:
                    for fd in (pipes.stdin_w, pipes.stdout_r, pipes.stderr_r):
                        if fd is not None:
                            os.close(fd)
                child_narrator = explain.Forwarder(sync_w) if narrator is not explain.SILENT else explain.SILENT
                init.main(init.Init(sync_fd=sync_w, config_fd=config_r, narrator=child_narrator, cgroup=cgroup,
                                    born_in=born_in, stdio=pipes.child_ends() if pipes else (),
                                    console_socket=fds.get("_console_child"),
                                    trampoline_fd=fds["_trampoline"]))
            finally:
                os._exit(125)

        born_in = None
        if rootless.active():
            pid, fds["adopt"] = None, _fork_through_middle(child)   # the PID comes with create()
        else:
            pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
            try:
                sc.unshare(sc.CLONE_NEWPID)
                pid, born_in = cgroups.fork_into(cgroup.unified_group if born_in_group else None)
                if pid == 0:
                    child(born_in)
            finally:
                if os.getpid() != 1:
                    sc.setns(pidns, sc.CLONE_NEWPID)  # imagetool's later children stay in the host's PID namespace
                    os.close(pidns)
    except BaseException:
        for key, fd in fds.items():
            if key == "pipes":
                fd.close_parent_ends()
                fd.close_child_ends()
            elif fd is not None:
                stdio._close(fd)
        raise
    for key in ("_sync_w", "_config_r", "_console_child", "_trampoline"):
        if fds.get(key) is not None:
            os.close(fds.pop(key))
    if "pipes" in fds:
        fds["pipes"].close_child_ends()
    born = f", born in {born_in}/ (clone3 CLONE_INTO_CGROUP)" if born_in else ""
    narrator.report("fork init", f"unshare --pid --fork  # the init: PID 1 of a new PID namespace, host pid "
                    f"{pid or '(rootless: through a middle process, adopted)'}{born}",
                    started)
    return pid, fds


PR_SET_CHILD_SUBREAPER = 36


def _fork_through_middle(child) -> "_Adoption":
    """Rootless fork_init: the way back to the host's PID namespace (setns) needs CAP_SYS_ADMIN
    over it, so a middle process unshares the PID namespace, forks the init, writes its PID and
    exits; the init is reparented to imagetool (a child subreaper meanwhile). Nothing here waits
    for either to run (on a busy machine that costs tens of ms): `_Adoption.finish()`, when the
    config is about to be sent, reads the PID, reaps the middle process and lets the init go on
    (its parent-death signal is then set with imagetool as the parent); `abort()` makes it exit."""
    r, w = os.pipe2(os.O_CLOEXEC)             # middle → imagetool: the init's PID
    go_r, go_w = os.pipe2(os.O_CLOEXEC)       # imagetool → init: adopted, go on
    sc.prctl(PR_SET_CHILD_SUBREAPER, 1)
    try:
        middle = os.fork()
    except BaseException:
        for fd in (r, w, go_r, go_w):
            os.close(fd)
        sc.prctl(PR_SET_CHILD_SUBREAPER, 0)
        raise
    if middle == 0:
        try:
            os.close(r)
            os.close(go_w)
            sc.unshare(sc.CLONE_NEWPID)
            pid = os.fork()
            if pid == 0:
                os.close(w)
                go = os.read(go_r, 1)
                os.close(go_r)
                if go == b"1":
                    child()
                os._exit(125)
            os.write(w, str(pid).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.close(go_r)
    return _Adoption(middle, r, go_w)


class _Adoption:
    """The end of _fork_through_middle (see there); finish() and abort() return the init's PID
    (abort: None when there was none) and are called once."""

    def __init__(self, middle: int, r: int, go_w: int):
        self.middle, self.r, self.go_w = middle, r, go_w

    def _collect(self) -> int | None:
        data = b""
        try:
            while chunk := os.read(self.r, 32):
                data += chunk
        finally:
            os.close(self.r)
            try:
                os.waitpid(self.middle, 0)   # once reaped, the init is imagetool's child
            except ChildProcessError:
                pass
            sc.prctl(PR_SET_CHILD_SUBREAPER, 0)
        return int(data) if data else None

    def finish(self) -> int:
        try:
            pid = self._collect()
            if pid is None:
                raise ContainerError("cannot start the container's init in a new PID namespace")
            os.write(self.go_w, b"1")
            return pid
        finally:
            os.close(self.go_w)

    def abort(self) -> int | None:
        os.close(self.go_w)   # EOF: the init exits
        return self._collect()


def write_limits(cgroup, resources: dict, narrator) -> None:
    started = time.perf_counter()
    writes = cgroup.apply(resources)
    if writes and getattr(cgroup, "reason", None):   # rootless without a delegated cgroup (cgroups/delegated.py)
        import sys

        sys.stderr.write(rootless.limits_warning(cgroup.reason))
    if writes:
        narrator.report("write limits", "\n".join(shell.cgroup_write(path, value) if not value.startswith("#")
                                                  else f"{value}: {path}" for path, value in writes), started)


def compile_seccomp(spec: dict, narrator) -> bytes | None:
    section = spec.get("linux", {}).get("seccomp")
    if not section:
        return None
    from imagetool.runtime import seccomp

    started = time.perf_counter()
    program = seccomp.compile(section)
    narrator.report("compile seccomp", f"# libseccomp: {len(section.get('syscalls') or [])} rules, default "
                    f"{section.get('defaultAction')} → {len(program) // 8} BPF instructions", started)
    return program


def delete_cgroup(cgroup, narrator) -> None:
    started = time.perf_counter()
    groups = cgroup.destroy() or cgroup.paths
    if not groups:
        return   # rootless with no cgroup: PID 1's end took its PID namespace with it
    narrator.report("remove cgroup", "\n".join(
        shell.cgroup_kill(g, cgroup.version) + "\n" + shell.cgroup_remove(g) for g in groups), started)


def _send_config(fd: int, data: bytes) -> None:
    frame = len(data).to_bytes(8, "big") + data
    try:
        while frame:
            frame = frame[os.write(fd, frame):]
    except BrokenPipeError:
        pass  # the init failed before reading: its error message follows
