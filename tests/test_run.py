"""`imagetool run` for real: namespaces, overlay, pivot_root, cgroups, capabilities, exit codes.

Every test leaves the host as it found it: an autouse fixture compares the host's mount table
(entries under the test store) and the imagetool cgroup groups before and after.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.runhelpers import HostSnapshot, Imagetool, add_image, kernel_skip_reason

_reason = kernel_skip_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

CFG_ENV = ["PATH=/usr/local/bin:/usr/bin:/bin", "FROM_IMAGE=yes", "OVERRIDE=image"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from fixtures.images import Layer, build_image, busybox_image
    from fixtures.tarbuild import directory, file

    root = tmp_path_factory.mktemp("imagetool-run") / "store"
    bb = busybox_image()
    add_image(root, bb, "docker.io/library/busybox:latest")
    # the same layers with a config carrying Env, WorkingDir, User and an Entrypoint
    layers = [Layer(bb_layer_tar, compression="gzip") for bb_layer_tar in _layer_tars(bb)]
    layers.append(Layer([directory("srv", mode=0o755), directory("srv/app", mode=0o777),
                         file("srv/app/hello.txt", b"hi from the image\n")]))
    cfg = build_image(layers, config={"Env": CFG_ENV, "WorkingDir": "/srv/app", "User": "nobody",
                                      "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["id -u; pwd; echo $FROM_IMAGE"]})
    add_image(root, cfg, "docker.io/library/cfgimage:latest")
    return root


def _layer_tars(built):
    """The uncompressed tars of a built image's layers (to rebuild them into another image)."""
    import gzip

    manifest = json.loads(built.manifest)
    return [gzip.decompress(built.blobs[layer["digest"]]) for layer in manifest["layers"]]


@pytest.fixture
def it(store):
    return Imagetool(store)


@pytest.fixture(autouse=True)
def host_unchanged(store):
    """The host's mount table and imagetool cgroups are the same after the test as before, and no
    container of the store is still marked created or running (every imagetool has exited)."""
    before = HostSnapshot(store)
    yield
    before.assert_unchanged()


def run_ok(it, *args, **kw) -> str:
    r = it("run", "--rm", *args, **kw)
    assert r.returncode == 0, r.stderr
    return r.stdout


# ---------------------------------------------------------------- the seed example


def _need_controller(name: str):
    from imagetool.runtime import cgroups

    layout = cgroups.detect()
    v1, v2 = cgroups.mountinfo_cgroups()
    if layout in ("v1", "hybrid") and name not in v1:
        pytest.skip(f"the cgroup v1 {name} controller is not mounted")
    if layout == "v2" and name not in Path(v2, "cgroup.controllers").read_text().split():
        pytest.skip(f"the cgroup v2 {name} controller is not available")


def test_seed_memory_limit_kills_7_5MB_and_allows_2MB(it):
    _need_controller("memory")
    r = it("run", "--rm", "-m", "7m", "busybox", "sh", "-c", "data=$(head -c 7500000 /dev/urandom)")
    assert r.returncode == 137, r.stderr
    assert "imagetool: container was killed: out of memory" in r.stderr
    r = it("run", "--rm", "-m", "7m", "busybox", "sh", "-c", "data=$(head -c 2000000 /dev/urandom)")
    assert r.returncode == 0, r.stderr
    assert "out of memory" not in r.stderr


# ---------------------------------------------------------------- isolation


def test_command_is_pid_1_and_sees_only_its_processes(it):
    assert run_ok(it, "busybox", "sh", "-c", "echo $$").strip() == "1"
    lines = run_ok(it, "busybox", "ps", "-A").strip().splitlines()
    assert lines[1:] == ["    1 root     ps -A"], lines


def test_hostname_is_private_and_settable(it):
    import socket

    default = run_ok(it, "busybox", "hostname").strip()
    assert default != socket.gethostname() and len(default) == 12
    assert run_ok(it, "-h", "box.example", "busybox", "hostname").strip() == "box.example"
    assert socket.gethostname() != "box.example"


def test_host_files_and_mounts_are_unreachable(it, tmp_path):
    marker = tmp_path / "imagetool-host-marker"
    marker.write_text("secret")
    out = run_ok(it, "busybox", "sh", "-c",
                 f"test -e {marker} && echo VISIBLE; cut -d' ' -f5 /proc/1/mountinfo; echo END; ls /; true")
    assert "VISIBLE" not in out
    points, _, listing = out.partition("END\n")
    own = ("/proc", "/dev", "/sys",   # only the container's own mounts: no host mount point leaks in
           "/etc/hosts", "/etc/resolv.conf", "/etc/hostname")   # the default bridge's files (docker's too)
    assert [p for p in points.split() if p != "/" and not p.startswith(own)] == []
    assert "srv" not in listing.split()


def test_network_private_loopback_up_none_down(it):
    assert run_ok(it, "--network", "private", "busybox", "cat", "/sys/class/net/lo/operstate").strip() in ("unknown", "up")
    assert run_ok(it, "--network", "private", "busybox", "ls", "/sys/class/net").split() == ["lo"]
    assert run_ok(it, "--network", "none", "busybox", "cat", "/sys/class/net/lo/operstate").strip() == "down"


def test_capabilities_are_dockers_default_and_no_new_privs(it):
    out = run_ok(it, "busybox", "cat", "/proc/self/status")
    fields = dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)
    assert fields["CapEff"].strip() == "00000000a80425fb"
    assert fields["CapPrm"].strip() == "00000000a80425fb"
    assert fields["CapBnd"].strip() == "00000000a80425fb"
    assert fields["CapInh"].strip() == "0000000000000000"
    assert fields["CapAmb"].strip() == "0000000000000000"
    assert fields["NoNewPrivs"].strip() == "1"


def test_only_fds_0_1_2_reach_the_command(it):
    extra = [os.open("/dev/null", os.O_RDONLY) for _ in range(3)]
    try:
        for fd in extra:
            os.set_inheritable(fd, True)
        r = it("run", "--rm", "busybox", "sh", "-c", "ls /proc/$$/fd; true", pass_fds=extra)
        assert r.returncode == 0, r.stderr
        assert sorted(r.stdout.split()) == ["0", "1", "2"]
    finally:
        for fd in extra:
            os.close(fd)


def test_proc_is_masked_and_read_only(it):
    masked = [p for p in ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug")
              if os.path.exists(p)]
    script = "; ".join(f"echo {p}=$(head -c 100 {p} 2>/dev/null | wc -c)" for p in masked)
    out = run_ok(it, "busybox", "sh", "-c", script + "; echo 1 > /proc/sys/vm/overcommit_memory && echo WROTE; "
                 "echo 1 > /proc/sysrq-trigger && echo WROTE2; grep -c ' /proc/sys ro,' /proc/self/mountinfo; true")
    for p in masked:
        assert f"{p}=0" in out
    assert "WROTE" not in out
    assert int(out.strip().splitlines()[-1]) >= 1


def test_sys_is_read_only_and_dev_is_minimal(it):
    out = run_ok(it, "busybox", "sh", "-c", "ls /dev; touch /sys/x 2>&1; echo hi > /dev/null && echo devnull-ok")
    names = set(out.split())
    assert {"null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "mqueue"} <= names
    assert "sda" not in names and "kmsg" not in names
    assert "Read-only file system" in out
    assert "devnull-ok" in out


def test_device_cgroup_denies_nodes_outside_dockers_list(it):
    """CAP_MKNOD is in the default set: mknod works, but opening a host device that docker does not
    allow (loop-control, 10:237) is refused by the device cgroup, as under runc."""
    from imagetool.runtime import cgroups

    if cgroups.detect() == "v2":
        pytest.skip("imagetool has no device controller on cgroup v2 (it needs an eBPF program)")
    _need_controller("devices")
    try:
        os.close(os.open("/dev/loop-control", os.O_RDWR))
    except OSError as e:
        pytest.skip(f"the host itself cannot open /dev/loop-control: {e}")
    out = run_ok(it, "busybox", "sh", "-c", "mknod /lc c 10 237 && echo MADE; (exec 3<>/lc) 2>/dev/null && echo OPENED; "
                 "echo x > /dev/null && echo null-ok")
    assert out.split() == ["MADE", "null-ok"]


def test_stdin_reaches_the_container_only_with_i(it):
    assert run_ok(it, "-i", "busybox", "cat", input="piped in\n") == "piped in\n"
    assert run_ok(it, "busybox", "cat", input="piped in\n") == ""  # without -i: /dev/null


def test_writes_do_not_survive_the_container(it):
    run_ok(it, "busybox", "sh", "-c", "echo x > /written-by-run-1")
    assert "ABSENT" in run_ok(it, "busybox", "sh", "-c", "test -e /written-by-run-1 || echo ABSENT")


# ---------------------------------------------------------------- limits


def test_pids_limit_contains_a_fork_loop(it):
    _need_controller("pids")
    r = it("run", "--rm", "--pids-limit", "20", "busybox", "sh", "-c",
           "i=0; while [ $i -lt 60 ]; do sleep 3 & i=$((i+1)); done; echo spawned; wait")
    assert "can't fork" in r.stderr or "Resource temporarily unavailable" in r.stderr, r.stderr
    # the host is fine: it can still start processes
    assert subprocess.run(["true"]).returncode == 0


def test_cpus_quota_throttles_a_busy_loop(it, store):
    _need_controller("cpu")
    p = it.popen("run", "--name", "cpu-quota-probe", "--cpus", "0.5", "busybox", "sh", "-c",
                 "for w in 1 2 3 4; do (while :; do :; done) & done; echo started; sleep 60")
    try:
        assert p.stdout.readline().strip() == "started"
        state = _state_by_name(store, "cpu-quota-probe")
        from imagetool.runtime import cgroups

        group = next(Path(g) for g in state["cgroups"] if (Path(g) / "cpu.stat").exists())
        quota = (group / "cpu.max").read_text().split()[0] if (group / "cpu.max").exists() else \
            (group / "cpu.cfs_quota_us").read_text().strip()
        assert quota == "50000"
        throttled = 0  # four busy workers want more than half a CPU even on a loaded host
        deadline = time.monotonic() + 50
        while p.poll() is None and throttled == 0 and time.monotonic() < deadline:
            throttled = cgroups.read_keyed(group / "cpu.stat").get("nr_throttled", 0)
            time.sleep(0.05)
        assert throttled > 0
    finally:
        it("rm", "-f", "cpu-quota-probe")  # kills the container; imagetool then cleans up and exits
        p.wait(timeout=30)


def _state_by_name(store: Path, name: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for d in (store / "containers").iterdir():
            try:
                st = json.loads((d / "state.json").read_text())
            except (OSError, ValueError):
                continue
            if st.get("name") == name and st.get("status") == "running":
                return st
        time.sleep(0.02)
    raise AssertionError(f"no running container named {name}")


def test_bad_memory_and_volume_are_one_line_errors(it):
    for args in (["-m", "lots"], ["-v", "relative:/x"], ["-v", "/nonexistent-imagetool-src:/x"],
                 ["--memory-swap", "1g"], ["--network", "bridge0"]):
        r = it("run", "--rm", *args, "busybox", "true")
        assert r.returncode == 125, (args, r.stderr)
        assert r.stderr.startswith("imagetool: error: ") and "Traceback" not in r.stderr


# ---------------------------------------------------------------- config and options


def test_env_workdir_user_entrypoint_from_the_image_config(it):
    out = run_ok(it, "cfgimage").splitlines()
    assert out == ["65534", "/srv/app", "yes"]


def test_options_override_the_image_config(it, tmp_path):
    envfile = tmp_path / "env.list"
    envfile.write_text("# comment\nFROM_FILE=1\nOVERRIDE=file\n")
    out = run_ok(it, "--env-file", envfile, "-e", "OVERRIDE=flag", "-e", "NEW=2", "-w", "/made/by/run",
                 "-u", "1234:4321", "cfgimage", "id; pwd; env | sort").splitlines()
    assert out[0].startswith("uid=1234 gid=4321")
    assert out[1] == "/made/by/run"
    env = set(out[2:])
    assert {"OVERRIDE=flag", "NEW=2", "FROM_FILE=1", "FROM_IMAGE=yes", "PATH=/usr/local/bin:/usr/bin:/bin"} <= env
    out = run_ok(it, "--entrypoint", "/bin/echo", "-u", "root", "cfgimage", "plain", "args").strip()
    assert out == "plain args"


def test_volumes_read_write_and_read_only(it, tmp_path):
    src = tmp_path / "vol"
    src.mkdir()
    (src / "in.txt").write_text("from host\n")
    out = run_ok(it, "-v", f"{src}:/data", "busybox", "sh", "-c", "cat /data/in.txt; echo back > /data/out.txt")
    assert out == "from host\n"
    assert (src / "out.txt").read_text() == "back\n"
    r = it("run", "--rm", "-v", f"{src}:/data:ro", "busybox", "sh", "-c", "cat /data/in.txt; echo x > /data/ro.txt")
    assert r.stdout == "from host\n" and r.returncode != 0
    assert "Read-only file system" in r.stderr
    assert not (src / "ro.txt").exists()


def test_read_only_root(it):
    r = it("run", "--rm", "--read-only", "busybox", "sh", "-c", "echo x > /etc/x; echo x > /dev/shm/x && echo shm-ok")
    assert "Read-only file system" in r.stderr
    assert "shm-ok" in r.stdout


# ---------------------------------------------------------------- exit codes and signals


@pytest.mark.parametrize("args, code", [
    (["busybox", "true"], 0),
    (["busybox", "sh", "-c", "exit 42"], 42),
    (["busybox", "/etc/passwd"], 126),
    (["busybox", "no-such-command"], 127),
    (["busybox", "sh", "-c", "sleep 5 & kill -9 $!; wait $!"], 137),
])
def test_exit_codes(it, args, code):
    r = it("run", "--rm", *args)
    assert r.returncode == code, r.stderr
    if code in (126, 127):
        assert r.stderr.startswith("imagetool: error: exec")


def test_sigterm_to_imagetool_reaches_the_container(it):
    p = it.popen("run", "--rm", "busybox", "sh", "-c", "trap 'echo got TERM; exit 143' TERM; echo ready; sleep 60 & wait")
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 143
    assert "got TERM" in out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_sigint_and_sighup_to_imagetool_reach_the_container(it, sig):
    name = sig.name[3:]
    p = it.popen("run", "--rm", "busybox", "sh", "-c", f"trap 'echo got {name}; exit 9' {name}; echo ready; sleep 60 & wait")
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(sig)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 9
    assert f"got {name}" in out


def test_pid_1_killed_by_a_signal_exits_128_plus_the_signal(it, store):
    """PID 1 itself dies of SIGKILL (from the host): 137, and no out-of-memory message."""
    p = it.popen("run", "--rm", "--name", "killed-pid1", "busybox", "sh", "-c", "echo up; sleep 60")
    try:
        assert p.stdout.readline().strip() == "up"
        os.kill(_state_by_name(store, "killed-pid1")["pid"], signal.SIGKILL)
        _, err = p.communicate(timeout=30)
        assert p.returncode == 137, err
        assert "out of memory" not in err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
            it("rm", "-f", "killed-pid1")


SIGNAL_DURING = r"""
import os, signal, sys
from store import Store
from imagetool import containers
from imagetool.runtime.cgroups import v1, v2

store, name, method = sys.argv[1:]
for cls in (v1.V1Cgroup, v2.V2Cgroup):
    def patched(self, _real=getattr(cls, method)):
        if method == "destroy":
            os.kill(os.getpid(), signal.SIGTERM)  # a second Ctrl-C / kill while imagetool cleans up
        _real(self)
        if method == "create":
            os.kill(os.getpid(), signal.SIGTERM)  # a kill right after the groups were made
    setattr(cls, method, patched)
sys.exit(containers.run(Store.open(store), containers.RunOptions(image="busybox", command=["true"], name=name)))
"""


@pytest.mark.parametrize("method", ["create", "destroy"])
def test_a_signal_while_cgroups_are_made_or_removed_leaves_none(it, store, method):
    name = f"signal-during-{method}"
    r = subprocess.run([it.argv()[0], "-c", SIGNAL_DURING, str(store), name, method], env=it.env,
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode in (0, 143), r.stderr
    state = next(s for s in (json.loads(p.read_text()) for p in (store / "containers").glob("*/state.json"))
                 if s.get("name") == name)
    try:
        assert state["cgroups"] and state["status"] == "exited"
        assert [g for g in state["cgroups"] if Path(g).exists()] == []
    finally:
        it("rm", "-f", name)
        from imagetool.runtime import cgroups

        cgroups.destroy_paths(state["cgroups"])


def _in_a_terminal(it, *args, rows_cols=None, at_prompt=None) -> tuple[int, bytes]:
    """Run `imagetool ARGS` on a new pty (window `rows_cols`); type `at_prompt[1]` once
    `at_prompt[0]` appears, as a person would. (exit code, everything the terminal showed)."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    if rows_cols:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *rows_cols, 0, 0))
    p = subprocess.Popen(it.argv(*args), stdin=slave, stdout=slave, stderr=slave, env=it.env,
                         start_new_session=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if at_prompt and at_prompt[0] in out:
            os.write(master, at_prompt[1])
            at_prompt = None
        if select.select([master], [], [], 1)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif p.poll() is not None:
            break
    p.wait(timeout=30)
    os.close(master)
    return p.returncode, out


def test_tty_interactive_shell(it):
    # (Enter is \r in raw mode)
    code, out = _in_a_terminal(it, "run", "--rm", "-it", "busybox", "sh", at_prompt=(b"# ", b"echo h''i; exit 3\r"))
    assert code == 3, out
    assert b"\nhi" in out.replace(b"\r", b"")


def test_tty_without_i_does_not_take_stdin(it):
    """-t alone gives a terminal but attaches no stdin (docker): what is piped in never arrives."""
    r = it("run", "--rm", "-t", "busybox", "sh", "-c", "read -t 2 x; echo got:$x", input="typed\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.replace("\r", "").splitlines() == ["got:"]


def test_tty_is_a_pty_of_the_containers_own_devpts(it):
    """-t: fd 0 is /dev/pts/0 of the container's devpts (runc's console socket), so ttyname() works."""
    r = it("run", "--rm", "-t", "busybox", "sh", "-c", "tty; ls /dev/pts")
    assert r.returncode == 0, r.stderr
    assert r.stdout.replace("\r", "").split() == ["/dev/pts/0", "0", "ptmx"]


def test_tty_window_size_follows_imagetools_terminal(it):
    """The pty has imagetool's window size before the command runs (its first `stty size`)."""
    code, out = _in_a_terminal(it, "run", "--rm", "-it", "busybox", "sh", "-c", "stty size; tty", rows_cols=(33, 111))
    assert code == 0, out
    assert out.replace(b"\r", b"").split(b"\n")[:2] == [b"33 111", b"/dev/pts/0"]


def test_sys_fs_cgroup_shows_the_containers_own_cgroup_read_only(it):
    """docker's view: the container's own group at /sys/fs/cgroup (cgroup namespace), read-only,
    with the limits a language runtime sizes itself from."""
    from imagetool.runtime import cgroups

    v2 = cgroups.detect() == "v2"
    limit = "/sys/fs/cgroup/memory.max" if v2 else "/sys/fs/cgroup/memory/memory.limit_in_bytes"
    procs = "/sys/fs/cgroup/cgroup.procs" if v2 else "/sys/fs/cgroup/memory/cgroup.procs"
    _need_controller("memory")
    out = run_ok(it, "-m", "7m", "busybox", "sh", "-c",
                 f"cat {limit}; cat {procs} | wc -l; mkdir /sys/fs/cgroup/escape 2>&1; {{ echo 1 > {limit}; }} 2>&1; true")
    lines = out.splitlines()
    assert lines[0] == "7340032"
    assert int(lines[1]) <= 3            # only the container's own processes (sh, cat, wc), no host one
    assert "Read-only file system" in lines[2] and "Read-only file system" in lines[3], out


# ---------------------------------------------------------------- ps, rm, state


def test_ps_rm_and_names(it, store):
    r = it("run", "--name", "keepme", "busybox", "sh", "-c", "exit 7")
    assert r.returncode == 7
    rows = json.loads(it("ps", "-a", "--format", "json").stdout)
    row = next(x for x in rows if x["name"] == "keepme")
    assert row["exit_code"] == 7 and row["status"].startswith("exited")
    cid = row["id"]
    state = json.loads((store / "containers" / cid / "state.json").read_text())
    assert state["snapshots"] and all(s.startswith("sha256:") for s in state["snapshots"])
    assert "keepme" not in it("ps").stdout  # not running
    r = it("run", "--name", "keepme", "busybox", "true")
    assert r.returncode == 125 and "already in use" in r.stderr
    assert it("rm", "keepme").returncode == 0
    assert not (store / "containers" / cid).exists()
    r = it("rm", "keepme")
    assert r.returncode == 1 and "no such container" in r.stderr


def test_rm_leaves_no_container_directory(it, store):
    before = set(os.listdir(store / "containers"))
    run_ok(it, "busybox", "true")
    assert set(os.listdir(store / "containers")) == before


@pytest.mark.parametrize("args", [["-v", "relative-imagetool:/x", "busybox", "true"],
                                  ["oci-archive:/nonexistent-imagetool-missing", "true"],
                                  ["-t", "-v", "relative-imagetool:/x", "busybox", "true"]])
def test_a_run_that_fails_before_its_spec_leaves_no_container_and_no_init(it, store, args):
    """The container's directory, cgroup and init exist before the image is looked up (the init
    joins its cgroup meanwhile): a failed lookup or spec removes them all, and kills the init."""
    (store / "containers").mkdir(exist_ok=True)
    before = set(os.listdir(store / "containers")) | {".lock"}
    r = it("run", "--name", "fails-early", *args)
    assert r.returncode == 125 and [x for x in r.stderr.splitlines() if x.startswith("imagetool: error: ")], r.stderr
    assert set(os.listdir(store / "containers")) | {".lock"} == before
    gone = subprocess.run(["pgrep", "-f", "imagetool-missing|relative-imagetool"], capture_output=True, text=True)
    assert gone.stdout.strip() == ""
    assert it("run", "--rm", "--name", "fails-early", "busybox", "true").returncode == 0  # the name is free


def test_sigkilled_imagetool_is_cleaned_up_by_ps(it, store):
    p = it.popen("run", "--name", "orphan", "busybox", "sh", "-c", "echo up; sleep 60")
    try:
        assert p.stdout.readline().strip() == "up"
        state = _state_by_name(store, "orphan")
        running = json.loads(it("ps", "--format", "json").stdout)
        assert any(x["name"] == "orphan" for x in running)
        assert it("rm", "orphan").returncode == 1  # running: needs -f
        p.kill()
        p.wait()
        rows = json.loads(it("ps", "-a", "--format", "json").stdout)
        row = next(x for x in rows if x["name"] == "orphan")
        assert row["status"].startswith("exited")
        for g in state["cgroups"]:
            assert not Path(g).exists()
        assert not os.path.exists(f"/proc/{state['pid']}") or _is_zombie_or_other(state["pid"])
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        it("rm", "-f", "orphan")


def test_sigkilled_imagetool_is_cleaned_up_by_prune(it, store):
    p = it.popen("run", "--name", "orphan-prune", "busybox", "sh", "-c", "echo up; sleep 60")
    try:
        assert p.stdout.readline().strip() == "up"
        state = _state_by_name(store, "orphan-prune")
        p.kill()
        p.wait()
        r = it("prune")
        assert r.returncode == 0, r.stderr
        assert not (store / "containers" / state["id"]).exists()
        assert [g for g in state["cgroups"] if Path(g).exists()] == []
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        it("rm", "-f", "orphan-prune")


def test_sigkilled_imagetool_under_runc_is_cleaned_up_by_ps(it, store):
    """With --runtime runc the container is runc's: `ps` after imagetool's death deletes it there."""
    from tests.runhelpers import have_tool

    if not have_tool("runc"):
        pytest.skip("runc is not installed")
    p = it.popen("run", "--runtime", "runc", "--name", "orphan-runc", "busybox", "sh", "-c", "echo up; sleep 60")
    cid = None
    try:
        assert p.stdout.readline().strip() == "up"
        cid = _state_by_name(store, "orphan-runc")["id"]
        p.kill()
        p.wait()
        row = next(x for x in json.loads(it("ps", "-a", "--format", "json").stdout) if x["name"] == "orphan-runc")
        assert row["status"].startswith("exited")
        assert subprocess.run(["runc", "state", cid], capture_output=True).returncode != 0  # gone from runc
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        it("rm", "-f", "orphan-runc")
        if cid:
            subprocess.run(["runc", "delete", "-f", cid], capture_output=True)
            from imagetool.runtime import cgroups

            cgroups.remove_empty_parents()


def test_sigkilled_imagetool_takes_a_non_root_container_with_it(it, store):
    """The parent-death signal is set again after the switch to another uid (which clears it), so
    the container does not outlive a SIGKILLed imagetool until the next `ps`."""
    p = it.popen("run", "--name", "orphan-user", "-u", "1000", "busybox", "sh", "-c", "echo up; sleep 60")
    try:
        assert p.stdout.readline().strip() == "up"
        pid = _state_by_name(store, "orphan-user")["pid"]
        p.kill()
        p.wait()
        deadline = time.monotonic() + 20
        while not _is_zombie_or_other(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _is_zombie_or_other(pid)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        it("rm", "-f", "orphan-user")


def _is_zombie_or_other(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_runc_runs_the_same_spec(it):
    from tests.runhelpers import have_tool

    if not have_tool("runc"):
        pytest.skip("runc is not installed")
    r = it("run", "--rm", "--runtime", "runc", "-e", "X=from-runc", "busybox", "sh", "-c", "echo $X $$; exit 5")
    assert r.returncode == 5, r.stderr
    assert r.stdout.split() == ["from-runc", "1"]


# ---------------------------------------------------------------- where the image comes from


def test_run_pulls_a_missing_image_from_the_registry(registry, busybox, tmp_path, unique_repo):
    registry.push(busybox, f"{unique_repo}:v1")
    fresh = Imagetool(tmp_path / "fresh-store")
    r = fresh("run", "--rm", f"{registry.host}/{unique_repo}:v1", "sh", "-c", "echo pulled-and-ran")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "pulled-and-ran\n"
    assert "Unable to find image" in r.stderr
    r = fresh("run", "--rm", f"{registry.host}/{unique_repo}:v1", "true")  # now local: no second pull
    assert r.returncode == 0 and "Unable to find image" not in r.stderr


def test_run_an_archive_file(tmp_path):
    import sys as _sys

    from tests.runhelpers import REPO

    tar = tmp_path / "busybox.tar"
    subprocess.run([_sys.executable, "-m", "fixtures", "busybox-tar", str(tar)], check=True, cwd=REPO,
                   capture_output=True)
    fresh = Imagetool(tmp_path / "fresh-store")
    r = fresh("run", "--rm", "./busybox.tar", "sh", "-c", "echo from-archive", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "from-archive\n"
    r = fresh("run", "--rm", f"docker-archive:{tar}", "true")
    assert r.returncode == 0, r.stderr


def test_copy_rootfs_backend_runs_the_same(it):
    """--rootfs copy (the fallback when overlay is missing): a flattened tree, bind-mounted."""
    out = run_ok(it, "--rootfs", "copy", "busybox", "sh", "-c", "echo $$; echo x > /tmp/f && cat /tmp/f")
    assert out.split() == ["1", "x"]
    r = it("run", "--rm", "--rootfs", "copy", "--read-only", "busybox", "touch", "/x")
    assert r.returncode == 1 and "Read-only file system" in r.stderr


def test_prune_exited_removes_only_exited_containers(it, store):
    from store import Store

    from imagetool import containers

    r = it("run", "--name", "to-prune", "busybox", "true")
    assert r.returncode == 0
    cid = next(x["id"] for x in json.loads(it("ps", "-a", "--format", "json").stdout) if x["name"] == "to-prune")
    removed = containers.prune_exited(Store.open(store))
    assert cid in removed
    assert not (store / "containers" / cid).exists()
