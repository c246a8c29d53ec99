"""A network namespace kept alive by a bind mount on a file (as `ip netns add` does).

The file lives in the container's directory, so runc, crun and imagetool's own init join the
namespace by path (the spec's linux.namespaces[].path) and the CNI plugins get it as CNI_NETNS.
Nothing else here: what goes into the namespace is the plugins' job.
"""

from __future__ import annotations

import errno
import os

from imagetool.errors import NetworkError
from imagetool.runtime import syscalls as sc


def _loopback_up() -> None:
    """Bring `lo` up in the current network namespace (two ioctls: what the CNI loopback plugin
    does, without its exec on ADD and DEL; the built-in runtime's init does the same for private)."""
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), 0x8913, struct.pack("16sH14x", b"lo", 0)))[1]
        fcntl.ioctl(s.fileno(), 0x8914, struct.pack("16sH14x", b"lo", flags | 0x1))   # SIOCSIFFLAGS, IFF_UP


def _refuse_router_advertisements() -> None:
    """accept_ra 0 for every interface of the current network namespace, those made later too
    (`default`: the veth the bridge plugin moves in): another container on the bridge, with
    CAP_NET_RAW, could otherwise advertise itself as the IPv6 router (CVE-2020-13401's class).
    Addresses come from IPAM, never from advertisements. No IPv6 here: nothing to do."""
    for conf in ("all", "default"):
        try:
            with open(f"/proc/sys/net/ipv6/conf/{conf}/accept_ra", "w") as f:
                f.write("0")
        except FileNotFoundError:
            return


def create(path: str, loopback: bool = True) -> None:
    """A new network namespace bind-mounted on `path` (an empty file, created here), its `lo` up.

    A forked child unshares it and binds its /proc/self/ns/net on the file, so imagetool itself
    never leaves its own namespace. Raises NetworkError (nothing left behind) on failure."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns to the caller's code
        code = 1
        try:
            os.close(r)
            sc.unshare(sc.CLONE_NEWNET)
            _refuse_router_advertisements()   # /proc/sys/net is the opener's namespace's: this new one
            if loopback:
                _loopback_up()
            sc.mount("/proc/self/ns/net", path, None, sc.MS_BIND)
            code = 0
        except BaseException as e:  # noqa: BLE001 - reported to the parent over the pipe
            try:
                os.write(w, str(e).encode()[:512])
            except OSError:
                pass
        finally:
            os._exit(code)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            why = f.read().decode(errors="replace")
    finally:
        _, status = os.waitpid(pid, 0)
    if status != 0:
        try:
            os.unlink(path)
        except OSError:
            pass
        raise NetworkError(f"cannot create a network namespace at {path}: {why or 'failed'}")


def adopt(source: str, path: str) -> None:
    """Pin an existing network namespace (`source`: /proc/PID/ns/net or another namespace file)
    on `path` with a bind mount: whatever happens to its process, `path` names that namespace."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    try:
        sc.mount(source, path, None, sc.MS_BIND)
    except OSError as e:
        os.unlink(path)
        raise NetworkError(f"cannot join the network namespace {source}: {e.strerror}") from None


def remove(path: str) -> None:
    """Unmount and delete the namespace file; a missing or unmounted file is not an error."""
    try:
        sc.umount2(path, sc.MNT_DETACH)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            raise NetworkError(f"cannot unmount the network namespace {path}: {e.strerror}") from None
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def is_mounted(path: str) -> bool:
    """Whether `path` is a mounted namespace file (its st_dev is nsfs's, not its directory's)."""
    try:
        return os.stat(path).st_dev != os.stat(os.path.dirname(path) or ".").st_dev
    except OSError:
        return False
