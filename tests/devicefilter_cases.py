"""The cgroup v2 device filter's cases, run for real (no pytest here: the v2 VM runs this too).

`run_cases(cgroup2_root)` makes one cgroup per case under `cgroup2_root`, attaches
devices.program(rules) with devices.attach, forks a child into it and records what open(2) and
mknod(2) answer; `python3 -m tests.devicefilter_cases ROOT` prints the result as JSON.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import tempfile

from imagetool.runtime import devices
from imagetool.runtime.spec import device_rules

R, W = os.O_RDONLY, os.O_WRONLY
DENY_ALL = {"allow": False, "access": "rwm"}
ALLOW_ALL = {"allow": True, "access": "rwm"}

# name -> (rules, probes); a probe is ("open", path, flags) or ("mknod", "b"|"c", major, minor),
# "@sda" is a node for block 8:0 made beforehand outside the cgroup (mknod is a separate right).
CASES = {
    "docker_default": (device_rules(), [("open", "/dev/null", W), ("open", "/dev/zero", R),
                                        ("open", "@sda", R), ("mknod", "b", 8, 1), ("open", "/dev/kmsg", R)]),
    "read_only_null": ([DENY_ALL, {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "r"}],
                       [("open", "/dev/null", R), ("open", "/dev/null", W), ("open", "/dev/zero", R),
                        ("mknod", "c", 1, 3)]),
    "allow_all_but_writing_zero": ([ALLOW_ALL, {"allow": False, "type": "c", "major": 1, "minor": 5, "access": "w"}],
                                   [("open", "/dev/zero", R), ("open", "/dev/zero", W), ("open", "/dev/null", W)]),
    "any_char_device": ([DENY_ALL, {"allow": True, "type": "c", "access": "rwm"}],
                        [("open", "/dev/zero", R), ("open", "/dev/full", W), ("open", "@sda", R),
                         ("mknod", "c", 1, 7), ("mknod", "b", 8, 2)]),
    "the_last_matching_rule_wins": ([DENY_ALL, {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
                                     {"allow": False, "type": "c", "major": 1, "minor": 3, "access": "w"}],
                                    [("open", "/dev/null", R), ("open", "/dev/null", W)]),
}

EXPECTED = {
    "docker_default": [0, 0, errno.EPERM, 0, errno.EPERM],
    "read_only_null": [0, errno.EPERM, errno.EPERM, errno.EPERM],
    "allow_all_but_writing_zero": [0, errno.EPERM, 0],
    "any_char_device": [0, 0, errno.EPERM, 0, errno.EPERM],
    "the_last_matching_rule_wins": [0, errno.EPERM],
}


def _probe(kind, *args, tmp: str) -> int:
    try:
        if kind == "open":
            path, flags = args
            os.close(os.open(os.path.join(tmp, "sda") if path == "@sda" else path, flags))
        else:
            t, major, minor = args
            mode = 0o600 | (0o060000 if t == "b" else 0o020000)
            path = os.path.join(tmp, f"n{t}{major}_{minor}")
            os.mknod(path, mode, os.makedev(major, minor))
            os.unlink(path)
        return 0
    except OSError as e:
        return e.errno


def run_case(root: str, name: str) -> list[int]:
    rules, probes = CASES[name]
    group = os.path.join(root, f"imagetool-devtest-{os.getpid()}-{name}")
    # (not /tmp: often a nodev tmpfs, which would answer EACCES before the filter is asked)
    tmp = tempfile.mkdtemp(prefix="imagetool-devtest-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None)
    os.mkdir(group)
    try:
        os.mknod(os.path.join(tmp, "sda"), 0o600 | 0o060000, os.makedev(8, 0))
        devices.attach(group, rules)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                with open(os.path.join(group, "cgroup.procs"), "w") as f:
                    f.write("0")
                out = [_probe(*p, tmp=tmp) for p in probes]
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                out = [repr(e)]
            os.write(w, json.dumps(out).encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            result = json.loads(f.read())
        os.waitpid(pid, 0)
        return result
    finally:
        os.rmdir(group)
        shutil.rmtree(tmp)


def run_cases(root: str) -> dict:
    return {name: run_case(root, name) for name in CASES}


if __name__ == "__main__":
    print(json.dumps(run_cases(sys.argv[1])))
