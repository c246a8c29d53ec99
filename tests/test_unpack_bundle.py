"""`imagetool unpack --bundle`: DIR/rootfs + DIR/config.json that runc runs as is."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

import pytest

from fixtures.corpus import import_image
from fixtures.images import BUSYBOX_CONFIG, build_image

CMD = "echo bundle-ok uid=$(id -u) cwd=$(pwd); cat /etc/hostname; ls /bin/busybox"


@pytest.fixture
def bundle(busybox, store_dir, cli, tmp_path):
    from store import Store

    img = build_image(list(busybox.layers),
                      config={"Env": BUSYBOX_CONFIG["Env"], "Cmd": ["/bin/sh", "-c", CMD], "WorkingDir": "/tmp"})
    ref = import_image(Store.open(store_dir), img, "localhost/bundle/busybox")
    out = tmp_path / "bundle"
    r = cli("unpack", "--bundle", ref, out)
    assert r.returncode == 0, r.stderr
    return out


def test_bundle_layout(bundle):
    assert sorted(os.listdir(bundle)) == ["config.json", "rootfs"]
    spec = json.loads((bundle / "config.json").read_text())
    assert spec["root"]["path"] == "rootfs"
    assert spec["process"]["args"] == ["/bin/sh", "-c", CMD]
    assert spec["process"]["cwd"] == "/tmp"
    assert (bundle / "rootfs" / "bin" / "busybox").is_file()
    assert os.readlink(bundle / "rootfs" / "bin" / "sh") == "busybox"


def _run(tool: str, bundle):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")
    if os.geteuid() != 0:
        pytest.skip(f"{tool} run of a root bundle needs root")
    cid = f"imagetool-test-{uuid.uuid4().hex[:12]}"
    try:
        return subprocess.run([tool, "run", "--bundle", str(bundle), cid], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
    finally:
        subprocess.run([tool, "delete", "-f", cid], capture_output=True)


def test_bundle_runs_under_runc(bundle):
    r = _run("runc", bundle)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["bundle-ok uid=0 cwd=/tmp", "busybox", "/bin/busybox"]


def test_bundle_refuses_non_empty_dir(busybox, store_dir, cli, tmp_path):
    from store import Store

    ref = import_image(Store.open(store_dir), busybox, "localhost/bundle/plain")
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine").write_text("keep me")
    r = cli("unpack", "--bundle", ref, out)
    assert r.returncode == 1
    assert r.stderr.startswith("imagetool: error: ") and "not an empty directory" in r.stderr
    assert os.listdir(out) == ["mine"]


def test_unpack_unknown_image(cli, tmp_path):
    r = cli("unpack", "localhost/nothing/here", tmp_path / "x")
    assert r.returncode == 1 and r.stderr.startswith("imagetool: error: ")
    assert not (tmp_path / "x").exists()


def test_bundle_runs_under_crun(bundle):
    r = _run("crun", bundle)
    if r.returncode != 0 and "cgroups in hybrid mode not supported" in r.stderr:
        pytest.skip("crun refuses this host's hybrid cgroup layout")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "bundle-ok uid=0 cwd=/tmp"
