"""The init is born in its cgroup2 group (clone3 CLONE_INTO_CGROUP) rather than moved there by a
`cgroup.procs` write, whose first use after a quiet spell waits 10-20 ms for an RCU grace period.

  - syscalls.fork_into_cgroup: the child's /proc/self/cgroup names the group from its first
    instruction; a refused clone3 raises OSError and forks nothing
  - cgroups.fork_into falls back to a plain fork (the init then writes cgroup.procs itself) while a
    thread runs: glibc's fork takes locks a raw clone does not
  - a container says so in --explain, and its cgroup2 membership is the group's (the v1 hierarchies
    are still joined through `tasks`; the v2 VM's smoke test covers the v2-only layout)
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from imagetool.runtime import cgroups as cg
from imagetool.runtime import syscalls as sc
from tests.runfixtures import it, store_fixture  # noqa: F401  (pytest fixtures)
from tests.runhelpers import kernel_skip_reason


def _cgroup2_mount() -> str | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[0] == "cgroup2":
                return left.split()[4]
    return None


@pytest.fixture
def group():
    if os.geteuid() != 0:
        pytest.skip("needs root to create a cgroup")
    mount = _cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup2 hierarchy is mounted")
    own = next(line.split(":", 2)[2].strip() for line in open("/proc/self/cgroup") if line.startswith("0::"))
    path = Path(mount, own.lstrip("/"), "imagetool-test-" + os.urandom(6).hex())
    path.mkdir()
    try:
        yield path
    finally:
        path.rmdir()


def _child_cgroup(fork) -> tuple[str, int]:
    """The 0:: line of /proc/self/cgroup as the child saw it first thing, and its exit status."""
    r, w = os.pipe()
    pid = fork()
    if pid == 0:
        try:
            os.close(r)
            line = next(ln for ln in open("/proc/self/cgroup") if ln.startswith("0::"))
            os.write(w, line.encode())
        finally:
            os._exit(7)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        seen = f.read().decode().strip()
    _, status = os.waitpid(pid, 0)
    return seen, os.waitstatus_to_exitcode(status)


def _relative(group: Path) -> str:
    return "0::/" + str(group.relative_to(_cgroup2_mount())).lstrip("/")


def test_the_child_is_born_in_the_group(group):
    fd = os.open(group, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        seen, code = _child_cgroup(lambda: sc.fork_into_cgroup(fd))
    except OSError as e:
        pytest.skip(f"this kernel refuses clone3 CLONE_INTO_CGROUP: {e}")
    finally:
        os.close(fd)
    assert seen == _relative(group)
    assert code == 7                       # the child ran Python and exited with its own status
    assert (group / "cgroup.procs").read_text() == ""   # and left it empty behind it


def _children() -> set[int]:
    """This process's children, running or exited (their /proc/PID/stat's parent field)."""
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    if int(f.read().rsplit(b")", 1)[1].split()[1]) == os.getpid():
                        found.add(int(name))
            except (OSError, IndexError, ValueError):
                pass
    return found


def test_a_refused_clone_forks_nothing(tmp_path):
    before = _children()   # (the suite may have children of its own: a registry, a VM…)
    not_a_cgroup = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError):
            sc.fork_into_cgroup(not_a_cgroup)
    finally:
        os.close(not_a_cgroup)
    assert _children() <= before   # no new child, running or exited


def test_while_a_thread_runs_it_is_a_plain_fork(group):
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    born = []
    try:
        def fork():
            pid, where = cg.fork_into(group)
            born.append(where)
            return pid
        seen, code = _child_cgroup(fork)
    finally:
        stop.set()
        t.join()
    assert born == [None] and code == 7
    assert seen != _relative(group)          # not moved: the caller (the init) writes cgroup.procs then


_reason = kernel_skip_reason()
store = store_fixture("imagetool-clone-into-cgroup")


@pytest.mark.skipif(_reason is not None, reason=_reason or "")
def test_the_container_init_is_cloned_into_its_cgroup2_group(it, store):
    if _cgroup2_mount() is None:
        pytest.skip("no cgroup2 hierarchy is mounted")
    r = it("run", "--rm", "--network", "none", "--explain", "busybox", "cat", "/proc/self/cgroup")
    assert r.returncode == 0, r.stderr
    assert "(clone3 CLONE_INTO_CGROUP)" in r.stderr
    born = next(ln for ln in r.stderr.splitlines() if "born in " in ln)
    assert "/imagetool/" in born
    lines = r.stdout.split()
    assert "0::/" in lines                    # cgroup2: the group is the container's cgroup namespace root
    v1 = [ln for ln in lines if not ln.startswith("0::")]
    assert all(ln.endswith(":/") for ln in v1), lines   # and every v1 hierarchy joined before it
