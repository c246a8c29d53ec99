"""The run path kept watchable while it got leaner (issues 11 and 16).

  - `run -d` with IMAGETOOL_TRACE_TIMING=1: the monitor's breakdown (its own stderr is /dev/null)
    comes back with the container's id and is printed on the CLI's stderr; stdout is the id only
  - a foreground run's breakdown names the runtime's steps on both sides (imagetool's and the
    init's, which now imports its module after the fork)
  - the records a run writes (state.json, spec.json) are compact JSON that read back whole
"""

from __future__ import annotations

import json
import re

import pytest

from tests.runfixtures import host_unchanged, it, store_fixture  # noqa: F401  (pytest fixtures)
from tests.runhelpers import kernel_skip_reason
from tests.test_detached import Detached

_reason = kernel_skip_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

store = store_fixture("imagetool-b-run-path")


def _steps(stderr: str) -> dict[str, float]:
    line = next(ln for ln in stderr.splitlines() if ln.startswith("imagetool-timing: "))
    return {k: float(v.removesuffix("ms")) for k, v in re.findall(r"(\S+)=([0-9.]+(?:ms)?)", line)}


def test_run_d_prints_the_monitors_timing_on_the_clis_stderr(it, store):
    d = Detached(it, store)
    try:
        it.env["IMAGETOOL_TRACE_TIMING"] = "1"
        r = it("run", "-d", "--network", "none", "busybox", "sleep", "1000")
        it.env.pop("IMAGETOOL_TRACE_TIMING")
        assert r.returncode == 0, r.stderr
        cid = r.stdout.strip()
        assert re.fullmatch(r"[0-9a-f]{64}", cid), r.stdout   # stdout: the id only
        d.ids.append(cid)
        d.monitors.add(d.state(cid)["owner_pid"])
        steps = _steps(r.stderr)
        for name in ("imagetool.create_cgroup", "imagetool.fork_init", "image", "spec", "imagetool.prepare_rootfs",
                     "created", "imagetool.start", "exec", "init.pivot_root", "init.exec", "total"):
            assert name in steps, (name, r.stderr)
        assert d.state(cid)["status"] == "running"
    finally:
        d.cleanup()


def test_run_d_without_the_variable_prints_nothing_on_stderr(it, store):
    d = Detached(it, store)
    try:
        cid = d.run("--network", "none", "busybox", "sleep", "1000")
        assert d.state(cid)["status"] == "running"
    finally:
        d.cleanup()
    r = it("run", "-d", "--network", "none", "busybox", "true")
    assert r.returncode == 0 and r.stderr == ""
    it("rm", "-f", r.stdout.strip())


def test_foreground_timing_names_both_sides_and_the_exit(it):
    it.env["IMAGETOOL_TRACE_TIMING"] = "1"
    try:
        r = it("run", "--rm", "--network", "none", "busybox", "sh", "-c", "exit 3")
    finally:
        it.env.pop("IMAGETOOL_TRACE_TIMING")
    assert r.returncode == 3, r.stderr
    steps = _steps(r.stderr)
    for name in ("open_store", "record", "imagetool.create_cgroup", "imagetool.fork_init", "init.new_session", "init.join_cgroup",
                 "init.mount_rootfs", "imagetool.start", "exit", "imagetool.remove_cgroup", "cleanup"):
        assert name in steps, (name, r.stderr)


def test_records_are_compact_json_read_back_whole(it, store):
    r = it("run", "--name", "b-records", "--network", "none", "busybox", "true")
    assert r.returncode == 0, r.stderr
    try:
        cdir = next(p for p in (store / "containers").iterdir()
                    if p.is_dir() and json.loads((p / "state.json").read_text()).get("name") == "b-records")
        for name in ("state.json", "spec.json"):
            text = (cdir / name).read_text()
            assert "\n" not in text   # one line: json.dumps' C encoder, not the indenting Python one
            assert isinstance(json.loads(text), dict)
        state = json.loads((cdir / "state.json").read_text())
        assert (state["status"], state["exit_code"]) == ("exited", 0)
        assert json.loads((cdir / "spec.json").read_text())["process"]["args"] == ["true"]
        assert [p.name for p in cdir.iterdir() if p.name.endswith(".tmp")] == []
    finally:
        assert it("rm", "b-records").returncode == 0


def test_a_cpuset_parent_another_imagetool_just_made_is_filled_before_the_join(tmp_path):
    """Two imagetools share the `imagetool/` parent group. One has just made it in the cpuset
    hierarchy (a new cpuset group has no cpus and no mems) and not filled it yet; the other finds it
    existing. Its container group must still get cpus and mems: joining an empty cpuset group
    fails with ENOSPC ("No space left on device"), the error a benchmark round hit."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from imagetool.runtime.cgroups.v1 import V1Cgroup

    root = Path("/sys/fs/cgroup/cpuset")
    if not (root / "cpuset.cpus").exists() or os.geteuid() != 0:
        pytest.skip("needs root and the cgroup v1 cpuset hierarchy at /sys/fs/cgroup/cpuset")
    top = root / f"imagetool-b-test-{os.getpid()}"
    top.mkdir()
    try:
        for f in ("cpuset.cpus", "cpuset.mems"):
            (top / f).write_text((root / f).read_text())
        (top / "imagetool").mkdir()   # made by "another imagetool", not filled yet
        assert (top / "imagetool" / "cpuset.cpus").read_text().strip() == ""
        group = top / "imagetool" / "c0ffee"
        cg = V1Cgroup({"cpuset": group}, [(group, "tasks")])
        assert cg.create() == [str(group)]
        for f in ("cpuset.cpus", "cpuset.mems"):
            assert (group / f).read_text().strip() == (root / f).read_text().strip()
        p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        try:
            (group / "cgroup.procs").write_text(str(p.pid))   # ENOSPC before the fix
            assert (group / "cgroup.procs").read_text().split() == [str(p.pid)]
        finally:
            p.communicate(b"")
        cg.destroy()
        assert not group.exists()
    finally:
        for d in (top / "imagetool" / "c0ffee", top / "imagetool", top):
            if d.exists():
                os.rmdir(d)
