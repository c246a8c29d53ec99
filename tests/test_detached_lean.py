"""The detached container's lean monitor (conmon.py), exec into runc containers, and -d with -i/-t.

  - once the container runs, its monitor is a fresh `python -I -S` (the same PID) holding well
    under 15 MB, with none of imagetool's services loaded; SIGTERM of that monitor kills the
    container and records its exit; teardown leaves nothing (host_unchanged)
  - `exec` into a container started with `--runtime runc` joins it as the built-in runtime's:
    PID 1, every namespace, its cgroup; exit codes 0/42/127; -t
  - `run -dit`: the container gets a pty (the monitor holds the master: an interactive shell
    stays up), what it writes is logged; `run -di` keeps its stdin open; `exec -dit` and
    `exec -di` leave a shell running in the container

Every test removes its containers and checks that their monitors are gone by PID (Detached).
"""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest

from tests.runfixtures import host_unchanged, it, store_fixture  # noqa: F401  (pytest fixtures)
from tests.runhelpers import kernel_skip_reason
from tests.test_detached import Detached, _eventually, _gone

_reason = kernel_skip_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

store = store_fixture("imagetool-detached-lean")

SERVICE = ["sh", "-c", "trap 'exit 0' TERM; echo up; sleep 1000 & wait"]


@pytest.fixture
def dt(it, store):
    d = Detached(it, store)
    yield d
    d.cleanup()


def _status(pid: int) -> dict:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _lean(pid: int) -> bool:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    return b"-I" in argv and b"-S" in argv and any(b"imagetool.conmon" in a for a in argv)


def test_the_idle_monitor_is_the_lean_one_under_15_mb(dt, it):
    cid = dt.run("--network", "none", "busybox", *SERVICE)
    monitor = dt.state(cid)["owner_pid"]
    _eventually(lambda: _lean(monitor), "the monitor execs its lean self")
    _eventually(lambda: it("logs", cid).stdout == "up\n", "the container's output is logged")
    rss_kb = int(_status(monitor)["VmRSS"].split()[0])
    assert rss_kb < 15 * 1024, f"the idle monitor holds {rss_kb} kB"
    with open(f"/proc/{dt.state(cid)['pid']}/stat") as f:   # the container's init is still the monitor's child
        assert int(f.read().rsplit(")", 1)[1].split()[1]) == monitor
    assert it("stop", "-t", "5", cid).returncode == 0
    st = dt.state(cid)
    assert (st["status"], st["exit_code"]) == ("exited", 0) and _gone(monitor)


def test_sigterm_of_the_lean_monitor_kills_the_container_and_records_it(dt, it):
    cid = dt.run("--network", "none", "busybox", "sleep", "1000")
    st = dt.state(cid)
    _eventually(lambda: _lean(st["owner_pid"]), "the monitor execs its lean self")
    os.kill(st["owner_pid"], signal.SIGTERM)
    _eventually(lambda: _gone(st["owner_pid"]) and _gone(st["pid"]), "monitor and container end")
    done = dt.state(cid)
    assert done["status"] == "exited" and done["exit_code"] == 137 and not done.get("error")


# ---------------------------------------------------------------- exec into runc containers

needs_runc = pytest.mark.skipif(shutil.which("runc", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None,
                                reason="runc is not installed")


@needs_runc
def test_exec_into_a_runc_container_joins_it(dt, it):
    cid = dt.run("--runtime", "runc", "--name", "rc", "busybox", "sleep", "1000")
    lines = it("exec", "rc", "ps", "-o", "pid,comm").stdout.split()
    assert lines[2:4] == ["1", "sleep"]
    script = ("for ns in mnt uts ipc net pid cgroup; do "
              "[ \"$(readlink /proc/1/ns/$ns)\" = \"$(readlink /proc/self/ns/$ns)\" ] || echo differs $ns; done; "
              "hostname; cmp /proc/1/cgroup /proc/self/cgroup && echo same-cgroup")
    r = it("exec", "rc", "sh", "-c", script)
    assert r.stdout == f"{cid[:12]}\nsame-cgroup\n", r.stderr
    fields = "CapEff|CapBnd|NoNewPrivs|Seccomp:"
    pid1, own = it("exec", "rc", "sh", "-c", f"grep -E '{fields}' /proc/1/status; echo --; "
                   f"grep -E '{fields}' /proc/self/status").stdout.split("--\n")
    assert pid1 == own
    assert it("exec", "rc", "sh", "-c", "exit 42").returncode == 42
    r = it("exec", "rc", "/nonexistent")
    assert r.returncode == 127 and r.stderr.startswith("imagetool: error: ")
    r = it("exec", "-t", "rc", "tty")
    assert r.returncode == 0 and r.stdout.strip().startswith("/dev/pts/"), r.stderr
    assert it("stop", "-t", "1", "rc").returncode == 0
    r = it("exec", "rc", "true")
    assert r.returncode != 0 and "is not running" in r.stderr


@needs_runc
def test_run_d_t_with_runc_is_a_clear_error(it, store):
    r = it("run", "-d", "-t", "--runtime", "runc", "busybox", "sh")
    assert r.returncode == 125 and r.stderr.startswith("imagetool: error: ") and "runc" in r.stderr, r.stderr
    assert not list((store / "containers").glob("*/state.json"))


# ---------------------------------------------------------------- -d with -i and -t


def test_run_dit_gives_the_container_a_pty_the_monitor_holds(dt, it):
    cid = dt.run("-it", "busybox", "sh")   # `run -d` is added by Detached.run: run -dit
    _eventually(lambda: "BusyBox" in it("logs", cid).stdout, "the shell's banner is logged")   # a prompt has no newline yet
    r = it("exec", cid, "sh", "-c", "readlink /proc/1/fd/0; readlink /proc/1/fd/1; echo from-exec > /proc/1/fd/1")
    ttys = r.stdout.split()
    assert len(ttys) == 2 and ttys[0] == ttys[1] and ttys[0].startswith("/dev/pts/"), r.stdout
    _eventually(lambda: "from-exec" in it("logs", cid).stdout, "what goes to the pty is logged")
    assert dt.state(cid)["status"] == "running"   # stdin is held open: the shell did not see EOF
    assert it("kill", "-s", "KILL", cid).returncode == 0
    assert it("wait", cid).stdout.strip() == "137"


def test_run_dt_logs_the_ptys_output(dt, it):
    cid = dt.run("-t", "busybox", "sh", "-c", "tty; echo done")
    assert it("wait", cid).stdout.strip() == "0"
    out = it("logs", cid).stdout.replace("\r\n", "\n").split("\n")
    assert out[0].startswith("/dev/pts/") and out[1] == "done", out


def test_run_di_keeps_stdin_open(dt, it):
    cid = dt.run("-i", "busybox", "sh", "-c", "cat; echo eof")
    assert it("exec", cid, "true").returncode == 0
    assert dt.state(cid)["status"] == "running"   # cat waits on a stdin nobody closed
    assert "eof" not in it("logs", cid).stdout


def test_exec_dit_and_di_leave_a_shell_running(dt, it):
    cid = dt.run("busybox", "sleep", "1000")
    assert it("exec", "-dit", cid, "sh").returncode == 0
    assert it("exec", "-di", cid, "cat").returncode == 0

    def running():
        rows = it("exec", cid, "ps", "-o", "comm,tty").stdout.split("\n")[1:]
        return [r.split() for r in rows if r.split()[:1] in (["sh"], ["cat"])]

    found = _eventually(lambda: (lambda r: r if len(r) == 2 else None)(running()), "both stay up")
    ttys = dict((r[0], r[1] if len(r) > 1 else "") for r in found)
    assert ttys["sh"].startswith("136,") and ttys["cat"] == "?", found   # busybox: a pty's major,minor
    json.loads(it("inspect", cid).stdout)   # still a running container inspect shows
