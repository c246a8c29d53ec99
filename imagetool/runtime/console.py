"""The container's terminal (-t): a pty of the container's OWN devpts, runc's console-socket design.

The init opens `/dev/pts/ptmx` of the devpts instance it mounted (newinstance) for the container,
so the slave is `/dev/pts/0` there and ttyname() works inside (a pty of the host's devpts
would be a `/dev/pts/N` the container cannot see). The master goes to imagetool over a unix
socketpair made before the fork (SCM_RIGHTS); the slave becomes the init's controlling
terminal and fds 0-2. imagetool relays the master to its own terminal (`relay`).

  imagetool: a, b = socketpair()       init: master, slave = allocate(devpts fd, size)
                                              send_master(b, master); attach(slave)
             master = receive_master(a); relay(master, interactive)
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import termios

from imagetool.runtime import stdio

TIOCGPTPEER = 0x5441          # open the slave of a master (Linux 4.13): no path lookup
TIOCSPTLCK = 0x40045431       # unlockpt


def socketpair() -> tuple[int, int]:
    """(imagetool's end, the init's end), both close-on-exec."""
    import socket

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return a.detach(), b.detach()


def allocate(devpts_fd: int, rows: int = 0, cols: int = 0) -> tuple[int, int]:
    """(master, slave) of a new pty of the devpts instance at `devpts_fd` (its ptmx)."""
    master = os.open("ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=devpts_fd)
    try:
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
        if rows and cols:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    except BaseException:
        os.close(master)
        raise
    return master, slave


def send_master(sock_fd: int, master: int) -> None:
    """Send `master` over the console socket; closes both here."""
    import socket

    sock = socket.socket(fileno=sock_fd)
    try:
        socket.send_fds(sock, [b"pty"], [master])
    finally:
        sock.close()
        os.close(master)


def receive_master(sock_fd: int) -> int:
    """The master the init sent (the socket stays open: the caller owns it)."""
    import socket

    from imagetool.errors import ContainerError

    sock = socket.socket(fileno=os.dup(sock_fd))
    try:
        _, fds, _, _ = socket.recv_fds(sock, 16, 1)
    finally:
        sock.close()
    if not fds:
        raise ContainerError("the container's init sent no terminal")
    return fds[0]


def copy_size(terminal: int, master: int) -> None:
    """The window size of imagetool's `terminal` onto the pty (nothing when it is no terminal).
    Called once before the container starts, then on every SIGWINCH."""
    try:
        size = fcntl.ioctl(terminal, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(master, termios.TIOCSWINSZ, size)
    except OSError:
        pass


def attach(slave: int) -> None:
    """The slave as the session's controlling terminal and fds 0-2 (the caller is a session leader)."""
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


def relay(master: int, interactive: bool, stdin: int = 0, stdout: int = 1) -> None:
    """Copy between the pty master and imagetool's terminal until the container side closes.

    Keystrokes go to the container only with -i (raw mode then, when stdin is a terminal); the
    window size follows imagetool's terminal (SIGWINCH). Closes `master`."""
    import tty

    is_tty = os.isatty(stdin)
    raw = interactive and is_tty
    saved = termios.tcgetattr(stdin) if raw else None

    def winch(signum=None, frame=None):
        copy_size(stdin, master)

    old_winch = signal.signal(signal.SIGWINCH, winch)
    winch()
    try:
        if raw:
            tty.setraw(stdin)
        fds = [master, stdin] if interactive else [master]
        while True:
            ready, _, _ = select.select(fds, [], [])
            if master in ready:
                try:
                    data = os.read(master, stdio.CHUNK)
                except OSError:  # EIO: every slave fd is closed, the container is gone
                    data = b""
                if not data:
                    break
                stdio._write_all(stdout, data)
            if stdin in ready:
                try:
                    data = os.read(stdin, stdio.CHUNK)
                except OSError:
                    data = b""
                if data:
                    stdio._write_all(master, data)
                else:
                    fds.remove(stdin)  # stdin closed: keep relaying output
                    try:
                        stdio._write_all(master, b"\x04")
                    except OSError:
                        pass
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, old_winch)
        os.close(master)
