"""The runtime's API (imagetool.runtime): create → start → state → kill → wait → delete, the same
for the built-in runtime and runc, driven directly (no CLI, no container records)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.runfixtures import host_unchanged, it, store_fixture  # noqa: F401 (fixtures)
from tests.runhelpers import REPO, kernel_skip_reason

_reason = kernel_skip_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

store = store_fixture("imagetool-api")
BACKENDS = ["imagetool", pytest.param("runc", marks=pytest.mark.skipif(shutil.which("runc") is None,
                                                                        reason="needs runc"))]

DRIVER = r"""
import json, os, signal, sys
from pathlib import Path
from store import Store
from imagetool import image, runtime
from imagetool.containers import RunOptions
from imagetool.runtime import cgroups
from imagetool.specgen import spec_from_image
from imagetool.unpack.rootfs import prepare_rootfs

store_dir, cdir, backend, mode, marker_dir = sys.argv[1:]
st = Store.open(store_dir)
img = image.load(st, "busybox")
opts = RunOptions(image="busybox", volumes=[f"{marker_dir}:/m"],
                  command=["sh", "-c", "touch /m/ran; trap 'exit 0' TERM; sleep 60 & wait"])
spec = spec_from_image(img.config, opts, hostname="api")
Path(cdir).mkdir()
cid = os.urandom(32).hex()
c = runtime.create(cid, spec, prepare_rootfs(st, img, cdir), runtime.IO(), backend=backend, bundle=cdir)
states = [c.state()["status"]]
code = None
try:
    if mode == "run":
        c.start()
        states.append(c.state()["status"])
        while not os.path.exists(os.path.join(marker_dir, "ran")):
            pass
        c.kill(signal.SIGKILL)
        code = c.wait()
        states.append(c.state()["status"])
finally:
    c.delete()
left = [p for p in cgroups.create(cid).paths if os.path.exists(p)] if backend == "imagetool" else []
print(json.dumps({"states": states, "code": code, "cgroups_left": left}))
"""


def _drive(store, tmp_path, backend: str, mode: str) -> dict:
    marker = tmp_path / "marker"
    marker.mkdir()
    r = subprocess.run([sys.executable, "-c", DRIVER, str(store), str(tmp_path / "ctr"), backend, mode, str(marker)],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.splitlines()[-1])
    result["ran"] = (marker / "ran").exists()
    return result


@pytest.mark.parametrize("backend", BACKENDS)
def test_create_start_kill_wait_delete(store, tmp_path, backend):
    result = _drive(store, tmp_path, backend, "run")
    assert result["states"] == ["created", "running", "stopped"]
    assert result["code"] == 137            # SIGKILL: 128 + 9
    assert result["ran"] and result["cgroups_left"] == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_created_container_runs_nothing_until_started_and_delete_removes_it(store, tmp_path, backend):
    result = _drive(store, tmp_path, backend, "create-only")
    assert result["states"] == ["created"]
    assert not result["ran"]                # the command never ran: create stops before the exec
    assert result["cgroups_left"] == []
    assert not Path(tmp_path / "ctr" / "rootfs").is_mount()
