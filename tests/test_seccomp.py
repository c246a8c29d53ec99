"""seccomp: the default profile refuses what docker refuses, for real, in a forked child.

Unit part (no container): profile_to_oci's capability/arch/kernel rules, build() through the
system's libseccomp, load() in a forked child with no_new_privs, the cache, and the one-line
errors. The end-to-end part (`imagetool run`) is in tests/test_security_options.py.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os

import pytest

from imagetool.errors import ImagetoolError
from imagetool.runtime import capabilities, seccomp, syscalls

PODMAN_PROFILE = "/usr/share/containers/seccomp.json"

try:
    seccomp._lib()
except ImagetoolError as e:  # pragma: no cover - libseccomp2 is a test dependency
    pytest.skip(str(e), allow_module_level=True)

_libc = ctypes.CDLL(None, use_errno=True)


def nr(name: str) -> int:
    """The native syscall number of `name` (libseccomp's table: no per-arch constants here)."""
    n = seccomp._lib().seccomp_syscall_resolve_name(name.encode())
    assert n >= 0, name
    return n


def errno_of(name: str, *args) -> int:
    """Call syscall `name` raw; 0 when it succeeded, else its errno."""
    ret = _libc.syscall(nr(name), *[ctypes.c_ulong(a) for a in args])
    return ctypes.get_errno() if ret == -1 else 0


def in_filtered_child(program: bytes, probe) -> dict:
    """Fork, set no_new_privs, load `program`, run probe() -> dict and return its result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
            seccomp.load(program)
            out = probe()
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            out = {"error": repr(e)}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    result = json.loads(data)
    assert "error" not in result, result["error"]
    return result


def default_program(caps=capabilities.DEFAULT_CAPS) -> bytes:
    return seccomp.build(seccomp.profile_to_oci(seccomp.default_profile(), caps))


def status_seccomp() -> str:
    with open("/proc/self/status") as f:
        return next(line.split()[1] for line in f if line.startswith("Seccomp:"))


CLONE_NEWUSER = 0x10000000
CLONE_NEWNS = 0x00020000


def test_the_default_filter_is_in_force_in_the_child():
    got = in_filtered_child(default_program(), lambda: {"mode": status_seccomp(), "pid": os.getpid()})
    assert got["mode"] == "2"


# What docker's default policy refuses, and the answer a refused call gets.
REFUSED = [
    ("unshare_user_namespace", "unshare", (CLONE_NEWUSER,), errno.EPERM),
    ("unshare_mount_namespace", "unshare", (CLONE_NEWNS,), errno.EPERM),
    ("clone_with_namespace_flags", "clone", (CLONE_NEWUSER | 17, 0, 0, 0, 0), errno.EPERM),
    ("mount", "mount", (0, 0, 0, 0, 0), errno.EPERM),
    ("umount2", "umount2", (0, 0), errno.EPERM),
    ("pivot_root", "pivot_root", (0, 0), errno.EPERM),
    ("keyctl_reads_the_host_keyring", "keyctl", (0, 0, 0, 0, 0), errno.EPERM),
    ("add_key", "add_key", (0, 0, 0, 0, 0), errno.EPERM),
    ("request_key", "request_key", (0, 0, 0, 0), errno.EPERM),
    ("io_uring_setup", "io_uring_setup", (1, 0), errno.EPERM),
    ("perf_event_open", "perf_event_open", (0, 0, 0, 0, 0), errno.EPERM),
    ("bpf", "bpf", (0, 0, 0), errno.EPERM),
    ("setns", "setns", (0, 0), errno.EPERM),
    ("kexec_load", "kexec_load", (0, 0, 0, 0), errno.EPERM),
    ("init_module", "init_module", (0, 0, 0), errno.EPERM),
    ("open_by_handle_at_shocker", "open_by_handle_at", (0, 0, 0), errno.EPERM),
    ("personality_with_other_flags", "personality", (0x0040000,), errno.EPERM),
    ("clone3_gets_enosys_so_glibc_falls_back", "clone3", (0, 0), errno.ENOSYS),
]


@pytest.mark.parametrize("name,call,args,want", REFUSED, ids=[r[0] for r in REFUSED])
def test_default_profile_refuses(name, call, args, want):
    got = in_filtered_child(default_program(), lambda: {"errno": errno_of(call, *args)})
    assert got["errno"] == want, f"{call}: got {errno.errorcode.get(got['errno'], got['errno'])}"


def test_ordinary_programs_keep_working_under_the_default_profile(tmp_path):
    def probe():
        pid = os.fork()  # glibc's fork is clone without namespace flags
        if pid == 0:
            os._exit(7)
        _, status = os.waitpid(pid, 0)
        p = tmp_path / "f"
        p.write_text("x")
        os.chmod(p, 0o600)
        r, w = os.pipe()
        os.write(w, b"ok")
        return {"child": os.waitstatus_to_exitcode(status), "read": p.read_text(),
                "pipe": os.read(r, 2).decode(), "personality": errno_of("personality", 0xFFFFFFFF)}
    got = in_filtered_child(default_program(), probe)
    assert got == {"child": 7, "read": "x", "pipe": "ok", "personality": 0}


def test_cap_sys_admin_opens_the_namespace_calls_as_docker_does():
    caps = set(capabilities.DEFAULT_CAPS) | {"CAP_SYS_ADMIN"}
    got = in_filtered_child(default_program(caps), lambda: {
        "clone3": errno_of("clone3", 0, 0), "mount": errno_of("mount", 0, 0, 0, 0, 0)})
    assert got["clone3"] != errno.ENOSYS  # the kernel sees it (and refuses the NULL args itself)
    if os.geteuid() == 0:  # root: the kernel itself would allow it, so EPERM could only be seccomp's
        assert got["mount"] not in (0, errno.EPERM)


def test_profile_rules_follow_caps_arch_and_kernel():
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
                    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
        "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["both"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_A", "CAP_B"]}},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
             "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"]}},
            {"names": ["not_on_arm"], "action": "SCMP_ACT_ALLOW", "excludes": {"arches": ["arm64"]}},
            {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
            {"name": "single", "action": "SCMP_ACT_ALLOW"},
        ],
    }

    def names(caps, arch, kernel="6.1.0-13-amd64"):
        oci = seccomp.profile_to_oci(profile, caps, arch, kernel)
        return oci["architectures"], sorted(n for s in oci["syscalls"] for n in s["names"])

    assert names(set(), "x86_64") == (["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
                                      ["arch_prctl", "clone3", "not_on_arm", "ptrace", "read", "single"])
    assert names({"CAP_SYS_ADMIN", "CAP_A"}, "amd64")[1] == ["arch_prctl", "mount", "not_on_arm",
                                                              "ptrace", "read", "single"]
    assert "both" in names({"CAP_A", "CAP_B"}, "amd64")[1]
    assert names(set(), "aarch64") == (["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
                                       ["clone3", "ptrace", "read", "single"])
    assert "ptrace" not in names(set(), "x86_64", kernel="4.4.0")[1]


def test_the_oci_section_keeps_errno_and_args():
    oci = seccomp.profile_to_oci(seccomp.default_profile(), capabilities.DEFAULT_CAPS, "x86_64")
    assert oci["defaultAction"] == "SCMP_ACT_ERRNO" and oci["defaultErrnoRet"] == errno.EPERM
    clone3 = [s for s in oci["syscalls"] if s["names"] == ["clone3"]]
    assert clone3 == [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS}]
    clone = [s for s in oci["syscalls"] if s["names"] == ["clone"]]
    assert clone == [{"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                      "args": [{"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}]
    allowed = {n for s in oci["syscalls"] if s["action"] == "SCMP_ACT_ALLOW" for n in s["names"]}
    assert not allowed & {"keyctl", "add_key", "request_key", "io_uring_setup", "mount", "unshare",
                          "perf_event_open", "bpf", "pivot_root", "umount2", "setns"}


def test_podmans_profile_loads():
    if not os.path.exists(PODMAN_PROFILE):
        pytest.skip(f"{PODMAN_PROFILE} is not installed (package golang-github-containers-common)")
    oci = seccomp.profile_to_oci(seccomp.read_profile(PODMAN_PROFILE), capabilities.DEFAULT_CAPS)
    got = in_filtered_child(seccomp.build(oci), lambda: {
        "mode": status_seccomp(), "kexec": errno_of("kexec_file_load", 0, 0, 0, 0, 0), "getpid": errno_of("getpid")})
    assert got == {"mode": "2", "kexec": errno.EPERM, "getpid": 0}


def test_unknown_syscall_names_are_skipped_as_runc_does():
    oci = {"defaultAction": "SCMP_ACT_ALLOW",
           "syscalls": [{"names": ["no_such_syscall_at_all", "getppid"], "action": "SCMP_ACT_ERRNO",
                         "errnoRet": errno.EACCES}]}
    got = in_filtered_child(seccomp.build(oci), lambda: {"getppid": errno_of("getppid")})
    assert got["getppid"] == errno.EACCES


def test_a_repeated_argument_index_means_any_of_the_values():
    oci = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["getpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EDOM,
         "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}, {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]}]}
    got = in_filtered_child(seccomp.build(oci), lambda: {
        n: errno_of("getpriority", n, 0) for n in (0, 1, 2)})
    assert got == {"0": 0, "1": errno.EDOM, "2": errno.EDOM}


MALFORMED = [
    ("unknown_default_action", {"defaultAction": "SCMP_ACT_MAYBE"}, "unknown action 'SCMP_ACT_MAYBE'"),
    ("no_default_action", {"syscalls": []}, "unknown action None"),
    ("unknown_rule_action", {"defaultAction": "SCMP_ACT_ALLOW",
                             "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOPE"}]}, "unknown action"),
    ("name_and_names", {"defaultAction": "SCMP_ACT_ALLOW",
                        "syscalls": [{"name": "read", "names": ["write"], "action": "SCMP_ACT_ERRNO"}]},
     "either 'name' or 'names'"),
    ("architectures_and_archmap", {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86"],
                                   "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]},
     "either 'architectures' or 'archMap'"),
    ("bad_operator", {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 1, "op": "EQ"}]}]},
     "invalid argument condition"),
    ("notify_without_listener", {"defaultAction": "SCMP_ACT_NOTIFY"}, "needs a listener"),
    ("not_an_object", ["SCMP_ACT_ALLOW"], "not a JSON object"),
]


@pytest.mark.parametrize("name,profile,message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_profile_is_one_clear_error(name, profile, message):
    with pytest.raises(ImagetoolError) as e:
        seccomp.build(seccomp.profile_to_oci(profile, capabilities.DEFAULT_CAPS))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_an_unknown_architecture_is_refused_by_build():
    with pytest.raises(ImagetoolError, match="unknown architecture 'SCMP_ARCH_VAX'"):
        seccomp.build({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"]})


@pytest.mark.parametrize("text", ["{", "", "[1, 2"])
def test_a_file_that_is_not_json_is_one_clear_error(tmp_path, text):
    p = tmp_path / "p.json"
    p.write_text(text)
    with pytest.raises(ImagetoolError, match="is not valid JSON") as e:
        seccomp.read_profile(p)
    assert "\n" not in str(e.value)


def test_the_cache_returns_the_program_without_building_it(tmp_path, monkeypatch):
    oci = seccomp.profile_to_oci(seccomp.default_profile(), capabilities.DEFAULT_CAPS)
    first = seccomp.compile(oci, tmp_path / "c")
    assert first == seccomp.build(oci)
    assert oct((tmp_path / "c").stat().st_mode & 0o777) == "0o700"

    def no_build(_):
        raise AssertionError("built again")
    monkeypatch.setattr(seccomp, "build", no_build)
    assert seccomp.compile(oci, tmp_path / "c") == first


def test_a_cache_others_can_write_is_not_trusted(tmp_path, monkeypatch):
    oci = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_KILL"}]}
    cache = tmp_path / "c"
    seccomp.compile(oci, cache)
    (cache / (seccomp.cache_key(oci) + ".bpf")).write_bytes(b"\x06\x00\x00\x00\x00\x00\xff\x7f")  # allow all
    os.chmod(cache, 0o777)
    assert seccomp.compile(oci, cache) == seccomp.build(oci)


def test_a_cache_below_a_directory_others_can_write_is_not_trusted(tmp_path):
    """(another user could swap the cache directory itself for one holding an allow-all filter)"""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    oci = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_KILL"}]}
    seccomp.compile(oci, shared / "c")
    (shared / "c" / (seccomp.cache_key(oci) + ".bpf")).write_bytes(b"\x06\x00\x00\x00\x00\x00\xff\x7f")
    assert seccomp.compile(oci, shared / "c") == seccomp.build(oci)


def test_no_cache_for_a_user_without_a_runtime_dir(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert seccomp._cache_dir() is None


@pytest.mark.parametrize("caps", [(), capabilities.DEFAULT_CAPS, tuple(capabilities.CAPS)], ids=["none", "docker", "all"])
@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_the_default_profile_compiles_for_every_capability_set(caps, arch):
    """(a syscall allowed by two capability groups, or by the main list and one, is one rule twice)"""
    oci = seccomp.profile_to_oci(seccomp.default_profile(), caps, arch)
    assert oci["architectures"][0] == {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}[arch]
    assert len(seccomp.build(oci)) > 8 * 100  # (libseccomp builds for a foreign arch too)
