"""docker's security options: what reaches the spec, and what a container can then do, for real.

Spec part (no container): --cap-add/--cap-drop/--privileged/--security-opt/--device/--tmpfs/
--shm-size/--ulimit/--sysctl/--group-add and the default pids limit, table-driven through specgen.
Container part: `imagetool run` with the built-in runtime and with `--runtime runc`; the attacks of
issue 14 item 3 (unshare -U -r, then mount a cgroup hierarchy to lift the limits; the host's
keyring) performed and shown refused. A built-in-runtime case whose init wiring has not landed yet
is skipped with that reason (see `_builtin_missing`).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from imagetool.errors import ImagetoolError
from imagetool.runtime import capabilities, seccomp
from imagetool.specgen import DEFAULT_PIDS_LIMIT, spec_from_image
from tests.runhelpers import REPO, Imagetool, add_image, kernel_skip_reason
from tests.syscall_probe import write_probe

PODMAN_PROFILE = "/usr/share/containers/seccomp.json"


def cfg(**kw):
    return SimpleNamespace(cmd=["sh"], entrypoint=None, env=[], working_dir=None, user=None, **kw)


def opts(**kw):
    from imagetool.containers import RunOptions

    return RunOptions(image="busybox", **kw)


def spec_for(**kw) -> dict:
    return spec_from_image(cfg(), opts(**kw), hostname="h")


# ---------------------------------------------------------------- the spec


CAPS = [
    ("default_is_dockers_14", {}, set(capabilities.DEFAULT_CAPS)),
    ("add_without_prefix", {"cap_add": ["net_admin"]}, set(capabilities.DEFAULT_CAPS) | {"CAP_NET_ADMIN"}),
    ("drop_with_prefix", {"cap_drop": ["CAP_CHOWN"]}, set(capabilities.DEFAULT_CAPS) - {"CAP_CHOWN"}),
    ("drop_all_keeps_the_added", {"cap_drop": ["ALL"], "cap_add": ["kill"]}, {"CAP_KILL"}),
    ("add_all_minus_dropped", {"cap_add": ["ALL"], "cap_drop": ["SYS_ADMIN"]},
     set(capabilities.all_caps()) - {"CAP_SYS_ADMIN"}),
    ("in_both_is_kept", {"cap_add": ["CHOWN"], "cap_drop": ["CHOWN"]}, set(capabilities.DEFAULT_CAPS)),
    ("privileged_is_all", {"privileged": True, "cap_drop": ["CHOWN"]}, set(capabilities.all_caps())),
]


@pytest.mark.parametrize("name,kw,want", CAPS, ids=[c[0] for c in CAPS])
def test_capability_options_follow_docker(name, kw, want):
    c = spec_for(**kw)["process"]["capabilities"]
    assert set(c["bounding"]) == set(c["effective"]) == set(c["permitted"]) == want


def test_an_unknown_capability_is_one_clear_error():
    with pytest.raises(ImagetoolError, match="unknown capability: 'CAP_FLY'"):
        spec_for(cap_add=["fly"])


def test_seccomp_is_on_by_default_and_follows_the_capabilities():
    default = spec_for()["linux"]["seccomp"]
    assert default == seccomp.profile_to_oci(seccomp.default_profile(), capabilities.DEFAULT_CAPS)
    admin = spec_for(cap_add=["SYS_ADMIN"])["linux"]["seccomp"]
    allowed = {n for s in admin["syscalls"] if s["action"] == "SCMP_ACT_ALLOW" and "args" not in s
               for n in s["names"]}
    assert {"mount", "unshare", "setns", "clone"} <= allowed


@pytest.mark.parametrize("kw", [{"security_opt": ["seccomp=unconfined"]}, {"privileged": True},
                                {"privileged": True, "security_opt": [f"seccomp={PODMAN_PROFILE}"]}],
                         ids=["unconfined", "privileged", "privileged_ignores_a_profile"])
def test_no_seccomp_when_unconfined_or_privileged(kw):
    assert "seccomp" not in spec_for(**kw)["linux"]


def test_a_profile_file_is_used_as_given(tmp_path):
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW",
                             "syscalls": [{"names": ["chmod"], "action": "SCMP_ACT_ERRNO"}]}))
    assert spec_for(security_opt=[f"seccomp:{p}"])["linux"]["seccomp"] == {
        "defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["chmod"], "action": "SCMP_ACT_ERRNO"}]}


def test_privileged_opens_devices_masks_and_sys():
    s = spec_for(privileged=True)
    assert s["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert s["linux"]["maskedPaths"] == [] and s["linux"]["readonlyPaths"] == []
    for dest in ("/sys", "/sys/fs/cgroup"):
        assert "ro" not in next(m for m in s["mounts"] if m["destination"] == dest)["options"]
    paths = {d["path"] for d in s["linux"]["devices"]}
    assert "/dev/null" in paths and not any(p.startswith(("/dev/pts/", "/dev/shm/")) for p in paths)


def test_no_new_privileges_is_on_unless_turned_off():
    assert spec_for()["process"]["noNewPrivileges"] is True
    assert spec_for(security_opt=["no-new-privileges"])["process"]["noNewPrivileges"] is True
    assert spec_for(security_opt=["no-new-privileges=false"])["process"]["noNewPrivileges"] is False


def test_a_device_becomes_a_node_and_a_cgroup_rule():
    st = os.stat("/dev/null")
    s = spec_for(devices=["/dev/null:/dev/mynull:rw"])
    assert s["linux"]["devices"] == [{"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3,
                                      "fileMode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}]
    assert s["linux"]["resources"]["devices"][-1] == {"allow": True, "type": "c", "major": 1, "minor": 3,
                                                      "access": "rw"}
    assert spec_for(devices=["/dev/zero:rm"])["linux"]["devices"][0]["path"] == "/dev/zero"


def test_tmpfs_shm_and_ulimits():
    s = spec_for(tmpfs=["/scratch:size=1m,exec"], shm_size="1m", ulimits=["nofile=100:200", "core=-1"])
    scratch = next(m for m in s["mounts"] if m["destination"] == "/scratch")
    assert scratch == {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
                       "options": ["nosuid", "nodev", "size=1m", "exec"]}
    shm = next(m for m in s["mounts"] if m["destination"] == "/dev/shm")
    assert "size=1048576" in shm["options"] and "size=65536k" not in shm["options"]
    assert sorted(s["process"]["rlimits"], key=lambda r: r["type"]) == [
        {"type": "RLIMIT_CORE", "hard": (1 << 64) - 1, "soft": (1 << 64) - 1},
        {"type": "RLIMIT_NOFILE", "hard": 200, "soft": 100}]


def test_namespaced_sysctls_reach_the_spec():
    s = spec_for(sysctls=["kernel.shmmax=65536", "net/ipv4/ip_forward=1", "fs.mqueue.msg_max=20"])
    assert s["linux"]["sysctl"] == {"kernel.shmmax": "65536", "net.ipv4.ip_forward": "1",
                                    "fs.mqueue.msg_max": "20"}


def test_group_add_numbers_and_names(tmp_path):
    assert spec_for(group_add=["10", "20"])["process"]["user"]["additionalGids"] == [10, 20]
    with pytest.raises(ImagetoolError, match="group names are not resolved in the container yet"):
        spec_for(group_add=["audio"])  # refused, never silently dropped
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "group").write_text("audio:x:29:\n")
    s = spec_from_image(cfg(), opts(group_add=["audio", "7"]), rootfs_dir=tmp_path)
    assert s["process"]["user"]["additionalGids"] == [29, 7]


def test_default_pids_limit_is_podmans_and_minus_one_is_none():
    assert spec_for()["linux"]["resources"]["pids"] == {"limit": DEFAULT_PIDS_LIMIT} == {"limit": 2048}
    assert "pids" not in spec_for(pids_limit=-1)["linux"]["resources"]
    assert spec_for(pids_limit=50)["linux"]["resources"]["pids"] == {"limit": 50}


REFUSED_OPTIONS = [
    ("sysctl_not_namespaced", {"sysctls": ["vm.swappiness=1"]}, "sysctl vm.swappiness is not allowed"),
    ("sysctl_kernel_hostname", {"sysctls": ["kernel.hostname=x"]}, "not namespaced"),
    ("sysctl_climbing_out", {"sysctls": ["net/../../kernel/core_pattern=|/x"]}, "invalid sysctl"),
    ("sysctl_net_with_host_network", {"sysctls": ["net.ipv4.ip_forward=1"], "network": "host"},
     "not allowed with --network host"),
    ("device_not_a_device", {"devices": ["/etc/passwd"]}, "is not a device node"),
    ("device_missing", {"devices": ["/dev/nonexistent-h2"]}, "No such file"),
    ("device_bad_permissions", {"devices": ["/dev/null:/dev/n:rwx"]}, "invalid device permissions"),
    ("device_relative", {"devices": ["/dev/null:dev/n"]}, "must be absolute"),
    ("ulimit_unknown", {"ulimits": ["bogus=1"]}, "invalid ulimit"),
    ("ulimit_soft_above_hard", {"ulimits": ["nofile=20:10"]}, "soft limit is above"),
    ("tmpfs_relative", {"tmpfs": ["scratch"]}, "invalid tmpfs"),
    ("security_opt_unknown", {"security_opt": ["apparmor=docker-default"]}, "unsupported --security-opt"),
    ("seccomp_file_missing", {"security_opt": ["seccomp=/nonexistent/p.json"]}, "cannot read seccomp profile"),
    ("group_add_bad", {"group_add": ["a:b"]}, "invalid --group-add"),
]


@pytest.mark.parametrize("name,kw,message", REFUSED_OPTIONS, ids=[r[0] for r in REFUSED_OPTIONS])
def test_bad_options_are_one_clear_error(name, kw, message):
    with pytest.raises(ImagetoolError) as e:
        spec_for(**kw)
    assert message in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------- containers, for real

_reason = kernel_skip_reason()
needs_containers = pytest.mark.skipif(_reason is not None, reason=_reason or "")
RUNTIMES = ["imagetool", "runc"]

# What the built-in runtime must do for each feature, and a fragment its source has once it does.
_WIRING = {"seccomp": ("seccomp.load", "seccomp.program"), "sysctl": ('"sysctl"',),
           "devices": ('linux.get("devices")', '{}).get("devices")', 'linux["devices"]')}


def _builtin_missing(feature: str) -> str | None:
    src = "".join(p.read_text() for p in (REPO / "imagetool" / "runtime").rglob("*.py")
                  if p.name not in ("seccomp.py", "devices.py", "spec.py", "capabilities.py", "syscalls.py"))
    if any(needle in src for needle in _WIRING[feature]):
        return None
    return f"the built-in runtime does not apply {feature} from the spec yet (H1's init wiring)"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from fixtures.images import busybox_image

    root = tmp_path_factory.mktemp("imagetool-secopts") / "store"
    add_image(root, busybox_image(), "docker.io/library/busybox:latest")
    return root


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    """Raw-syscall probes (x86_64) for what busybox cannot call; run as /probe/NAME."""
    if os.uname().machine != "x86_64":
        pytest.skip("the syscall probes are x86_64 machine code")
    d = tmp_path_factory.mktemp("probes")
    os.chmod(d, 0o755)
    nr = seccomp._lib().seccomp_syscall_resolve_name
    for name, args in (("keyctl", (0, 0, 0, 0, 0)), ("add_key", (0, 0, 0, 0, 0)), ("request_key", (0, 0, 0, 0)),
                       ("clone3", (0, 0)), ("io_uring_setup", (1, 0)), ("getppid", ())):
        write_probe(d, name, nr(name.encode()), *args)
    return d


def run(store, runtime, *args, check=True):
    it = Imagetool(store)
    rt = [] if runtime == "imagetool" else ["--runtime", runtime]
    if runtime != "imagetool" and not shutil.which(runtime):
        pytest.skip(f"{runtime} is not installed")
    r = it("run", "--rm", *rt, *args)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def need(runtime, feature):
    if runtime == "imagetool":
        reason = _builtin_missing(feature)
        if reason:
            pytest.skip(reason)


def seccomp_mode(out: str) -> str:
    return next(line.split()[1] for line in out.splitlines() if line.startswith("Seccomp:"))


@needs_containers
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_seccomp_is_on_by_default_and_off_when_unconfined(store, runtime):
    need(runtime, "seccomp")
    assert seccomp_mode(run(store, runtime, "busybox", "cat", "/proc/self/status").stdout) == "2"
    out = run(store, runtime, "--security-opt", "seccomp=unconfined", "busybox", "cat", "/proc/self/status").stdout
    assert seccomp_mode(out) == "0"


@needs_containers
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_unshare_and_mount_are_refused(store, runtime):
    need(runtime, "seccomp")
    r = run(store, runtime, "busybox", "sh", "-c",
            "unshare -U true; echo unshare=$?; mount -t tmpfs t /mnt; echo mount=$?", check=False)
    assert "unshare=1" in r.stdout and "mount=255" in r.stdout or "mount=1" in r.stdout, r.stdout + r.stderr
    assert "Operation not permitted" in r.stderr


@needs_containers
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_limits_cannot_be_lifted_through_a_user_namespace(store, runtime):
    """Issue 14 item 3: container root made a user namespace, mounted a cgroup hierarchy there and
    raised its own memory limit. The first step is now refused, so the mount never happens."""
    need(runtime, "seccomp")
    attack = ("unshare -U -r sh -c 'mkdir -p /tmp/cg && mount -t cgroup -o memory cg /tmp/cg && "
              "echo MOUNTED && echo -1 > /tmp/cg/memory.limit_in_bytes && echo LIFTED'; echo rc=$?")
    r = run(store, runtime, "-m", "64m", "busybox", "sh", "-c", attack, check=False)
    assert "MOUNTED" not in r.stdout and "LIFTED" not in r.stdout
    assert "rc=1" in r.stdout and "Operation not permitted" in r.stderr


KEYRING_AND_MORE = [("keyctl", errno.EPERM), ("add_key", errno.EPERM), ("request_key", errno.EPERM),
                    ("io_uring_setup", errno.EPERM), ("clone3", errno.ENOSYS), ("getppid", 0)]


@needs_containers
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_keyring_io_uring_and_clone3_answers(store, probes, runtime):
    need(runtime, "seccomp")
    script = "; ".join(f"/probe/{n}; echo {n}=$?" for n, _ in KEYRING_AND_MORE)
    out = run(store, runtime, "-v", f"{probes}:/probe:ro", "busybox", "sh", "-c", script).stdout
    assert out.split() == [f"{n}={e}" for n, e in KEYRING_AND_MORE]


@needs_containers
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_cap_sys_admin_gives_clone3_back(store, probes, runtime):
    need(runtime, "seccomp")
    out = run(store, runtime, "--cap-add", "SYS_ADMIN", "-v", f"{probes}:/probe:ro", "busybox", "sh", "-c",
              "/probe/clone3; echo $?").stdout
    assert out.strip() == str(errno.EINVAL)  # the kernel's own answer to clone3(NULL, 0)


@needs_containers
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_cap_add_net_admin_allows_a_link_in_the_containers_own_netns(store, runtime):
    # (a veth pair: this kernel has no dummy links, and the test is about the capability)
    script = "ip link add h2veth0 type veth && ip link show h2veth0 >/dev/null && echo CREATED"
    denied = run(store, runtime, "busybox", "sh", "-c", script, check=False)
    assert "CREATED" not in denied.stdout and "Operation not permitted" in denied.stderr
    r = run(store, runtime, "--cap-add", "NET_ADMIN", "busybox", "sh", "-c", script, check=False)
    assert "CREATED" in r.stdout, r.stderr
    assert not Path("/sys/class/net/h2veth0").exists()  # made in the container's namespace only


@needs_containers
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_cap_drop_chown_makes_chown_fail(store, runtime):
    assert run(store, runtime, "busybox", "sh", "-c", "chown 1 /tmp && echo OK").stdout.strip() == "OK"
    r = run(store, runtime, "--cap-drop", "CHOWN", "busybox", "sh", "-c", "chown 1 /tmp && echo OK", check=False)
    assert "OK" not in r.stdout and "Operation not permitted" in r.stderr


@needs_containers
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_privileged_sees_host_devices_without_seccomp(store, runtime):
    need(runtime, "devices")
    host = sorted(p.name for p in Path("/dev").iterdir() if p.is_block_device())
    if not host:
        pytest.skip("the host has no block device to look for")
    out = run(store, runtime, "--privileged", "busybox", "sh", "-c",
              f"ls /dev/{host[0]} && grep Seccomp: /proc/self/status").stdout
    assert f"/dev/{host[0]}" in out and seccomp_mode(out) == "0"
    r = run(store, runtime, "busybox", "ls", f"/dev/{host[0]}", check=False)
    assert r.returncode != 0


@needs_containers
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_device_given_with_device_is_usable(store, runtime):
    need(runtime, "devices")
    out = run(store, runtime, "--device", "/dev/null:/dev/h2null", "busybox", "sh", "-c",
              "echo x > /dev/h2null && echo WROTE").stdout
    assert out.strip() == "WROTE"


@needs_containers
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_malformed_profile_is_one_line_and_exit_125(store, runtime, tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [')
    r = run(store, runtime, "--security-opt", f"seccomp={p}", "busybox", "true", check=False)
    assert r.returncode == 125
    lines = [line for line in r.stderr.splitlines() if not line.startswith("hint:")]
    assert len(lines) == 1 and lines[0].startswith("imagetool: error: seccomp profile") and "valid JSON" in lines[0]


@needs_containers
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_podmans_profile_loads_in_a_container(store, runtime):
    need(runtime, "seccomp")
    if not os.path.exists(PODMAN_PROFILE):
        pytest.skip(f"{PODMAN_PROFILE} is not installed")
    out = run(store, runtime, "--security-opt", f"seccomp={PODMAN_PROFILE}", "busybox", "cat",
              "/proc/self/status").stdout
    assert seccomp_mode(out) == "2"


@needs_containers
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_refused_sysctl_is_exit_125(store, runtime):
    r = run(store, runtime, "--sysctl", "kernel.panic=1", "busybox", "true", check=False)
    assert r.returncode == 125 and "sysctl kernel.panic is not allowed" in r.stderr


@needs_containers
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_tmpfs_shm_ulimit_and_groups_reach_the_container(store, runtime):
    out = run(store, runtime, "--tmpfs", "/scratch:size=1m", "--shm-size", "2m", "--ulimit", "nofile=100:200",
              "--group-add", "1234", "busybox", "sh", "-c",
              "df -k /scratch /dev/shm | tail -2 | awk '{print $2}'; ulimit -n; ulimit -Hn; id -G").stdout
    lines = out.split("\n")
    assert lines[:4] == ["1024", "2048", "100", "200"]
    assert "1234" in lines[4].split()


@needs_containers
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_namespaced_sysctl_reaches_the_container_only(store, runtime):
    need(runtime, "sysctl")
    with open("/proc/sys/kernel/shmmni") as f:
        host = f.read()
    out = run(store, runtime, "--sysctl", "kernel.shmmni=1234", "busybox", "cat", "/proc/sys/kernel/shmmni").stdout
    assert out.strip() == "1234"
    with open("/proc/sys/kernel/shmmni") as f:
        assert f.read() == host


@needs_containers
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_default_pids_limit_is_in_force(store, runtime):
    """Issue 14 item 7: 3000 processes fitted in a container without --pids-limit."""
    script = "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max"
    assert run(store, runtime, "busybox", "sh", "-c", script).stdout.strip() == str(DEFAULT_PIDS_LIMIT)
    assert run(store, runtime, "--pids-limit", "-1", "busybox", "sh", "-c", script).stdout.strip() == "max"


@needs_containers
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_seccomp_is_loaded_without_no_new_privileges_too(store, runtime):
    """no_new_privs off: the filter goes in while CAP_SYS_ADMIN is still held (as runc does)."""
    need(runtime, "seccomp")
    out = run(store, runtime, "--security-opt", "no-new-privileges=false", "busybox", "cat",
              "/proc/self/status").stdout
    status = dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)
    assert status["NoNewPrivs"] == "0" and status["Seccomp"] == "2"
    assert status["CapEff"] == f"{capabilities.mask(capabilities.DEFAULT_CAPS):016x}"
