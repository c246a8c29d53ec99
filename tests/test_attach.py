"""`imagetool attach` for real: detached busybox containers, the lean monitor's attach socket, a pty
(python's pty module) as the terminal for -t.

Every test removes its containers and checks that their monitors are gone (test_detached's
Detached); the autouse host_unchanged fixture checks mounts and cgroups.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import stat
import struct
import subprocess
import termios
import time

import pytest

from imagetool.attach import parse_detach_keys
from imagetool.errors import ImagetoolError
from tests.rootless import rootless_user  # noqa: F401  (a pytest fixture)
from tests.runfixtures import host_unchanged, it, store_fixture  # noqa: F401  (pytest fixtures)
from tests.runhelpers import kernel_skip_reason
from tests.test_detached import Detached, _eventually, _gone

_reason = kernel_skip_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

store = store_fixture("imagetool-attach")
LIMIT = 60   # seconds: only so that a bug fails instead of hanging
COUNTER = "i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; done"


@pytest.fixture
def dt(it, store):
    d = Detached(it, store)
    yield d
    d.cleanup()


class Attached:
    """An `imagetool attach` process with pipes; ended (by SIGKILL, as sig-proxy forwards
    SIGTERM) if a test leaves it running."""

    def __init__(self, it, *args, stdin=subprocess.DEVNULL):
        # SIGINT at its default, as in a terminal's foreground job: a suite started in the background
        # (`./tests/run &`) has it ignored, and an interpreter started so keeps it ignored
        self.proc = subprocess.Popen(it.argv("attach", *args), env=it.env, stdin=stdin, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def line(self) -> bytes:
        ready = select.select([self.proc.stdout], [], [], LIMIT)[0]
        assert ready, "no output from attach"
        return self.proc.stdout.readline()

    def finish(self) -> tuple[int, bytes, bytes]:
        out, err = self.proc.communicate(timeout=LIMIT)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        if self.proc.stdin is not None and self.proc.stdin.closed:
            self.proc.stdin = None
        self.proc.communicate(timeout=LIMIT)


@pytest.fixture
def attached(it):
    made = []

    def attach(*args, **kw) -> Attached:
        made.append(Attached(it, *args, **kw))
        return made[-1]

    yield attach
    for a in made:
        a.kill()


def _log_lines(store, cid) -> int:
    try:
        return len((store / "containers" / cid / "container.log").read_text().splitlines())
    except FileNotFoundError:
        return 0


def test_output_from_the_moment_of_attaching_not_the_log(dt, store, attached):
    cid = dt.run("busybox", "sh", "-c", COUNTER)
    _eventually(lambda: _log_lines(store, cid) >= 5, "five lines logged")
    before = _log_lines(store, cid)
    a = attached(cid)
    seen = [int(a.line()) for _ in range(3)]
    assert seen[0] > before and seen == list(range(seen[0], seen[0] + 3)), (before, seen)
    assert dt.state(cid)["status"] == "running"


def test_two_attaches_at_once_both_see_the_output(dt, attached):
    cid = dt.run("busybox", "sh", "-c", COUNTER)
    a, b = attached(cid), attached(cid)
    first_a, first_b = int(a.line()), int(b.line())
    later = max(first_a, first_b) + 2   # both get every line from then on
    assert [int(a.line()) for _ in range(later - first_a)][-1] == later
    assert [int(b.line()) for _ in range(later - first_b)][-1] == later


def test_stdin_reaches_a_container_run_with_i_and_the_detach_keys_leave_it_running(dt, attached):
    cid = dt.run("-i", "busybox", "cat")
    a = attached(cid, stdin=subprocess.PIPE)
    a.proc.stdin.write(b"hello\n")
    a.proc.stdin.flush()
    assert a.line() == b"hello\n"
    a.proc.stdin.write(b"one \x10two\n")   # a lone ctrl-p is passed on
    a.proc.stdin.flush()
    assert a.line() == b"one \x10two\n"
    a.proc.stdin.write(b"\x10\x11")   # ctrl-p ctrl-q detaches
    a.proc.stdin.flush()
    code, _, err = a.finish()
    assert code == 0 and err == b"read escape sequence\n"
    assert dt.state(cid)["status"] == "running" and not _gone(dt.state(cid)["pid"])


def test_other_detach_keys_and_no_stdin(dt, attached):
    cid = dt.run("-i", "busybox", "cat")
    a = attached("--detach-keys", "ctrl-x,x", cid, stdin=subprocess.PIPE)
    a.proc.stdin.write(b"\x18y\n")   # ctrl-x then not x: both bytes go on
    a.proc.stdin.flush()
    assert a.line() == b"\x18y\n"
    a.proc.stdin.write(b"\x10\x11\n")
    a.proc.stdin.flush()
    assert a.line() == b"\x10\x11\n"
    a.proc.stdin.write(b"\x18x")
    a.proc.stdin.flush()
    code, _, err = a.finish()
    assert code == 0 and err == b"read escape sequence\n"
    b = attached("--no-stdin", cid, stdin=subprocess.PIPE)
    b.proc.stdin.write(b"lost\n\x18x\x10\x11")   # not read at all
    b.proc.stdin.close()
    c = attached(cid, stdin=subprocess.PIPE)   # a third: its stdin goes in, both see the output
    for _ in range(LIMIT):   # (until b has connected too)
        c.proc.stdin.write(b"kept\n")
        c.proc.stdin.flush()
        assert c.line() == b"kept\n"
        if select.select([b.proc.stdout], [], [], 1)[0]:
            break
    assert b.line() == b"kept\n" and b.proc.poll() is None


def test_a_tty_without_i_takes_no_stdin(dt, attached):
    cid = dt.run("-t", "busybox", "sh", "-c", "while :; do echo t; sleep 0.1; done")
    a = attached(cid, stdin=subprocess.PIPE)
    a.proc.stdin.write(b"\x10\x11")   # not forwarded, so no detach keys either (as docker)
    a.proc.stdin.close()
    assert [a.line() for _ in range(3)] == [b"t\r\n"] * 3 and a.proc.poll() is None


def test_the_exit_code_of_the_container_is_attachs(dt, it, attached):
    cid = dt.run("-i", "busybox", "sh", "-c", "read x; echo bye; exit 42")
    a = attached(cid, stdin=subprocess.PIPE)
    _eventually(lambda: os.path.exists(dt.store / "containers" / cid / "attach"), "the socket")
    a.proc.stdin.write(b"go\n")
    a.proc.stdin.flush()
    code, out, _ = a.finish()
    assert (code, out) == (42, b"bye\n")
    assert it("wait", cid).stdout == "42\n"
    assert not os.path.exists(dt.store / "containers" / cid / "attach")   # removed once it exited


def test_the_exit_code_of_an_rm_container_reaches_attach(dt, store, attached):
    cid = dt.run("--rm", "-i", "busybox", "sh", "-c", "read x; exit 7")
    a = attached(cid, stdin=subprocess.PIPE)
    _eventually(lambda: os.path.exists(store / "containers" / cid / "attach"), "the socket")
    a.proc.stdin.write(b"go\n")
    a.proc.stdin.flush()
    assert a.finish()[0] == 7
    assert not (store / "containers" / cid).exists()


def test_attaching_to_a_stopped_container_is_a_one_line_error(dt, it):
    cid = dt.run("busybox", "true")
    assert it("wait", cid).stdout == "0\n"
    r = it("attach", cid)
    assert r.returncode != 0 and r.stdout == ""
    assert r.stderr.strip().splitlines() == ["imagetool: error: you cannot attach to a stopped container, start it first"]
    r = it("attach", "--sig-proxy=maybe", cid)
    assert r.returncode != 0 and "--sig-proxy" in r.stderr
    r = it("attach", "--detach-keys", "ctrl-1", cid)
    assert r.returncode != 0 and "detach keys" in r.stderr


def test_sig_proxy_forwards_signals_to_the_container(dt, attached):
    cid = dt.run("busybox", "sh", "-c", "trap 'exit 9' USR1; while :; do echo t; sleep 0.1; done")
    a = attached(cid)
    assert a.line() == b"t\n"   # attached: the handlers are in place
    a.proc.send_signal(signal.SIGUSR1)
    assert a.finish()[0] == 9


def test_sig_proxy_false_leaves_the_container_alone(dt, attached):
    cid = dt.run("busybox", "sh", "-c", "trap 'exit 9' INT; while :; do echo t; sleep 0.1; done")
    a = attached("--sig-proxy=false", cid)
    assert a.line() == b"t\n"
    a.proc.send_signal(signal.SIGINT)
    assert a.finish()[0] == 130
    assert dt.state(cid)["status"] == "running"


def test_the_socket_is_the_owners_only_and_gone_with_the_container(dt, it, store):
    cid = dt.run("busybox", "sleep", "1000")
    path = store / "containers" / cid / "attach"
    _eventually(path.exists, "the socket")
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    dfd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    pid = os.fork()
    if pid == 0:   # another user, handed the directory: the socket's mode keeps it out
        code = 1
        try:
            import ctypes
            import socket

            os.setgid(65534)
            os.setuid(65534)
            ctypes.CDLL(None).prctl(4, 1)   # PR_SET_DUMPABLE: /proc/self/fd stays ours after setuid
            via = f"/proc/self/fd/{dfd}/attach"
            os.stat(via)   # reachable: what refuses the connection is the socket's mode
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                s.connect(via)
            except PermissionError:
                code = 0
        except BaseException:
            code = 2
        finally:
            os._exit(code)
    os.close(dfd)
    assert os.waitpid(pid, 0)[1] == 0, "an unprivileged user could connect"
    assert it("rm", "-f", cid).returncode == 0
    assert not path.exists() and not path.parent.exists()


def _winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _read_until(fd: int, needle: bytes, or_: bytes | None = None) -> bytes:
    got = b""
    deadline = time.monotonic() + LIMIT
    while needle not in got and (or_ is None or or_ not in got):
        assert time.monotonic() < deadline, f"never saw {needle!r} in {got!r}"
        if select.select([fd], [], [], 1)[0]:
            got += os.read(fd, 4096)
    return got


def test_tty_raw_terminal_window_size_and_detach(dt, it):
    cid = dt.run("-i", "-t", "busybox", "sh")
    master, slave = pty.openpty()
    try:
        _winsize(slave, 33, 101)
        before = termios.tcgetattr(slave)
        proc = subprocess.Popen(it.argv("attach", cid), env=it.env, stdin=slave, stdout=slave, stderr=slave,
                                start_new_session=True)
        try:
            _eventually(lambda: termios.tcgetattr(slave)[3] & termios.ICANON == 0, "the terminal in raw mode")
            assert b"/ # " in _read_until(master, b"/ # ")   # the unfinished line (its prompt) is shown
            os.write(master, b"stty size\r")
            assert b"33 101" in _read_until(master, b"33 101")
            _winsize(slave, 40, 120)
            os.killpg(proc.pid, signal.SIGWINCH)   # what the terminal does on a resize
            for _ in range(LIMIT):   # asked again until the new size has arrived
                os.write(master, b"stty size\r")
                if b"40 120" in _read_until(master, b"\n33 101\r\n", or_=b"\n40 120\r\n"):
                    break
            else:
                raise AssertionError("the new window size never reached the container")
            os.write(master, b"\x10\x11")
            assert proc.wait(timeout=LIMIT) == 0
            assert b"read escape sequence" in _read_until(master, b"read escape sequence")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert termios.tcgetattr(slave) == before   # the terminal restored
        assert dt.state(cid)["status"] == "running"
    finally:
        os.close(master)
        os.close(slave)


def test_start_a_gets_the_output_from_the_start_once_and_start_ai_stdin(dt, it):
    cid = dt.run("-i", "busybox", "sh", "-c", "echo 1; echo 2; read x; echo got $x; sleep 0.2; echo 4; exit 5")
    r = it("start", "-a", cid)   # (already running: refused before anything)
    assert r.returncode != 0 and "already running" in r.stderr
    assert it("kill", cid).returncode == 0 and it("wait", cid).stdout == "137\n"
    r = it("start", "-ai", cid, input="b\n")
    assert (r.returncode, r.stdout) == (5, "1\n2\ngot b\n4\n"), r.stderr   # nothing lost, nothing twice


def test_an_attacher_that_does_not_read_holds_up_neither_the_container_nor_its_log(dt, it, store, attached):
    cid = dt.run("-i", "busybox", "sh", "-c", "read x; yes 0123456789012345678901234567890123456789 | "
                 "head -c 20000000; echo; echo done")
    a = attached(cid, stdin=subprocess.PIPE)   # its stdout is never read
    a.proc.stdin.write(b"go\n")
    a.proc.stdin.flush()
    assert it("wait", cid, timeout=300).stdout == "0\n"
    assert it("logs", "--tail", "1", cid).stdout == "done\n"


def test_an_attacher_dropped_for_not_reading_is_told_so(dt, it, store, attached):
    """The monitor drops an attacher more than 1 MiB behind (its queue is counted as it grows, not
    summed again); the attacher, once it reads on, ends with a one-line error, not a silent wait."""
    cid = dt.run("-i", "busybox", "sh", "-c",
                 "read x; yes 0123456789012345678901234567890123456789 | head -c 5000000; sleep 1000")
    a = attached(cid, stdin=subprocess.PIPE)   # its stdout is not read until the container has written everything
    a.proc.stdin.write(b"go\n")
    a.proc.stdin.flush()
    log = store / "containers" / cid / "container.log"
    _eventually(lambda: log.exists() and log.stat().st_size > 5_000_000 * 1.5, "the output logged")
    time.sleep(0.5)
    code, out, err = a.finish()
    assert code != 0 and b"attach was dropped" in err and len(err.splitlines()) <= 2, err
    assert 0 < len(out) < 5_000_000
    assert dt.state(cid)["status"] == "running"


def test_a_killed_monitors_socket_is_replaced_by_the_next_start(dt, it, store, attached):
    cid = dt.run("busybox", "sh", "-c", "while :; do echo t; sleep 0.1; done")
    path = store / "containers" / cid / "attach"
    _eventually(path.exists, "the socket")
    monitor = dt.state(cid)["owner_pid"]
    os.kill(monitor, signal.SIGKILL)
    _eventually(lambda: _gone(monitor), "the monitor is gone")
    r = it("attach", cid)   # reconciled: exited, whatever its stale socket says
    assert r.returncode != 0 and "stopped container" in r.stderr
    assert it("start", cid).returncode == 0
    dt.monitors.add(dt.state(cid)["owner_pid"])
    a = attached(cid)
    assert a.line() == b"t\n"


def test_rootless_attach_as_the_containers_user(rootless_user):  # noqa: F811
    """An ordinary user's container: its monitor (in the user's namespace) made the socket, the
    user's own (0600), and the user's attach (outside any namespace) is let in."""
    from tests.test_rootless_run import _user_store

    it = _user_store(rootless_user)
    r = it("run", "-d", "--name", "att", "--network", "none", "-i", "busybox", "sh", "-c",
           "read x; echo got $x; exit 4")
    assert r.returncode == 0, r.stderr
    try:
        (sock,) = _eventually(lambda: list((it.store / "containers").glob("*/attach")), "the socket")
        st = os.lstat(sock)
        assert st.st_uid == rootless_user.uid and stat.S_IMODE(st.st_mode) == 0o600
        r = it("attach", "att", input="hi\n", timeout=LIMIT)
        assert (r.returncode, r.stdout) == (4, "got hi\n"), r.stderr
    finally:
        it("rm", "-f", "att")


def test_parse_detach_keys():
    assert parse_detach_keys("ctrl-p,ctrl-q") == b"\x10\x11"
    assert parse_detach_keys("ctrl-@,a,ctrl-\\") == b"\x00a\x1c"
    for bad in ("ctrl-1", "", "ab", "ctrl-", "ctrl-é"):
        with pytest.raises(ImagetoolError):
            parse_detach_keys(bad)
