"""`run --explain`: every step of the recipe printed as it happens, in order, with real values;
the run itself (output, exit code, cleanup) the same as without it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.runfixtures import host_unchanged, it, store_fixture  # noqa: F401 (fixtures)
from tests.runhelpers import kernel_skip_reason

_reason = kernel_skip_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

STEP = re.compile(r"^imagetool: explain: \[(imagetool|init)\] +[\d.]+ ms  (.+) \(([\d.]+) ms\)$")

# the seed's recipe, in the order the steps must be reported (a subsequence of what is printed)
RECIPE = ["create cgroup", "fork init", "join cgroup", "prepare rootfs", "write limits", "unshare mount",
          "unshare uts", "unshare ipc", "unshare cgroup", "unshare network",
          "make private", "mount rootfs", "mount /proc", "mount /dev", "create /dev/null", "create /dev/urandom",
          "mount /dev/pts", "mount /sys", "mount /sys/fs/cgroup", "set hostname", "pivot root", "mask paths",
          "readonly paths", "join session keyring", "drop capabilities", "set no new privs", "close fds",
          "wait for start", "load seccomp", "exec", "start", "wait", "remove cgroup"]


store = store_fixture("imagetool-explain")


def steps(stderr: str) -> list[tuple[str, str, list[str]]]:
    """(where, name, command lines) for each reported step."""
    out: list = []
    for line in stderr.splitlines():
        m = STEP.match(line)
        if m:
            out.append((m.group(1), m.group(2), []))
        elif line.startswith("    ") and out:
            out[-1][2].append(line[4:])
    return out


def without_explain(stderr: str) -> str:
    return "\n".join(line for line in stderr.splitlines()
                     if not STEP.match(line) and not line.startswith("    "))


def is_subsequence(wanted: list[str], names: list[str]) -> bool:
    it = iter(names)
    return all(any(n == w for n in it) for w in wanted)


def test_every_step_is_reported_in_the_recipes_order_with_real_values(it, store):
    from imagetool.runtime import cgroups

    r = it("run", "--rm", "--explain", "--network", "private", "-m", "7m", "busybox", "echo", "hello")   # the seed's loopback-only recipe
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello\n"
    got = steps(r.stderr)
    names = [name for _, name, _ in got]
    assert is_subsequence(RECIPE, names), names
    by_name = {name: (where, "\n".join(cmd)) for where, name, cmd in got}
    # who did what: the cgroup and the fork on imagetool's side, the namespaces and mounts in the init
    assert by_name["create cgroup"][0] == "imagetool" and by_name["mount /proc"][0] == "init"
    # the real values a person would type
    limit_file = "memory.max" if cgroups.detect() == "v2" else "memory.limit_in_bytes"
    assert re.search(rf"^echo 7340032 > /sys/fs/cgroup/\S*/imagetool/[0-9a-f]{{64}}/{limit_file}$",
                     by_name["write limits"][1], re.M), by_name["write limits"][1]
    assert [by_name[f"unshare {t}"][1] for t in ("mount", "uts", "ipc", "cgroup", "network")] == [
        "unshare --mount", "unshare --uts", "unshare --ipc", "unshare --cgroup", "unshare --net"]
    assert re.search(r"mknod -m 666 \S+/rootfs/dev/urandom c 1 9", by_name["create /dev/urandom"][1])
    assert f"-o lowerdir=l/0,upperdir=upper,workdir=work overlay {store}/containers/" in by_name["mount rootfs"][1]
    assert re.search(r"host pid \d+", by_name["fork init"][1])
    assert "pivot_root . ." in by_name["pivot root"][1]
    assert "mount --bind /dev/null /proc/keys" in by_name["mask paths"][1]
    assert by_name["exec"][1].endswith("echo hello")


def test_a_step_time_is_reported_for_each_step(it):
    r = it("run", "--rm", "--explain", "busybox", "true")
    assert r.returncode == 0, r.stderr
    times = [float(m.group(3)) for m in map(STEP.match, r.stderr.splitlines()) if m]
    assert len(times) >= len(RECIPE) and all(t >= 0 for t in times)


@pytest.mark.parametrize("args", [
    ["busybox", "echo", "hello"],
    ["busybox", "sh", "-c", "echo out; echo err >&2; exit 7"],
    ["busybox", "no-such-command"],
    ["-u", "nobody-here", "busybox", "true"],
    ["--read-only", "busybox", "sh", "-c", "touch /x"],
])
def test_output_exit_code_and_cleanup_are_the_same_with_and_without_explain(it, args):
    plain = it("run", "--rm", *args)
    explained = it("run", "--rm", "--explain", *args)
    assert explained.returncode == plain.returncode
    assert explained.stdout == plain.stdout
    assert without_explain(explained.stderr) == plain.stderr.rstrip("\n")
    assert steps(explained.stderr), "nothing was explained"


def test_a_failing_step_is_explained_up_to_the_failure(it):
    r = it("run", "--rm", "--explain", "busybox", "no-such-command")
    assert r.returncode == 127
    names = [name for _, name, _ in steps(r.stderr)]
    assert "pivot root" in names and "exec" not in names and names[-1] == "remove cgroup"


@pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc")
def test_runc_backend_explains_the_config_it_hands_over_and_the_runc_command(it, store):
    r = it("run", "--rm", "--explain", "--runtime", "runc", "busybox", "echo", "hi")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hi\n"
    got = {name: "\n".join(cmd) for _, name, cmd in steps(r.stderr)}
    config = got["write config.json"]
    assert config.startswith(f"cat > {store}/containers/") and '"args": [' in config and '"echo"' in config
    assert re.fullmatch(rf"runc --log {store}/containers/([0-9a-f]{{64}})/runc\.log --log-format json run "
                        rf"--bundle {store}/containers/\1 [0-9a-f]{{64}}", got["exec runtime"])
    assert got["delete"].startswith("runc delete --force ")
    assert not list(Path(store, "containers").glob("*/config.json"))


def test_script_prints_the_recipe_and_runs_nothing(it, store):
    """run --script: a POSIX script (runtime/script.py) on stdout; no container, record or cgroup
    is made by printing it, and the script itself runs the command."""
    import subprocess

    before = sorted(p.name for p in (store / "containers").iterdir()) if (store / "containers").exists() else []
    r = it("run", "--script", "-m", "7m", "busybox", "echo", "hello")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("#!/bin/sh\n")
    after = sorted(p.name for p in (store / "containers").iterdir())
    assert [n for n in after if n not in before and n != ".lock"] == []
    ran = subprocess.run(["sh", "-c", r.stdout], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "hello\n"


def test_trace_timing_lists_the_runtime_steps_without_printing_them(it):
    """IMAGETOOL_TRACE_TIMING=1 (benchmarks) gets every step's time from the same narrator, silently."""
    env = {**it.env, "IMAGETOOL_TRACE_TIMING": "1"}
    import subprocess

    r = subprocess.run(it.argv("run", "--rm", "busybox", "true"), env=env, capture_output=True, text=True,
                       timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert not steps(r.stderr)
    line = next(x for x in r.stderr.splitlines() if x.startswith("imagetool-timing: "))
    marks = [m.split("=")[0] for m in line.split()[1:]]
    assert {"imagetool.create_cgroup", "init.join_cgroup", "init.pivot_root", "init.exec", "imagetool.wait"} <= set(marks)
