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


def _host_user():
    import pwd

    users = [u for u in pwd.getpwall() if u.pw_uid != 0 and u.pw_name.isidentifier()]
    if not users:
        pytest.skip("the host has no non-root user to aim at")
    return users[0]


@pytest.mark.parametrize("case", ["etc-symlink-to-host", "passwd-fifo"])
def test_bundle_user_lookup_stays_in_the_rootfs(case, store_dir, cli, tmp_path):
    """The image's User is looked up in the image's own /etc: an /etc symlinked to the host's
    /etc must not resolve the user from the host, and a fifo must not hang the unpack."""
    from store import Store

    from fixtures.images import Layer
    from fixtures.tarbuild import directory, fifo, symlink

    host = _host_user()
    entries = [symlink("etc", "/etc")] if case == "etc-symlink-to-host" else [directory("etc"), fifo("etc/passwd")]
    img = build_image([Layer(entries, "gzip")], config={"User": host.pw_name, "Cmd": ["/bin/true"]})
    ref = import_image(Store.open(store_dir), img, f"localhost/bundle/{case}")
    out = tmp_path / "out"
    r = cli("unpack", "--bundle", ref, out, timeout=60)
    assert r.returncode != 0, f"resolved {host.pw_name!r} from outside the image: {r.stdout}"
    assert r.stderr.startswith("imagetool: error: ") and "Traceback" not in r.stderr, r.stderr
    assert not out.exists()


def test_bundle_user_lookup_follows_symlinks_inside_the_rootfs(store_dir, cli, tmp_path):
    """/etc -> /sys-etc (absolute, so in the rootfs) and passwd -> ../data/passwd resolve as in a chroot."""
    from store import Store

    from fixtures.images import Layer
    from fixtures.tarbuild import directory, file, symlink

    entries = [directory("data"), file("data/passwd", "app:x:4321:4322::/home/app:/bin/sh\n"),
               file("data/group", "app:x:4322:\n"), directory("sys-etc"), symlink("etc", "/sys-etc"),
               symlink("sys-etc/passwd", "../data/passwd"), symlink("sys-etc/group", "/data/group")]
    img = build_image([Layer(entries, "gzip")], config={"User": "app", "Cmd": ["/bin/true"]})
    ref = import_image(Store.open(store_dir), img, "localhost/bundle/in-root-links")
    out = tmp_path / "out"
    r = cli("unpack", "--bundle", ref, out)
    assert r.returncode == 0, r.stderr
    user = json.loads((out / "config.json").read_text())["process"]["user"]
    assert (user["uid"], user["gid"]) == (4321, 4322)
