"""run -d forks its monitor before it looks the image up (monitor._Started): the monitor loads the
run's modules while the CLI reads or pulls the image. What that must not change:

  - a CLI that fails after the fork (the image cannot be pulled) leaves no process and no container
  - a CLI killed while it pulls leaves no monitor waiting for a run that will never come
  - the run the monitor is handed is the CLI's: the options (as `start` reads them back) and the
    image the CLI resolved, by digest
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest

from tests.runfixtures import host_unchanged, it, store_fixture  # noqa: F401  (pytest fixtures)
from tests.runhelpers import kernel_skip_reason
from tests.test_detached import Detached

_reason = kernel_skip_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

store = store_fixture("imagetool-detach-prewarm")


def _marked(mark: str) -> list[int]:
    """PIDs of the processes whose environment carries `mark` (the CLI's, inherited by its monitor)."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    if mark.encode() in f.read():
                        pids.append(int(name))
            except OSError:
                pass
    return pids


def _none_left(mark: str, limit: float = 10.0) -> list[int]:
    deadline = time.monotonic() + limit
    while (left := _marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _containers(it) -> list[str]:
    r = it("ps", "-a", "--format", "json")
    assert r.returncode == 0, r.stderr
    return sorted(c["id"] for c in json.loads(r.stdout or "[]"))


def test_a_pull_that_fails_after_the_fork_leaves_nothing(it, store):
    mark = "IMAGETOOL_TEST_PREWARM=" + os.urandom(8).hex()
    it.env[mark.split("=")[0]] = mark.split("=")[1]
    before = _containers(it)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()   # nothing listens there: the pull fails at once
    r = it("run", "-d", "--network", "none", f"127.0.0.1:{port}/nothere", "true")
    assert r.returncode != 0
    assert "127.0.0.1" in r.stderr and "Traceback" not in r.stderr
    assert _none_left(mark) == []
    assert _containers(it) == before


def test_a_cli_killed_while_it_pulls_takes_its_waiting_monitor_with_it(it, store):
    mark = "IMAGETOOL_TEST_PREWARM=" + os.urandom(8).hex()
    it.env[mark.split("=")[0]] = mark.split("=")[1]
    before = _containers(it)
    silent = socket.socket()   # accepts connections (the backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        p = it.popen("run", "-d", "--network", "none", f"127.0.0.1:{silent.getsockname()[1]}/stalls", "true")
        deadline = time.monotonic() + 20
        while len(_marked(mark)) < 2 and time.monotonic() < deadline:   # the CLI and its monitor
            time.sleep(0.02)
        assert len(_marked(mark)) >= 2, "the monitor was not forked before the pull"
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
        assert _none_left(mark) == []      # EOF on its work pipe: the monitor exits
    finally:
        silent.close()
    assert _containers(it) == before


def test_the_monitor_runs_the_clis_options_and_image(it, store):
    d = Detached(it, store)
    try:
        cid = d.run("--network", "none", "-e", "A=1", "-e", "B=two words", "-w", "/tmp", "--name", "prewarm-opts",
                    "--hostname", "pw", "busybox", "sh", "-c", "sleep 1000")
        state = d.state(cid)
        assert state["name"] == "prewarm-opts"
        assert state["image"] == "docker.io/library/busybox:latest"
        img = it("inspect", "--format", "{{.Id}}", "busybox")
        if img.returncode == 0 and img.stdout.strip().startswith("sha256:"):
            assert state["image_digest"] == img.stdout.strip()
        r = it("exec", cid, "sh", "-c", 'echo "$A|$B|$(pwd)|$(hostname)"')
        assert r.stdout.strip() == "1|two words|/tmp|pw", r.stderr
    finally:
        d.cleanup()


def test_the_monitor_lets_its_cli_exit_before_it_execs_the_lean_monitor():
    """monitor._let_exit: back once the CLI's process has exited (not before), closing the pidfd
    opened while the CLI was alive (_cli_pidfd: never a later process given the same PID); the
    limit only bounds the wait for a CLI that lingers; nothing to do without a pidfd."""
    import subprocess
    import sys

    from imagetool.monitor import _cli_pidfd, _let_exit

    cli = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    try:
        fd = _cli_pidfd(cli.pid)
        assert fd is not None
        _let_exit(fd, limit=30)
        assert cli.poll() is not None   # it had exited when the wait ended
        with pytest.raises(OSError):
            os.fstat(fd)                # and the pidfd is closed
    finally:
        cli.kill()
        cli.wait()
    _let_exit(None)
    lingering = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        _let_exit(_cli_pidfd(lingering.pid), limit=0.05)
        assert lingering.poll() is None   # the limit ended the wait, not the process
    finally:
        lingering.kill()
        lingering.wait()
