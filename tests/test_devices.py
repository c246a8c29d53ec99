"""The cgroup v2 device filter (a BPF_PROG_TYPE_CGROUP_DEVICE program), for real.

On this host the program is attached to fresh groups of the unified hierarchy (cgroup2 takes
device programs whether or not controllers are enabled there); in the cgroup-v2-only VM (one boot)
the same cases run, and a container made with `imagetool run` cannot read the VM's disk through a
node it made with mknod, while /dev/null and a `--device` keep working.
"""

from __future__ import annotations

import json
import os

import pytest

from imagetool.errors import ImagetoolError
from imagetool.runtime import devices
from tests import v2vm
from tests.devicefilter_cases import CASES, EXPECTED, run_case


def _cgroup2_root() -> str | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[fields.index("-") + 1] == "cgroup2":
                return fields[4]
    return None


def test_the_program_ends_with_the_default_answer():
    deny = devices.program([{"allow": False, "access": "rwm"}])
    allow = devices.program([{"allow": True, "access": "rwm"}])
    assert len(deny) == len(allow) == 8 * 8  # prologue (6) + mov r0 + exit
    assert deny[-16:-8] != allow[-16:-8] and deny[-8:] == allow[-8:] == bytes([0x95]) + bytes(7)


def test_an_unknown_rule_type_is_refused():
    with pytest.raises(ImagetoolError, match="invalid device rule type 'x'"):
        devices.program([{"allow": True, "type": "x", "access": "r"}])


@pytest.mark.parametrize("name", list(CASES))
def test_device_filter_on_this_hosts_cgroup2(name):
    root = _cgroup2_root()
    if os.geteuid() != 0:
        pytest.skip("needs root (bpf(2) and cgroups)")
    if root is None:
        pytest.skip("no cgroup2 hierarchy is mounted")
    try:
        got = run_case(root, name)
    except ImagetoolError as e:
        pytest.skip(f"the kernel refuses cgroup device programs here: {e}")
    assert got == EXPECTED[name]


GUEST = r"""
set -u
export PYTHONPATH=/host/site:/host/src IMAGETOOL_FIXTURE_CACHE=/var/tmp/fx
cd /host/src
echo "CASES $(python3 -m tests.devicefilter_cases /sys/fs/cgroup)"
python3 -c "from tests.runhelpers import add_image; from fixtures.images import busybox_image; add_image('/var/tmp/st', busybox_image(), 'docker.io/library/busybox:latest')" || exit 90
it() { python3 -m imagetool --store /var/tmp/st "$@"; }
disk=$(cat /sys/block/vda/dev); maj=${disk%:*}; min=${disk#*:}
it run --rm busybox sh -c "mknod /tmp/disk b $maj $min && head -c 512 /tmp/disk | wc -c" 2>/tmp/disk.err
echo "RESULT disk $(cat /tmp/disk.err | tr ' ' _)"
it run --rm busybox sh -c 'echo x > /dev/null && echo ok'; echo "RESULT null $?"
it run --rm --device /dev/zero:/dev/z busybox sh -c 'head -c 3 /dev/z | wc -c'; echo "RESULT device $?"
echo "RESULT leftover_cgroups $(find /sys/fs/cgroup/imagetool -mindepth 1 -maxdepth 1 -type d 2>/dev/null | wc -l)"
"""


def test_device_filter_in_the_v2_vm(tmp_path):
    """One boot: the cases above on a v2-only kernel, and a container's device rules on v2."""
    out = v2vm.boot(tmp_path, GUEST, started_marker="CASES")
    cases = json.loads(next(line for line in out.splitlines() if line.startswith("CASES "))[6:])
    assert cases == EXPECTED
    results = dict(line.split(" ", 2)[1:] for line in out.splitlines() if line.startswith("RESULT "))
    assert "Operation_not_permitted" in results["disk"], out
    assert results["null"] == "0" and results["device"] == "0"
    assert results["leftover_cgroups"] == "0"
