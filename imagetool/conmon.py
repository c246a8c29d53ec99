"""The lean monitor: what a detached container's monitor becomes once its container runs.

The monitor (monitor.py) starts the container with all of imagetool imported (~19 MB resident).
Once it runs, the monitor execs a fresh interpreter (`python -I -S`: the standard library and
this package's directory only) running `main()` here, with one JSON argument (`launch()` builds
the argv). exec keeps the PID: the container's init (or runc) stays its child, so
PR_SET_PDEATHSIG still kills the container with its monitor, and state.json's owner_pid and
owner_start still name it. It is handed the container's output pipes (or the pty master of -t)
and, with -i, stdin's write end (held open, so the container never sees EOF). Idle it holds about
10 MB: it imports os, select, signal, json and jsonlog only. It

  - writes the container's output to the json-file log (jsonlog.Writer, --log-opt rotation),
  - runs the healthcheck: one interval after the start and after each probe's end it spawns
    `monitor.probe` in a full interpreter (python -c; nothing stays imported here), its pidfd
    in the same select; an unfinished probe is killed once the container has exited,
  - on SIGTERM kills the container (SIGHUP and SIGINT stay ignored, as the monitor left them),
  - once the output reaches EOF and the container is reaped, tears it down and records its exit
    (finish(): importing only what that needs, so `stop` does not wait for a full imagetool to
    load), and with a restart policy execs `monitor.resume` in a full interpreter, still the
    same PID, which applies it (a restart hands over to a new lean monitor).

Every fd it was handed is made close-on-exec on arrival: nothing of the container's reaches a
probe or the interpreter that resumes.

It also serves `imagetool attach` (attach.py is the client) on a unix socket, `attach` in the
container's directory (SOCK_SEQPACKET, mode 0600, made under umask 0177; peers other than root or
our own uid are refused). One packet is one message, its first byte its kind: from the monitor
HELLO + "SIZE INODE" (ASCII: the log's current file, where the stream starts), STDOUT / STDERR +
output bytes (from the moment of attaching: nothing is replayed but the line being written, not in
the log yet: a shell's prompt) and, once the container is torn down, EXIT + its exit code in
ASCII; from an attacher STDIN + bytes (written to the container's stdin, -i's pipe or the pty
master of -t, only when it was started with -i) and RESIZE + rows, cols (two bytes each, big-endian: TIOCSWINSZ on the pty master). Nothing but these
bytes crosses it: no fd is passed either way. Writes never block the loop: an attacher is sent
to without blocking and dropped once more than BACKLOG bytes (1 MiB, OVERHEAD counted per packet)
wait for it (docker's attach blocks the container instead; the attacher is told); the container's stdin
is written without blocking and, while some of it waits, attachers are not read. The socket is
removed once the container's output ends (and with its directory); imports: _socket only
(~0.2 MB; the socket module would add 0.6).
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time

_MAIN = "import sys; sys.path.insert(0, sys.argv[1]); from imagetool.conmon import main; main()"
RESUME = "from imagetool.monitor import resume; resume()"
PROBE = "from imagetool.monitor import probe; probe()"


def package_parent() -> str:
    """The directory holding the imagetool package (what `-I -S` needs on sys.path)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(doc: dict) -> list[str]:
    """The argv that execs the lean monitor with `doc` (see main())."""
    return [sys.executable, "-I", "-S", "-c", _MAIN, package_parent(), json.dumps(doc)]


def full(code: str, *args: str) -> list[str]:
    """The argv of a full interpreter running `code` (imports as the CLI's do: site, PYTHONPATH)."""
    return [sys.executable, "-P", "-c", code, *args]


class _Probe:
    """A healthcheck probe under way: its process and pidfd."""

    def __init__(self, pid: int):
        self.pid = pid
        self.fd = os.pidfd_open(pid)

    def reap(self) -> None:
        os.close(self.fd)
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass

    def kill(self) -> None:
        try:
            signal.pidfd_send_signal(self.fd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.reap()


ATTACH = "attach"   # the attach socket's name in the container's directory
HELLO, STDIN, STDOUT, STDERR, EXIT, RESIZE = 0, 1, 2, 3, 4, 5   # a packet's first byte: what it carries
BACKLOG = 1 << 20   # bytes queued for one attacher before it is dropped (it does not read)
PACKET = 1 << 16    # data bytes in one packet at most (attach.py reads 65536 + 1)
OVERHEAD = 64       # counted against BACKLOG for each queued packet: a stream of 1-byte writes is not free
MAX_ATTACHERS = 64


class _Queue:
    """What waits for one attacher: packets (kind byte + data; consecutive output of one stream
    joined into one, up to PACKET) and `size`, their bytes plus OVERHEAD each. Sending pops whole
    packets from the front; the size is kept, never summed again."""

    def __init__(self):
        from collections import deque

        self.packets = deque()
        self.size = 0

    def add(self, kind: int, data: bytes, join: bool = True) -> None:
        last = self.packets[-1] if self.packets else None
        if join and last is not None and last[0] == kind and len(last) - 1 + len(data) <= PACKET:
            last += data
            self.size += len(data)
            return
        self.packets.append(bytearray((kind,)) + data)
        self.size += 1 + len(data) + OVERHEAD

    def __bool__(self) -> bool:
        return bool(self.packets)


class _Attachers:
    """The attach socket of the container in `cdir` and the attachers connected to it (see the
    module's doc). `streams`: the output fds main() reads; `held`: -i's stdin pipe (write end)."""

    def __init__(self, cdir: str, streams: dict, held: list, log):
        self.cdir, self.log = cdir, log
        self.listener = None
        self.queues = {}   # attacher fd -> _Queue: the packets not yet sent
        self.tty = next((fd for fd in streams if os.isatty(fd)), None)   # -t: the pty master
        self.held = held
        self.stdin = None   # where attachers' stdin goes (decided at the first attacher)
        self.inbuf = b""    # stdin bytes the container has not taken yet
        self._known = False

    def open(self) -> None:
        """Bind and listen on cdir/attach (a stale socket of a killed monitor replaced); a socket
        that cannot be made leaves the container running without one."""
        import _socket

        dfd = os.open(self.cdir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        path = f"/proc/self/fd/{dfd}/{ATTACH}"   # short whatever the store's path (sun_path: 108 bytes)
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        try:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            umask = os.umask(0o177)
            try:
                sock.bind(path)
            finally:
                os.umask(umask)
            sock.listen(8)
            sock.setblocking(False)
            self.listener = sock
        except OSError:
            sock.close()
        finally:
            os.close(dfd)

    def readers(self) -> list:
        if self.listener is None:
            return []
        return [self.listener.fileno()] + ([] if self.inbuf else list(self.queues))

    def writers(self) -> list:
        return [fd for fd, q in self.queues.items() if q] + ([self.stdin] if self.inbuf else [])

    def readable(self, fd: int) -> bool:
        """Serve `fd` if it is the socket's or an attacher's; whether it was."""
        if self.listener is not None and fd == self.listener.fileno():
            self._accept()
        elif fd in self.queues:
            self._receive(fd)
        else:
            return False
        return True

    def writable(self, fds) -> None:
        for fd in fds:
            if fd in self.queues:
                self._flush(fd)
            elif fd == self.stdin and self.inbuf:
                self._push()

    def output(self, stream: str, data: bytes) -> None:
        if self.queues:
            kind = STDOUT if stream == "stdout" else STDERR
            for fd in list(self.queues):
                self.queues[fd].add(kind, data)
                self._flush(fd)

    def closed(self, fd: int) -> None:
        """The output fd `fd` was closed (-t: the pty master, also stdin's way in)."""
        if fd == self.stdin:
            self.stdin, self.inbuf = None, b""

    def _accept(self) -> None:
        import _socket

        try:
            fd = self.listener._accept()[0]
        except OSError:
            return
        conn = _socket.socket(fileno=fd)
        try:
            cred = conn.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
        except OSError:
            cred = b""
        conn.detach()
        uid = int.from_bytes(cred[4:8], sys.byteorder) if len(cred) == 12 else -1
        if uid not in (0, os.geteuid()) or len(self.queues) >= MAX_ATTACHERS:
            os.close(fd)
            return
        if not self._known:   # -i: where stdin goes; read once, when someone first attaches
            self._known = True
            state = _read(self.cdir) or {}
            if (state.get("options") or {}).get("interactive"):
                self.stdin = self.held[0] if self.held else self.tty
            if self.stdin is not None:
                os.set_blocking(self.stdin, False)   # the pty master's reads follow select: never EAGAIN
        os.set_blocking(fd, False)
        hello = f"{self.log.size} {os.fstat(self.log.fd).st_ino}".encode()   # where the log is now
        queue = self.queues[fd] = _Queue()
        queue.add(HELLO, hello, join=False)
        for stream, rest in self.log.pending().items():
            if rest:
                queue.add(STDOUT if stream == "stdout" else STDERR, rest, join=False)
        self._flush(fd)

    def _receive(self, fd: int) -> None:
        try:
            packet = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            packet = b""
        if not packet:
            self._drop(fd)
        elif packet[0] == STDIN and self.stdin is not None:
            self.inbuf += packet[1:]
            self._push()
        elif packet[0] == RESIZE and self.tty is not None and len(packet) == 5:
            import fcntl
            import termios

            rows, cols = int.from_bytes(packet[1:3], "big"), int.from_bytes(packet[3:5], "big")
            winsize = rows.to_bytes(2, sys.byteorder) + cols.to_bytes(2, sys.byteorder) + bytes(4)
            try:
                fcntl.ioctl(self.tty, termios.TIOCSWINSZ, winsize)
            except OSError:
                pass

    def _push(self) -> None:
        try:
            self.inbuf = self.inbuf[os.write(self.stdin, self.inbuf):]
        except BlockingIOError:
            pass
        except OSError:   # the container's side is gone: its stdin no longer matters
            self.inbuf, self.stdin = b"", None

    def _flush(self, fd: int) -> None:
        queue = self.queues[fd]
        try:
            while queue.packets:
                packet = queue.packets[0]
                os.write(fd, packet)   # one packet, whole or not at all
                queue.packets.popleft()
                queue.size -= len(packet) + OVERHEAD
        except BlockingIOError:
            if queue.size > BACKLOG:
                self._drop(fd)
        except OSError:
            self._drop(fd)

    def _drop(self, fd: int) -> None:
        del self.queues[fd]
        os.close(fd)

    def close_socket(self) -> None:
        """No more attachers: the socket closed and removed (its directory may be gone already)."""
        if self.listener is None:
            return
        self.listener.close()
        try:
            os.unlink(os.path.join(self.cdir, ATTACH))
        except OSError:
            pass

    def end(self, code: int, limit: float = 2.0) -> None:
        """Send each attacher what it still has to get (waiting up to `limit` s in all for the
        slow ones), then EXIT and `code`, and close."""
        deadline = time.monotonic() + limit
        for fd in list(self.queues):
            self.queues[fd].add(EXIT, str(code).encode(), join=False)
        while True:
            for fd in list(self.queues):
                self._flush(fd)
                if fd in self.queues and not self.queues[fd]:
                    self._drop(fd)
            left = deadline - time.monotonic()
            if not self.queues or left <= 0:
                break
            select.select([], list(self.queues), [], left)
        for fd in list(self.queues):
            self._drop(fd)


def main() -> None:
    """doc: cid, cdir, pid (the container's process: its init, or runc), streams {fd: "stdout" |
    "stderr"}, hold [fds], log, max_size, max_file, health (Config.Healthcheck or null),
    started (time.time() of the start) and `resume`, handed on to monitor.resume."""
    doc = json.loads(sys.argv[-1])
    pid = doc["pid"]
    pidfd = os.pidfd_open(pid)   # our child: signalled through it, never a recycled PID
    terminated = []

    def term(signum, frame):
        terminated.append(signum)
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, term)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})   # the monitor blocked it across the exec
    streams = {int(fd): name for fd, name in doc["streams"].items()}
    held = list(doc.get("hold") or ())
    for fd in (*streams, *held):
        os.set_inheritable(fd, False)
    from imagetool import jsonlog

    log = jsonlog.Writer(doc["log"], jsonlog.LogOptions(doc.get("max_size"), doc.get("max_file") or 1))
    attachers = _Attachers(doc["cdir"], streams, held, log)
    attachers.open()
    check = doc.get("health")
    interval = check["Interval"] / 1e9 if check else None
    next_probe = doc["started"] + interval if check else None
    probe = None
    while streams:
        timeout = None
        if next_probe is not None and probe is None:
            timeout = max(0.0, next_probe - time.time())
        waiting = list(streams) + ([probe.fd] if probe is not None else []) + attachers.readers()
        ready, writable, _ = select.select(waiting, attachers.writers(), [], timeout)
        attachers.writable(writable)
        for fd in ready:
            if probe is not None and fd == probe.fd:
                probe.reap()
                probe, next_probe = None, time.time() + interval
                continue
            if fd not in streams:
                attachers.readable(fd)
                continue
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:   # the pty master, non-blocking for an attacher's stdin
                continue
            except OSError:   # EIO: the pty's slave side is closed everywhere
                data = b""
            if data:
                log.write(streams[fd], data)
                attachers.output(streams[fd], data)
            else:
                os.close(fd)
                del streams[fd]
                attachers.closed(fd)
        if streams and probe is None and next_probe is not None and time.time() >= next_probe and not terminated:
            probe = _spawn_probe(doc)
    attachers.close_socket()
    from imagetool.runtime.supervise import reap   # the end: what it imports no longer counts

    code = reap(pid)
    if probe is not None:
        probe.kill()
    log.close()
    for fd in held:
        os.close(fd)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGHUP, signal.SIGINT})   # cleanup is not cut short
    code = finish(doc["cdir"], code)
    attachers.end(code)
    if doc.get("restart", "no") != "no" and not terminated and os.path.exists(os.path.join(doc["cdir"], "state.json")):
        os.execv(sys.executable, full(RESUME, json.dumps(dict(doc["resume"], code=code))))
    os._exit(code)


def finish(cdir: str, code: int) -> int:
    """Tear down the exited container of `cdir` and record its exit as containers.run does on its
    way out: what is left in its cgroups (runtime.destroy; runc's container), its network,
    the directory with --rm, else state.json's exit code and times. `code` becomes 137 when the
    built-in runtime's cgroup saw an OOM kill, 127/126 when runc could not exec the command; the
    code recorded. Imports only what this needs (the lean monitor calls it; so does
    monitor.resume): no store, no containers module."""
    import shutil

    from imagetool import jsonlog, network, runtime

    state = _read(cdir)
    if state is None:   # rm -f took it meanwhile
        return code
    backend = state.get("runtime") or "imagetool"
    if backend == "imagetool":
        from imagetool.runtime import cgroups

        try:
            if cgroups.create(state["id"]).oom_killed():
                code = 137
        except Exception:
            pass
    elif code == 1:
        from imagetool.runtime import runc

        code = runc.exec_failure_code(os.path.join(cdir, f"{backend}.log")) or code
    try:
        runtime.destroy(state["id"], backend, state.get("cgroups") or [])
    finally:
        network.teardown(cdir)
        if state.get("rm"):
            shutil.rmtree(cdir, ignore_errors=True)
        else:
            state.update(status="exited", exit_code=code, pid=None,
                         finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), finished_at=jsonlog.now())
            _write(cdir, state)
    return code


def _read(cdir: str) -> dict | None:
    try:
        with open(os.path.join(cdir, "state.json")) as f:
            doc = json.load(f)
        return doc if isinstance(doc, dict) else None
    except (OSError, ValueError):
        return None


def _write(cdir: str, state: dict) -> None:
    """state.json replaced atomically, as containers.write_json does (the same temporary name)."""
    path = os.path.join(cdir, "state.json")
    tmp = os.path.join(cdir, f".imagetool-state.json-{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(state))
        os.replace(tmp, path)
    except FileNotFoundError:
        pass

def _spawn_probe(doc: dict):
    try:
        return _Probe(os.posix_spawn(sys.executable, full(PROBE, doc["cdir"], str(doc["started"])), os.environ))
    except OSError:
        return None

