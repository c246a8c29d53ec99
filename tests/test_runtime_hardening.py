"""The escapes of issue 14 (items 4, 5, 6, 8 and the init's side of 3), each performed for real
against `imagetool run` and shown blocked, with the built-in runtime and, where it applies, runc."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.runfixtures import host_unchanged, it, store_fixture  # noqa: F401 (fixtures)
from tests.runhelpers import kernel_skip_reason

_reason = kernel_skip_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

HOST_PASSWD = Path("/tmp/imagetool-hardening-host-passwd")       # a "host file" the image points at
ESCAPE_DIR = Path("/tmp/imagetool-hardening-volume-escape")      # a "host dir" a volume must not reach
BACKENDS = ["imagetool", pytest.param("runc", marks=pytest.mark.skipif(shutil.which("runc") is None,
                                                                        reason="needs runc"))]


def _images():
    from fixtures.tarbuild import directory, fifo, symlink

    return {
        # /dev, /sys or /proc a symlink: the mounts (and the masks over /proc) would go elsewhere
        "devlink": ([symlink("dev", "/proc/self/cwd"), symlink("null", "/proc/timer_list")], None),
        "syslink": ([symlink("sys", "/proc/self/cwd")], None),
        "proclink": ([symlink("proc", "/tmp")], None),
        # a volume target through a symlink climbing out of the rootfs
        "volclimb": ([directory("mnt"), symlink("mnt/link", "../../../../../../../.." + str(ESCAPE_DIR))], None),
        # the user database: a symlink to a host file, and a FIFO
        "pwlink": ([directory("etc"), symlink("etc/passwd", str(HOST_PASSWD))], None),
        "pwfifo": ([directory("etc"), fifo("etc/passwd")], None),
    }


store = store_fixture("imagetool-hardening", _images)


def _runtime(backend: str) -> list[str]:
    return [] if backend == "imagetool" else ["--runtime", backend]


# ---------------------------------------------------------------- item 8: stdio


@pytest.mark.parametrize("backend", BACKENDS)
def test_container_cannot_chmod_or_chown_the_host_file_behind_its_stdout(it, tmp_path, backend):
    """`run … >> host.log`: container root fchmod/fchowns fd 1 and fd 2; the host file keeps its
    mode and owner (the container holds pipes), and the output still arrives."""
    log = tmp_path / "host.log"
    log.write_text("before\n")
    os.chmod(log, 0o600)
    before = log.stat()
    attack = ("chmod 777 /proc/self/fd/1 /proc/self/fd/2; chown 4242:4242 /proc/self/fd/1 /proc/self/fd/2; "
              "echo written")
    with open(log, "a") as out:
        r = subprocess.run(it.argv("run", "--rm", *_runtime(backend), "busybox", "sh", "-c", attack),
                           stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=it.env, timeout=120)
    after = log.stat()
    assert r.returncode == 0
    assert (after.st_mode, after.st_uid, after.st_gid) == (before.st_mode, before.st_uid, before.st_gid)
    assert log.read_text() == "before\nwritten\n"


def test_stdio_is_copied_exactly_and_separately(it, tmp_path):
    out, err = tmp_path / "out", tmp_path / "err"
    with open(out, "w") as o, open(err, "w") as e:
        r = subprocess.run(it.argv("run", "--rm", "busybox", "sh", "-c", "seq 1 100000; seq 5 7 >&2"),
                           stdout=o, stderr=e, stdin=subprocess.DEVNULL, env=it.env, timeout=120)
    assert r.returncode == 0
    assert out.read_text() == "".join(f"{i}\n" for i in range(1, 100001))
    assert err.read_text() == "5\n6\n7\n"


# ---------------------------------------------------------------- item 5: mount targets


@pytest.mark.parametrize("image", ["devlink", "syslink", "proclink"])
def test_symlinked_proc_dev_or_sys_is_refused(it, image):
    r = it("run", "--rm", image, "cat", "/proc/timer_list")
    assert r.returncode == 125
    assert "must be mounted on ordinary directory" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("imagetool: error: ")
    assert r.stdout == ""


def test_a_volume_through_a_climbing_symlink_lands_inside_the_rootfs(it, tmp_path):
    src = tmp_path / "vol"
    src.mkdir()
    (src / "in-volume").write_text("v")
    ESCAPE_DIR.mkdir(exist_ok=True)
    try:
        out = it("run", "--rm", "-v", f"{src}:/mnt/link/sub", "volclimb", "sh", "-c",
                 f"cat {ESCAPE_DIR}/sub/in-volume")
        assert out.returncode == 0, out.stderr
        assert out.stdout == "v"                   # inside, the volume is where the link leads in-root
        assert list(ESCAPE_DIR.iterdir()) == []    # on the host, nothing was created or mounted there
    finally:
        shutil.rmtree(ESCAPE_DIR, ignore_errors=True)


SWAP_RACE = r"""
import os, sys
from imagetool.runtime import mounts, syscalls as sc
from imagetool.safepath import Root
root_dir, outside = sys.argv[1:]
sc.unshare(sc.CLONE_NEWNS)
mounts.make_private()
with Root(root_dir) as root:
    pfd, name = mounts.target(root, "/shared/vol/nested")
    # the other container wins the race: it swaps the checked directory for a symlink out
    os.rename(os.path.join(root_dir, "shared/vol"), os.path.join(root_dir, "shared/vol.moved"))
    os.symlink(outside, os.path.join(root_dir, "shared/vol"))
    mounts._mount_on(pfd, name, "tmpfs", "tmpfs")
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
print("\n".join(points))
"""


def test_a_volume_target_swapped_for_a_symlink_after_the_check_is_still_mounted_inside(tmp_path):
    """CVE-2021-30465: the mount point is the directory that was checked (held by fd), so a swap
    of a path component for a symlink between check and mount does not send the mount outside."""
    root = tmp_path / "rootfs"
    (root / "shared" / "vol" / "nested").mkdir(parents=True)
    outside = tmp_path / "host-dir"
    (outside / "nested").mkdir(parents=True)
    r = subprocess.run([os.sys.executable, "-c", SWAP_RACE,
                        str(root), str(outside)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert r.returncode == 0, r.stderr
    points = r.stdout.split()
    assert str(root / "shared" / "vol.moved" / "nested") in points
    assert str(outside / "nested") not in points


# ---------------------------------------------------------------- item 6: the user lookup


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_passwd_symlink_to_a_host_file_is_read_inside_the_rootfs(it, backend):
    HOST_PASSWD.write_text("evil:x:4242:4242:evil:/evil:/bin/sh\n")
    try:
        r = it("run", "--rm", *_runtime(backend), "-u", "evil", "pwlink", "id", "-u")
    finally:
        HOST_PASSWD.unlink()
    assert "4242" not in r.stdout
    assert r.returncode == 125
    assert "unable to find user evil" in r.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_passwd_fifo_does_not_hang_the_run(it, backend):
    r = it("run", "--rm", *_runtime(backend), "-u", "someone", "pwfifo", "id", "-u", timeout=60)
    assert r.returncode == 125
    assert "unable to find user someone" in r.stderr


# ---------------------------------------------------------------- item 4: every cgroup hierarchy


def test_the_container_joins_every_cgroup_hierarchy(it, store):
    """No hierarchy (blkio, cpuset, freezer, name=systemd, the hybrid's unified …) is left at the
    host's root group: every line of the container's /proc/PID/cgroup, seen from the host, is
    inside its own imagetool/<id> group."""
    p = it.popen("run", "--name", "every-hierarchy", "busybox", "sh", "-c",
                 "trap 'exit 0' TERM; echo up; sleep 60 & wait")
    try:
        assert p.stdout.readline().strip() == "up"
        state = next(s for s in (json.loads(f.read_text()) for f in (store / "containers").glob("*/state.json"))
                     if s.get("name") == "every-hierarchy")
        lines = Path(f"/proc/{state['pid']}/cgroup").read_text().splitlines()
        with open("/proc/self/cgroup") as f:
            assert len(lines) == len(f.read().splitlines())
        assert [line for line in lines if f"/imagetool/{state['id']}" not in line] == []
    finally:
        p.terminate()
        p.wait(timeout=60)
        it("rm", "-f", "every-hierarchy")


# ---------------------------------------------------------------- the init's support for the spec


@pytest.mark.parametrize("args, command, expected", [
    (["--sysctl", "kernel.shmmax=65536"], "cat /proc/sys/kernel/shmmax", "65536"),
    (["--ulimit", "nofile=512:1024"], "echo $(ulimit -n) $(ulimit -Hn)", "512 1024"),
    (["--group-add", "4321"], "id -G", "0 4321"),
    (["--tmpfs", "/scratch"], "grep -c ' /scratch tmpfs ' /proc/mounts", "1"),
    pytest.param(["--device", "/dev/net/tun"], "stat -c '%F %t:%T' /dev/net/tun", "character special file a:c8",
                 marks=pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun on this host")),
])
def test_the_init_applies_the_specs_fields(it, args, command, expected):
    r = it("run", "--rm", *args, "busybox", "sh", "-c", command)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == expected


KEYRING = r"""
import ctypes, os
from imagetool.runtime import syscalls as sc
libc = ctypes.CDLL(None, use_errno=True)
KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING = 0, -3
def session():
    return libc.syscall(sc._SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 1)
before = session()
sc.join_session_keyring()
print(before, session())
"""


def test_the_init_gets_a_session_keyring_of_its_own():
    r = subprocess.run([os.sys.executable, "-c", KEYRING], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert r.returncode == 0, r.stderr
    before, after = map(int, r.stdout.split())
    assert after > 0 and after != before
