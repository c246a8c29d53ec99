"""The runtime's API: the OCI runtime operations, one shape for every backend.

    c = runtime.create(container_id, spec, rootfs, io, backend="imagetool", narrator=None)
    c.start()            # exec the container's process (returns once it runs)
    c.state()            # {"ociVersion", "id", "status": created|running|stopped, "pid"}
    c.kill(signal)       # to its PID 1
    code = c.wait()      # stdio copied, signals forwarded; docker's exit code (128+signal)
    c.delete()           # kill what is left, remove the cgroup (every path out: call it in a finally)

`spec` is an OCI runtime spec (dict), `rootfs` the one `imagetool.mount.Mount` from unpack,
`io` an `IO`. Backends: "imagetool" (the built-in runtime: process.py on imagetool's side,
init.py in the container) and "runc"/"crun" (runc.py: the same spec as config.json). The
narrator (explain.Narrator for `run --explain`) hears every step of either.

`create` in two halves, so a run overlaps the slow part of a start with its image lookup:
`r = reserve(id, io, …)` does nothing yet but knows `r.cgroup_paths` (record them first);
`r.prepare()` creates the cgroup and forks the init, which joins it (the kernel's first cgroup
attach waits ~10 ms for an RCU grace period) while the caller looks up the image;
`r.create(spec, rootfs)` returns the Container; `r.abort()` undoes it on any path out before
that (a no-op after). `create(...)` is `reserve(...)`, `prepare()`, `create(...)` in one call.
`destroy(id, backend, cgroup_paths)` cleans up after a container whose imagetool died (from what
was recorded).
"""

from __future__ import annotations

from dataclasses import dataclass

BACKENDS = ("imagetool", "runc", "crun")


@dataclass(frozen=True, slots=True, eq=False, repr=False, init=False)
class IO:
    """The container's stdio: pipes imagetool copies, or with `tty` a pty from the container's
    own devpts; `interactive` (-i) copies imagetool's stdin to it (else stdin is an empty pipe:
    never a host file). A request nobody compares: no generated __eq__/__hash__ (every `run`
    compiles the generated functions of the dataclasses it loads); __init__ and __repr__
    written out as dataclass would generate them."""

    interactive: bool = False
    tty: bool = False

    def __init__(self, interactive: bool = False, tty: bool = False) -> None:
        _set = object.__setattr__   # frozen: as the generated __init__ does
        _set(self, "interactive", interactive)
        _set(self, "tty", tty)

    def __repr__(self) -> str:
        return f"IO(interactive={self.interactive!r}, tty={self.tty!r})"


def reserve(container_id: str, io: IO, *, backend: str = "imagetool", narrator=None,
            bundle: str | None = None, cgroup_layout: str | None = None, memory_limit: bool = False):
    """The first half of `create` (see the module docstring); `bundle`: the directory for the
    runc/crun config.json (the built-in runtime needs none); `memory_limit`: the container will
    have one (the built-in runtime's init then joins its cgroup only after its own imports, see
    process.Reservation)."""
    from imagetool.runtime import explain

    narrator = narrator if narrator is not None else explain.SILENT
    if backend == "imagetool":
        from imagetool.runtime import process

        return process.Reservation(container_id, io, narrator, cgroup_layout, born_in_group=not memory_limit)
    if backend in ("runc", "crun"):
        from imagetool.runtime import runc

        return runc.Reservation(backend, container_id, io, narrator, bundle)
    from imagetool.errors import ImagetoolError

    raise ImagetoolError(f"unknown runtime {backend!r}", hint="use runc or crun")


def create(container_id: str, spec: dict, rootfs, io: IO, *, backend: str = "imagetool", narrator=None,
           bundle: str | None = None):
    """A created container (everything done but the exec): see the module docstring."""
    r = reserve(container_id, io, backend=backend, narrator=narrator, bundle=bundle)
    try:
        r.prepare()
        return r.create(spec, rootfs)
    finally:
        r.abort()   # a no-op once the container exists


def destroy(container_id: str, backend: str, cgroup_paths: list[str]) -> None:
    """Kill and remove whatever is left of a container whose imagetool died (SIGKILL): its
    cgroups (every process in them, whatever PID 1 did) and, under runc/crun, the runtime's
    container. Needs no cooperation from the container."""
    from imagetool.runtime import cgroups

    cgroups.destroy_paths(cgroup_paths or [])
    if backend in ("runc", "crun"):
        from imagetool.runtime import runc

        runc.force_delete(backend, container_id)
