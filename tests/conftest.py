"""Shared pytest fixtures (see /docs and fixtures/*): real registries on loopback, images built
in code, a fresh store per test and the imagetool CLI as a subprocess.

    registry / auth_registry / tls_registry   session-scoped fixtures.registry.RegistryServer
    store_dir                                 tmp_path / "store" (created empty)
    cli("pull", ref, input=None, env=None, check=False, binary=False, timeout=300) -> CompletedProcess
        (input: str or bytes; stdout/stderr are str unless binary=True)
    busybox                                   BuiltImage of the host's busybox (session)

Registries are shared per session: use repository names unique to your test (`unique_repo`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# ---------------------------------------------------------------- registries


def _start_registry(**kw):
    from fixtures.registry import RegistryServer, RegistryUnavailable

    try:
        return RegistryServer.start(**kw)
    except RegistryUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def registry():
    """A real docker-registry on http://127.0.0.1:<random> (plain HTTP; loopback is allowed)."""
    server = _start_registry()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def auth_registry():
    """docker-registry with htpasswd Basic auth: .username, .password."""
    server = _start_registry(auth=True)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_registry():
    """docker-registry over HTTPS with a CA made by the test: .ca_cert, .cert_dir (certs.d/<host>/ca.crt)."""
    server = _start_registry(tls=True)
    yield server
    server.stop()


@pytest.fixture
def unique_repo(request) -> str:
    """A repository name unique to this test, e.g. "test-pull-resumes-after-reset"."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    return ("t/" + name)[:200]


# ---------------------------------------------------------------- images


@pytest.fixture(scope="session")
def busybox():
    """busybox:latest built from the host's /bin/busybox (BuiltImage, one gzip layer, Cmd ["sh"])."""
    from fixtures.images import BUSYBOX, busybox_image

    if not BUSYBOX.is_file():
        pytest.skip(f"{BUSYBOX} missing (install busybox-static)")
    return busybox_image()


# ---------------------------------------------------------------- store and CLI


@pytest.fixture
def store_dir(tmp_path) -> Path:
    """A fresh, empty store directory for this test."""
    path = tmp_path / "store"
    path.mkdir()
    return path


class Cli:
    """Runs `python -m imagetool --store <store_dir> ARGS…` as a subprocess.

    The environment is isolated: IMAGETOOL_CONFIG_DIR, DOCKER_CONFIG and REGISTRY_AUTH_FILE
    point into the test's tmp dir (never the host's /etc/imagetool or ~/.docker); `env=` adds to
    or overrides it (a value of None removes a variable).
    """

    def __init__(self, store_dir: Path, tmp_path: Path):
        self.store_dir = store_dir
        self.config_dir = tmp_path / "imagetool-config"
        self.docker_config = tmp_path / "docker-config"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGETOOL_")}
        self.env.update({
            "IMAGETOOL_CONFIG_DIR": str(self.config_dir),
            "DOCKER_CONFIG": str(self.docker_config),
            "REGISTRY_AUTH_FILE": str(self.docker_config / "config.json"),
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
        })

    def argv(self, *args) -> list[str]:
        return [sys.executable, "-m", "imagetool", "--store", str(self.store_dir), *map(str, args)]

    def __call__(self, *args, input=None, env: dict | None = None, check: bool = False,
                 binary: bool = False, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
        full_env = dict(self.env)
        for k, v in (env or {}).items():
            if v is None:
                full_env.pop(k, None)
            else:
                full_env[k] = str(v)
        if isinstance(input, str):
            input = input.encode()
        r = subprocess.run(self.argv(*args), input=input, env=full_env, capture_output=True,
                           timeout=timeout, cwd=cwd, stdin=None if input is not None else subprocess.DEVNULL)
        if not binary:  # stdout/stderr as text; binary=True keeps bytes (e.g. `save` to stdout)
            r.stdout = r.stdout.decode(errors="replace")
            r.stderr = r.stderr.decode(errors="replace")
        if check and r.returncode != 0:
            err = r.stderr if isinstance(r.stderr, str) else r.stderr.decode(errors="replace")
            raise AssertionError(f"imagetool {' '.join(map(str, args))} exited {r.returncode}:\n{err}")
        return r


@pytest.fixture
def cli(store_dir, tmp_path) -> Cli:
    """cli("images") runs imagetool against store_dir and returns the CompletedProcess (text by default)."""
    return Cli(store_dir, tmp_path)


# ---------------------------------------------------------------- leak report


def _leak_snapshot() -> dict[str, set[str]]:
    """What a test may leave behind: imagetool temp dirs, mounts, imagetool cgroups."""
    import glob
    import tempfile

    snap = {"temp dirs": set(glob.glob(os.path.join(tempfile.gettempdir(), "imagetool-*")))}
    try:
        with open("/proc/self/mountinfo") as f:
            snap["mounts"] = {line.split()[4] for line in f}
    except OSError:
        snap["mounts"] = set()
    cgroups = set()
    for pattern in ("/sys/fs/cgroup/*imagetool*", "/sys/fs/cgroup/*/*imagetool*",
                    "/sys/fs/cgroup/*/*/*imagetool*", "/sys/fs/cgroup/*/*/*/*imagetool*"):
        cgroups.update(glob.glob(pattern))
    snap["cgroups"] = cgroups
    return snap


def pytest_sessionstart(session):
    session.config._imagetool_leaks_before = _leak_snapshot()


def pytest_configure(config):
    own_network_namespace()


def own_network_namespace() -> None:
    """Never the host's network (issue 12): a root session not yet in a network namespace of the
    suite's own (a bare `pytest`; tests/run does this with `unshare --net` and names it in
    $IMAGETOOL_TEST_NETNS) moves into one, loopback up, before any test runs: the containers'
    bridges, veths and rules are made there, and it goes when the session's processes end."""
    if os.geteuid() != 0 or os.environ.get("IMAGETOOL_TEST_NETNS") == os.readlink("/proc/self/ns/net"):
        return
    from imagetool.runtime import syscalls as sc

    sc.unshare(sc.CLONE_NEWNET)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    os.environ["IMAGETOOL_TEST_NETNS"] = os.readlink("/proc/self/ns/net")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Report (not fail on) temp dirs, mounts and cgroups that appeared during the run and are still there.

    Other processes on the machine can create such things too: this is a pointer, exact under CI.
    """
    before = getattr(config, "_imagetool_leaks_before", None)
    if before is None:
        return
    after = _leak_snapshot()
    lines = [f"{kind}: {path}" for kind in after for path in sorted(after[kind] - before.get(kind, set()))]
    if lines:
        terminalreporter.section("left behind (imagetool temp dirs, mounts, cgroups)", yellow=True)
        for line in lines[:50]:
            terminalreporter.line(line)
