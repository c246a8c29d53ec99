"""A tiny static x86_64 ELF that makes one raw syscall and exits with its errno (0 on success).

For tests that must see what the kernel (and the container's seccomp filter) answers to a call
busybox cannot make: keyctl, add_key, clone3, io_uring_setup. No compiler, no libc: 120 bytes of
headers and 55 of code, which `write_probe(dir, name, nr, *args)` writes as an executable file.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

BASE = 0x400000
_HEADERS = 64 + 56  # ELF header + one program header


def _mov(reg: bytes, value: int) -> bytes:
    """mov reg64, imm32 (sign-extended): `reg` is the REX prefix + ModRM of the register."""
    return reg[:1] + b"\xc7" + reg[1:] + struct.pack("<i", value)


_RAX, _RDI, _RSI, _RDX, _R10, _R8 = b"\x48\xc0", b"\x48\xc7", b"\x48\xc6", b"\x48\xc2", b"\x49\xc2", b"\x49\xc0"


def code(nr: int, *args: int) -> bytes:
    """The machine code: load nr and up to five args, syscall, exit(errno or 0)."""
    args = list(args) + [0] * (5 - len(args))
    out = _mov(_RAX, nr)
    for reg, value in zip((_RDI, _RSI, _RDX, _R10, _R8), args):
        out += _mov(reg, value if value < 1 << 31 else value - (1 << 32))
    out += b"\x0f\x05"              # syscall
    out += b"\x48\x89\xc7"          # mov rdi, rax
    out += b"\x48\xf7\xdf"          # neg rdi           (errno when rax = -errno)
    out += b"\x48\x85\xc0"          # test rax, rax
    out += b"\x78\x02"              # js +2             (failed: keep errno)
    out += b"\x31\xff"              # xor edi, edi      (succeeded: 0)
    out += b"\xb8\x3c\x00\x00\x00"  # mov eax, 60       (exit)
    out += b"\x0f\x05"              # syscall
    return out


def elf(nr: int, *args: int) -> bytes:
    body = code(nr, *args)
    size = _HEADERS + len(body)
    ident = b"\x7fELF\x02\x01\x01" + b"\x00" * 9
    header = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, 0x3E, 1, BASE + _HEADERS, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, BASE, BASE, size, size, 0x1000)
    return header + phdr + body


def write_probe(directory: Path, name: str, nr: int, *args: int) -> Path:
    path = Path(directory) / name
    path.write_bytes(elf(nr, *args))
    os.chmod(path, 0o755)
    return path
