"""`run -d` for real: the container outlives the CLI under its own monitor; logs, stop, kill, wait,
ps and inspect act on it from other processes; a killed monitor takes its container with it.

Every test removes its containers and checks that their monitors are gone by PID; the autouse
host_unchanged fixture checks mounts and cgroups, and that nothing is left marked running.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.runfixtures import host_unchanged, it, store_fixture  # noqa: F401  (pytest fixtures)
from tests.runhelpers import kernel_skip_reason

_reason = kernel_skip_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

store = store_fixture("imagetool-detached")


def _gone(pid: int) -> bool:
    """No such process, or a zombie (already dead, waiting for its reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _eventually(check, what: str, limit: float = 30.0):
    """Poll `check()` until it is truthy (a generous limit only so a bug fails instead of hanging)."""
    deadline = time.monotonic() + limit
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


class Detached:
    """Starts detached containers and, at the end, removes them and checks their monitors are gone."""

    def __init__(self, it, store: Path):
        self.it, self.store = it, store
        self.ids: list[str] = []
        self.monitors: set[int] = set()

    def run(self, *args) -> str:
        r = self.it("run", "-d", *args)
        assert r.returncode == 0, r.stderr
        cid = r.stdout.strip()
        assert re.fullmatch(r"[0-9a-f]{64}", cid), r.stdout
        self.ids.append(cid)
        st = self.state(cid)
        if st is not None:
            self.monitors.add(st["owner_pid"])
        return cid

    def state(self, cid: str) -> dict | None:
        try:
            return json.loads((self.store / "containers" / cid / "state.json").read_text())
        except FileNotFoundError:
            return None

    def cleanup(self) -> None:
        for cid in self.ids:
            self.it("rm", "-f", cid)
        for pid in self.monitors:
            _eventually(lambda: _gone(pid), f"monitor {pid} exits")
        assert [c for c in self.ids if (self.store / "containers" / c).exists()] == []


@pytest.fixture
def dt(it, store):
    d = Detached(it, store)
    yield d
    d.cleanup()


def test_run_d_returns_at_once_and_the_container_outlives_the_cli_and_sighup(dt, it):
    cid = dt.run("--name", "bg", "busybox", "sleep", "1000")
    st = dt.state(cid)
    assert st["status"] == "running" and st["detached"]
    monitor = st["owner_pid"]
    assert monitor != os.getpid() and not _gone(monitor)
    with open(f"/proc/{monitor}/stat") as f:   # nobody's child but a reaper's: not ours, not the CLI's
        assert int(f.read().rsplit(")", 1)[1].split()[1]) != os.getpid()
    os.kill(monitor, signal.SIGHUP)            # the terminal closing
    rows = json.loads(it("ps", "--format", "json").stdout)
    assert [r["name"] for r in rows] == ["bg"]
    assert not _gone(st["pid"]) and not _gone(monitor)
    assert re.search(r"\bUp (Less than a second|\d+ seconds?)", it("ps").stdout)


def test_the_monitor_keeps_no_fd_the_cli_was_given(dt, tmp_path):
    r, w = os.pipe()   # a caller waiting for EOF on a pipe it handed to `run -d` gets it
    try:
        proc = dt.it.popen("run", "-d", "busybox", "sleep", "1000", pass_fds=(w,))
        os.close(w)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        dt.ids.append(out.strip())
        dt.monitors.add(dt.state(out.strip())["owner_pid"])
        import select

        assert select.select([r], [], [], 30)[0], "a process still holds the pipe's write end"
        assert os.read(r, 1) == b""   # EOF: no process holds the write end any more
    finally:
        os.close(r)


def test_sigkill_of_the_monitor_kills_its_container_and_ps_reports_why(dt, it):
    cid = dt.run("busybox", "sleep", "1000")
    st = dt.state(cid)
    os.kill(st["owner_pid"], signal.SIGKILL)
    _eventually(lambda: _gone(st["pid"]), "the container dies with its monitor (PR_SET_PDEATHSIG)")
    rows = json.loads(it("ps", "-a", "--format", "json").stdout)
    assert [(r["id"], r["exit_code"]) for r in rows] == [(cid, 137)]
    assert "monitor was killed" in dt.state(cid)["error"]
    assert it("rm", cid).returncode == 0


def test_logs_keep_stdout_and_stderr_apart_in_docker_json_file(dt, it, store):
    cid = dt.run("busybox", "sh", "-c", "echo one; echo two >&2; echo three; printf tail")
    assert it("wait", cid).stdout == "0\n"
    lines = (store / "containers" / cid / "container.log").read_text().splitlines()
    docs = [json.loads(line) for line in lines]
    assert [(d["stream"], d["log"]) for d in docs if d["stream"] == "stdout"] == [
        ("stdout", "one\n"), ("stdout", "three\n"), ("stdout", "tail")]
    assert [d["log"] for d in docs if d["stream"] == "stderr"] == ["two\n"]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", d["time"]) for d in docs)
    r = it("logs", cid)
    assert (r.stdout, r.stderr) == ("one\nthree\ntail", "two\n")
    assert it("logs", "--tail", "1", cid).stdout == "tail"
    stamped = it("logs", "-t", cid).stdout.splitlines()[0]
    assert re.fullmatch(r"\S+Z one", stamped)


def test_a_chatty_container_with_rotation_keeps_about_max_size_times_max_file(dt, it, store):
    cid = dt.run("--log-opt", "max-size=1m", "--log-opt", "max-file=3", "busybox", "sh", "-c",
                 "yes 0123456789012345678901234567890123456789012345678 | head -c 20000000; echo; echo last")
    assert it("wait", cid, timeout=300).stdout == "0\n"
    logs = sorted(p.name for p in (store / "containers" / cid).glob("container.log*"))
    assert logs == ["container.log", "container.log.1", "container.log.2"]
    assert sum((store / "containers" / cid / name).stat().st_size for name in logs) <= 3 * (1 << 20)
    assert it("logs", "--tail", "1", cid).stdout == "last\n"
    (doc,) = json.loads(it("inspect", cid).stdout)
    assert doc["HostConfig"]["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "3"}}


def test_logs_follow_a_counter_until_the_container_exits(dt, it):
    cid = dt.run("busybox", "sh", "-c", "for i in 1 2 3 4 5; do echo $i; sleep 0.2; done")
    r = it("logs", "-f", cid, timeout=60)
    assert r.returncode == 0 and r.stdout.split() == ["1", "2", "3", "4", "5"]
    assert dt.state(cid)["status"] == "exited"


EXITS = [
    # (command, how it is ended, exit code through wait and inspect)
    (["sh", "-c", "exit 0"], None, 0),
    (["sh", "-c", "exit 42"], None, 42),
    (["sh", "-c", "trap 'exit 143' TERM; while :; do sleep 0.1; done"], ["stop", "-t", "30"], 143),
    (["sleep", "1000"], ["stop", "-t", "1"], 137),      # PID 1 without a handler ignores SIGTERM
    (["sh", "-c", "trap 'exit 7' USR1; while :; do sleep 0.1; done"], ["kill", "-s", "USR1"], 7),
    (["sleep", "1000"], ["kill"], 137),
]


@pytest.mark.parametrize("command, end, code", EXITS, ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_exit_codes_reach_wait_and_inspect(dt, it, command, end, code):
    cid = dt.run("busybox", *command)
    if end is not None:
        _eventually(lambda: it("logs", cid).returncode == 0 and dt.state(cid)["status"] == "running", "running")
        time.sleep(0.3)   # let sh install its trap (not an assertion on time)
        r = it(*end, cid)
        assert r.returncode == 0 and r.stdout.strip() == cid, r.stderr
    assert it("wait", cid).stdout == f"{code}\n"
    (doc,) = json.loads(it("inspect", cid).stdout)
    assert doc["State"]["ExitCode"] == code and doc["State"]["Status"] == "exited"
    assert doc["State"]["Running"] is False and doc["State"]["FinishedAt"] >= doc["State"]["StartedAt"]
    assert re.search(rf"Exited \({code}\) ", it("ps", "-a").stdout)


def test_stop_sends_the_stop_signal_first(dt, it):
    cid = dt.run("--stop-signal", "USR2", "busybox", "sh", "-c", "trap 'exit 3' USR2; while :; do sleep 0.1; done")
    time.sleep(0.3)   # let sh install its trap
    assert it("stop", "-t", "30", cid).returncode == 0
    assert dt.state(cid)["exit_code"] == 3


def test_two_stops_at_once_both_succeed(dt, it):
    cid = dt.run("busybox", "sleep", "1000")
    a, b = it.popen("stop", "-t", "1", cid), it.popen("stop", "-t", "1", cid)
    assert (a.wait(60), b.wait(60)) == (0, 0)
    assert dt.state(cid)["exit_code"] == 137


def test_inspect_has_dockers_shape(dt, it, tmp_path):
    cid = dt.run("--name", "shape", "-m", "64m", "--pids-limit", "50", "-v", f"{tmp_path}:/data:ro",
                 "busybox", "sleep", "1000")
    (doc,) = json.loads(it("inspect", "shape").stdout)
    st = dt.state(cid)
    assert doc["Id"] == cid and doc["Name"] == "/shape" and doc["Image"].startswith("sha256:")
    assert doc["State"]["Status"] == "running" and doc["State"]["Running"] is True
    assert doc["State"]["Pid"] == st["pid"] and doc["RestartCount"] == 0
    assert (doc["Path"], doc["Args"]) == ("sleep", ["1000"])
    assert doc["HostConfig"]["Memory"] == 64 << 20 and doc["HostConfig"]["PidsLimit"] == 50
    assert doc["Mounts"] == [{"Type": "bind", "Source": str(tmp_path), "Destination": "/data", "Mode": "ro",
                              "RW": False, "Propagation": "rprivate"}]


def test_rm_d_removes_the_container_when_it_ends(dt, it, store):
    cid = dt.run("--rm", "busybox", "true")
    _eventually(lambda: not (store / "containers" / cid).exists(), "the --rm container is removed")


def test_rm_f_and_prune_with_running_containers_and_names_reused(dt, it):
    keep = dt.run("--name", "keep", "busybox", "sleep", "1000")
    dt.run("--name", "done", "busybox", "true")
    assert it("wait", "done").stdout == "0\n"
    assert it("prune").returncode == 0
    assert dt.state(keep)["status"] == "running"             # prune leaves running ones alone
    r = it("run", "-d", "--name", "keep", "busybox", "true")
    assert r.returncode == 125 and "already in use" in r.stderr
    assert it("rm", "-f", "keep").returncode == 0
    dt.run("--name", "keep", "busybox", "true")               # the name is free again


ERRORS = [
    (["run", "-d", "-t", "--runtime", "runc", "busybox", "sh"], 125, "-t"),
    (["stop", "nosuch"], 1, "no such container"),
    (["kill", "-s", "NOSUCH", "nosuch"], 1, "invalid signal"),
    (["logs", "nosuch"], 1, "no such container"),
    (["wait", "nosuch"], 1, "no such container"),
]


@pytest.mark.parametrize("argv, code, text", ERRORS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_bad_requests_are_one_clear_line_and_leave_nothing(it, store, argv, code, text):
    before = set(os.listdir(store / "containers")) if (store / "containers").exists() else set()
    r = it(*argv)
    assert r.returncode == code and text in r.stderr
    assert r.stderr.startswith("imagetool: error: ") and r.stdout == ""
    after = set(os.listdir(store / "containers")) if (store / "containers").exists() else set()
    assert {e for e in after - before if not e.startswith(".")} == set()


def test_run_d_of_a_missing_command_fails_as_docker_and_leaves_no_monitor(it, store):
    r = it("run", "-d", "--name", "nocmd", "busybox", "/nonexistent")
    assert r.returncode == 127 and r.stdout == ""
    assert r.stderr.startswith("imagetool: error: ") and "/nonexistent" in r.stderr
    rows = json.loads(it("ps", "-a", "--format", "json").stdout)   # docker keeps the record too
    (row,) = [r for r in rows if r["name"] == "nocmd"]
    state = json.loads((store / "containers" / row["id"] / "state.json").read_text())
    assert row["exit_code"] == 127 and _gone(state["owner_pid"])
    assert it("rm", "nocmd").returncode == 0


def test_kill_of_an_exited_container_is_an_error(dt, it):
    cid = dt.run("busybox", "true")
    it("wait", cid)
    r = it("kill", cid)
    assert r.returncode == 1 and "is not running" in r.stderr


# ---------------------------------------------------------------- start, restart, --restart


def test_restart_on_failure_2_runs_exactly_three_times(dt, it):
    cid = dt.run("--restart", "on-failure:2", "busybox", "sh", "-c", "echo run; exit 3")
    monitor = dt.state(cid)["owner_pid"]
    _eventually(lambda: _gone(monitor), "the monitor ends once the policy gives up")
    assert it("logs", cid).stdout == "run\n" * 3


def test_logs_follow_goes_on_across_restarts(dt, it):
    cid = dt.run("--restart", "on-failure:2", "busybox", "sh", "-c", "echo run; sleep 0.2; exit 3")
    assert it("logs", "-f", cid, timeout=120).stdout == "run\n" * 3
    (doc,) = json.loads(it("inspect", cid).stdout)
    assert doc["RestartCount"] == 2 and doc["State"]["ExitCode"] == 3
    assert doc["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}


def test_restart_always_ends_with_stop(dt, it):
    cid = dt.run("--restart", "always", "busybox", "sh", "-c", "echo run; sleep 0.1; exit 1")
    _eventually(lambda: it("logs", cid).stdout.count("run") >= 2, "restarted at least once")
    monitor = dt.state(cid)["owner_pid"]
    assert it("stop", "-t", "1", cid).returncode == 0
    _eventually(lambda: _gone(monitor), "no restart after stop: the monitor ends")
    assert dt.state(cid)["status"] == "exited"


def test_a_container_waiting_for_its_restart_is_kept_by_rm_and_prune_until_rm_f(dt, it):
    cid = dt.run("--restart", "always", "busybox", "sh", "-c", "echo run; exit 1")
    _eventually(lambda: it("logs", cid).stdout.count("run") >= 3, "restarted twice")
    r = it("rm", cid)
    assert r.returncode == 1 and ("restarting" in r.stderr or "running" in r.stderr)
    assert it("prune").returncode == 0 and dt.state(cid) is not None
    monitor = dt.state(cid)["owner_pid"]
    assert it("rm", "-f", cid).returncode == 0 and dt.state(cid) is None
    assert _gone(monitor)


def test_start_runs_an_exited_container_again_on_its_own_files(dt, it):
    cid = dt.run("busybox", "sh", "-c", "echo x >> /kept; wc -l < /kept")
    assert it("wait", cid).stdout == "0\n"
    r = it("start", "-a", cid)
    assert (r.returncode, r.stdout) == (0, "2\n")   # the file written by the first run is still there
    assert it("logs", cid).stdout == "1\n2\n"         # the log goes on


def test_start_of_a_running_container_is_a_clear_error_and_restart_runs_it_anew(dt, it):
    cid = dt.run("busybox", "sleep", "1000")
    first = dt.state(cid)["pid"]
    r = it("start", cid)
    assert r.returncode == 1 and "already running" in r.stderr
    assert it("restart", "-t", "1", cid).returncode == 0
    st = dt.state(cid)
    assert st["status"] == "running" and st["pid"] != first and _gone(first)
    dt.monitors.add(st["owner_pid"])


@pytest.mark.parametrize("argv, text", [(["--restart", "always", "--rm"], "conflicting options"),
                                        (["--restart", "sometimes"], "invalid restart policy"),
                                        (["--restart", "always:3"], "invalid restart policy")])
def test_bad_restart_policies_are_refused(it, argv, text):
    r = it("run", "-d", *argv, "busybox", "true")
    assert r.returncode == 125 and text in r.stderr and r.stdout == ""


# ---------------------------------------------------------------- exec


@pytest.fixture
def running(dt):
    cid = dt.run("--name", "target", "busybox", "sleep", "1000")
    return cid


def test_exec_sees_the_containers_pid_1_and_joins_every_namespace(it, running):
    lines = it("exec", "target", "ps", "-o", "pid,comm").stdout.split()
    assert lines[2:4] == ["1", "sleep"]
    script = ("for ns in mnt uts ipc net pid cgroup; do "
              "[ \"$(readlink /proc/1/ns/$ns)\" = \"$(readlink /proc/self/ns/$ns)\" ] || echo differs $ns; done; "
              "hostname; cmp /proc/1/cgroup /proc/self/cgroup && echo same-cgroup")
    r = it("exec", "target", "sh", "-c", script)
    assert r.stdout == f"{running[:12]}\nsame-cgroup\n", r.stderr


def test_exec_is_confined_as_the_containers_pid_1(it, running):
    fields = "CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp:"
    r = it("exec", "target", "sh", "-c",
           f"grep -E '{fields}' /proc/1/status; echo --; grep -E '{fields}' /proc/self/status")
    pid1, own = r.stdout.split("--\n")
    assert pid1 == own and "Seccomp:\t2" in own, r.stdout


def test_exec_carries_no_host_fd_and_no_host_cwd(it, running, tmp_path):
    secret = tmp_path / "host-secret"
    secret.write_text("host\n")
    with open(secret) as f:
        r = it("exec", "target", "sh", "-c", "ls /proc/self/fd; readlink /proc/self/cwd; readlink /proc/$$/cwd",
               pass_fds=(f.fileno(),), cwd=tmp_path)
    assert r.stdout.split() == ["0", "1", "2", "3", "/", "/"], r.stdout   # 3: ls's own directory
    r = it("exec", "target", "sh", "-c", "ls -l /proc/$$/fd")
    assert "host-secret" not in r.stdout and str(tmp_path) not in r.stdout


EXEC_CASES = [
    # (options, command, exit code, stdout)
    ([], ["sh", "-c", "exit 42"], 42, ""),
    ([], ["/nonexistent"], 127, ""),
    ([], ["/etc/passwd"], 126, ""),
    (["-u", "nobody", "-w", "/tmp", "-e", "GREETING=hi"], ["sh", "-c", "id -u; pwd; echo $GREETING"], 0,
     "65534\n/tmp\nhi\n"),
]


@pytest.mark.parametrize("opts, command, code, out", EXEC_CASES,
                         ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_exec_exit_codes_and_options(it, running, opts, command, code, out):
    r = it("exec", *opts, "target", *command)
    assert (r.returncode, r.stdout) == (code, out), r.stderr
    if code in (126, 127):
        assert r.stderr.startswith("imagetool: error: ")


def test_exec_i_passes_stdin(it, running):
    assert it("exec", "-i", "target", "sh", "-c", "tr a-z A-Z", input="hello\n").stdout == "HELLO\n"


def test_exec_into_a_stopped_container_is_refused(dt, it):
    cid = dt.run("busybox", "true")
    it("wait", cid)
    r = it("exec", cid, "true")
    assert r.returncode == 1 and "is not running" in r.stderr


# ---------------------------------------------------------------- the cgroup-v2-only VM

V2_GUEST = r"""
set -u
export PYTHONPATH=/host/site:/host/src IMAGETOOL_FIXTURE_CACHE=/var/tmp/fx
cd /host/src
python3 -c "from tests.runhelpers import add_image; from fixtures.images import busybox_image; add_image('/var/tmp/st', busybox_image(), 'docker.io/library/busybox:latest')" || exit 90
it() { python3 -m imagetool --store /var/tmp/st "$@"; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin)[0]; print(eval(sys.argv[1]))" "$1"; }
echo "LAYOUT $(python3 -c 'from imagetool.runtime import cgroups; print(cgroups.detect())')"
id=$(it run -d --name web busybox sh -c 'trap "exit 143" TERM; i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.2; done')
echo "RESULT idlen ${#id}"
echo "RESULT running $(it inspect web | field 'd["State"]["Running"]')"
echo "RESULT exec_pid1 $(it exec web cat /proc/1/comm)"
echo "RESULT exec_cgroup $(it exec web sh -c 'cmp -s /proc/1/cgroup /proc/self/cgroup && echo same')"
for i in $(seq 300); do [ "$(it logs web | grep -c tick)" -ge 2 ] && break; sleep 0.1; done
it stop -t 30 web >/dev/null; echo "RESULT wait $(it wait web)"
echo "RESULT logs_ok $([ "$(it logs web | grep -c tick)" -ge 2 ] && echo yes)"
it run -d --name r --restart on-failure:2 busybox sh -c 'echo run; exit 3' >/dev/null
for i in $(seq 600); do [ "$(it logs r | grep -c run)" = 3 ] && [ "$(it inspect r | field 'd["State"]["Status"]')" = exited ] && break; sleep 0.1; done
echo "RESULT restarts $(it inspect r | field 'd["RestartCount"]')"
it run -d --name h --health-cmd 'exit 1' --health-interval 100ms --health-retries 2 busybox sleep 1000 >/dev/null
for i in $(seq 600); do [ "$(it inspect h | field 'd["State"]["Health"]["Status"]')" = unhealthy ] && break; sleep 0.1; done
echo "RESULT health $(it inspect h | field 'd["State"]["Health"]["Status"]')"
it rm -f web r h >/dev/null
echo "RESULT monitors $(pgrep -fc 'imagetool --store /var/tmp/st run -d')"
echo "RESULT leftover_cgroups $(find /sys/fs/cgroup/imagetool -mindepth 1 -maxdepth 1 -type d 2>/dev/null | wc -l)"
echo "RESULT leftover_mounts $(grep -c -e overlay -e /var/tmp/st /proc/self/mountinfo)"
"""


def test_v2_vm_detached_exec_stop_restart(tmp_path):
    """One boot of the cgroup-v2-only VM: run -d, exec joins PID 1's cgroup, stop → 143 through
    wait, logs, --restart on-failure:2 → RestartCount 2, a failing healthcheck → unhealthy, rm -f
    leaves no monitor, cgroup or mount."""
    from tests import v2vm

    out = v2vm.boot(tmp_path, V2_GUEST, started_marker="RESULT")
    results = v2vm.results(out)
    assert "LAYOUT v2" in out
    assert results == {"idlen": "64", "running": "True", "exec_pid1": "sh", "exec_cgroup": "same", "wait": "143",
                       "logs_ok": "yes", "restarts": "2", "health": "unhealthy", "monitors": "0", "leftover_cgroups": "0",
                       "leftover_mounts": "0"}, out


# ---------------------------------------------------------------- --init

needs_tini = pytest.mark.skipif(not os.path.isfile("/usr/bin/tini-static"), reason="needs tini-static (apt tini)")


def _stats(it, cid) -> list[tuple[str, str]]:
    """(state, command) of every process in the container but the `ps` itself."""
    rows = [line.split() for line in it("exec", cid, "ps", "-o", "stat,comm").stdout.splitlines()[1:]]
    return [(r[0], r[1]) for r in rows if r[1] != "ps"]


@needs_tini
def test_init_reaps_the_zombie_a_bare_pid_1_leaves(dt, it):
    orphan = ["sh", "-c", "(sleep 0.1 &); exec sleep 1000"]   # the orphan is reparented to PID 1
    bare = dt.run("busybox", *orphan)
    init = dt.run("--init", "busybox", *orphan)
    _eventually(lambda: ("Z", "sleep") in _stats(it, bare), "a bare `sleep` as PID 1 leaves a zombie")
    _eventually(lambda: [c for _, c in _stats(it, init)] == ["docker-init", "sleep"], "tini reaps the orphan")
    assert all(s != "Z" for s, _ in _stats(it, init))


@needs_tini
def test_init_forwards_stop_so_the_command_exits_143(dt, it):
    cid = dt.run("--init", "busybox", "sleep", "1000")   # sleep itself, not PID 1, gets the SIGTERM
    assert it("stop", "-t", "30", cid).returncode == 0
    assert it("wait", cid).stdout == "143\n"


# ---------------------------------------------------------------- --stop-timeout, logs --since, exec -d/-t

_TRAPS_TERM = ["sh", "-c", "trap 'echo got-term; exit 0' TERM; while :; do sleep 0.1; done"]


@pytest.mark.parametrize("opts, code", [([], 0), (["--stop-timeout", "0"], 137)], ids=["default", "zero"])
def test_stop_timeout_of_run_is_what_stop_waits_before_sigkill(dt, it, opts, code):
    cid = dt.run(*opts, "busybox", *_TRAPS_TERM)
    assert it("stop", cid).returncode == 0
    assert it("wait", cid).stdout.strip() == str(code)
    config = json.loads(it("inspect", cid).stdout)
    config = (config[0] if isinstance(config, list) else config)["Config"]
    assert config.get("StopTimeout") == (0 if opts else None)


def test_logs_since_shows_only_what_was_written_from_then_on(dt, it, store):
    cid = dt.run("busybox", "sh", "-c", "echo early; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo late; "
                 "sleep 1000")
    _eventually(lambda: it("logs", cid).stdout == "early\n", "the first line is logged")
    assert it("exec", cid, "touch", "/tmp/go").returncode == 0
    _eventually(lambda: it("logs", cid).stdout == "early\nlate\n", "the second line is logged")
    times = [json.loads(line)["time"] for line in (store / "containers" / cid / "container.log").read_text().splitlines()]
    assert it("logs", "--since", times[1], cid).stdout == "late\n"
    assert it("logs", "--since", times[0], cid).stdout == "early\nlate\n"
    assert it("logs", "--since", "1h", cid).stdout == "early\nlate\n"
    assert it("logs", "--since", "2999-01-01T00:00:00Z", cid).stdout == ""
    r = it("logs", "--since", "yesterday", cid)
    assert r.returncode != 0 and r.stderr.startswith("imagetool: error: invalid --since 'yesterday'"), r.stderr


def _processes_naming(text: str) -> list[int]:
    """PIDs whose command line holds `text` (an imagetool CLI or a process it spawned)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if text.encode() in f.read() and not _gone(int(name)):
                        out.append(int(name))
            except OSError:
                pass
    return out


def test_exec_d_returns_once_started_and_the_command_runs_on_in_the_container(dt, it):
    cid = dt.run("busybox", "sleep", "1000")
    r = it("exec", "-d", cid, "sh", "-c", "while [ ! -e /tmp/go ]; do sleep 0.05; done; touch /tmp/done")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert it("exec", cid, "test", "-e", "/tmp/done").returncode == 1   # still waiting: it was not waited for
    it("exec", cid, "touch", "/tmp/go")
    _eventually(lambda: it("exec", cid, "test", "-e", "/tmp/done").returncode == 0, "the detached command ends")
    assert it("exec", "-d", cid, "sleep", "1001").returncode == 0
    assert _processes_naming(f"{cid}\0sleep\x001001")   # its holder process, outliving the CLI
    it("rm", "-f", cid)
    _eventually(lambda: not _processes_naming(f"{cid}\0sleep\x001001"), "rm -f ends the exec -d holder")


@pytest.mark.parametrize("argv, code, text", [
    (["exec", "-d", "CID", "/nonexistent"], 127, "no such file or directory"),
    (["exec", "-d", "-t", "CID", "/etc/passwd"], 126, "permission denied"),
])
def test_exec_d_failures_are_one_clear_line(dt, it, argv, code, text):
    cid = dt.run("busybox", "sleep", "1000")
    r = it(*[cid if a == "CID" else a for a in argv])
    assert r.returncode == code and r.stderr.startswith("imagetool: error: ") and text in r.stderr, r.stderr


def test_exec_t_gives_a_pty_of_the_containers_own_devpts(it, running):
    r = it("exec", "-t", "target", "sh", "-c", "tty; [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo all-ttys; "
           "ls /dev/pts; exit 3")
    lines = r.stdout.replace("\r\n", "\n").split("\n")
    assert r.returncode == 3, r.stderr
    assert re.fullmatch(r"/dev/pts/\d+", lines[0]) and lines[1] == "all-ttys", r.stdout
    assert lines[0].rsplit("/", 1)[1] in lines[2].split()   # its own devpts lists it
