"""`run --script`: the generated POSIX sh script builds and runs the container by hand, for real.

The script is rendered with `imagetool.runtime.script.render` from the spec `specgen` makes and
the rootfs Mount unpack prepares, then run with `sh`: it prints what the command prints, the
seed's 7 MB demonstration is killed at 7.5 MB and fits at 2 MB (cgroup v1 here, v2 in the VM),
and every way out (success, failure, a signal, a hostile image) leaves no mount, cgroup or
temporary directory behind.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from imagetool.mount import Mount
from imagetool.runtime import shell
from tests import scripthelpers, v2vm
from tests.runhelpers import add_image, cgroup_children, kernel_skip_reason, new_cgroups_that_stay

_reason = kernel_skip_reason()
needs_kernel = pytest.mark.skipif(_reason is not None, reason=_reason or "")

SEED_OOM = "data=$(head -c 7500000 /dev/urandom)"
SEED_FITS = "data=$(head -c 2000000 /dev/urandom)"


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from fixtures.images import busybox_image, build_image, Layer
    from fixtures.tarbuild import directory, file, symlink

    root = tmp_path_factory.mktemp("imagetool-script") / "store"
    bb = busybox_image()
    add_image(root, bb, "docker.io/library/busybox:latest")
    # a hostile image: busybox with /proc a symlink to a host directory
    hostile = build_image([Layer(_layer_tar(bb), compression="gzip"),
                           Layer([symlink("proc", "/tmp")])], config={"Cmd": ["sh"]})
    add_image(root, hostile, "docker.io/library/procsymlink:latest")
    # a user database and a workdir owned by nobody
    users = build_image([Layer(_layer_tar(bb), compression="gzip"),
                         Layer([directory("etc", mode=0o755),
                                file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
                                file("etc/group", b"root:x:0:\nnogroup:x:65534:\nstaff:x:50:nobody\n")])],
                        config={"Cmd": ["sh"], "User": "nobody"})
    add_image(root, users, "docker.io/library/users:latest")
    return root


def _layer_tar(built) -> bytes:
    import gzip
    import json

    manifest = json.loads(built.manifest)
    return gzip.decompress(built.blobs[manifest["layers"][0]["digest"]])


def render(store_root: Path, tmp_path: Path, *command, **kw) -> str:
    return scripthelpers.render(store_root, tmp_path / "c", *command, **kw)


def run_script(text: str, tmp_path: Path, timeout=120, **kw) -> subprocess.CompletedProcess:
    path = tmp_path / "container.sh"
    path.write_text(text)
    env = dict(os.environ, TMPDIR=str(tmp_path))
    return subprocess.run(["sh", str(path)], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env, **kw)


@pytest.fixture
def host_unchanged(tmp_path, store):
    """No mount, cgroup or script temp dir is left after the test (failures included). Other
    engineers' containers may come and go meanwhile: only this test's paths and the scripts'
    `script-*` groups count."""
    mounts_before = _mountinfo(tmp_path, store)
    cgroups_before = cgroup_children()
    yield
    assert _mountinfo(tmp_path, store) == mounts_before
    assert {g for g in new_cgroups_that_stay(cgroups_before) if Path(g).name.startswith("script-")} == set()
    assert list(tmp_path.glob("imagetool-script.*")) == []


def _mountinfo(*paths) -> set[str]:
    """The host's mount table (mount root and mount point), only entries under `paths` if given."""
    with open("/proc/self/mountinfo") as f:
        entries = {" ".join(line.split()[3:5]) for line in f}
    return {e for e in entries if not paths or any(str(p) in e for p in paths)}


def _v1_memory_or_skip():
    from imagetool.runtime import cgroups

    if cgroups.detect() not in ("v1", "hybrid") or "memory" not in cgroups.mountinfo_cgroups()[0]:
        pytest.skip("needs the cgroup v1 memory controller (the v2 run is test_v2_vm_script)")


# ---------------------------------------------------------------- the script, run for real


@needs_kernel
def test_script_run_with_sh_prints_hello(store, tmp_path, host_unchanged):
    r = run_script(render(store, tmp_path, "echo", "hello"), tmp_path)
    assert (r.returncode, r.stdout) == (0, "hello\n"), r.stderr


@needs_kernel
def test_cli_run_script_prints_it_and_runs_nothing(store, tmp_path, host_unchanged):
    """`imagetool run --script` (containers.py): the printed script, piped into sh, prints hello;
    printing it created no container record, cgroup or mount."""
    from tests.runhelpers import Imagetool

    containers = store / "containers"
    records = sorted(p.name for p in containers.glob("*")) if containers.exists() else []
    r = Imagetool(store)("run", "--script", "--rm", "busybox", "echo", "hello")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("#!/bin/sh\n")
    assert (sorted(p.name for p in containers.glob("*")) if containers.exists() else []) == records
    groups = re.findall(r"^mkdir -p (\S+)$", r.stdout, re.M)
    assert groups and not any(Path(g).exists() for g in groups)
    ran = subprocess.run(["sh"], input=r.stdout, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert (ran.returncode, ran.stdout) == (0, "hello\n"), ran.stderr


@needs_kernel
def test_explain_and_script_show_the_same_commands(store, tmp_path, host_unchanged):
    """The cgroup writes, mounts, device nodes and /dev links `run --explain` prints as it runs are
    lines of the `run --script` script (ids and the rootfs prefix aside): both come from shell.py."""
    from tests.runhelpers import Imagetool

    options = ["-m", "7m", "--pids-limit", "30", "busybox", "true"]
    it = Imagetool(store)
    explained = it("run", "--rm", "--explain", *options)
    assert explained.returncode == 0, explained.stderr
    scripted = it("run", "--script", *options)
    assert scripted.returncode == 0, scripted.stderr

    def normal(line: str) -> str:
        line = re.sub(r"\S*/containers/[0-9a-f]{64}/rootfs/", "", line.strip())
        return re.sub(r"(script-)?[0-9a-f]{64}|script-[0-9a-f]{12}", "ID", line)

    kinds = ("mknod ", "ln -s /proc", "mount -t proc", "mount -t tmpfs", "mount -t devpts", "mount -t sysfs")
    shown = {normal(line) for line in explained.stderr.splitlines()
             if line.strip().startswith(kinds) or re.match(r"\s*echo \S+ > /sys/fs/cgroup/.*(limit_in_bytes|max)$", line)}
    shown = {line for line in shown if not line.startswith("mount -t tmpfs -o ro tmpfs /")}  # masks: the mask helper
    assert len(shown) > 10, explained.stderr
    assert shown - {normal(line) for line in scripted.stdout.splitlines()} == set()


@needs_kernel
@pytest.mark.parametrize("command,status", [(SEED_OOM, 137), (SEED_FITS, 0)], ids=["7.5MB-killed", "2MB-fits"])
def test_seed_7mb_demonstration_on_v1(store, tmp_path, host_unchanged, command, status):
    _v1_memory_or_skip()
    text = render(store, tmp_path, "sh", "-c", command, memory="7m")
    assert "echo 7340032 > " in text and "/memory.limit_in_bytes" in text
    r = run_script(text, tmp_path)
    assert r.returncode == status, r.stderr


@needs_kernel
def test_sys_fs_cgroup_inside_shows_the_containers_own_limit_read_only(store, tmp_path, host_unchanged):
    _v1_memory_or_skip()
    probe = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes; echo 1 > /sys/fs/cgroup/memory/memory.limit_in_bytes || echo ro"
    r = run_script(render(store, tmp_path, "sh", "-c", probe, memory="7m"), tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["7340032", "ro"]


@needs_kernel
@pytest.mark.parametrize("options,probe,expected", [
    ({"cpus": 0.5}, "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us", "50000 100000"),
    ({"pids_limit": 20}, "cat /sys/fs/cgroup/pids/pids.max; (i=0; while [ $i -lt 40 ]; do sleep 2 & i=$((i+1)); done) "
                         "2>&1 | grep -o \"can't fork\" | sort -u", "20 can't fork"),
], ids=["cpus", "pids-limit"])
def test_cpu_and_pids_limits_hold_inside(store, tmp_path, host_unchanged, options, probe, expected):
    from imagetool.runtime import cgroups

    if cgroups.detect() not in ("v1", "hybrid"):
        pytest.skip("reads the v1 files inside (the v2 run is test_v2_vm_script)")
    r = run_script(render(store, tmp_path, "sh", "-c", probe, **options), tmp_path)
    assert r.returncode == 0, r.stderr
    assert " ".join(r.stdout.split()) == expected


@needs_kernel
@pytest.mark.parametrize("command,status", [
    (["sh", "-c", "exit 42"], 42),
    (["no-such-command"], 127),
    (["/dev/null"], 126),
], ids=["exit-42", "not-found-127", "not-executable-126"])
def test_exit_status_is_the_commands_and_nothing_is_left(store, tmp_path, host_unchanged, command, status):
    r = run_script(render(store, tmp_path, *command, memory="64m", pids_limit=50), tmp_path)
    assert r.returncode == status, r.stderr


@needs_kernel
@pytest.mark.parametrize("interactive,seen", [(True, "from stdin\n"), (False, "")], ids=["-i", "no-i"])
def test_stdin_reaches_the_command_only_with_i(store, tmp_path, host_unchanged, interactive, seen):
    path = tmp_path / "container.sh"
    path.write_text(render(store, tmp_path, "cat", interactive=interactive))
    r = subprocess.run(["sh", str(path)], input="from stdin\n", capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert (r.returncode, r.stdout) == (0, seen), r.stderr


@needs_kernel
def test_sigterm_to_the_script_kills_the_container_and_cleans_up(store, tmp_path, host_unchanged):
    path = tmp_path / "container.sh"
    path.write_text(render(store, tmp_path, "sh", "-c", "echo started; sleep 300", memory="64m"))
    p = subprocess.Popen(["sh", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL, env=dict(os.environ, TMPDIR=str(tmp_path)))
    try:
        assert p.stdout.readline() == "started\n"
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 143
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@needs_kernel
def test_symlinked_proc_in_the_image_is_refused_and_nothing_is_left(store, tmp_path, host_unchanged):
    r = run_script(render(store, tmp_path, "true", ref="procsymlink"), tmp_path)
    assert r.returncode == 125
    assert "imagetool: error: /proc must be mounted on an ordinary directory" in r.stderr


@needs_kernel
def test_options_env_workdir_user_hostname_volume_readonly(store, tmp_path, host_unchanged):
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "f").write_text("from the host\n")
    probe = ("id -u; id -G; pwd; stat -c %u .; echo $FOO; hostname; cat /data/f; "
             "touch /data/g 2>/dev/null || echo vol-ro; touch /x 2>/dev/null || echo root-ro")
    r = run_script(render(store, tmp_path, "sh", "-c", probe, ref="users", env=["FOO=bar baz"],
                          workdir="/work/dir", hostname="box", volumes=[f"{vol}:/data:ro"], read_only=True),
                   tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["65534", "65534 50", "/work/dir", "65534", "bar baz", "box", "from the host",
                                     "vol-ro", "root-ro"]
    assert not (vol / "g").exists()


@needs_kernel
@pytest.mark.parametrize("network,interfaces", [("private", ["lo"]), ("none", ["lo"]), ("host", None)])
def test_network_modes(store, tmp_path, host_unchanged, network, interfaces):
    r = run_script(render(store, tmp_path, "sh", "-c", "ls /sys/class/net; cat /sys/class/net/lo/operstate",
                          network=network), tmp_path)
    assert r.returncode == 0, r.stderr
    names = r.stdout.split()[:-1]
    if interfaces is None:
        assert len(names) > 1          # the host's interfaces
    else:
        assert names == interfaces
        assert r.stdout.split()[-1] == ("unknown" if network == "private" else "down")


@needs_kernel
def test_capabilities_and_no_new_privs_as_the_runtime_sets_them(store, tmp_path, host_unchanged):
    from imagetool.runtime.capabilities import DEFAULT_CAPS, mask

    r = run_script(render(store, tmp_path, "grep", "-E", "^(CapBnd|CapEff|CapInh|NoNewPrivs)", "/proc/self/status"),
                   tmp_path)
    assert r.returncode == 0, r.stderr
    fields = dict(line.split(":\t") for line in r.stdout.splitlines())
    assert int(fields["CapBnd"], 16) == mask(DEFAULT_CAPS)
    assert int(fields["CapEff"], 16) == mask(DEFAULT_CAPS)
    assert int(fields["CapInh"], 16) == 0
    assert fields["NoNewPrivs"] == "1"


@needs_kernel
def test_devices_sysctls_ulimits_and_dropped_capabilities(store, tmp_path, host_unchanged):
    from imagetool.runtime.capabilities import DEFAULT_CAPS, mask

    probe = "head -c 3 /dev/z | wc -c; cat /proc/sys/net/ipv4/ip_forward; ulimit -u; grep CapBnd /proc/self/status"
    r = run_script(render(store, tmp_path, "sh", "-c", probe, devices=["/dev/zero:/dev/z"], sysctls=["net.ipv4.ip_forward=1"],
                          ulimits=["nproc=100:200"], cap_drop=["SETUID"]), tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:3] == ["3", "1", "100"]
    assert int(lines[3].split()[1], 16) == mask([c for c in DEFAULT_CAPS if c != "CAP_SETUID"])


@needs_kernel
def test_hostile_values_stay_data_in_the_script(store, tmp_path, host_unchanged):
    """Quotes, command substitution, backticks and a line that ends the init's heredoc, in an
    environment value and an argument, reach the command as bytes and run nothing on the host."""
    marker = tmp_path / "pwned"
    value = f"a'b\"c $(touch {marker}1) `touch {marker}2`\nIMAGETOOL_INIT_EOF\ntouch {marker}3\n"
    r = run_script(render(store, tmp_path, "sh", "-c", 'printf %s "$X"; printf %s "$1"', "-", value, env=[f"X={value}"]),
                   tmp_path)
    assert (r.returncode, r.stdout) == (0, value + value), r.stderr
    assert list(tmp_path.glob("pwned*")) == []


@needs_kernel
def test_container_is_pid_1_with_its_own_dev_and_masked_proc(store, tmp_path, host_unchanged):
    probe = "echo $$; ls /dev; wc -c < /proc/keys; echo x > /proc/sys/kernel/hostname 2>/dev/null || echo sys-ro"
    r = run_script(render(store, tmp_path, "sh", "-c", probe), tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert lines[0] == "1"
    for node in ("null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "fd"):
        assert node in lines
    assert lines[-2:] == ["0", "sys-ro"]


@needs_kernel
def test_chroot_escape_from_the_scripted_container_stays_inside(store, tmp_path, host_unchanged):
    """The root switch is `mount --move . /` + chroot: climbing out of a nested chroot with
    CAP_SYS_CHROOT (kept by docker's default set) lands back in the rootfs, not on the host."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the static escape probe")
    src = tmp_path / "esc.c"
    src.write_text(ESCAPE_C)
    probe = tmp_path / "vol" / "esc"
    probe.parent.mkdir()
    r = subprocess.run(["gcc", "-static", "-O", "-o", str(probe), str(src)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot build a static binary: {r.stderr[-200:]}")
    (tmp_path / "marker-on-host").write_text("host\n")
    r = run_script(render(store, tmp_path, "/probe/esc", str(tmp_path / "marker-on-host"),
                          volumes=[f"{probe.parent}:/probe:ro"]), tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "contained\n"


ESCAPE_C = r"""
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
int main(int argc, char **argv) {
    mkdir("/escape", 0755);
    if (chroot("/escape") != 0) { perror("chroot"); return 2; }
    for (int i = 0; i < 64; i++) chdir("..");
    if (chroot(".") != 0) { perror("chroot ."); return 2; }
    puts(access(argv[1], F_OK) == 0 ? "escaped" : "contained");
    return 0;
}
"""


# ---------------------------------------------------------------- the cgroup-v2 VM (one boot)

V2_GUEST = r"""
set -u
export PYTHONPATH=/host/src IMAGETOOL_FIXTURE_CACHE=/var/tmp/fx
cd /host/src
python3 -c "from tests.runhelpers import add_image; from fixtures.images import busybox_image; add_image('/var/tmp/st', busybox_image(), 'docker.io/library/busybox:latest')" || exit 90
r() { python3 -m tests.scripthelpers /var/tmp/st /var/tmp/c "$@"; }
echo "LAYOUT $(python3 -c 'from imagetool.runtime import cgroups; print(cgroups.detect())')"
r '{}' echo hello > /tmp/hello.sh && sh /tmp/hello.sh > /tmp/hello.out; echo "RESULT hello $? $(cat /tmp/hello.out)"
r '{"memory": "7m"}' sh -c 'data=$(head -c 7500000 /dev/urandom)' > /tmp/oom.sh && sh /tmp/oom.sh; echo "RESULT oom $?"
grep -c -e '^echo 7340032 > /sys/fs/cgroup/imagetool/script-[0-9a-f]*/memory.max$' /tmp/oom.sh | sed 's/^/RESULT memory_max /'
r '{"memory": "7m"}' sh -c 'data=$(head -c 2000000 /dev/urandom); cat /sys/fs/cgroup/memory.max' > /tmp/fits.sh && sh /tmp/fits.sh > /tmp/fits.out; echo "RESULT fits $? $(cat /tmp/fits.out)"
r '{"pids_limit": 20, "cpus": 0.5}' no-such-command > /tmp/fail.sh && sh /tmp/fail.sh; echo "RESULT fail $?"
echo "RESULT leftover_cgroups $(find /sys/fs/cgroup/imagetool -mindepth 1 -maxdepth 1 -type d 2>/dev/null | wc -l)"
echo "RESULT parent_group $(test -d /sys/fs/cgroup/imagetool && echo present || echo absent)"
echo "RESULT leftover_mounts $(grep -c -e overlay -e /var/tmp/c -e imagetool-script /proc/self/mountinfo)"
echo "RESULT leftover_tmp $(ls -d /tmp/imagetool-script.* 2>/dev/null | wc -l)"
"""


def test_v2_vm_script(tmp_path):
    """One boot of the cgroup-v2-only VM: the script prints hello, the seed's 7 MB demonstration
    (memory.max; 7.5 MB killed → 137, 2 MB fits), a failing command, and nothing left behind."""
    out = v2vm.boot(tmp_path, V2_GUEST, started_marker="LAYOUT", timeout=400)
    results = dict(line.split(" ", 2)[1:] for line in out.splitlines()
                   if line.startswith("RESULT ") and line.count(" ") >= 2)
    assert "LAYOUT v2" in out
    assert results["hello"] == "0 hello"
    assert results["oom"] == "137"
    assert results["memory_max"] == "1"
    assert results["fits"] == "0 7340032"
    assert results["fail"] == "127"
    assert results["leftover_cgroups"] == "0"
    assert results["parent_group"] == "absent"
    assert results["leftover_mounts"] == "0"
    assert results["leftover_tmp"] == "0"


# ---------------------------------------------------------------- rendering


def test_rendering_runs_nothing(store, tmp_path):
    before = _mountinfo(tmp_path, store)
    text = render(store, tmp_path, "echo", "hello", memory="7m")
    assert text.startswith("#!/bin/sh\n")
    groups = re.findall(r"^mkdir -p (\S+/script-[0-9a-f]+)$", text, re.M)
    assert groups and not any(Path(g).exists() for g in groups)
    assert _mountinfo(tmp_path, store) == before
    assert list(tmp_path.glob("imagetool-script.*")) == []


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_script_passes_shellcheck(store, tmp_path):
    path = tmp_path / "container.sh"
    path.write_text(render(store, tmp_path, "sh", "-c", "echo 'it''s'; exit 3", memory="7m", cpus=0.5,
                           pids_limit=20, env=["A=$(x) `y`"], volumes=[f"{tmp_path}:/data"]))
    init = tmp_path / "init.sh"   # the heredoc the script writes: the init, checked on its own
    init.write_text(re.search(r"<<'(\w+)'\n(.*?)\n\1\n", path.read_text(), re.S).group(2))
    r = subprocess.run(["shellcheck", "-s", "sh", "-S", "warning", str(path), str(init)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("version,groups,resources,expected", [
    (1, {"memory": "/m", "cpu": "/c", "pids": "/p"},
     {"memory": {"limit": 7340032, "swap": 14680064}, "cpu": {"quota": 50000, "period": 100000}, "pids": {"limit": 20}},
     ["echo 7340032 > /m/memory.limit_in_bytes", "echo 14680064 > /m/memory.memsw.limit_in_bytes",
      "echo 100000 > /c/cpu.cfs_period_us", "echo 50000 > /c/cpu.cfs_quota_us", "echo 20 > /p/pids.max"]),
    (2, {"": "/g"},
     {"memory": {"limit": 7340032, "swap": 14680064}, "cpu": {"quota": 50000, "period": 100000}, "pids": {"limit": 20}},
     ["echo 7340032 > /g/memory.max", "echo 7340032 > /g/memory.swap.max", "echo '50000 100000' > /g/cpu.max",
      "echo 20 > /g/pids.max"]),
    (2, {"": "/g"}, {"memory": {"limit": 1 << 20, "swap": -1}}, ["echo 1048576 > /g/memory.max", "echo max > /g/memory.swap.max"]),
    (1, {"devices": "/d"}, {"devices": [{"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"}]},
     ["echo 'a *:* rwm' > /d/devices.deny", "echo 'c 1:9 rwm' > /d/devices.allow"]),
], ids=["v1", "v2", "v2-unlimited-swap", "v1-devices"])
def test_cgroup_limit_commands_carry_the_values_the_runtime_writes(version, groups, resources, expected):
    assert shell.cgroup_limits(version, groups, resources) == expected


@pytest.mark.parametrize("m,expected", [
    (Mount("overlay", "overlay", "/c/rootfs", ("lowerdir=l/1:l/0", "upperdir=upper", "workdir=work"), cwd="/c"),
     "(cd /c && mount -t overlay -o lowerdir=l/1:l/0,upperdir=upper,workdir=work overlay /c/rootfs)"),
    (Mount("proc", "proc", "proc", ("nosuid", "noexec", "nodev")), "mount -t proc -o nosuid,noexec,nodev proc proc"),
    (Mount("bind", "/host dir", "data", ("rbind", "ro", "rro")),
     "mount --rbind '/host dir' data && mount -o remount,bind,ro data && findmnt -Rlno TARGET -- data | "
     "tail -n +2 | while IFS= read -r m; do mount -o remount,bind,ro \"$m\"; done"),
    (Mount("bind", "/h", "d", ("bind",)), "mount --bind /h d"),
], ids=["overlay-cwd", "proc", "bind-ro", "bind"])
def test_mount_commands(m, expected):
    assert shell.mount(m) == expected


def test_step_commands_are_the_ones_a_person_types():
    assert shell.unshare(["pid", "ipc", "uts", "mount", "network", "cgroup"]) == \
        "unshare --mount --uts --ipc --net --pid --fork --cgroup"
    assert shell.mknod("dev/urandom", "c", 1, 9) == "mknod -m 666 dev/urandom c 1 9"
    assert shell.cgroup_join("/sys/fs/cgroup/pids/imagetool/x") == "echo $$ > /sys/fs/cgroup/pids/imagetool/x/cgroup.procs"
    assert shell.setpriv(uid=1000, gid=1000, bounding=["CAP_CHOWN", "CAP_KILL"], no_new_privs=True) == \
        "setpriv --reuid=1000 --regid=1000 --clear-groups --bounding-set=-all,+chown,+kill --inh-caps=-all --no-new-privs"
    assert shell.setpriv(uid=0, gid=0, groups=[10, 20], bounding=None, inheritable=None) == \
        "setpriv --reuid=0 --regid=0 --groups=10,20"
    assert shell.rlimit_options([{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024},
                                 {"type": "RLIMIT_CORE", "soft": 0, "hard": (1 << 64) - 1}]) == \
        ["--nofile=1024:1024", "--core=0:unlimited"]
    assert shell.exec_command(["sh", "-c", "echo $HOME"], ["HOME=/root"]) == \
        "exec env -i HOME=/root sh -c 'echo $HOME'"
