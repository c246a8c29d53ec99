"""The only ctypes user: thin wrappers for the Linux syscalls Python 3.11's `os` lacks.

Each wrapper raises OSError(errno, message) on failure, like the functions in `os`.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc_gil = ctypes.PyDLL(None, use_errno=True)   # calls that keep the GIL held, as os.fork does

# clone/unshare flags
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
CLONE_INTO_CGROUP = 0x200000000

# mount flags
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

# prctl options
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_SYS_pivot_root = 155  # x86_64
_SYS_capset = 126
_SYS_clone3 = 435  # the same number on every architecture

_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_libc.sethostname.argtypes = (ctypes.c_char_p, ctypes.c_size_t)
_libc.socket.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)
_libc_gil.syscall.restype = ctypes.c_long


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _b(s: str | bytes | None) -> bytes | None:
    if s is None or isinstance(s, bytes):
        return s
    return os.fsencode(s)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), f"mount {target}")


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(_SYS_pivot_root, _b(new_root), _b(put_old)), "pivot_root")


def sethostname(name: str) -> None:
    """(socket.sethostname would do, but importing socket costs more than the syscall.)"""
    data = name.encode()
    _check(_libc.sethostname(data, len(data)), "sethostname")


def socket_fd(family: int, type_: int, proto: int = 0) -> int:
    """A raw socket file descriptor (for ioctls), without importing the socket module."""
    return _check(_libc.socket(family, type_ | 0o2000000, proto), "socket")  # SOCK_CLOEXEC


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set the calling thread's capability sets (64-bit masks)."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in (0, 1):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.syscall(_SYS_capset, ctypes.byref(hdr), ctypes.byref(data)), "capset")


_SYS_keyctl = {"x86_64": 250, "aarch64": 219}.get(os.uname().machine)
KEYCTL_JOIN_SESSION_KEYRING = 1


def join_session_keyring(name: str | None = None) -> int:
    """keyctl(KEYCTL_JOIN_SESSION_KEYRING, name): a new session keyring for this process (an
    anonymous one for None), so the container never shares the host's; its serial number."""
    if _SYS_keyctl is None:
        raise OSError(38, f"keyctl: unsupported architecture {os.uname().machine}")
    return _check(_libc.syscall(_SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, _b(name), 0, 0, 0), "keyctl")


# ------------------------------------------------------------------ seccomp(2) and bpf(2)
# (appended for runtime/seccomp.py and runtime/devices.py)
import struct  # noqa: E402

_SYS_seccomp, _SYS_bpf, _SYS_prctl = {"x86_64": (317, 321, 157),
                                      "aarch64": (277, 280, 167)}.get(os.uname().machine, (None, None, None))
SECCOMP_SET_MODE_FILTER = 1
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_set_mode_filter(program: bytes, flags: int = 0) -> None:
    """Install a classic-BPF seccomp program (struct sock_filter[]) on the calling thread.

    seccomp(2) where the kernel has it (flags: SECCOMP_FILTER_FLAG_*), else prctl(PR_SET_SECCOMP),
    which takes no flags. Needs no_new_privs or CAP_SYS_ADMIN.
    """
    if len(program) % 8 or not 0 < len(program) // 8 <= 0xFFFF:
        raise OSError(22, f"seccomp: a program of {len(program)} bytes is not a filter")
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    if _SYS_seccomp is not None:
        ret = _libc.syscall(_SYS_seccomp, SECCOMP_SET_MODE_FILTER, ctypes.c_uint(flags), ctypes.byref(prog))
        if ret == 0:
            return
        err = ctypes.get_errno()
        if ret > 0:  # TSYNC: the id of a thread that could not be synchronised
            raise OSError(11, f"seccomp: thread {ret} could not take the filter")
        if err != 38 or flags:  # ENOSYS: fall back to prctl below (which has no flags)
            raise OSError(err, f"seccomp: {os.strerror(err)}")
    if _SYS_prctl is None:
        raise OSError(38, f"seccomp: not supported on {os.uname().machine}")
    _check(_libc.syscall(_SYS_prctl, ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER),
                         ctypes.byref(prog)), "prctl(PR_SET_SECCOMP)")


def _bpf(cmd: int, attr, size: int, what: str) -> int:
    if _SYS_bpf is None:
        raise OSError(38, f"{what}: bpf(2) is not known on {os.uname().machine}")
    return _check(_libc.syscall(_SYS_bpf, ctypes.c_int(cmd), ctypes.byref(attr), ctypes.c_uint(size)), what)


def bpf_prog_load(prog_type: int, insns: bytes, license_: str = "Apache-2.0", expected_attach_type: int = 0) -> int:
    """BPF_PROG_LOAD: a new program fd (close-on-exec). A verifier refusal raises OSError
    whose message ends with the verifier's last log line."""
    attr = ctypes.create_string_buffer(128)
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license_.encode())
    log = ctypes.create_string_buffer(1 << 16)
    struct.pack_into("=IIQQIIQII", attr, 0, prog_type, len(insns) // 8, ctypes.addressof(code),
                     ctypes.addressof(lic), 0, 0, 0, 0, 0)
    struct.pack_into("=I", attr, 68, expected_attach_type)
    try:
        return _bpf(BPF_PROG_LOAD, attr, 128, "bpf(BPF_PROG_LOAD)")
    except OSError as e:
        if e.errno not in (13, 22):  # EACCES/EINVAL: ask again with the verifier's log
            raise
    struct.pack_into("=IIQ", attr, 24, 1, len(log), ctypes.addressof(log))
    try:
        return _bpf(BPF_PROG_LOAD, attr, 128, "bpf(BPF_PROG_LOAD)")
    except OSError as e:
        lines = log.value.decode(errors="replace").strip().splitlines()
        raise OSError(e.errno, f"{e.strerror}: {lines[-1] if lines else 'no verifier log'}") from None


def bpf_prog_attach(target_fd: int, prog_fd: int, attach_type: int, flags: int = 0) -> None:
    """BPF_PROG_ATTACH `prog_fd` to `target_fd` (a cgroup directory fd for cgroup programs)."""
    attr = ctypes.create_string_buffer(32)
    struct.pack_into("=IIII", attr, 0, target_fd, prog_fd, attach_type, flags)
    _bpf(BPF_PROG_ATTACH, attr, 32, "bpf(BPF_PROG_ATTACH)")


def bpf_prog_detach(target_fd: int, prog_fd: int, attach_type: int) -> None:
    """BPF_PROG_DETACH `prog_fd` from `target_fd`."""
    attr = ctypes.create_string_buffer(32)
    struct.pack_into("=IIII", attr, 0, target_fd, prog_fd, attach_type, 0)
    _bpf(BPF_PROG_DETACH, attr, 32, "bpf(BPF_PROG_DETACH)")


# ------------------------------------------------------------------ mount_setattr(2)
# (appended for runtime/mounts.py: read-only binds that are read-only all the way down)

_SYS_mount_setattr = 442   # the same number on every architecture (added in Linux 5.12)
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8


def mount_setattr(fd: int, path: str, flags: int, attr_set: int, attr_clr: int = 0) -> None:
    """mount_setattr(2) with struct mount_attr VER0 (no propagation, no idmap): with
    AT_RECURSIVE the attributes go on the mount at (fd, path) and every mount below it."""
    attr = struct.pack("=QQQQ", attr_set, attr_clr, 0, 0)
    buf = ctypes.create_string_buffer(attr, len(attr))
    _check(_libc.syscall(_SYS_mount_setattr, ctypes.c_int(fd), _b(path), ctypes.c_uint(flags), buf,
                         ctypes.c_size_t(len(attr))), "mount_setattr")


class _CloneArgs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size", "tls",
        "set_tid", "set_tid_size", "cgroup")]


def fork_into_cgroup(cgroup_fd: int) -> int:
    """os.fork(), the child born in the cgroup2 group open at `cgroup_fd` (clone3 with
    CLONE_INTO_CGROUP, Linux 5.7): no `cgroup.procs` write, so none of the RCU grace period (10-20
    ms) the kernel waits for on the first such write after a quiet spell. 0 in the child, its PID in
    the parent; OSError (ENOSYS, EINVAL, EPERM under a seccomp filter...) when the kernel refuses:
    nothing was forked then.

    The interpreter's own fork bookkeeping (at-fork callbacks, the import lock, the GIL and thread
    states in the child) is done through the same C API os.fork calls. Every signal is blocked from
    before that until after it, in both processes: os.fork runs this stretch in C, here it is
    bytecode, and a Python signal handler run in between would raise in the child with the
    parent's state (its cleanup paths). Only for a single-threaded process: glibc's fork also takes
    its malloc and stdio locks, resets arc4random and the thread's cached TID, which a raw clone
    does not (none of which a single-threaded interpreter that execs or exits relies on)."""
    import signal

    args = _CloneArgs(flags=CLONE_INTO_CGROUP, exit_signal=signal.SIGCHLD, cgroup=cgroup_fd)
    api = ctypes.pythonapi
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        api.PyOS_BeforeFork()
        pid = _libc_gil.syscall(_SYS_clone3, ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))
        if pid == 0:
            api.PyOS_AfterFork_Child()
            return 0
        err = ctypes.get_errno()
        api.PyOS_AfterFork_Parent()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    if pid < 0:
        raise OSError(err, f"clone3(CLONE_INTO_CGROUP): {os.strerror(err)}")
    return pid
