"""seccomp: a docker/podman profile -> the OCI `linux.seccomp` section -> a BPF program -> loaded.

Three steps, three functions, used in this order:

  profile_to_oci(profile, caps, arch) -> dict   specgen: a profile in docker's JSON format (the
      default one is `seccomp_default.json` next to this file) filtered for the container's
      capabilities, architecture and kernel, as docker does. The result is `linux.seccomp` of the
      spec, so `--runtime runc` gets the same filter in config.json.
  compile(linux_seccomp) -> bytes               the parent: the classic-BPF program (an array of
      8-byte `struct sock_filter`), from a cache of programs (/run/imagetool/seccomp) or built by
      build(): libseccomp (the system's libseccomp.so.2 through ctypes) builds the filter and
      exports it (~13 ms; a cache hit ~0.1 ms).
  load(program)                                 the container's init, its last step before exec:
      seccomp(2) SECCOMP_SET_MODE_FILTER (prctl(PR_SET_SECCOMP) on old kernels). Needs
      no_new_privs or CAP_SYS_ADMIN; libseccomp is not needed here (the init runs after
      pivot_root, where the host's libraries are gone).

Unknown syscall names are skipped, as runc does (a profile names syscalls of newer kernels);
everything else that is wrong (malformed JSON, unknown action, operator or architecture, `name`
together with `names`) raises ImagetoolError with one line, which `run` turns into exit 125.
"""

from __future__ import annotations

import ctypes
import json
import os
from pathlib import Path

from imagetool.errors import ImagetoolError
from imagetool.runtime import syscalls

DEFAULT_PROFILE = Path(__file__).with_name("seccomp_default.json")

# libseccomp's action values (seccomp.h); ERRNO and TRACE carry a 16-bit data part.
_ACTIONS = {
    "SCMP_ACT_KILL": 0x00000000, "SCMP_ACT_KILL_THREAD": 0x00000000,
    "SCMP_ACT_KILL_PROCESS": 0x80000000, "SCMP_ACT_TRAP": 0x00030000,
    "SCMP_ACT_ERRNO": 0x00050000, "SCMP_ACT_TRACE": 0x7FF00000,
    "SCMP_ACT_LOG": 0x7FFC0000, "SCMP_ACT_ALLOW": 0x7FFF0000,
}
_OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
        "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
_EPERM = 1
_SCMP_FLTATR_CTL_NNP = 3        # export only: whether seccomp_load would set no_new_privs
_SCMP_FLTATR_CTL_OPTIMIZE = 8   # 2 = a binary tree of syscall numbers (libseccomp >= 2.5)
_FLAGS = {"SECCOMP_FILTER_FLAG_TSYNC": 1, "SECCOMP_FILTER_FLAG_LOG": 2,
          "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4}

# Go's architecture names (what docker's profiles say in includes/excludes "arches"), from the
# kernel's machine names, and the seccomp architecture docker picks from the archMap for each.
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "i386": "386", "i686": "386", "armv7l": "arm",
           "armv8l": "arm", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
           "mips64": "mips64le"}
_SCMP_ARCH = {"amd64": "SCMP_ARCH_X86_64", "arm64": "SCMP_ARCH_AARCH64", "386": "SCMP_ARCH_X86",
              "arm": "SCMP_ARCH_ARM", "ppc64le": "SCMP_ARCH_PPC64LE", "s390x": "SCMP_ARCH_S390X",
              "riscv64": "SCMP_ARCH_RISCV64", "mips64le": "SCMP_ARCH_MIPSEL64"}


def _fail(what: str) -> ImagetoolError:
    return ImagetoolError(f"seccomp profile: {what}")


def goarch(arch: str | None = None) -> str:
    """Go's name for `arch` (a machine name like x86_64, or already a Go name); default: this host."""
    arch = arch or os.uname().machine
    return _GOARCH.get(arch, arch)


def read_profile(path: str | os.PathLike) -> dict:
    """A profile file parsed; a missing or malformed file is an ImagetoolError (one line)."""
    try:
        with open(path, "rb") as f:
            data = f.read(8 << 20)
    except OSError as e:
        raise ImagetoolError(f"cannot read seccomp profile {path}: {e.strerror}") from None
    try:
        profile = json.loads(data)
    except ValueError as e:
        raise ImagetoolError(f"seccomp profile {path} is not valid JSON: {e}") from None
    if not isinstance(profile, dict):
        raise ImagetoolError(f"seccomp profile {path} is not a JSON object")
    return profile


_default_cache: dict = {}


def default_profile() -> dict:
    """imagetool's own default profile (docker's policy), parsed once per process."""
    if "p" not in _default_cache:
        _default_cache["p"] = read_profile(DEFAULT_PROFILE)
    return _default_cache["p"]


def _kernel_at_least(version: str, release: str) -> bool:
    def nums(text):
        out = []
        for part in text.split("-")[0].split(".")[:2]:
            digits = "".join(ch for ch in part if ch.isdigit()) or "0"
            out.append(int(digits))
        return tuple(out + [0] * (2 - len(out)))
    return nums(release) >= nums(version)


def _action(name, errno_ret=None) -> int:
    if name not in _ACTIONS:
        if name == "SCMP_ACT_NOTIFY":
            raise _fail("SCMP_ACT_NOTIFY needs a listener, which imagetool does not provide")
        raise _fail(f"unknown action {name!r}")
    value = _ACTIONS[name]
    if name in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
        ret = _EPERM if errno_ret is None else errno_ret
        if not isinstance(ret, int) or not 0 <= ret <= 0xFFFF:
            raise _fail(f"invalid errnoRet {errno_ret!r}")
        value |= ret
    return value


def _names(entry: dict) -> list[str]:
    if not isinstance(entry, dict):
        raise _fail(f"a syscalls entry is not an object: {entry!r}")
    name, names = entry.get("name"), entry.get("names")
    if name and names:
        raise _fail("use either 'name' or 'names' in a syscalls entry, not both")
    names = [name] if name else names
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise _fail(f"a syscalls entry has no syscall names: {entry!r}")
    return names


def _check_args(args) -> list[dict]:
    if args is None:
        return []
    if not isinstance(args, list):
        raise _fail(f"args must be a list: {args!r}")
    for a in args:
        if not isinstance(a, dict) or a.get("op") not in _OPS:
            raise _fail(f"invalid argument condition {a!r} (op must be one of {', '.join(_OPS)})")
        if not isinstance(a.get("index"), int) or not 0 <= a["index"] <= 5:
            raise _fail(f"invalid argument index in {a!r} (0-5)")
        for key in ("value", "valueTwo"):
            v = a.get(key, 0)
            if not isinstance(v, int) or not 0 <= v < 1 << 64:
                raise _fail(f"invalid {key} in {a!r}")
    return args


def profile_to_oci(profile: dict, caps, arch: str | None = None, kernel: str | None = None) -> dict:
    """The OCI `linux.seccomp` section for a container with capability set `caps` on `arch`.

    Docker's rules: `archMap` gives the native architecture and its sub-architectures (or
    `architectures` lists them); a syscalls entry applies when every capability in
    `includes.caps` is in `caps`, the architecture is in `includes.arches` and the kernel is at
    least `includes.minKernel`, and none of `excludes.caps` / `excludes.arches` matches.
    `arch` is a machine or Go architecture name (default: this host's); `kernel` a release
    string (default: this host's).
    """
    if not isinstance(profile, dict):
        raise _fail("not a JSON object")
    caps = set(caps)
    arch = goarch(arch)
    release = kernel or os.uname().release
    default = profile.get("defaultAction")
    default_value = _action(default, profile.get("defaultErrnoRet"))
    if profile.get("architectures") and profile.get("archMap"):
        raise _fail("use either 'architectures' or 'archMap', not both")
    arches = profile.get("architectures") or []
    for m in profile.get("archMap") or []:
        if not isinstance(m, dict):
            raise _fail(f"invalid archMap entry {m!r}")
        if m.get("architecture") == _SCMP_ARCH.get(arch):
            arches = [m["architecture"]] + list(m.get("subArchitectures") or [])
    out: dict = {"defaultAction": default}
    if profile.get("defaultErrnoRet") is not None:
        out["defaultErrnoRet"] = profile["defaultErrnoRet"]
    if arches:
        out["architectures"] = list(arches)
    if profile.get("flags"):
        out["flags"] = list(profile["flags"])
    syscalls_out = []
    for entry in profile.get("syscalls") or []:
        names = _names(entry)
        same_as_default = _action(entry.get("action"), entry.get("errnoRet")) == default_value
        args = _check_args(entry.get("args"))
        inc, exc = entry.get("includes") or {}, entry.get("excludes") or {}
        if not isinstance(inc, dict) or not isinstance(exc, dict):
            raise _fail(f"includes/excludes must be objects in {entry!r}")
        if inc.get("arches") and arch not in inc["arches"]:
            continue
        if inc.get("caps") and not all(c in caps for c in inc["caps"]):
            continue
        if inc.get("minKernel") and not _kernel_at_least(str(inc["minKernel"]), release):
            continue
        if exc.get("arches") and arch in exc["arches"]:
            continue
        if exc.get("caps") and any(c in caps for c in exc["caps"]):
            continue
        if same_as_default:  # documentation only: libseccomp refuses a rule repeating the default
            continue
        rule: dict = {"names": list(names), "action": entry["action"]}
        if entry.get("errnoRet") is not None:
            rule["errnoRet"] = entry["errnoRet"]
        if args:
            rule["args"] = [{"index": a["index"], "value": a.get("value", 0),
                             "valueTwo": a.get("valueTwo", 0), "op": a["op"]} for a in args]
        syscalls_out.append(rule)
    out["syscalls"] = syscalls_out
    return out


# ------------------------------------------------------------------ libseccomp through ctypes


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


_lib_cache: dict = {}


def _lib():
    if "lib" not in _lib_cache:
        try:
            lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        except OSError:
            raise ImagetoolError("seccomp: libseccomp.so.2 is not installed",
                                 hint="install libseccomp2, or run with --security-opt seccomp=unconfined") from None
        lib.seccomp_init.argtypes = (ctypes.c_uint32,)
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_release.argtypes = (ctypes.c_void_p,)
        lib.seccomp_release.restype = None
        lib.seccomp_attr_set.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32)
        lib.seccomp_arch_resolve_name.argtypes = (ctypes.c_char_p,)
        lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
        lib.seccomp_arch_add.argtypes = (ctypes.c_void_p, ctypes.c_uint32)
        lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
        lib.seccomp_rule_add_array.argtypes = (ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                               ctypes.c_uint, ctypes.POINTER(_ArgCmp))
        lib.seccomp_export_bpf.argtypes = (ctypes.c_void_p, ctypes.c_int)
        _lib_cache["lib"] = lib
    return _lib_cache["lib"]


def _arch_token(lib, name: str) -> int:
    if not isinstance(name, str) or not name.startswith("SCMP_ARCH_"):
        raise _fail(f"unknown architecture {name!r}")
    token = lib.seccomp_arch_resolve_name(name[len("SCMP_ARCH_"):].lower().encode())
    if not token:
        raise _fail(f"unknown architecture {name!r}")
    return token


def _conditions(args: list[dict]) -> list[list[_ArgCmp]]:
    """runc's grouping: all conditions in one rule (AND), unless an argument index repeats, then
    one rule per condition (OR)."""
    conds = [_ArgCmp(a["index"], _OPS[a["op"]], a.get("value", 0), a.get("valueTwo", 0)) for a in args]
    indexes = [a["index"] for a in args]
    if len(set(indexes)) < len(indexes):
        return [[c] for c in conds]
    return [conds]


def build(linux_seccomp: dict) -> bytes:
    """The classic-BPF program (struct sock_filter[]) for an OCI `linux.seccomp` section, built
    by libseccomp now (compile() is the same through the cache)."""
    if not isinstance(linux_seccomp, dict):
        raise _fail("linux.seccomp must be an object")
    default = _action(linux_seccomp.get("defaultAction"), linux_seccomp.get("defaultErrnoRet"))
    lib = _lib()
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise _fail(f"libseccomp refused the default action {linux_seccomp.get('defaultAction')!r}")
    try:
        lib.seccomp_attr_set(ctx, _SCMP_FLTATR_CTL_NNP, 0)
        lib.seccomp_attr_set(ctx, _SCMP_FLTATR_CTL_OPTIMIZE, 2)  # older libseccomp: ignored
        for name in linux_seccomp.get("architectures") or []:
            rc = lib.seccomp_arch_add(ctx, _arch_token(lib, name))
            if rc < 0 and rc != -17:  # EEXIST: the native architecture is always there
                raise _fail(f"cannot add architecture {name}: {os.strerror(-rc)}")
        for entry in linux_seccomp.get("syscalls") or []:
            names = _names(entry)
            action = _action(entry.get("action"), entry.get("errnoRet"))
            if action == default:
                continue  # libseccomp refuses a rule that repeats the default action
            groups = _conditions(_check_args(entry.get("args")))
            for name in names:
                nr = lib.seccomp_syscall_resolve_name(name.encode())
                if nr == -1:  # __NR_SCMP_ERROR: not a syscall libseccomp knows; skipped, as runc
                    continue
                for conds in groups:
                    arr = (_ArgCmp * len(conds))(*conds) if conds else None
                    rc = lib.seccomp_rule_add_array(ctx, action, nr, len(conds), arr)
                    if rc < 0:
                        raise _fail(f"cannot add the rule for {name}: {os.strerror(-rc)}")
        fd = os.memfd_create("imagetool-seccomp", os.MFD_CLOEXEC)
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc < 0:
                raise _fail(f"cannot export the filter: {os.strerror(-rc)}")
            size = os.lseek(fd, 0, os.SEEK_CUR)
            program = os.pread(fd, size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)
    if not program or len(program) % 8:
        raise _fail(f"libseccomp exported a program of {len(program)} bytes")
    return program


def filter_flags(linux_seccomp: dict) -> int:
    """The seccomp(2) flags named in `linux.seccomp.flags` (unknown ones raise)."""
    flags = 0
    for name in linux_seccomp.get("flags") or []:
        if name not in _FLAGS:
            raise _fail(f"unsupported flag {name!r}")
        flags |= _FLAGS[name]
    return flags


def load(program: bytes, flags: int = 0) -> None:
    """Install `program` on the calling thread (and everything it execs or forks) for good.

    The caller has set no_new_privs or holds CAP_SYS_ADMIN. Raises OSError as the syscall does.
    """
    syscalls.seccomp_set_mode_filter(program, flags)


def _cache_dir() -> Path | None:
    from imagetool import userns

    if os.geteuid() == 0 and not userns.inside():   # rootless: the user's, as outside the namespace
        return Path("/run/imagetool/seccomp")
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "imagetool" / "seccomp" if base else None


def _private_dir(path: Path) -> bool:
    """`path` is a directory of ours that nobody else can write, nor swap: every directory above
    it belongs to root or us and is not writable by others (a root-owned sticky one, /tmp, is)."""
    euid = os.geteuid()
    path = Path(os.path.abspath(path))
    roots = {0, _unmapped_uid()}   # rootless: the host's root owns /run, /home … and has no id in the namespace
    try:
        st = os.lstat(path)
        if st.st_uid != euid or st.st_mode & 0o022 or (st.st_mode & 0o170000) != 0o040000:
            return False
        for parent in path.parents:
            st = os.lstat(parent)
            if st.st_uid not in roots | {euid} or st.st_mode & 0o022 and not (st.st_mode & 0o1000 and st.st_uid in roots):
                return False
    except OSError:
        return False
    return True


def _unmapped_uid() -> int:
    """Inside imagetool's user namespace, the uid an unmapped owner shows as (the kernel's
    overflowuid; the host's root among them); outside it, 0."""
    from imagetool import userns

    if not userns.inside():
        return 0
    try:
        with open("/proc/sys/kernel/overflowuid") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 65534


def cache_key(linux_seccomp: dict) -> str:
    """The compiled program's name: the section's canonical JSON, libseccomp's version, the arch."""
    from store.digest import Digest   # a small one-shot hash: without loading OpenSSL (~2.5 ms of every run)

    lib = _lib()
    lib.seccomp_version.restype = ctypes.POINTER(ctypes.c_uint * 3)
    version = ".".join(map(str, lib.seccomp_version().contents))
    text = json.dumps(linux_seccomp, sort_keys=True, separators=(",", ":"))
    return Digest.of_bytes(f"{os.uname().machine}\n{version}\n{text}".encode()).hex


def compile(linux_seccomp: dict, cache_dir: str | os.PathLike | None = "") -> bytes:  # noqa: A001
    """build() through a cache of programs (building takes ~13 ms, reading one ~0.1 ms).

    The cache lives in /run/imagetool/seccomp for root ($XDG_RUNTIME_DIR/imagetool/seccomp
    otherwise: none without it), or `cache_dir`; None builds without it. A cached program is a
    filter the init trusts, so the cache is used only while nobody else can write or swap the
    directory (_private_dir); entries are written whole (temp + rename).
    """
    if cache_dir is None:
        root = None
    else:
        root = Path(cache_dir) if cache_dir else _cache_dir()
    if root is None:
        return build(linux_seccomp)
    path = root / (cache_key(linux_seccomp) + ".bpf")
    if _private_dir(root):
        try:
            with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
                data = f.read(8 * 0x10000 + 1)
            if data and not len(data) % 8:
                return data
        except OSError:
            pass
    data = build(linux_seccomp)
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if _private_dir(root):
            tmp = root / f"imagetool-{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
    except OSError:
        pass  # a cache we cannot write is a slower run, not a failure
    return data
