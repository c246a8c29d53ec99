"""Shared plumbing for the benchmark suite: tmpfs work dirs, tools, peers' installation, the machine.

Nothing here measures anything; `measure.py` does that and `specs.py` says what is measured.
Everything created here (tmpfs mounts, temp dirs, registry processes) is removed on every path out.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "bench"
RESULTS = REPO / "benchmarks" / "results"

# tool -> Debian package that provides it (installed when missing and we are root)
PEER_PACKAGES = {
    "skopeo": "skopeo",
    "umoci": "umoci",
    "crun": "crun",
    "runc": "runc",
    "podman": "podman",
    "docker-registry": "docker-registry",
    "tar": "tar",
    "zstd": "zstd",
    "unshare": "util-linux",
    "busybox": "busybox-static",
    "time": "time",  # GNU time: the launcher that measures a child's own peak RSS
}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- tools


def which(name: str) -> str | None:
    """The real path of a tool (sbin included: runc lives in /usr/sbin)."""
    if name == "time":  # a shell keyword too: only the binary counts
        return "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    return shutil.which(name, path=path)


def ensure_peers(names=PEER_PACKAGES) -> dict[str, str | None]:
    """Install the missing peers from apt when root; return {tool: path or None}."""
    missing = [n for n in names if which(n) is None]
    if missing and os.geteuid() == 0 and which("apt-get") and os.environ.get("BENCH_NO_INSTALL") != "1":
        pkgs = sorted({PEER_PACKAGES[n] for n in missing})
        log(f"installing missing peers from apt: {' '.join(pkgs)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        r = subprocess.run(["apt-get", "install", "-y", "-q", *pkgs], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:  # the package lists may be missing on a fresh machine
            subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            subprocess.run(["apt-get", "install", "-y", "-q", *pkgs], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return {n: which(n) for n in names}


def imagetool_command() -> list[str]:
    """How to start imagetool without the pyenv shim's bash wrapper (~30 ms we must not count).

    Order: $IMAGETOOL_BIN; the repo's .venv console script; the console script next to this
    interpreter (the venv's / pyenv version's bin); `pyenv which imagetool`; PATH.
    """
    if os.environ.get("IMAGETOOL_BIN"):
        return [os.environ["IMAGETOOL_BIN"]]
    candidates = [REPO / ".venv" / "bin" / "imagetool", Path(sys.executable).parent / "imagetool"]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK) and not _is_shim(c):
            return [str(c)]
    if which("pyenv"):
        r = subprocess.run(["pyenv", "which", "imagetool"], capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip():
            return [r.stdout.strip()]
    found = which("imagetool")
    if found and not _is_shim(Path(found)):
        return [found]
    return [sys.executable, "-m", "imagetool"]


HEADLINE_PYTHON = "/usr/bin/python3"  # the distribution's interpreter: what a Debian or Ubuntu user gets


def headline_install(where: Path) -> list[str]:
    """The install users get from the README's quick start, made at `where`: a venv of the
    distribution's /usr/bin/python3 with a non-editable `pip install .` of this checkout (its
    bytecode compiled, as pip does); returns the argv of its console script."""
    subprocess.run([HEADLINE_PYTHON, "-m", "venv", str(where)], check=True)
    subprocess.run([str(where / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(REPO)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return [str(where / "bin" / "imagetool")]


def python_command(imagetool: list[str] | None = None) -> str:
    """The interpreter imagetool's console script runs under (for the baseline rows)."""
    cmd = imagetool or imagetool_command()
    if len(cmd) > 1:
        return cmd[0]
    with contextlib.suppress(OSError):
        first = Path(cmd[0]).read_text(errors="replace").splitlines()[0]
        if first.startswith("#!"):
            return first[2:].strip().split()[0]
    return sys.executable


def _is_shim(p: Path) -> bool:
    with contextlib.suppress(OSError):
        return "pyenv" in p.read_text(errors="replace")[:200] and "bash" in p.read_text(errors="replace")[:40]
    return False


def version_of(tool: str, path: str | None) -> str:
    if path is None:
        return "missing"
    args = {"runc": ["--version"], "crun": ["--version"], "tar": ["--version"], "umoci": ["--version"],
            "docker-registry": ["--version"], "busybox": [], "unshare": ["--version"],
            "zstd": ["--version"]}.get(tool, ["--version"])
    try:
        r = subprocess.run([path, *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"? ({e})"
    text = (r.stdout or r.stderr).strip().splitlines()
    return text[0].strip() if text else "?"


# ---------------------------------------------------------------- mounts and work dirs


def mounts_under(prefix: Path) -> list[str]:
    """Mount points at or below prefix, deepest first (from /proc/self/mountinfo)."""
    pre = str(prefix).rstrip("/")
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == pre or mp.startswith(pre + "/"):
                points.append(mp)
    return sorted(set(points), key=lambda p: (-p.count("/"), p))


def umount_all_under(prefix: Path, include_self: bool = False) -> None:
    """Unmount everything below prefix (and prefix itself when asked), deepest first, lazily if busy."""
    for _ in range(3):
        points = [p for p in mounts_under(prefix) if include_self or p != str(prefix).rstrip("/")]
        if not points:
            return
        for p in points:
            r = subprocess.run(["umount", p], capture_output=True)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", p], capture_output=True)


def rmtree(path: Path) -> None:
    """Remove a tree we created, unmounting whatever a tool left mounted inside first."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    umount_all_under(path, include_self=True)
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():  # immutable bits or a busy mount: say so, do not hide it
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], capture_output=True)


def fs_type(path: Path) -> str:
    r = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True)
    return r.stdout.strip() or "?"


@contextlib.contextmanager
def tmpfs_workdir(size: str = "6g"):
    """Yield /tmp/imagetool-bench-XXXX with a tmpfs mounted on it (plain dir when not root).

    The tmpfs (and anything tools mounted below it) is unmounted and the directory removed on
    every path out, SIGTERM/SIGHUP included (they are turned into SystemExit while inside).
    """
    root = Path(tempfile.mkdtemp(prefix="imagetool-bench-", dir="/tmp"))
    mounted = False
    old = {}

    def _exit(signum, _frame):
        raise SystemExit(128 + signum)

    for s in (signal.SIGTERM, signal.SIGHUP):
        old[s] = signal.signal(s, _exit)
    try:
        if os.geteuid() == 0:
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "imagetool-bench", str(root)],
                               capture_output=True, text=True)
            mounted = r.returncode == 0
            if not mounted:
                log(f"warning: could not mount a tmpfs ({r.stderr.strip()}); work dir is on {fs_type(root)}")
        else:
            log(f"warning: not root, no tmpfs; work dir is on {fs_type(root)}")
        yield root
    finally:
        umount_all_under(root, include_self=False)
        if mounted:
            r = subprocess.run(["umount", str(root)], capture_output=True)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", str(root)], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
        for s, h in old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------- the machine


def machine_description(workdir: Path, tools: dict[str, str | None]) -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "?"
    with contextlib.suppress(OSError):
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    distro = "?"
    with contextlib.suppress(OSError):
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                distro = line.split("=", 1)[1].strip().strip('"')
    cgroups = "v2 (unified)" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else (
        "v1 + v2 (hybrid)" if Path("/sys/fs/cgroup/unified").exists() else "v1")
    desc = {
        "host": platform.node(),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "ram": ram,
        "kernel": platform.release(),
        "distribution": distro,
        "cgroups": cgroups,
        "work dir fs": f"{fs_type(workdir)} ({workdir})",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": f"{platform.python_version()} ({python_command()})",
    }
    for t, p in tools.items():
        desc[t] = version_of(t, p)
    return desc


def busybox_store(tmp: Path) -> tuple[list[str], dict, Path]:
    """A store at `tmp`/store holding fixtures' busybox, loaded from `tmp`/busybox.tar (returned
    too, for the peers to load); the `python -m imagetool --store …` argv and the environment."""
    from fixtures.images import busybox_archive

    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGETOOL_")}
    env["PYTHONPATH"] = str(REPO)
    archive = tmp / "busybox.tar"
    archive.write_bytes(busybox_archive())
    it = [sys.executable, "-m", "imagetool", "--store", str(tmp / "store")]
    subprocess.run([*it, "load", "-i", str(archive)], env=env, check=True, stdout=subprocess.DEVNULL)
    return it, env, archive
