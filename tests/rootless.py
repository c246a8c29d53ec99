"""A throw-away ordinary user for the rootless tests, and imagetool run as that user.

    from tests.rootless import rootless_user, rootless_user_nosub   # fixtures (import them into a test module)
    user = rootless_user                  # RootlessUser, session-scoped
    user.imagetool("pull", ref)           # -> CompletedProcess (text), imagetool as the user
    user.run(["id", "-u"])                # any command as the user (runuser), same environment
    user.in_userns("print(1)")            # Python code as the user inside its namespace (userns.enter())
    user.popen(["run", "-d", ...])        # imagetool started as the user (subprocess.Popen)
    as_user(user, ["images"])             # the same as user.imagetool("images")
    user.subuid_start, user.subuid_count  # its /etc/subuid and /etc/subgid range (same numbers)

The user is made by `useradd` with a unique name, home in a 0755 temp dir (the pytest tmp dirs are
root's 0700), a subordinate range added with `usermod --add-subuids/--add-subgids` (shadow's own
locking: other sessions may edit /etc/subuid at the same time). `rootless_user_nosub` has no range.
Teardown, on every path: the user's processes are killed by PID, the user and its lines in
/etc/subuid and /etc/subgid removed, the temp dir deleted (files owned by subordinate ids included).

imagetool for the user: the checkout may sit where the user cannot read (CI), and the project venv's
interpreter may be under root's 0700 home (pyenv here). So `imagetool/` and `store/` are copied into
the temp dir; the interpreter is this one if the user can run it and import the dependencies, else
/usr/bin/python3 of the same major.minor with this interpreter's site-packages copied next to the
code (the dependencies: pure Python plus zstandard's extension, same ABI); else the tests skip, saying
why.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SUBUID, SUBGID = "/etc/subuid", "/etc/subgid"
COUNT = 65536
_DEPS_CHECK = "import zstandard, requests, typer, click"


@dataclass
class RootlessUser:
    name: str
    uid: int
    gid: int
    home: Path
    base: Path                  # the 0755 temp dir holding home/ and app/
    python: str
    pythonpath: str
    subuid_start: int | None    # None: no subordinate range
    subuid_count: int = 0
    env: dict = field(default_factory=dict)

    @property
    def store(self) -> Path:
        """The user's default store ($XDG_DATA_HOME/imagetool)."""
        return self.home / ".local" / "share" / "imagetool"

    def environment(self, extra: dict | None = None) -> dict:
        env = dict(self.env)
        for k, v in (extra or {}).items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = str(v)
        return env

    def argv(self, args) -> list[str]:
        return [self.python, "-m", "imagetool", *map(str, args)]

    def run(self, argv, input=None, env: dict | None = None, check: bool = False, binary: bool = False,
            timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
        """`argv` as the user (runuser -u, a clean environment: HOME, PATH, XDG_*, PYTHONPATH, the
        test's IMAGETOOL_CONFIG_DIR), working directory its home unless `cwd`."""
        full = ["runuser", "-u", self.name, "--", "env", "-i",
                *(f"{k}={v}" for k, v in self.environment(env).items()), *map(str, argv)]
        if isinstance(input, str):
            input = input.encode()
        r = subprocess.run(full, input=input, capture_output=True, timeout=timeout, cwd=cwd or self.home,
                           stdin=None if input is not None else subprocess.DEVNULL)
        if not binary:
            r.stdout = r.stdout.decode(errors="replace")
            r.stderr = r.stderr.decode(errors="replace")
        if check and r.returncode != 0:
            err = r.stderr if isinstance(r.stderr, str) else r.stderr.decode(errors="replace")
            raise AssertionError(f"as {self.name}: {' '.join(map(str, argv))} exited {r.returncode}:\n{err}")
        return r

    def imagetool(self, *args, **kw) -> subprocess.CompletedProcess:
        """imagetool ARGS as the user (its default store unless --store is given); kw as for run()."""
        return self.run(self.argv(args), **kw)

    def in_userns(self, code: str, **kw) -> subprocess.CompletedProcess:
        """Python `code` run as the user inside its user namespace (userns.enter(): the same mapping
        imagetool uses), e.g. to see a tree as the container sees it; kw as for run()."""
        return self.run([self.python, "-c", "from imagetool import userns\nuserns.enter()\n" + code], **kw)

    def popen(self, args, env: dict | None = None, **kw) -> subprocess.Popen:
        """imagetool ARGS as the user, started (stdout/stderr as kw say); the caller waits/kills it."""
        full = ["runuser", "-u", self.name, "--", "env", "-i",
                *(f"{k}={v}" for k, v in self.environment(env).items()), *self.argv(args)]
        return subprocess.Popen(full, cwd=kw.pop("cwd", self.home), **kw)


def as_user(user: RootlessUser, args, **kw) -> subprocess.CompletedProcess:
    """imagetool ARGS run as `user` (see RootlessUser.imagetool)."""
    return user.imagetool(*args, **kw)


# ---------------------------------------------------------------- making and removing the user


NAME_RE = r"itr(\d+)x[0-9a-f]{4}"


def _unique_name() -> str:
    """itr<pid of this session>x<4 hex>: a later session can tell a user whose session died."""
    return f"itr{os.getpid()}x{random.randrange(16**4):04x}"


def _reap_stale() -> None:
    """Remove test users left by a session that was killed (its pid no longer runs python):
    their processes, /etc/subuid and /etc/subgid lines, the user and its temp dir."""
    import pwd
    import re

    for pw in pwd.getpwall():
        m = re.fullmatch(NAME_RE, pw.pw_name)
        if not m or not pw.pw_dir.startswith(os.path.join(tempfile.gettempdir(), "itrootless-")):
            continue
        try:
            with open(f"/proc/{m.group(1)}/cmdline", "rb") as f:
                alive = b"python" in f.read()
        except OSError:
            alive = False
        if alive:
            continue
        starts = [int(line.split(":")[1]) for line in _sub_lines(pw.pw_name, pw.pw_uid)]
        _kill_processes(range(pw.pw_uid, pw.pw_uid + 1))
        for start in starts:
            _kill_processes(range(start, start + COUNT))
        subprocess.run(["userdel", pw.pw_name], capture_output=True)
        _remove_sub_lines(pw.pw_name, pw.pw_uid)
        shutil.rmtree(os.path.dirname(pw.pw_dir), ignore_errors=True)


def _sub_lines(name: str, uid: int) -> list[str]:
    try:
        lines = Path(SUBUID).read_text().splitlines()
    except OSError:
        return []
    return [ln for ln in lines if ln.split(":", 1)[0] in (name, str(uid)) and ln.count(":") == 2]


def _taken_ranges() -> list[tuple[int, int]]:
    out = []
    for path in (SUBUID, SUBGID):
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            parts = line.split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                out.append((int(parts[1]), int(parts[2])))
    return out


def _free_start() -> int:
    taken = _taken_ranges()
    for _ in range(1000):
        start = 1_000_000 + random.randrange(40000) * COUNT
        if all(start + COUNT <= s or s + c <= start for s, c in taken):
            return start
    raise RuntimeError("no free subordinate range")


def _user_can_run(name: str, python: str, cwd: str) -> bool:
    try:
        r = subprocess.run(["runuser", "-u", name, "--", python, "-c", _DEPS_CHECK], capture_output=True,
                           timeout=60, cwd=cwd, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONDONTWRITEBYTECODE": "1"})
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def _install_app(base: Path, name: str) -> tuple[str, str]:
    """(python, PYTHONPATH) with which `name` runs imagetool from a copy in base/app."""
    app = base / "app"
    app.mkdir(mode=0o755)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in ("imagetool", "store", "fixtures"):   # fixtures: tree_manifest etc. for scripts run as the user
        shutil.copytree(REPO / pkg, app / pkg, ignore=ignore)
    _open_tree(app)
    if _user_can_run(name, sys.executable, str(base)):
        return sys.executable, str(app)
    system = "/usr/bin/python3"
    probe = subprocess.run([system, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True) if os.access(system, os.X_OK) else None
    mine = "%d.%d" % sys.version_info[:2]
    if probe is None or probe.stdout.strip() != mine:
        pytest.skip(f"the test user cannot run {sys.executable} and {system} is not Python {mine}")
    site = app / "site"
    shutil.copytree(sysconfig.get_paths()["purelib"], site, ignore=shutil.ignore_patterns(
        "__pycache__", "*.pyc", "__editable__*", "imagetool-*", "pip", "pip-*", "_pytest", "pytest*"))
    _open_tree(site)
    path = f"{app}:{site}"
    r = subprocess.run(["runuser", "-u", name, "--", system, "-c", _DEPS_CHECK], capture_output=True, text=True,
                       cwd=str(base), env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1"})
    if r.returncode:
        pytest.skip(f"the test user cannot import imagetool's dependencies with {system}: {r.stderr.strip()[-200:]}")
    return system, path


def _open_tree(root: Path) -> None:
    for d, dirs, files in os.walk(root):
        os.chmod(d, 0o755)
        for f in files:
            p = os.path.join(d, f)
            if not os.path.islink(p):
                os.chmod(p, 0o755 if os.access(p, os.X_OK) else 0o644)


def _kill_processes(uids: range) -> None:
    """SIGKILL every process whose real or effective uid is in `uids` (by PID, read from /proc)."""
    for _ in range(3):
        found = False
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/status") as f:
                    line = next(ln for ln in f if ln.startswith("Uid:"))
            except (OSError, StopIteration):
                continue
            real, eff = (int(x) for x in line.split()[1:3])
            if real in uids or eff in uids:
                found = True
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if not found:
            return


def _remove_sub_lines(name: str, uid: int) -> None:
    """Drop any line of `name` left in /etc/subuid and /etc/subgid (userdel normally does it)."""
    for path in (SUBUID, SUBGID):
        p = Path(path)
        try:
            lines = p.read_text().splitlines(keepends=True)
        except OSError:
            continue
        keep = [ln for ln in lines if ln.split(":", 1)[0] not in (name, str(uid))]
        if keep != lines:
            p.write_text("".join(keep))


def make_user(with_range: bool):
    """Create the user (see the module docstring); a generator: yields RootlessUser, then removes all."""
    if os.geteuid() != 0:
        pytest.skip("creating a test user needs root")
    for tool in ("useradd", "userdel", "usermod", "runuser", "newuidmap", "newgidmap"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} missing (Debian packages passwd, util-linux, uidmap)")
    _reap_stale()
    name = _unique_name()
    base = Path(tempfile.mkdtemp(prefix="itrootless-"))
    os.chmod(base, 0o755)
    home = base / "home"
    uid = start = None
    try:
        subprocess.run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh",
                        "--user-group", name], check=True, capture_output=True, text=True)
        import pwd

        pw = pwd.getpwnam(name)
        uid, gid = pw.pw_uid, pw.pw_gid
        home.mkdir(mode=0o700)
        os.chown(home, uid, gid)
        # useradd may have given a range itself (SUB_UID_* in login.defs): start from none
        _remove_sub_lines(name, uid)
        if with_range:
            start = _free_start()
            rng = f"{start}-{start + COUNT - 1}"
            subprocess.run(["usermod", "--add-subuids", rng, "--add-subgids", rng, name], check=True,
                           capture_output=True, text=True)
        python, pythonpath = _install_app(base, name)
        env = {"HOME": str(home), "USER": name, "LOGNAME": name, "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
               "XDG_DATA_HOME": str(home / ".local" / "share"), "XDG_CONFIG_HOME": str(home / ".config"),
               "PYTHONPATH": pythonpath, "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8",
               "IMAGETOOL_CONFIG_DIR": str(home / "imagetool-config"),
               "DOCKER_CONFIG": str(home / "docker-config"),
               "REGISTRY_AUTH_FILE": str(home / "docker-config" / "config.json")}
        yield RootlessUser(name, uid, gid, home, base, python, pythonpath, start, COUNT if with_range else 0, env)
    finally:
        if uid is not None:
            _kill_processes(range(uid, uid + 1))
            if start is not None:   # processes of the container's other ids
                _kill_processes(range(start, start + COUNT))
        subprocess.run(["userdel", name], capture_output=True)
        if uid is not None:
            _remove_sub_lines(name, uid)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def rootless_user():
    """An ordinary user with a 65536-id subordinate range (RootlessUser); removed after the session."""
    yield from make_user(with_range=True)


@pytest.fixture(scope="session")
def rootless_user_nosub():
    """An ordinary user with no subordinate range (single-id mapping); removed after the session."""
    yield from make_user(with_range=False)
