"""The test suite itself never runs in the host's network (issue 12).

With `--network bridge` the default, every `run` of the suite makes a bridge, a veth and firewall
rules: they must land in a network namespace the suite made (tests/run's `unshare --net`, or
tests/conftest.py's own_network_namespace for a bare pytest), never in the host's.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="only root's runs make bridges (and unshare the network)")


def _interfaces() -> list[str]:
    """The interfaces of this process's network namespace (/proc/self/net/dev follows the reader's
    namespace; /sys/class/net shows the one sysfs was mounted in)."""
    return [line.split(":")[0].strip() for line in Path("/proc/self/net/dev").read_text().splitlines()[2:]]


@root_only
def test_the_suite_runs_in_a_network_namespace_of_its_own():
    own = os.readlink("/proc/self/ns/net")
    assert os.environ.get("IMAGETOOL_TEST_NETNS") == own, "not the namespace tests/run or conftest made"
    try:
        assert os.readlink("/proc/1/ns/net") != own, "pytest runs in PID 1's network namespace"
    except PermissionError:
        pass   # a sandbox hiding PID 1's namespaces: the checks below still hold
    # only lo, and what the tests made (bridges, veths, the test namespaces' links): no uplink
    for name in _interfaces():
        assert name == "lo" or name.startswith(("imagetool", "it-", "veth", "cni")), name
    lo = subprocess.run(["ip", "-o", "link", "show", "lo"], capture_output=True, text=True, check=True).stdout
    assert "UP" in lo.split("<", 1)[1].split(">", 1)[0].split(",")
    routes = Path("/proc/self/net/route").read_text().splitlines()[1:]
    assert [r for r in routes if r.split()[1] == "00000000"] == [], "a default route out of the suite's namespace"


@root_only
def test_the_suites_subprocesses_share_its_namespace():
    out = subprocess.run(["readlink", "/proc/self/ns/net"], capture_output=True, text=True, check=True).stdout.strip()
    assert out == os.readlink("/proc/self/ns/net") == os.environ["IMAGETOOL_TEST_NETNS"]
