"""Devices: `--device` and --privileged's host devices for the spec, and the cgroup v2 device filter.

Spec side (the parent, before the container exists):
  parse_device(text) -> (linux.devices entry, linux.resources.devices rule)   docker's
      `--device HOST[:CONTAINER][:rwm]`; the host path is stat'ed (symlinks followed, as docker).
  host_devices() -> [linux.devices entries]   every device node under the host's /dev (--privileged).

cgroup v2 side: cgroup v2 has no devices.allow file; the allow-list is a BPF_PROG_TYPE_CGROUP_DEVICE
program attached to the container's cgroup (what runc's devicefilter does):
  program(rules) -> bytes    the eBPF instructions for an OCI `linux.resources.devices` list
  attach(cgroup_dir, rules)  load it with bpf(BPF_PROG_LOAD) and attach it to the directory with
      bpf(BPF_PROG_ATTACH, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI). Call it once, on the fresh
      cgroup, before any process of the container joins; the program lives as long as the cgroup.

Rule semantics (the v1 list's): the first rule is normally deny-all (or allow-all); after it the
LAST rule that matches a request decides. An allow rule matches when the request's access is a
subset of the rule's; a deny rule when they share any access bit.
"""

from __future__ import annotations

import os
import stat
import struct

from imagetool.errors import ImagetoolError
from imagetool.runtime import syscalls

_MODES = set("rwm")


def _is_mode(text: str) -> bool:
    return bool(text) and set(text) <= _MODES and len(set(text)) == len(text)


def parse_device(text: str) -> tuple[dict, dict]:
    """`HOST[:CONTAINER][:PERMS]` -> (linux.devices entry, an allow rule for resources.devices)."""
    parts = text.split(":")
    if len(parts) == 3:
        src, dst, perms = parts
    elif len(parts) == 2:
        src, dst, perms = (parts[0], parts[0], parts[1]) if _is_mode(parts[1]) else (parts[0], parts[1], "rwm")
    elif len(parts) == 1:
        src, dst, perms = parts[0], parts[0], "rwm"
    else:
        raise ImagetoolError(f"invalid device {text!r}", hint="use --device HOST[:CONTAINER][:rwm]")
    if not _is_mode(perms):
        raise ImagetoolError(f"invalid device permissions {perms!r} in {text!r} (a combination of r, w, m)")
    if not src.startswith("/") or not dst.startswith("/"):
        raise ImagetoolError(f"invalid device {text!r}: both paths must be absolute")
    if dst.rstrip("/") in ("", "/dev") or ".." in dst.split("/"):
        raise ImagetoolError(f"invalid device {text!r}: the container path must name a file in the container")
    try:
        st = os.stat(src)
    except OSError as e:
        raise ImagetoolError(f"device {src}: {e.strerror}") from None
    entry = _entry(dst, st)
    if entry is None:
        raise ImagetoolError(f"{src} is not a device node")
    rule = {"allow": True, "type": entry["type"], "major": entry["major"], "minor": entry["minor"],
            "access": perms}
    return entry, rule


def _entry(path: str, st: os.stat_result) -> dict | None:
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        return None
    return {"path": path, "type": kind, "major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev),
            "fileMode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}


# docker's HostDevices skips these: they are the container's own (or not devices at all)
_SKIP_DIRS = {"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"}


def host_devices(root: str = "/dev") -> list[dict]:
    """linux.devices entries for every char/block node under `root` (symlinks not followed)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == root:
            dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if path == "/dev/console":
                continue
            try:
                entry = _entry(path, os.lstat(path))
            except OSError:
                continue
            if entry is not None:
                out.append(entry)
    return out


# ------------------------------------------------------------------ the cgroup v2 BPF program

BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
_ACCESS = {"m": 1, "r": 2, "w": 4}      # BPF_DEVCG_ACC_MKNOD, _READ, _WRITE
_TYPE = {"b": 1, "c": 2}                # BPF_DEVCG_DEV_BLOCK, _CHAR


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


_LDX_W, _AND_K, _RSH_K, _MOV_K, _MOV_X = 0x61, 0x57, 0x77, 0xB7, 0xBF
_JNE_K, _JEQ_K, _JSET_K, _EXIT = 0x55, 0x15, 0x45, 0x95


def _access_bits(access: str) -> int:
    return sum(_ACCESS[a] for a in set(access or "rwm"))


def program(rules: list[dict]) -> bytes:
    """eBPF for `rules` (linux.resources.devices). Registers after the prologue:
    r2 = device type, r3 = requested access, r4 = major, r5 = minor (struct bpf_cgroup_dev_ctx)."""
    rules = list(rules)
    default = 0
    if rules and "type" not in rules[0] and "major" not in rules[0] and "minor" not in rules[0] \
            and _access_bits(rules[0].get("access", "rwm")) == 7:
        default = 1 if rules[0].get("allow") else 0
        rules = rules[1:]
    code = [
        _insn(_LDX_W, 2, 1, 0),      # r2 = ctx->access_type
        _insn(_AND_K, 2, 0, 0, 0xFFFF),  # r2 &= 0xffff        (the device type)
        _insn(_LDX_W, 3, 1, 0),      # r3 = ctx->access_type
        _insn(_RSH_K, 3, 0, 0, 16),  # r3 >>= 16           (the access requested)
        _insn(_LDX_W, 4, 1, 4),      # r4 = ctx->major
        _insn(_LDX_W, 5, 1, 8),      # r5 = ctx->minor
    ]
    for rule in reversed(rules):  # the last matching rule decides
        block = []
        kind = rule.get("type", "a")
        if kind not in ("a", "b", "c"):
            raise ImagetoolError(f"invalid device rule type {kind!r}")
        if kind != "a":
            block.append(("skip_if", _JNE_K, 2, _TYPE[kind]))
        bits = _access_bits(rule.get("access"))
        if rule.get("allow"):
            if bits != 7:
                block.append(("skip_if", _JSET_K, 3, 7 & ~bits))  # asks for more than the rule gives
        else:
            block.append(("raw", _insn(_MOV_X, 6, 3)))
            block.append(("raw", _insn(_AND_K, 6, 0, 0, bits)))
            block.append(("skip_if", _JEQ_K, 6, 0))               # no access bit in common
        for reg, key in ((4, "major"), (5, "minor")):
            if rule.get(key) is not None and rule[key] >= 0:
                block.append(("skip_if", _JNE_K, reg, int(rule[key])))
        tail = [_insn(_MOV_K, 0, 0, 0, 1 if rule.get("allow") else 0), _insn(_EXIT)]
        n = len(block) + len(tail)
        for i, item in enumerate(block):
            if item[0] == "raw":
                code.append(item[1])
            else:
                _, op, reg, imm = item
                code.append(_insn(op, reg, 0, n - i - 1, imm))  # to the first instruction after the block
        code += tail
    code += [_insn(_MOV_K, 0, 0, 0, default), _insn(_EXIT)]
    return b"".join(code)


def attach(cgroup_dir: str, rules: list[dict]) -> None:
    """Load program(rules) and attach it to the cgroup v2 directory `cgroup_dir`.

    Raises ImagetoolError (one line) when the kernel refuses (no CONFIG_CGROUP_BPF, not root).
    """
    insns = program(rules)
    try:
        prog = syscalls.bpf_prog_load(BPF_PROG_TYPE_CGROUP_DEVICE, insns, "Apache-2.0")
    except OSError as e:
        raise ImagetoolError(f"cannot load the device filter for {cgroup_dir}: {e.strerror}") from None
    try:
        dirfd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            syscalls.bpf_prog_attach(dirfd, prog, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI)
        finally:
            os.close(dirfd)
    except OSError as e:
        raise ImagetoolError(f"cannot attach the device filter to {cgroup_dir}: {e.strerror}") from None
    finally:
        os.close(prog)
