"""Cgroups: layout detection, the v2 writer against a tree that mimics cgroupfs, v1 for real,
and a real cgroup-v2-only VM smoke test (v2host) when its image is built."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from imagetool.errors import ContainerError
from imagetool.runtime import cgroups as cg
from imagetool.runtime.cgroups import v2 as v2mod
from tests import v2vm

MOUNTINFO_V2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
MOUNTINFO_HYBRID = """\
27 22 0:24 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:5 - tmpfs tmpfs ro,mode=755
28 27 0:25 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:6 - cgroup2 cgroup2 rw,nsdelegate
31 27 0:28 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,memory
32 27 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,cpu,cpuacct
33 27 0:30 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,pids
"""
MOUNTINFO_V1 = "\n".join(MOUNTINFO_HYBRID.splitlines()[2:]) + "\n"


@pytest.mark.parametrize("text, layout", [(MOUNTINFO_V2, "v2"), (MOUNTINFO_HYBRID, "hybrid"),
                                          (MOUNTINFO_V1, "v1"), ("", "none")])
def test_layout_is_detected_from_mountinfo(text, layout):
    assert cg.detect(text) == layout


def test_v1_groups_follow_imagetools_own_cgroup_per_hierarchy():
    """memory, cpu and pids; each under imagetool's own group in that hierarchy."""
    proc = "12:pids:/a\n4:cpu,cpuacct:/b/c\n3:memory:/m\n0::/\n"
    from imagetool.runtime.cgroups.v1 import V1Cgroup

    mgr = V1Cgroup.for_host("abc", MOUNTINFO_HYBRID, proc)
    assert mgr.groups["memory"] == Path("/sys/fs/cgroup/memory/m/imagetool/abc")
    assert mgr.groups["cpu"] == Path("/sys/fs/cgroup/cpu,cpuacct/b/c/imagetool/abc")
    assert mgr.groups["pids"] == Path("/sys/fs/cgroup/pids/a/imagetool/abc")
    assert len(mgr.paths) == 4   # every hierarchy: the unified cgroup2 of a hybrid host too


# ---------------------------------------------------------------- v2 against a fake cgroupfs

CONTROL_FILES = {"cgroup.procs": "", "cgroup.subtree_control": "", "cgroup.kill": "", "cgroup.events": "populated 0\n",
                 "memory.max": "max\n", "memory.swap.max": "max\n", "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
                 "cpu.max": "max 100000\n", "cpu.stat": "usage_usec 0\nnr_periods 0\nnr_throttled 0\n", "pids.max": "max\n"}


class FakeCgroupfs:
    """A directory tree shaped like cgroup2: mkdir creates the control files, a write to
    cgroup.subtree_control enables controllers for the children, rmdir ignores control files."""

    def __init__(self, root: Path, controllers: str = "cpuset cpu io memory hugetlb pids"):
        self.root = root
        root.mkdir()
        (root / "cgroup.controllers").write_text(controllers + "\n")
        (root / "cgroup.subtree_control").write_text("")
        (root / "cgroup.procs").write_text("1\n")

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)
        parent_enabled = self.enabled(path.parent)
        (path / "cgroup.controllers").write_text(" ".join(parent_enabled) + "\n")
        for name, content in CONTROL_FILES.items():
            if "." in name and name.split(".")[0] not in ("cgroup",) and name.split(".")[0] not in parent_enabled:
                continue
            (path / name).write_text(content)

    @staticmethod
    def enabled(path: Path) -> list[str]:
        words = (path / "cgroup.subtree_control").read_text().split()
        on: list[str] = []
        for w in words:  # the fake keeps the writes; the last +/- wins
            name = w.lstrip("+-")
            if w.startswith("-"):
                on = [c for c in on if c != name]
            elif name not in on:
                on.append(name)
        return on

    def rmdir(self, path: Path) -> None:
        if any(p.is_dir() for p in Path(path).iterdir()):
            raise OSError(16, "Device or resource busy")
        shutil.rmtree(path)


@pytest.fixture
def fakefs(tmp_path, monkeypatch):
    fs = FakeCgroupfs(tmp_path / "cgroupfs")
    monkeypatch.setattr(v2mod, "_mkdir", fs.mkdir)
    monkeypatch.setattr(cg, "_rmdir", fs.rmdir)
    # a real write to cgroup.subtree_control appends what was asked; mimic that
    real_write = cg.write

    def write(path, value):
        if Path(path).name == "cgroup.subtree_control":
            with open(path, "a") as f:
                f.write(" " + str(value))
            return
        real_write(path, value)

    monkeypatch.setattr(cg, "write", write)
    return fs


def test_v2_writer_enables_controllers_and_writes_limits(fakefs):
    mgr = v2mod.V2Cgroup(fakefs.root, "c0ffee")
    mgr.create()
    assert set(fakefs.enabled(fakefs.root)) == {"cpu", "memory", "pids"}
    assert set(fakefs.enabled(fakefs.root / "imagetool")) == {"cpu", "memory", "pids"}
    mgr.apply({"memory": {"limit": 7 << 20, "swap": 14 << 20}, "cpu": {"quota": 50000, "period": 100000},
               "pids": {"limit": 20}})
    g = fakefs.root / "imagetool" / "c0ffee"
    assert mgr.paths == [str(g)]
    assert (g / "memory.max").read_text() == str(7 << 20)
    assert (g / "memory.swap.max").read_text() == str(7 << 20)  # v2 counts swap alone: total - memory
    assert (g / "cpu.max").read_text() == "50000 100000"
    assert (g / "pids.max").read_text() == "20"
    mgr.enter(4242)
    assert (g / "cgroup.procs").read_text() == "4242"
    assert not mgr.oom_killed()
    (g / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert mgr.oom_killed()


def test_v2_unlimited_swap_and_cleanup_of_the_parent(fakefs):
    a = v2mod.V2Cgroup(fakefs.root, "aaa")
    b = v2mod.V2Cgroup(fakefs.root, "bbb")
    a.create()
    b.create()
    a.apply({"memory": {"limit": 1 << 30, "swap": -1}})
    assert (fakefs.root / "imagetool/aaa/memory.swap.max").read_text() == "max"
    (fakefs.root / "imagetool/aaa/cgroup.procs").write_text("")
    a.destroy()
    assert not (fakefs.root / "imagetool/aaa").exists()
    assert (fakefs.root / "imagetool").exists()  # b still lives there
    b.destroy()
    assert not (fakefs.root / "imagetool").exists()


def test_v2_missing_controller_is_a_clear_error(tmp_path, monkeypatch):
    fs = FakeCgroupfs(tmp_path / "cgroupfs", controllers="cpu memory")
    monkeypatch.setattr(v2mod, "_mkdir", fs.mkdir)
    monkeypatch.setattr(cg, "_rmdir", fs.rmdir)
    real_write = cg.write
    monkeypatch.setattr(cg, "write", lambda p, v: (open(p, "a").write(" " + str(v)) if Path(p).name ==
                                                   "cgroup.subtree_control" else real_write(p, v)))
    mgr = v2mod.V2Cgroup(fs.root, "nopids")
    mgr.create()
    with pytest.raises(ContainerError, match="pids"):
        mgr.apply({"pids": {"limit": 20}})
    mgr.destroy()
    assert not (fs.root / "imagetool").exists()


# ---------------------------------------------------------------- v1 for real


def _v1_or_skip():
    if os.geteuid() != 0:
        pytest.skip("needs root to create cgroups")
    if cg.detect() not in ("v1", "hybrid"):
        pytest.skip(f"this host's cgroup layout is {cg.detect()}, not v1/hybrid")


def test_v1_real_limits_processes_and_removal():
    from imagetool.runtime.cgroups.v1 import V1Cgroup

    _v1_or_skip()
    cid = "imagetool-test-" + os.urandom(6).hex()
    mgr = V1Cgroup.for_host(cid)
    if "memory" not in mgr.groups or "pids" not in mgr.groups or "cpu" not in mgr.groups:
        pytest.skip("memory, cpu or pids v1 controller missing")
    mgr.create()
    try:
        mgr.apply({"memory": {"limit": 64 << 20, "swap": 128 << 20}, "cpu": {"quota": 25000, "period": 100000},
                   "pids": {"limit": 7}})
        mem = mgr.groups["memory"]
        assert int((mem / "memory.limit_in_bytes").read_text()) == 64 << 20
        if (mem / "memory.memsw.limit_in_bytes").exists():
            assert int((mem / "memory.memsw.limit_in_bytes").read_text()) == 128 << 20
        assert (mgr.groups["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "25000"
        assert (mgr.groups["pids"] / "pids.max").read_text().strip() == "7"
        p = subprocess.Popen(["sleep", "60"])
        mgr.enter(p.pid)
        assert cg.pids_in(mem) == [p.pid]
        assert not mgr.oom_killed()
        mgr.destroy()  # kills what is left
        assert p.wait(timeout=10) == -9
        for path in mgr.paths:
            assert not Path(path).exists()
    finally:
        cg.destroy_paths(mgr.paths)


# ---------------------------------------------------------------- the v2 VM


GUEST_SCRIPT = r"""
set -u
export PYTHONPATH=/host/site:/host/src IMAGETOOL_FIXTURE_CACHE=/var/tmp/fx
cd /host/src
python3 -c "from tests.runhelpers import add_image; from fixtures.images import busybox_image; add_image('/var/tmp/st', busybox_image(), 'docker.io/library/busybox:latest')" || exit 90
it() { python3 -m imagetool --store /var/tmp/st "$@"; }
echo "LAYOUT $(python3 -c 'from imagetool.runtime import cgroups; print(cgroups.detect())')"
it run --rm -m 7m busybox sh -c 'data=$(head -c 7500000 /dev/urandom)' 2>/tmp/oom.err; echo "RESULT oom $?"
cat /tmp/oom.err
it run --rm -m 7m busybox sh -c 'data=$(head -c 2000000 /dev/urandom)'; echo "RESULT small $?"
it run --rm --pids-limit 20 busybox sh -c 'i=0; while [ $i -lt 40 ]; do sleep 2 & i=$((i+1)); done; wait' 2>/tmp/pids.err
grep -q "can't fork" /tmp/pids.err; echo "RESULT pids $?"
python3 -m imagetool --store /var/tmp/st run --rm --cpus 0.5 busybox sh -c 'trap "exit 0" TERM; echo $$; sleep 60 & wait' > /tmp/cpu.out &
job=$!
for i in $(seq 300); do f=$(ls -d /sys/fs/cgroup/imagetool/*/ 2>/dev/null | head -1); [ -n "$f" ] && [ -s /tmp/cpu.out ] && break; sleep 0.1; done
echo "RESULT cpumax $(cat ${f}cpu.max 2>/dev/null | tr ' ' _)"
kill -TERM $job; wait $job; echo "RESULT sigterm $?"
echo "RESULT pid1 $(cat /tmp/cpu.out)"
it run --rm busybox sh -c 'exit 42'; echo "RESULT exit42 $?"
out=$(it run --rm --explain -m 7m busybox cat /sys/fs/cgroup/memory.max 2>/tmp/explain.err); echo "RESULT sysfscg $out"
echo "RESULT explain_steps $(grep -c '^imagetool: explain: ' /tmp/explain.err)"
grep -q '^    echo 7340032 > /sys/fs/cgroup/imagetool/[0-9a-f]*/memory.max$' /tmp/explain.err; echo "RESULT explain_limit $?"
grep -q 'born in /sys/fs/cgroup/imagetool/' /tmp/explain.err; echo "RESULT limited_born_in $?"
it run --rm --explain busybox true 2>/tmp/born.err
grep -q 'born in /sys/fs/cgroup/imagetool/[0-9a-f]*/ (clone3 CLONE_INTO_CGROUP)' /tmp/born.err; echo "RESULT born_in $?"
for i in 1 2 3; do it run --rm -m 7m busybox sh -c 'data=$(head -c 7500000 /dev/urandom)' 2>/dev/null; echo "RESULT oom$i $?"; done
it run --rm busybox sh -c 'mkdir /sys/fs/cgroup/x' 2>/tmp/ro.err; grep -q 'Read-only' /tmp/ro.err; echo "RESULT cgroup_ro $?"
echo "RESULT tty $(it run --rm -t busybox tty | tr -d '\r')"
echo before > /tmp/host.log; chmod 600 /tmp/host.log; it run --rm busybox sh -c 'chmod 777 /proc/self/fd/1' >> /tmp/host.log
echo "RESULT stdout_mode $(stat -c %a /tmp/host.log)"
echo "RESULT leftover_cgroups $(find /sys/fs/cgroup/imagetool -mindepth 1 -maxdepth 1 -type d 2>/dev/null | wc -l)"
echo "RESULT parent_group $(test -d /sys/fs/cgroup/imagetool && echo present || echo absent)"
echo "RESULT leftover_mounts $(grep -c -e overlay -e /var/tmp/st /proc/self/mountinfo)"
"""


def test_v2_vm_smoke(tmp_path):
    """One boot of the cgroup-v2-only VM: OOM → 137, pids limit, cpu.max, PID 1, exit codes, --explain
    with v2's file names, /sys/fs/cgroup, the tty, stdio on pipes, cleanup."""
    out = v2vm.boot(tmp_path, GUEST_SCRIPT, started_marker="RESULT")
    results = v2vm.results(out)
    assert "LAYOUT v2" in out
    assert results["oom"] == "137"
    assert "container was killed: out of memory" in out
    assert results["small"] == "0"
    assert results["pids"] == "0"
    assert results["cpumax"] == "50000_100000"
    assert results["pid1"] == "1"
    assert results["sigterm"] == "0"
    assert results["exit42"] == "42"
    assert results["sysfscg"] == "7340032"          # the container's own cgroup at /sys/fs/cgroup
    assert results["cgroup_ro"] == "0"                # … read-only
    assert int(results["explain_steps"]) >= 30 and results["explain_limit"] == "0"   # --explain, v2 file names
    assert results["born_in"] == "0"                 # the init cloned into its group
    assert results["limited_born_in"] == "1"         # … but not with a memory limit: joined after its imports
    assert [results[f"oom{i}"] for i in (1, 2, 3)] == ["137"] * 3   # so -m 7m leaves room for the container
    assert results["tty"] == "/dev/pts/0"             # the pty of the container's own devpts
    assert results["stdout_mode"] == "600"            # the host file behind stdout is out of reach
    assert results["leftover_cgroups"] == "0"
    assert results["parent_group"] == "absent"
    assert results["leftover_mounts"] == "0"
