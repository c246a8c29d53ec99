"""Rootless containers (issue 13): run, run -d, exec, logs, stop, kill, wait, ps, rm, prune as an
ordinary user (tests/rootless.py: a throw-away user with a subordinate range), the built-in runtime
inside the user namespace the command enters (imagetool/userns.py, runtime/rootless.py).

The run checks of the runtime hold rootless (PID 1, its own hostname, mount and PID namespaces, exit
codes, nothing left after rm), and so do the security properties: container root is not host root
(a root-only host file bound into it stays unreadable, a root-owned bound directory unwritable, no
device node can be made, its capabilities count in its own user namespace only), and what it writes
into a bind mount belongs to the user (or, for another container uid, to the user's subordinate id).
On a host without cgroup delegation (v1 or hybrid, as here) limits cannot apply: one line says so.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from imagetool.runtime import cgroups
from tests.rootless import rootless_user, rootless_user_nosub  # noqa: F401 (the fixtures)
from tests.runhelpers import busybox_store, kernel_skip_reason

pytestmark = pytest.mark.skipif(kernel_skip_reason() is not None, reason=kernel_skip_reason() or "")


class UserImagetool:
    """imagetool --store STORE … as the test user; `.wait_status(name, status)` polls ps -a."""

    def __init__(self, user, store: Path):
        self.user, self.store = user, store

    def __call__(self, *args, **kw):
        return self.user.imagetool("--store", self.store, *args, **kw)

    def state(self, name: str) -> dict:
        import json

        for p in (self.store / "containers").glob("*/state.json"):
            s = json.loads(p.read_text())
            if s.get("name") == name:
                return s
        return {}


def _user_store(user) -> UserImagetool:
    store = user.base / "runstore"
    if store.exists():
        shutil.rmtree(store)
    busybox_store(store)
    for d, _, files in os.walk(store):
        os.chown(d, user.uid, user.gid)
        for f in files:
            os.chown(os.path.join(d, f), user.uid, user.gid)
    return UserImagetool(user, store)


@pytest.fixture(scope="module")
def it(rootless_user):  # noqa: F811
    return _user_store(rootless_user)


@pytest.fixture
def clean(it):
    """Every test leaves no container directory, no process of the user's ids and no mount
    mentioning the store behind (no cgroup is made on a host without delegation: see
    test_capabilities_count_in_its_own_user_namespace_only; the v2 VM test checks delegated ones)."""
    yield
    user = it.user
    assert _user_processes(user) == []
    assert list((it.store / "containers").glob("*/state.json")) == []
    assert [e.name for e in (it.store / "containers").iterdir() if not e.name.startswith(".")] == []
    with open("/proc/self/mountinfo") as f:
        assert [line for line in f if str(it.store) in line] == []


def _user_processes(user, grace: float = 5.0) -> list[str]:
    """`pid uid command` of every process of the user or its subordinate ids (none expected)."""
    ids = range(user.uid, user.uid + 1), range(user.subuid_start, user.subuid_start + user.subuid_count)
    deadline = time.monotonic() + grace
    while True:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/status") as f:
                    uid = int(next(ln for ln in f if ln.startswith("Uid:")).split()[1])
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, StopIteration):
                continue
            if any(uid in r for r in ids):
                found.append(f"{pid} {uid} {cmd}")
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _ok(r):
    assert r.returncode == 0, r.stderr
    return r.stdout


# ---------------------------------------------------------------- the run checks, rootless


def test_pid1_hostname_and_namespaces_of_its_own(it, clean):
    out = _ok(it("run", "--rm", "--network", "none", "--hostname", "rootlessbox", "busybox", "sh", "-c",
                 "echo $$; hostname; id -u; ls /proc | grep -c '^[0-9]'; readlink /proc/self/ns/user; "
                 "cat /proc/self/uid_map"))
    pid, host, uid, nprocs, userns, *uid_map = out.split("\n")
    assert pid == "1" and host == "rootlessbox" and uid == "0"
    assert int(nprocs) <= 3                          # only its own PID namespace's processes
    assert userns != os.readlink("/proc/self/ns/user")   # not the host's user namespace
    first = uid_map[0].split()
    assert first == ["0", str(it.user.uid), "1"]     # container root is the user
    assert os.uname().nodename != "rootlessbox"


def test_mounts_stay_inside(it, clean):
    """The container's mounts (overlay root with userxattr, /proc, /dev …) are in its own mount
    namespace: the host's table never shows them, while it runs or after."""
    _ok(it("run", "-d", "--name", "mnt", "--network", "none", "busybox", "sleep", "300"))
    try:
        out = _ok(it("exec", "mnt", "cat", "/proc/1/mountinfo"))
        root = next(ln for ln in out.splitlines() if ln.split()[4] == "/")
        assert " - overlay " in root and "userxattr" in root
        assert any(" /proc " in ln for ln in out.splitlines())
        with open("/proc/self/mountinfo") as f:
            assert [ln for ln in f if str(it.store) in ln] == []
    finally:
        _ok(it("rm", "-f", "mnt"))


@pytest.mark.parametrize("command,code", [(["true"], 0), (["sh", "-c", "exit 42"], 42),
                                          (["no-such-command"], 127)])
def test_exit_codes(it, clean, command, code):
    r = it("run", "--rm", "--network", "none", "busybox", *command)
    assert r.returncode == code, r.stderr


@pytest.mark.parametrize("user", ["", "1000"])
def test_exit_codes_via_wait_and_kill(it, clean, user):
    """run -d; `wait` reports 42 and 127 as run would; `kill` (outside any namespace: the user owns
    the container's) reaches PID 1 whether it runs as the user or as a subordinate id: 137."""
    opts = ["--user", user] if user else []
    for command, code in ((["sh", "-c", "exit 42"], 42), (["true"], 0)):
        name = f"w{code}{user}"
        _ok(it("run", "-d", "--name", name, "--network", "none", *opts, "busybox", *command))
        r = it("wait", name)
        assert r.stdout.strip() == str(code), r.stderr
        _ok(it("rm", name))
    name = f"k{user}"
    _ok(it("run", "-d", "--name", name, "--network", "none", *opts, "busybox", "sleep", "300"))
    _ok(it("kill", name))
    assert it("wait", name).stdout.strip() == "137"
    _ok(it("rm", name))


def test_detached_exec_logs_stop_rm(it, clean):
    name = "life"
    _ok(it("run", "-d", "--name", name, "--network", "none", "busybox", "sh", "-c",
           "echo hello; trap 'echo bye; exit 0' TERM; while :; do sleep 1; done"))
    assert name in _ok(it("ps"))
    out = _ok(it("exec", name, "sh", "-c", "echo $$ $(id -u); cat /proc/1/cmdline | tr '\\0' ' '"))
    pid, uid, cmd = out.split(None, 2)
    assert pid != "1" and uid == "0" and cmd.startswith("sh -c echo hello")
    r = it("exec", name, "no-such-command")
    assert r.returncode == 127
    for _ in range(50):
        if "hello" in it("logs", name).stdout:
            break
        time.sleep(0.1)
    assert _ok(it("logs", name)).startswith("hello")
    _ok(it("stop", name))
    assert "bye" in _ok(it("logs", name))
    assert "Exited (0)" in _ok(it("ps", "-a"))
    _ok(it("rm", name))
    assert name not in _ok(it("ps", "-a"))


def test_rm_force_and_prune_remove_subordinate_owned_files(it, clean):
    """A container whose upper dir holds files of subordinate ids (written by uid 1000 inside):
    `rm -f` of the running one and `prune` of an exited one leave nothing of it."""
    _ok(it("run", "-d", "--name", "busy", "--network", "none", "--user", "1000", "busybox", "sh", "-c",
           "mkdir -p /tmp/deep/er && echo x > /tmp/deep/er/f && chmod 700 /tmp/deep && sleep 300"))
    _ok(it("run", "--name", "done", "--network", "none", "busybox", "sh", "-c",
           "mkdir -p /home/u && echo y > /home/u/f && chown -R 1000:1000 /home/u && chmod 700 /home/u"))
    cdir = next(p.parent for p in (it.store / "containers").glob("*/state.json") if it.state("busy")["id"] in str(p))
    for _ in range(50):
        if (cdir / "upper" / "tmp" / "deep").exists():
            break
        time.sleep(0.1)
    assert (cdir / "upper" / "tmp" / "deep").stat().st_uid == it.user.subuid_start + 999
    _ok(it("rm", "-f", "busy"))
    assert not cdir.exists()
    done = it.state("done")["id"]
    assert (it.store / "containers" / done / "upper" / "home" / "u").stat().st_uid == it.user.subuid_start + 999
    assert done[:12] in _ok(it("prune"))
    assert not (it.store / "containers" / done).exists()
    assert _ok(it("ps", "-a")).count("\n") <= 1


def test_dead_monitor_of_an_rm_container_is_cleaned_up_from_outside(it, clean):
    """The monitor of a `run -d --rm` container (files of subordinate ids in its upper dir) is
    SIGKILLed: the container dies with it, and `ps` — run outside any user namespace — removes the
    whole directory (in a child that enters the user's namespace), leaving nothing."""
    import signal

    _ok(it("run", "-d", "--rm", "--name", "orphan", "--network", "none", "--user", "1000", "busybox", "sh", "-c",
           "mkdir -p /tmp/a/b && echo x > /tmp/a/b/c && chmod 700 /tmp/a && sleep 300"))
    state = it.state("orphan")
    cdir = it.store / "containers" / state["id"]
    for _ in range(50):
        if (cdir / "upper" / "tmp" / "a").exists():
            break
        time.sleep(0.1)
    os.kill(state["owner_pid"], signal.SIGKILL)
    for _ in range(50):
        if "orphan" not in _ok(it("ps", "-a")):
            break
        time.sleep(0.1)
    assert not cdir.exists()


# ---------------------------------------------------------------- security


@pytest.fixture
def hostdir(it):
    d = it.user.base / f"hostdir-{os.urandom(3).hex()}"
    d.mkdir(mode=0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_root_only_host_file_stays_unreadable(it, clean, hostdir):
    secret = hostdir / "secret"
    secret.write_text("root only\n")
    os.chmod(secret, 0o600)
    r = it("run", "--rm", "--network", "none", "-v", f"{secret}:/secret", "busybox", "sh", "-c",
           "cat /secret; echo rc=$?; chmod 666 /secret; echo chmod=$?; ls -ln /secret")
    assert "root only" not in r.stdout
    assert "rc=1" in r.stdout and "chmod=1" in r.stdout
    assert "65534" in r.stdout            # root on the host is nobody in there
    assert secret.stat().st_mode & 0o777 == 0o600


def test_cannot_write_outside_its_mounts(it, clean, hostdir):
    """A root-owned host directory bound read-write stays unwritable to container root; /proc/sys
    and /sys are read-only; a block device cannot be made (no CAP_MKNOD on the host)."""
    r = it("run", "--rm", "--network", "none", "-v", f"{hostdir}:/data", "busybox", "sh", "-c",
           "touch /data/x; echo touch=$?; mknod /tmp/sda b 8 0; echo mknod=$?; "
           "echo 1 > /proc/sys/vm/drop_caches; echo sysctl=$?; hostname evil; echo hostname=$?")
    assert "touch=1" in r.stdout and "mknod=1" in r.stdout and "sysctl=1" in r.stdout, r.stdout + r.stderr
    assert "hostname=1" in r.stdout       # no CAP_SYS_ADMIN (docker's default set) …
    assert os.uname().nodename != "evil"  # … and the host's name is out of reach anyway
    assert list(hostdir.iterdir()) == []


def test_capabilities_count_in_its_own_user_namespace_only(it, clean):
    """CapEff of PID 1 seen from the host is the spec's set, but in a user namespace the user owns
    (its uid map is not the initial identity): no capability of the initial namespace — it cannot
    mount over a host path nor change the host's hostname, and it is not in the host's namespace."""
    name = "caps"
    _ok(it("run", "-d", "--name", name, "--network", "none", "busybox", "sleep", "300"))
    try:
        state = it.state(name)
        pid = state["pid"]
        if cgroups.detect() != "v2":
            assert state["cgroups"] == []   # nothing delegated: no cgroup made, none left behind
        status = Path(f"/proc/{pid}/status").read_text()
        cap_eff = int(next(ln for ln in status.splitlines() if ln.startswith("CapEff:")).split()[1], 16)
        assert cap_eff != 0
        assert os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")
        assert Path(f"/proc/{pid}/uid_map").read_text().split()[:3] == ["0", str(it.user.uid), "1"]
        uid = int(next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[2])
        assert uid == it.user.uid         # container root is the user on the host
        r = it("exec", name, "sh", "-c", "mount -o remount,rw /sys; echo remount=$?; "
               "cat /proc/self/status | grep CapEff")
        assert "remount=0" not in r.stdout
    finally:
        it("rm", "-f", name)


@pytest.mark.parametrize("user,owner", [("", "user"), ("1000:1000", "sub")])
def test_files_written_in_a_bind_mount_belong_to_the_user(it, clean, hostdir, user, owner):
    os.chown(hostdir, it.user.uid, it.user.gid)
    os.chmod(hostdir, 0o777)
    opts = ["--user", user] if user else []
    _ok(it("run", "--rm", "--network", "none", "-v", f"{hostdir}:/data", *opts, "busybox", "sh", "-c",
           "echo hi > /data/f"))
    st = (hostdir / "f").stat()
    want = it.user.uid if owner == "user" else it.user.subuid_start + 999
    assert (st.st_uid, st.st_gid) == (want, it.user.gid if owner == "user" else it.user.subuid_start + 999)


# ---------------------------------------------------------------- cgroups without delegation


def test_limits_cannot_apply_without_delegation(it, clean):
    if cgroups.detect() == "v2":
        pytest.skip("this host is cgroup v2: tests/test_rootless_v2.py covers delegation")
    r = it("run", "--rm", "--network", "none", "-m", "7m", "--explain", "busybox", "true")
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if "cannot apply" in ln and ln.startswith("imagetool: warning:")]
    assert len(warnings) == 1
    assert "# none: cgroup" in r.stderr   # --explain shows the step
    r = it("run", "--rm", "--network", "none", "busybox", "true")
    assert "cannot apply" not in r.stderr
    r = it("run", "-d", "--name", "limited", "--network", "none", "-m", "7m", "busybox", "sleep", "300")
    assert r.returncode == 0 and r.stderr.count("cannot apply") == 1   # run -d says it too (the CLI, not the monitor)
    _ok(it("rm", "-f", "limited"))


# ---------------------------------------------------------------- runc rootless


def test_runc_rootless(it, clean):
    """--runtime runc as the user: runc in the user's namespace (its state under the user's runtime
    dir, no cgroup), the same PID 1, uid 0 and exit codes; a memory limit is said not to apply."""
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed")
    r = it("run", "--rm", "--network", "none", "--runtime", "runc", "busybox", "sh", "-c", "echo $$ $(id -u)")
    assert r.returncode == 0 and r.stdout.split() == ["1", "0"], r.stderr
    r = it("run", "--rm", "--network", "none", "--runtime", "runc", "-m", "7m", "busybox", "sh", "-c", "exit 42")
    assert r.returncode == 42 and "cannot apply" in r.stderr
    assert it("run", "--rm", "--network", "none", "--runtime", "runc", "busybox", "nosuch").returncode == 127


# ---------------------------------------------------------------- no subordinate range


def test_single_id_mapping_runs(rootless_user_nosub):  # noqa: F811
    """Without a subordinate range (a single-id mapping, setgroups denied, no tty group): the
    container still runs as the user's root, /dev/pts mounted without gid=5, no group set."""
    it = _user_store(rootless_user_nosub)
    r = it("run", "--rm", "--network", "none", "busybox", "sh", "-c", "id -u; cat /proc/self/uid_map; ls /dev/pts")
    assert r.returncode == 0, r.stderr
    assert "single-id mapping" in r.stderr
    uid, uid_map, ptmx = r.stdout.split("\n")[:3]
    assert uid == "0" and uid_map.split() == ["0", str(rootless_user_nosub.uid), "1"] and ptmx == "ptmx"
    assert it("run", "--rm", "--network", "none", "busybox", "sh", "-c", "exit 42").returncode == 42
    assert [e.name for e in (it.store / "containers").iterdir() if not e.name.startswith(".")] == []


@pytest.mark.parametrize("network", ["none", "host"])
def test_cgroup_and_sys_mounts_are_read_only_all_the_way_down(it, clean, network):
    """CVE-2023-25809's class: a rootless container must not write to a host cgroup the user owns
    (on a v1 host, systemd gives the user its user@UID.service groups): every mount at or under
    /sys (with --network host: the host's /sys, bound) is read-only, and creating a group or moving
    a process fails."""
    script = ("awk '$5 ~ \"^/sys\" {print $5, $6}' /proc/self/mountinfo; echo --; "
              "for d in $(find /sys/fs/cgroup -maxdepth 6 -type d 2>/dev/null | head -200); do "
              "mkdir $d/itr-escape 2>/dev/null && echo MADE $d; "
              "[ -w $d/cgroup.procs ] && echo 0 > $d/cgroup.procs 2>/dev/null && echo MOVED $d; done; true")
    out = _ok(it("run", "--rm", "--network", network, "busybox", "sh", "-c", script))
    mounts, probes = out.split("--\n")
    rows = [line.split() for line in mounts.splitlines()]
    assert rows and all("ro" in opts.split(",") for _, opts in rows), rows
    assert "MADE" not in probes and "MOVED" not in probes, probes
