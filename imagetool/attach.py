"""`imagetool attach`: this terminal's stdin, stdout and stderr connected to a running detached container.

The container's lean monitor (conmon.py) serves a SOCK_SEQPACKET socket, `attach` in the
container's directory; the packets are described there. Output is copied from the moment of
attaching (the log is not replayed: `logs` does that); stdin is forwarded when the container was
started with -i (unless `stdin` is False); with -t this terminal is put in raw mode, its window
size is sent on attaching and on each SIGWINCH, and the detach keys (docker's --detach-keys,
default ctrl-p,ctrl-q) leave the container running: "read escape sequence", exit 0. Without -t,
`sig_proxy` forwards the signals a terminal sends (SIGINT, SIGTERM …) to the container's PID 1.
Once the container exits, attach returns its exit code (sent by the monitor after its teardown,
so --rm's too).

    attach(store, id_or_name, stdin, sig_proxy, detach_keys) -> exit code
    start_attached(store, id_or_name, stdin, detach_keys) -> exit code   (`start -a`, `start -ai`)
    parse_detach_keys(text) -> bytes

`start -a` starts the container (control.start) and attaches to it; its output from the start is
lost to no race: the monitor's first packet says where its log stood when the attacher connected,
and what the log got from the start up to there is printed first (jsonlog.between). One that has
already ended when its socket is reached: its log from the start, then its recorded exit code.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import time

from imagetool import containers, jsonlog
from imagetool.conmon import ATTACH, EXIT, HELLO, RESIZE, STDERR, STDIN, STDOUT
from imagetool.errors import ImagetoolError
from imagetool.runtime.stdio import _write_all   # (console.py's too)

DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"
STOPPED = "you cannot attach to a stopped container, start it first"
PROXIED = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2,
           signal.SIGALRM)
CHUNK = 32768
CONNECT_LIMIT = 10.0   # seconds a just-started container's monitor gets to make its socket


def parse_detach_keys(text: str) -> bytes:
    """docker's --detach-keys: comma-separated keys, each one character or ctrl-<key> (a letter or
    one of @[\\]^_); "ctrl-p,ctrl-q" -> b"\\x10\\x11"."""
    keys = bytearray()
    for part in text.split(","):
        if len(part) == 1 and part.isascii():
            keys.append(ord(part))
        elif part.lower().startswith("ctrl-") and len(part) == 6 and part[5].isascii() and (
                part[5].isalpha() or part[5] in "@[\\]^_"):
            keys.append(ord(part[5].upper()) & 0x1F)
        else:
            raise ImagetoolError(f"invalid detach keys {text!r}: {part!r} is not a key",
                                 hint="use keys like ctrl-p,ctrl-q: a character or ctrl-<a-z, @, [, \\, ], ^, _>")
    return bytes(keys)


def attach(store, id_or_name: str, stdin: bool = True, sig_proxy: bool = True, detach_keys: str | None = None) -> int:
    """Attach to the running container `id_or_name` until it exits (its exit code) or the detach
    keys are typed (0); see the module's doc."""
    keys = parse_detach_keys(detach_keys or DEFAULT_DETACH_KEYS)
    cdir, state = _running(store, id_or_name)
    opts = state.get("options") or {}
    if not state.get("detached"):
        raise ImagetoolError(f"container {id_or_name} was not started with -d: its own imagetool holds its terminal")
    sock = _connect(store, cdir, state["id"], id_or_name)
    if sock is None:
        raise ImagetoolError(STOPPED)
    return _attached(store, state, sock, stdin, sig_proxy, keys)


def start_attached(store, id_or_name: str, stdin: bool = False, detach_keys: str | None = None) -> int:
    """docker start -a (-i: with stdin): start the exited container and attach to it; its output
    from this start (see the module's doc), then its exit code."""
    from imagetool import control

    keys = parse_detach_keys(detach_keys or DEFAULT_DETACH_KEYS)
    cdir, _ = containers.find(store, id_or_name)
    log = cdir / containers.LOG
    try:
        st = os.stat(log)
        since = (st.st_size, st.st_ino)
    except FileNotFoundError:
        since = (0, None)
    control.start(store, id_or_name)
    cdir, state = containers.find(store, id_or_name)
    try:
        sock = _connect(store, cdir, state["id"], id_or_name)
    except ImagetoolError:   # a monitor that serves no socket: its log, followed
        control.logs(store, state["id"], follow=True, offset=since[0])
        return control.wait(store, state["id"])
    if sock is None:   # it ended already: what it wrote, and how it ended
        _print(jsonlog.entries(log, offset=since[0]))
        return control.wait(store, state["id"])
    return _attached(store, state, sock, stdin, True, keys, replay=(log, *since))


def _attached(store, state: dict, sock: socket.socket, stdin: bool, sig_proxy: bool, keys: bytes,
              replay=None) -> int:
    opts = state.get("options") or {}
    tty = bool(opts.get("tty"))
    session = _Session(store, state["id"], sock, tty=tty, stdin=stdin and bool(opts.get("interactive")), keys=keys,
                       replay=replay)
    return session.run(sig_proxy=sig_proxy and not tty)


def _print(entries) -> None:
    for e in entries:
        _write_all(1 if e["stream"] == "stdout" else 2, e["log"].encode())


def _running(store, id_or_name: str):
    cdir, state = containers.find(store, id_or_name)
    state = containers.reconcile(cdir, state)
    if state is None or state.get("status") != "running":
        raise ImagetoolError(STOPPED)
    return cdir, state


def _connect(store, cdir, cid: str, id_or_name: str) -> socket.socket | None:
    """A connection to the container's attach socket, None once it is not running; a container
    just started gets CONNECT_LIMIT s for its monitor to make it (run -d returns before the
    monitor execs conmon.py)."""
    deadline = time.monotonic() + CONNECT_LIMIT
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            dfd = os.open(cdir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            sock.close()
            return None
        try:
            sock.connect(f"/proc/self/fd/{dfd}/{ATTACH}")   # short whatever the store's path
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
        finally:
            os.close(dfd)
        try:
            _running(store, cid)
        except ImagetoolError:   # exited meanwhile
            return None
        if time.monotonic() > deadline:
            raise ImagetoolError(f"cannot attach to container {id_or_name}: its monitor serves no attach socket",
                                 hint="a container started by an older imagetool cannot be attached to; "
                                      "use `imagetool logs -f`")
        time.sleep(0.02)


class _Session:
    """One attachment: copies packets to stdout/stderr, stdin (scanned for the detach keys) to the
    socket, and window sizes; `run` returns the exit code."""

    def __init__(self, store, cid: str, sock: socket.socket, tty: bool, stdin: bool, keys: bytes, replay=None):
        self.store, self.cid, self.sock, self.tty, self.keys = store, cid, sock, tty, keys
        self.stdin = stdin
        self.replay = replay   # (log path, offset, inode): printed up to where the stream starts
        self.matched = 0   # how many of the detach keys the last stdin bytes were (held back)

    def run(self, sig_proxy: bool) -> int:
        saved = {}
        term = None
        try:
            if self.tty and self.stdin and os.isatty(0):
                import termios
                import tty

                term = termios.tcgetattr(0)
                tty.setraw(0)
            if self.tty:
                saved[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, lambda *_: self._resize())
                self._resize()
            if sig_proxy:
                for sig in PROXIED:
                    saved[sig] = signal.signal(sig, self._proxy)
            code = self._copy()
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
            if term is not None:
                import termios

                termios.tcsetattr(0, termios.TCSADRAIN, term)
            self.sock.close()
        if code is None:
            sys.stderr.write("read escape sequence\n")
            return 0
        return code

    def _copy(self) -> int | None:
        """Copy until the exit code arrives (it), the detach keys are read (None) or the monitor
        is gone without one (the exit its state records)."""
        outs = {STDOUT: 1, STDERR: 2}
        reading = self.stdin
        while True:
            fds = [self.sock.fileno()] + ([0] if reading else [])
            ready = select.select(fds, [], [])[0]
            if 0 in ready:
                data = os.read(0, CHUNK)
                if not data:
                    reading = False   # EOF: the container's stdin stays open (docker's, without --rm's -i)
                else:
                    data, detach = self._scan(data)
                    if data:
                        self._send(bytes((STDIN,)) + data)
                    if detach:
                        return None
            if self.sock.fileno() in ready:
                try:
                    packet = self.sock.recv(65536 + 1)
                except ConnectionResetError:
                    packet = b""
                if not packet:
                    return self._ended_or_dropped()
                if packet[0] == EXIT:
                    return int(packet[1:])
                if packet[0] == HELLO:
                    self._replay(packet[1:])
                fd = outs.get(packet[0])
                if fd is not None:
                    _write_all(fd, packet[1:])

    def _replay(self, hello: bytes) -> None:
        """start -a: the log from the start up to where the stream begins (the monitor's HELLO:
        the log's size and inode then; a log rotated meanwhile is not replayed)."""
        if self.replay is None:
            return
        (path, offset, ino), self.replay = self.replay, None
        size, _, now = hello.decode().partition(" ")
        if ino is None or str(ino) == now:
            _print(jsonlog.between(path, offset if ino is not None else 0, int(size)))

    def _scan(self, data: bytes) -> tuple[bytes, bool]:
        """`data` with the detach keys taken out (a partial match held back until the next byte
        decides), and whether the whole sequence was typed."""
        out = bytearray()
        keys = self.keys
        for b in data:
            if b == keys[self.matched]:
                self.matched += 1
                if self.matched == len(keys):
                    self.matched = 0
                    return bytes(out), True
                continue
            out += keys[:self.matched]
            self.matched = 0
            if b == keys[0]:
                self.matched = 1
                if len(keys) == 1:
                    return bytes(out), True
            else:
                out.append(b)
        return bytes(out), False

    def _send(self, packet: bytes) -> None:
        try:
            self.sock.send(packet)
        except OSError:   # the monitor is gone: the next read says so
            pass

    def _resize(self) -> None:
        for fd in (1, 0):
            try:
                cols, rows = os.get_terminal_size(fd)
            except OSError:
                continue
            self._send(bytes((RESIZE,)) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big"))
            return

    def _proxy(self, signum, frame) -> None:
        from imagetool import control

        try:
            control.kill(self.store, self.cid, signum)
        except ImagetoolError:
            pass

    def _ended_or_dropped(self) -> int:
        """The socket closed without EXIT: a monitor that dropped this attacher (it fell more than
        conmon.BACKLOG behind) while the container runs on is an error; else the recorded exit."""
        from imagetool import containerstates

        try:
            _, state = containerstates.find(self.store, self.cid)
        except ImagetoolError:
            state = {}
        if state.get("status") == "running" and containerstates.owner_alive(state):
            raise ImagetoolError("attach was dropped: it fell more than 1 MiB behind the container's output",
                                 hint="the container runs on; attach again, and read its output")
        return self._recorded_exit()

    def _recorded_exit(self) -> int:
        from imagetool import control

        try:
            return control.wait(self.store, self.cid)
        except ImagetoolError:
            return 125
