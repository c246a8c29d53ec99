"""Sealed exec: the container's command is exec'd by a tiny static trampoline from a sealed memfd.

Why (issue 14 item 1, the CVE-2019-5736 class): the container's init is a fork of the host's
Python. Had it execve'd the command itself, anything in the container that execs
`/proc/self/exe` (or a `#!/proc/self/exe` script, or an ELF whose PT_INTERP is that path) before
that exec completes would run the HOST interpreter inside the container, and container root could
chmod/setxattr/write the host's binary through that link. Of the fixes issue 14 lists, we take
"exec the container's command from a small static init":

- the init's very last step is `execveat(memfd, "", argv, envp, AT_EMPTY_PATH)` of a trampoline
  of a few dozen bytes of machine code, held in a memfd (MFD_CLOEXEC | MFD_ALLOW_SEALING) sealed
  with F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE (| F_SEAL_EXEC where the kernel has it) |
  F_SEAL_SEAL; the trampoline then execve()s the command. From the first exec on, every
  `/proc/<pid>/exe` the container can see is the sealed trampoline or an image file, never a host
  file; nothing can write the trampoline (the seals are permanent), and it has no host path.
- unlike runc's and crun's re-exec of their own binary from a sealed copy, we need no copy of the
  interpreter (tens of MB) per start, and unlike "refuse an exec target that is the interpreter"
  there is no list of paths to get wrong: the host interpreter is simply never the container's exe.
- cost: memfd_create + write + F_ADD_SEALS (~15 µs in a parent) and one more execve, of a 230-byte
  static ELF with one page to map (no loader, no libraries). benchmarks/sealed_exec.py measures the
  exec step: +0.02-0.05 ms with the memfd made before the init is forked (`trampoline_fd`),
  +0.2-0.3 ms when the init makes it (Python in a forked child pays copy-on-write faults).

The trampoline's contract (both architectures):
    argv = [NAME, PATH, ARG0, ARG1, …]  →  execve(PATH, [ARG0, ARG1, …], envp)
    on failure: exit(127) for ENOENT, exit(126) for any other error or when ARG0 is missing.
Requiring ARG0 bounds the one loop left: a `#!/proc/self/exe` script re-enters the trampoline
with one argument fewer each time, so it ends with exit 126 instead of spinning.

Processes that join a running container (`exec`) are forks of the host Python too: call
`make_non_dumpable()` before joining its namespaces, so no container process can open
`/proc/<pid>/exe` or ptrace them until they exec through `exec_command` (execve resets the flag).

No compiler, no committed binary: the ELF is assembled here from the bytes below, documented
instruction by instruction. x86_64 and aarch64 (tested with qemu-aarch64 when qemu-user is
installed); other architectures get a clear UnsupportedArchitecture error.
"""

from __future__ import annotations

import errno
import fcntl
import os
import platform
import struct
from dataclasses import dataclass
from typing import Mapping, NoReturn, Sequence

from imagetool.errors import ContainerError
from imagetool.runtime import syscalls as sc

# --- the trampoline's code -------------------------------------------------------------------
# At the ELF entry point the kernel has laid out the stack as
#     [sp] = argc, [sp+8] = argv[0] (NAME), [sp+16] = argv[1] (PATH), [sp+24] = argv[2] (ARG0), …,
#     [sp+8*argc+8] = NULL, [sp+8*argc+16] = envp[0], …
# so execve's three arguments are argv[1], &argv[2] and sp + 8*argc + 16.

_X86_64 = (
    # ---- bytes ---------------------------- offset  instruction              meaning
    b"\x48\x8b\x04\x24",                   #  0   mov  rax, [rsp]          rax = argc
    b"\x48\x83\xf8\x03",                   #  4   cmp  rax, 3
    b"\x72\x20",                           #  8   jb   +0x20 (→ 42)        no ARG0: exit 126
    b"\x48\x8b\x7c\x24\x10",               # 10   mov  rdi, [rsp+16]       rdi = PATH
    b"\x48\x8d\x74\x24\x18",               # 15   lea  rsi, [rsp+24]       rsi = &ARG0
    b"\x48\x8d\x54\xc4\x10",               # 20   lea  rdx, [rsp+rax*8+16] rdx = envp
    b"\xb8\x3b\x00\x00\x00",               # 25   mov  eax, 59             SYS_execve
    b"\x0f\x05",                           # 30   syscall                  returns only on error: rax = -errno
    b"\x83\xf8\xfe",                       # 32   cmp  eax, -2             -ENOENT?
    b"\xbf\x7f\x00\x00\x00",               # 35   mov  edi, 127            (mov leaves the flags alone)
    b"\x74\x05",                           # 40   je   +5 (→ 47)           ENOENT: exit 127
    b"\xbf\x7e\x00\x00\x00",               # 42   mov  edi, 126            any other error
    b"\xb8\xe7\x00\x00\x00",               # 47   mov  eax, 231            SYS_exit_group
    b"\x0f\x05",                           # 52   syscall                  (does not return)
)

_AARCH64_WORDS = (
    # ---- word ---- offset  instruction                meaning
    0xF94003E3,   #  0   ldr  x3, [sp]              x3 = argc
    0xD2800FC0,   #  4   movz x0, #126              exit code if we stop here
    0xF1000C7F,   #  8   cmp  x3, #3                (subs xzr, x3, #3)
    0x54000143,   # 12   b.lo +40 (→ 52)            no ARG0: exit 126
    0xF9400BE0,   # 16   ldr  x0, [sp, #16]         x0 = PATH
    0x910063E1,   # 20   add  x1, sp, #24           x1 = &ARG0
    0x910043E2,   # 24   add  x2, sp, #16
    0x8B030C42,   # 28   add  x2, x2, x3, lsl #3    x2 = envp = sp + 16 + 8*argc
    0xD2801BA8,   # 32   movz x8, #221              SYS_execve
    0xD4000001,   # 36   svc  #0                    returns only on error: x0 = -errno
    0xD2800FC1,   # 40   movz x1, #126
    0xB100081F,   # 44   cmn  x0, #2                (adds xzr, x0, #2): Z when x0 == -ENOENT
    0x9A811420,   # 48   cinc x0, x1, eq            (csinc x0, x1, x1, ne): 127 if ENOENT else 126
    0xD2800BC8,   # 52   movz x8, #94               SYS_exit_group
    0xD4000001,   # 56   svc  #0                    (does not return)
)


@dataclass(frozen=True, slots=True)
class Arch:
    """What differs per architecture: the ELF machine, the code, the page size to align to."""

    name: str
    e_machine: int
    code: bytes
    align: int


ARCHES = {
    "x86_64": Arch("x86_64", 62, b"".join(_X86_64), 0x1000),
    "aarch64": Arch("aarch64", 183, struct.pack(f"<{len(_AARCH64_WORDS)}I", *_AARCH64_WORDS), 0x10000),
}
_MACHINE_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}

_BASE = 0x400000           # where the single PT_LOAD maps the file (ET_EXEC: no relocation)
_EHDR_SIZE, _PHDR_SIZE = 64, 56
PT_LOAD, PT_GNU_STACK = 1, 0x6474E551
PF_X, PF_W, PF_R = 1, 2, 4


class UnsupportedArchitecture(ContainerError):
    """No trampoline for this machine (the runtime cannot seal its exec here)."""


def arch_for(machine: str | None = None) -> Arch:
    """The Arch for `machine` (default: this host's `uname -m`); UnsupportedArchitecture if none."""
    m = machine or platform.machine()
    m = _MACHINE_ALIASES.get(m, m)
    try:
        return ARCHES[m]
    except KeyError:
        raise UnsupportedArchitecture(
            f"sealed exec has no trampoline for architecture {m!r} (supported: {', '.join(ARCHES)})") from None


def trampoline_elf(arch: Arch) -> bytes:
    """A minimal static ELF64 (ET_EXEC): header, a PT_LOAD (R+X) of the whole file, a
    non-executable PT_GNU_STACK, then `arch.code` at the entry point. No interpreter, no sections."""
    code_off = _EHDR_SIZE + 2 * _PHDR_SIZE
    size = code_off + len(arch.code)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)        # ELFCLASS64, little endian, v1, SysV ABI
    ehdr = ident + struct.pack(
        "<HHIQQQIHHHHHH",
        2, arch.e_machine, 1,                                  # ET_EXEC, machine, EV_CURRENT
        _BASE + code_off, _EHDR_SIZE, 0,                       # e_entry, e_phoff, e_shoff (none)
        0, _EHDR_SIZE, _PHDR_SIZE, 2, 64, 0, 0)                # flags, ehsize, phentsize, phnum, shentsize, shnum, shstrndx
    load = struct.pack("<IIQQQQQQ", PT_LOAD, PF_R | PF_X, 0, _BASE, _BASE, size, size, arch.align)
    stack = struct.pack("<IIQQQQQQ", PT_GNU_STACK, PF_R | PF_W, 0, 0, 0, 0, 0, 16)
    return ehdr + load + stack + arch.code


# --- the sealed memfd ------------------------------------------------------------------------
MFD_EXEC = 0x0010                      # Linux 6.3+: say explicitly that this memfd is executable
F_SEAL_EXEC = 0x0020                   # Linux 6.3+: the mode's exec bits can no longer change
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
MEMFD_NAME = "imagetool-exec"


def sealed_trampoline(arch: Arch | None = None) -> int:
    """A new close-on-exec fd of a sealed memfd holding the trampoline, mode 0555 (any uid the
    init switches to can exec it, none can write it; with F_SEAL_EXEC the mode's exec bits are
    frozen too). Raises OSError if memfd_create/write/F_ADD_SEALS fail."""
    image = trampoline_elf(arch or arch_for())
    base = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
    try:
        fd = os.memfd_create(MEMFD_NAME, base | MFD_EXEC)
    except OSError as e:
        if e.errno != errno.EINVAL:    # kernels before 6.3 do not know MFD_EXEC
            raise
        fd = os.memfd_create(MEMFD_NAME, base)
    try:
        os.fchmod(fd, 0o555)
        view = memoryview(image)
        while view:
            view = view[os.write(fd, view):]
        try:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS | F_SEAL_EXEC)
        except OSError as e:
            if e.errno != errno.EINVAL:  # F_SEAL_EXEC unknown before 6.3: seal the rest
                raise
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def exec_command(path: str, argv: Sequence[str], env: Mapping[str, str] | Sequence[str], *,
                 trampoline_fd: int | None = None) -> NoReturn:
    """Replace this process by the trampoline, which execve()s `path` with `argv` and `env`.

    `env` is a mapping or a list of "KEY=value" strings (the OCI spec's form; entries without
    `=` are dropped). `path` should be the result of the init's own lookup (it is exec'd as is,
    relative to the cwd). Pass `trampoline_fd` from `sealed_trampoline()` made earlier: best in
    the parent before it forks the init (cheapest, and before any seccomp filter that refuses
    memfd_create); it is closed by the exec (and on failure).
    Returns only by raising OSError, when the execveat of the trampoline itself fails; a failure
    of the command's execve is the exit status 127 (ENOENT) or 126 (anything else)."""
    if isinstance(env, (list, tuple)):  # (not isinstance(env, Mapping): the ABC check costs copy-on-write faults)
        env = dict(e.split("=", 1) for e in env if "=" in e)
    fd = sealed_trampoline() if trampoline_fd is None else trampoline_fd
    try:
        os.execve(fd, [MEMFD_NAME, path, *argv], env)  # fexecve: execveat(fd, "", …, AT_EMPTY_PATH)
    finally:
        os.close(fd)


PR_SET_DUMPABLE = 4


def make_non_dumpable() -> None:
    """prctl(PR_SET_DUMPABLE, 0): processes of the same uid without CAP_SYS_PTRACE (the
    container's root) can no longer ptrace this one or open its /proc/<pid>/exe, fds, mem or
    environ. Call it in a process that is about to join a running container, before setns; the
    exec resets it."""
    sc.prctl(PR_SET_DUMPABLE, 0)
