"""Sealed exec: the container's command is exec'd by a tiny static trampoline from a sealed memfd.

Why (issue 14 item 1, the CVE-2019-5736 class): the container's init is a fork of the host's
Python. Had it execve'd the command itself, anything in the container that execs
`/proc/self/exe` (or a `#!/proc/self/exe` script, or an ELF whose PT_INTERP is that path) before
that exec completes would run the HOST interpreter inside the container, and container root could
chmod/setxattr/write the host's binary through that link. Of the fixes issue 14 lists, we take
"exec the container's command from a small static init":

- the init's very last step is `execveat(memfd, "", argv, envp, AT_EMPTY_PATH)` of a trampoline
  of 173 (x86_64) or 200 (aarch64) bytes of machine code, held in a memfd (MFD_CLOEXEC |
  MFD_ALLOW_SEALING) sealed with F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE (| F_SEAL_EXEC where
  the kernel has it) | F_SEAL_SEAL; the trampoline then execve()s the command. From the first exec on, every
  `/proc/<pid>/exe` the container can see is the sealed trampoline or an image file, never a host
  file; nothing can write the trampoline (the seals are permanent), and it has no host path.
- unlike runc's and crun's re-exec of their own binary from a sealed copy, we need no copy of the
  interpreter (tens of MB) per start, and unlike "refuse an exec target that is the interpreter"
  there is no list of paths to get wrong: the host interpreter is simply never the container's exe.
- cost: memfd_create + write + F_ADD_SEALS (~15 µs in a parent) and one more execve, of a 437-byte
  static ELF with one page to map (no loader, no libraries). benchmarks/sealed_exec.py measures the
  exec step: +0.02-0.05 ms with the memfd made before the init is forked (`trampoline_fd`),
  +0.2-0.3 ms when the init makes it (Python in a forked child pays copy-on-write faults).

The trampoline's contract (both architectures):
    argv = [NAME, PATH, ARG0, ARG1, …]  →  execve(PATH, [ARG0, ARG1, …], envp)
    when execve fails: `imagetool: error: exec PATH: REASON` on fd 2 (REASON: no such file or
    directory, exec format error, cannot execute), then exit(127) for ENOENT, exit(126) for any
    other error; exit(126) silently when ARG0 is missing.
The init pre-checks the path (not found, not executable) with its own messages; the trampoline's
own are for what only the kernel finds: a script without `#!`, a missing ELF or `#!` interpreter,
a binary for another machine.
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
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from imagetool.errors import ContainerError
from imagetool.runtime import syscalls as sc

TYPE_CHECKING = False  # typing and platform are not imported at run time (~3 ms of every `run`)
if TYPE_CHECKING:
    from typing import NoReturn

# --- the trampoline's code -------------------------------------------------------------------
# The file: ELF header (64 bytes), two program headers (2 x 56), the messages below, the code.
# At the ELF entry point the kernel has laid out the stack as
#     [sp] = argc, [sp+8] = argv[0] (NAME), [sp+16] = argv[1] (PATH), [sp+24] = argv[2] (ARG0), …,
#     [sp+8*argc+8] = NULL, [sp+8*argc+16] = envp[0], …
# so execve's three arguments are argv[1], &argv[2] and sp + 8*argc + 16. When execve fails the
# trampoline writes `imagetool: error: exec PATH: REASON` to fd 2 and exits 127 or 126.

_BASE = 0x400000           # where the single PT_LOAD maps the file (ET_EXEC: no relocation)
_EHDR_SIZE, _PHDR_SIZE = 64, 56
_MESSAGES = (b"imagetool: error: exec ",            # then PATH, then one of:
             b": no such file or directory\n",       #   ENOENT (exit 127)
             b": exec format error\n",               #   ENOEXEC (exit 126)
             b": cannot execute\n")                  #   any other errno (exit 126)
_MSG_ADDR = tuple(_BASE + _EHDR_SIZE + 2 * _PHDR_SIZE + sum(map(len, _MESSAGES[:i])) for i in range(4))
PREFIX, NOENT, NOEXEC, OTHER = ((a, len(m)) for a, m in zip(_MSG_ADDR, _MESSAGES))
_CODE_OFFSET = _EHDR_SIZE + 2 * _PHDR_SIZE + sum(map(len, _MESSAGES))   # 264: 4-aligned for aarch64


def _i32(v: int) -> bytes:
    """A little-endian 32-bit immediate (x86_64 `mov r32, imm32` zero-extends: our addresses fit)."""
    return struct.pack("<I", v)


_X86_64 = (
    # ---- bytes --------------------------------- offset instruction                meaning
    b"\x48\x8b\x04\x24",                         #   0  mov  rax, [rsp]          rax = argc
    b"\x48\x83\xf8\x03",                         #   4  cmp  rax, 3
    b"\x73\x0c",                                 #   8  jae  +12 (→ 22)          ARG0 present: go on
    b"\xbf\x7e\x00\x00\x00",                     #  10  mov  edi, 126            no ARG0: exit 126,
    b"\xb8\xe7\x00\x00\x00",                     #  15  mov  eax, 231            SYS_exit_group
    b"\x0f\x05",                                 #  20  syscall                  (does not return)
    b"\x48\x8b\x7c\x24\x10",                     #  22  mov  rdi, [rsp+16]       rdi = PATH
    b"\x48\x8d\x74\x24\x18",                     #  27  lea  rsi, [rsp+24]       rsi = &ARG0
    b"\x48\x8d\x54\xc4\x10",                     #  32  lea  rdx, [rsp+rax*8+16] rdx = envp
    b"\xb8\x3b\x00\x00\x00",                     #  37  mov  eax, 59             SYS_execve
    b"\x0f\x05",                                 #  42  syscall                  returns only on error: rax = -errno
    b"\x49\x89\xc4",                             #  44  mov  r12, rax            keep -errno
    b"\x49\x89\xfd",                             #  47  mov  r13, rdi            keep PATH (syscall keeps rdi)
    b"\xbf\x02\x00\x00\x00",                     #  50  mov  edi, 2              write(2,
    b"\xbe" + _i32(PREFIX[0]),                    #  55  mov  esi, PREFIX           "imagetool: error: exec ",
    b"\xba" + _i32(PREFIX[1]),                    #  60  mov  edx, len(PREFIX)      its length)
    b"\xb8\x01\x00\x00\x00",                     #  65  mov  eax, 1              SYS_write
    b"\x0f\x05",                                 #  70  syscall
    b"\x4c\x89\xee",                             #  72  mov  rsi, r13            rsi = PATH
    b"\x31\xd2",                                 #  75  xor  edx, edx            rdx = 0
    b"\x80\x3c\x16\x00",                         #  77  cmp  byte [rsi+rdx], 0   strlen(PATH):
    b"\x74\x05",                                 #  81  je   +5 (→ 88)            end of PATH
    b"\x48\xff\xc2",                             #  83  inc  rdx
    b"\xeb\xf5",                                 #  86  jmp  -11 (→ 77)
    b"\xbf\x02\x00\x00\x00",                     #  88  mov  edi, 2              write(2, PATH, rdx)
    b"\xb8\x01\x00\x00\x00",                     #  93  mov  eax, 1              SYS_write
    b"\x0f\x05",                                 #  98  syscall
    b"\xbb\x7f\x00\x00\x00",                     # 100  mov  ebx, 127            exit code and message
    b"\xbe" + _i32(NOENT[0]),                     # 105  mov  esi, NOENT            for ENOENT
    b"\xba" + _i32(NOENT[1]),                     # 110  mov  edx, len(NOENT)
    b"\x41\x83\xfc\xfe",                         # 115  cmp  r12d, -2            -ENOENT?
    b"\x74\x1f",                                 # 119  je   +31 (→ 152)
    b"\xbb\x7e\x00\x00\x00",                     # 121  mov  ebx, 126            every other error: 126
    b"\xbe" + _i32(NOEXEC[0]),                    # 126  mov  esi, NOEXEC
    b"\xba" + _i32(NOEXEC[1]),                    # 131  mov  edx, len(NOEXEC)
    b"\x41\x83\xfc\xf8",                         # 136  cmp  r12d, -8            -ENOEXEC?
    b"\x74\x0a",                                 # 140  je   +10 (→ 152)
    b"\xbe" + _i32(OTHER[0]),                     # 142  mov  esi, OTHER
    b"\xba" + _i32(OTHER[1]),                     # 147  mov  edx, len(OTHER)
    b"\xbf\x02\x00\x00\x00",                     # 152  mov  edi, 2              write(2, reason)
    b"\xb8\x01\x00\x00\x00",                     # 157  mov  eax, 1              SYS_write
    b"\x0f\x05",                                 # 162  syscall
    b"\x89\xdf",                                 # 164  mov  edi, ebx            exit code
    b"\xb8\xe7\x00\x00\x00",                     # 166  mov  eax, 231            SYS_exit_group
    b"\x0f\x05",                                 # 171  syscall                  (does not return)
)


def _movz(rd: int, imm16: int) -> int:
    """aarch64 `movz xRD, #imm16`."""
    return 0xD2800000 | (imm16 << 5) | rd


def _movk_16(rd: int, imm16: int) -> int:
    """aarch64 `movk xRD, #imm16, lsl #16`."""
    return 0xF2A00000 | (imm16 << 5) | rd


_AARCH64_WORDS = (
    # ---- word ---------------------- offset instruction             meaning
    0xF94003E3,                       #   0  ldr  x3, [sp]           x3 = argc
    0xF1000C7F,                       #   4  cmp  x3, #3             (subs xzr, x3, #3)
    0x54000082,                       #   8  b.hs +16 (→ 24)         ARG0 present: go on
    0xD2800FC0,                       #  12  movz x0, #126           no ARG0: exit 126,
    0xD2800BC8,                       #  16  movz x8, #94            SYS_exit_group
    0xD4000001,                       #  20  svc  #0                 (does not return)
    0xF9400BE0,                       #  24  ldr  x0, [sp, #16]      x0 = PATH
    0x910063E1,                       #  28  add  x1, sp, #24        x1 = &ARG0
    0x910043E2,                       #  32  add  x2, sp, #16
    0x8B030C42,                       #  36  add  x2, x2, x3, lsl #3 x2 = envp = sp + 16 + 8*argc
    0xD2801BA8,                       #  40  movz x8, #221           SYS_execve
    0xD4000001,                       #  44  svc  #0                 returns only on error: x0 = -errno
    0xAA0003F3,                       #  48  mov  x19, x0            (orr x19, xzr, x0) keep -errno
    0xF9400BF4,                       #  52  ldr  x20, [sp, #16]     x20 = PATH
    _movz(0, 2),                      #  56  movz x0, #2             write(2,
    _movz(1, PREFIX[0] & 0xFFFF),     #  60  movz x1, #PREFIX&0xffff  "imagetool: error: exec ",
    _movk_16(1, PREFIX[0] >> 16),     #  64  movk x1, #PREFIX>>16, lsl #16
    _movz(2, PREFIX[1]),              #  68  movz x2, #len(PREFIX)    its length)
    _movz(8, 64),                     #  72  movz x8, #64            SYS_write
    0xD4000001,                       #  76  svc  #0
    0xD2800002,                       #  80  movz x2, #0             x2 = 0
    0x38626A83,                       #  84  ldrb w3, [x20, x2]      strlen(PATH):
    0x34000063,                       #  88  cbz  w3, +12 (→ 100)    end of PATH
    0x91000442,                       #  92  add  x2, x2, #1
    0x17FFFFFD,                       #  96  b    -12 (→ 84)
    _movz(0, 2),                      # 100  movz x0, #2             write(2, PATH, x2)
    0xAA1403E1,                       # 104  mov  x1, x20            (orr x1, xzr, x20)
    _movz(8, 64),                     # 108  movz x8, #64            SYS_write
    0xD4000001,                       # 112  svc  #0
    _movz(21, 127),                   # 116  movz x21, #127          exit code and message
    _movz(1, NOENT[0] & 0xFFFF),      # 120  movz x1, #NOENT&0xffff   for ENOENT
    _movk_16(1, NOENT[0] >> 16),      # 124  movk x1, #NOENT>>16, lsl #16
    _movz(2, NOENT[1]),               # 128  movz x2, #len(NOENT)
    0xB1000A7F,                       # 132  cmn  x19, #2            (adds xzr, x19, #2) -ENOENT?
    0x54000140,                       # 136  b.eq +40 (→ 176)
    _movz(21, 126),                   # 140  movz x21, #126          every other error: 126
    _movz(1, NOEXEC[0] & 0xFFFF),     # 144  movz x1, #NOEXEC&0xffff
    _movk_16(1, NOEXEC[0] >> 16),     # 148  movk x1, #NOEXEC>>16, lsl #16
    _movz(2, NOEXEC[1]),              # 152  movz x2, #len(NOEXEC)
    0xB100227F,                       # 156  cmn  x19, #8            -ENOEXEC?
    0x54000080,                       # 160  b.eq +16 (→ 176)
    _movz(1, OTHER[0] & 0xFFFF),      # 164  movz x1, #OTHER&0xffff
    _movk_16(1, OTHER[0] >> 16),      # 168  movk x1, #OTHER>>16, lsl #16
    _movz(2, OTHER[1]),               # 172  movz x2, #len(OTHER)
    _movz(0, 2),                      # 176  movz x0, #2             write(2, reason)
    _movz(8, 64),                     # 180  movz x8, #64            SYS_write
    0xD4000001,                       # 184  svc  #0
    0xAA1503E0,                       # 188  mov  x0, x21            (orr x0, xzr, x21) exit code
    _movz(8, 94),                     # 192  movz x8, #94            SYS_exit_group
    0xD4000001,                       # 196  svc  #0                 (does not return)
)


@dataclass(frozen=True, slots=True, eq=False, repr=False, init=False)
class Arch:
    """What differs per architecture: the ELF machine, the code, the page size to align to.
    One constant per architecture (ARCHES), never compared: no generated __eq__/__hash__, a short
    __repr__ and a written __init__ (generated methods are compiled at every `run`)."""

    name: str
    e_machine: int
    code: bytes
    align: int

    def __init__(self, name: str, e_machine: int, code: bytes, align: int) -> None:
        _set = object.__setattr__   # frozen: as the generated __init__ does
        _set(self, "name", name)
        _set(self, "e_machine", e_machine)
        _set(self, "code", code)
        _set(self, "align", align)

    def __repr__(self) -> str:
        return f"Arch({self.name!r}, e_machine={self.e_machine}, {len(self.code)} bytes of code, align={self.align:#x})"


ARCHES = {
    "x86_64": Arch("x86_64", 62, b"".join(_X86_64), 0x1000),
    "aarch64": Arch("aarch64", 183, struct.pack(f"<{len(_AARCH64_WORDS)}I", *_AARCH64_WORDS), 0x10000),
}
_MACHINE_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}

PT_LOAD, PT_GNU_STACK = 1, 0x6474E551
PF_X, PF_W, PF_R = 1, 2, 4


class UnsupportedArchitecture(ContainerError):
    """No trampoline for this machine (the runtime cannot seal its exec here)."""


def arch_for(machine: str | None = None) -> Arch:
    """The Arch for `machine` (default: this host's `uname -m`, as `platform.machine()` gives it);
    UnsupportedArchitecture if none."""
    m = machine or os.uname().machine
    m = _MACHINE_ALIASES.get(m, m)
    try:
        return ARCHES[m]
    except KeyError:
        raise UnsupportedArchitecture(
            f"sealed exec has no trampoline for architecture {m!r} (supported: {', '.join(ARCHES)})") from None


def trampoline_elf(arch: Arch) -> bytes:
    """A minimal static ELF64 (ET_EXEC): header, a PT_LOAD (R+X) of the whole file, a
    non-executable PT_GNU_STACK, the messages, then `arch.code` at the entry point. No
    interpreter, no sections."""
    size = _CODE_OFFSET + len(arch.code)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)        # ELFCLASS64, little endian, v1, SysV ABI
    ehdr = ident + struct.pack(
        "<HHIQQQIHHHHHH",
        2, arch.e_machine, 1,                                  # ET_EXEC, machine, EV_CURRENT
        _BASE + _CODE_OFFSET, _EHDR_SIZE, 0,                   # e_entry, e_phoff, e_shoff (none)
        0, _EHDR_SIZE, _PHDR_SIZE, 2, 64, 0, 0)                # flags, ehsize, phentsize, phnum, shentsize, shnum, shstrndx
    load = struct.pack("<IIQQQQQQ", PT_LOAD, PF_R | PF_X, 0, _BASE, _BASE, size, size, arch.align)
    stack = struct.pack("<IIQQQQQQ", PT_GNU_STACK, PF_R | PF_W, 0, 0, 0, 0, 0, 16)
    return ehdr + load + stack + b"".join(_MESSAGES) + arch.code


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
