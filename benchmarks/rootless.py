"""Rootless `run --rm busybox true`: imagetool beside podman, both as the same ordinary user, taking turns.

Usage (as root: it makes the user): python3 -m benchmarks.rootless [--runs N] [--checkout]

Both sides run as one throw-away user with a subordinate range (/etc/subuid, /etc/subgid; the user
and its lines are removed on every path out), started with the user's ids directly (no runuser, no
PAM), the same network mode `none` (each makes a network namespace with loopback only), everything
on a tmpfs:
- imagetool: by default the headline install (benchmarks/common.headline_install: a venv of
  /usr/bin/python3 with a non-editable `pip install .`, bytecode compiled) on the tmpfs, readable
  by the user; `--checkout` runs this checkout's code (copied, compiled) with /usr/bin/python3
  instead. It enters its user namespace itself (newuidmap/newgidmap), its store is the user's
  default ($XDG_DATA_HOME/imagetool on the tmpfs), overlay rootless with userxattr.
- podman: rootless with its own XDG dirs (storage, runroot) on the tmpfs, `--storage-driver overlay`
  (native rootless overlay), `--cgroup-manager cgroupfs --events-backend file`, `--runtime runc`
  (crun refuses the hybrid cgroup layout) and the ulimits of benchmarks/specs.podman_ulimits.
Neither gets a cgroup on a v1/hybrid host (nothing can be delegated). Prints median and min of
each and the ratio imagetool/podman per round (median, min-max: a round is one run of each, back to
back, so a busy machine weighs on both alike) and of the medians and mins (the issue's goal: ≤ 0.6).
"""

from __future__ import annotations

import argparse
import compileall
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COUNT = 65536


class User:
    """A throw-away user with a subordinate range; `remove()` kills its processes (by PID) and
    removes it and its /etc/subuid and /etc/subgid lines."""

    def __init__(self, home: Path):
        self.name = f"itbench{os.getpid() % 100000}"
        self.home = home
        subprocess.run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh",
                        "--user-group", self.name], check=True, capture_output=True)
        import pwd

        pw = pwd.getpwnam(self.name)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self._drop_lines()   # useradd may have given a range (SUB_UID_* in login.defs): one we chose instead
        self.start = self._free_start()
        rng = f"{self.start}-{self.start + COUNT - 1}"
        subprocess.run(["usermod", "--add-subuids", rng, "--add-subgids", rng, self.name], check=True,
                       capture_output=True)
        home.mkdir(mode=0o700)
        os.chown(home, self.uid, self.gid)

    @staticmethod
    def _free_start() -> int:
        taken = []
        for path in ("/etc/subuid", "/etc/subgid"):
            for line in Path(path).read_text().splitlines():
                parts = line.split(":")
                if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                    taken.append((int(parts[1]), int(parts[2])))
        while True:
            start = 5_000_000 + random.randrange(20000) * COUNT
            if all(start + COUNT <= s or s + c <= start for s, c in taken):
                return start

    def _drop_lines(self) -> None:
        for path in ("/etc/subuid", "/etc/subgid"):
            p = Path(path)
            lines = p.read_text().splitlines(keepends=True)
            keep = [ln for ln in lines if ln.split(":", 1)[0] not in (self.name, str(self.uid))]
            if keep != lines:
                p.write_text("".join(keep))

    def run(self, argv, env, check=True) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=env, user=self.uid, group=self.gid, extra_groups=[], cwd=self.home,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, check=check)

    def _pids(self) -> list[int]:
        ids = (range(self.uid, self.uid + 1), range(self.start, self.start + COUNT))
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/status") as f:
                    uid = int(next(ln for ln in f if ln.startswith("Uid:")).split()[1])
            except (OSError, StopIteration):
                continue
            if any(uid in r for r in ids):
                found.append(int(pid))
        return found

    def remove(self) -> None:
        """Its processes (podman's pause process among them) killed by PID and gone, then userdel
        (which refuses while one runs), then its subordinate lines."""
        deadline = time.monotonic() + 10
        while (pids := self._pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        for _ in range(20):
            if subprocess.run(["userdel", self.name], capture_output=True).returncode in (0, 6):   # 6: no such user
                break
            time.sleep(0.25)
        self._drop_lines()


def _checkout_copy(where: Path) -> list[str]:
    """This checkout's code copied to `where` and compiled, run by /usr/bin/python3."""
    for pkg in ("imagetool", "store"):
        shutil.copytree(REPO / pkg, where / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    compileall.compile_dir(str(where), quiet=1, legacy=False)
    return ["/usr/bin/python3", "-m", "imagetool"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--checkout", action="store_true", help="this checkout's code instead of the headline install")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("benchmarks.rootless: run as root (it creates the ordinary user both tools run as)")
    sys.path.insert(0, str(REPO))
    from benchmarks.common import headline_install, log, tmpfs_workdir, which
    from benchmarks.specs import podman_ulimits
    from fixtures.images import busybox_archive

    podman = which("podman")
    with tmpfs_workdir("2g") as tmp:
        user = User(tmp / "home")
        try:
            archive = tmp / "busybox.tar"
            archive.write_bytes(busybox_archive())
            os.chmod(archive, 0o644)
            env = {"HOME": str(user.home), "USER": user.name, "LOGNAME": user.name,
                   "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8",
                   "XDG_DATA_HOME": str(user.home / "data"), "XDG_CONFIG_HOME": str(user.home / "config"),
                   "XDG_RUNTIME_DIR": str(user.home / "run")}
            if args.checkout:
                app = tmp / "app"
                it = _checkout_copy(app)
                env["PYTHONPATH"] = str(app)
                what = f"this checkout ({app}, compiled) with /usr/bin/python3"
            else:
                log("headline install: a venv of /usr/bin/python3 with pip install . (non-editable)")
                it = headline_install(tmp / "venv")
                what = "the headline install (venv of /usr/bin/python3, pip install .)"
            user.run(["mkdir", "-m", "700", "-p", env["XDG_RUNTIME_DIR"]], env)
            user.run([*it, "load", "-i", str(archive)], env)
            sides = {"imagetool": [*it, "run", "--rm", "--network", "none", "busybox", "true"]}
            if podman:
                pbase = [podman, "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                         "--storage-driver", "overlay"]
                user.run([*pbase, "load", "-i", str(archive)], env)
                sides["podman"] = [*pbase, "run", "--rm", "--network", "none", "--runtime", "runc",
                                   *podman_ulimits(), "busybox", "true"]
            else:
                log("podman is missing: imagetool alone")
            samples: dict[str, list[float]] = {k: [] for k in sides}
            for argv in sides.values():   # warm-up: snapshots, page cache, podman's first container
                user.run(argv, env)
            for _ in range(args.runs):
                for name, argv in sides.items():
                    t = time.perf_counter()
                    r = user.run(argv, env, check=False)
                    samples[name].append(time.perf_counter() - t)
                    if r.returncode:
                        sys.exit(f"{name} failed ({r.returncode}): {r.stderr.strip()[-400:]}")
            print(f"rootless `run --rm --network none busybox true`, as one ordinary user, {args.runs} runs each "
                  f"(taking turns), load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            print(f"  imagetool: {what}")
            for name, s in samples.items():
                print(f"  {name:10} median {1000 * statistics.median(s):7.1f} ms   min {1000 * min(s):7.1f} ms")
            if "podman" in samples:
                rounds = [a / b for a, b in zip(samples["imagetool"], samples["podman"])]
                ratio = statistics.median(samples["imagetool"]) / statistics.median(samples["podman"])
                print(f"  ratio imagetool/podman per round: median {statistics.median(rounds):.2f}x "
                      f"(min-max {min(rounds):.2f}-{max(rounds):.2f}); of the medians {ratio:.2f}x, of the mins "
                      f"{min(samples['imagetool']) / min(samples['podman']):.2f}x; goal <= 0.6x")
        finally:
            user.remove()


if __name__ == "__main__":
    main()
