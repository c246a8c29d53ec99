"""Archives move both ways between imagetool and the real tools: skopeo and podman.

Archives written by `skopeo copy` and `podman save` (docker-archive and oci-archive) load into
imagetool and run; archives written by `imagetool save` are read by `skopeo inspect/copy` and
`podman load`, and the OCI format keeps the manifest digest through the round trip.
Podman runs with a private --root/--runroot (vfs driver) in the test's tmp dir: the host's podman
storage is never touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile

import pytest

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="running containers needs root here")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def _run(argv, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300, **kw)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} exited {r.returncode}:\n{r.stderr}")
    return r


@pytest.fixture
def podman(tmp_path):
    """podman with its own storage under tmp_path (vfs: no mounts to clean up)."""
    exe = _tool("podman")
    if os.geteuid() != 0:
        pytest.skip("podman with a private root needs root here")
    root = tmp_path / "podman"
    runroot = tempfile.mkdtemp(prefix="imagetool-podman-", dir="/tmp")  # podman wants < 50 characters
    base = [exe, "--root", root / "root", "--runroot", runroot, "--storage-driver", "vfs",
            "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--tmpdir", root / "tmp"]

    def call(*args):
        return _run(base + list(args))

    try:
        yield call
    finally:
        shutil.rmtree(runroot, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pushed(registry, busybox, unique_repo):
    """busybox pushed to the test registry: "127.0.0.1:PORT/t/<test>:1"."""
    name = f"{registry.host}/{unique_repo}:1"
    registry.push(busybox, f"{unique_repo}:1")
    return name


def _skopeo(*args):
    return _run([_tool("skopeo"), "--insecure-policy", *args])


def _loaded_ok(cli, path, name):
    r = cli("load", "-i", path)
    assert r.returncode == 0, r.stderr
    short = name.split("/", 1)[1] if name.startswith("docker.io/library/") else name
    assert r.stdout == f"Loaded image: {short}\n"


def _runs(cli, name):
    if os.geteuid() != 0:
        return
    r = cli("run", "--rm", name, "/bin/busybox", "echo", "ok")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ok\n"


@pytest.mark.parametrize("transport", ["docker-archive", "oci-archive"])
def test_archives_written_by_skopeo_load_and_run(cli, tmp_path, pushed, transport, busybox):
    path = tmp_path / "skopeo.tar"
    _skopeo("copy", "--src-tls-verify=false", f"docker://{pushed}", f"{transport}:{path}:{pushed}")
    _loaded_ok(cli, path, pushed)
    insp = json.loads(cli("inspect", pushed, check=True).stdout)
    assert [la["diffID"] for la in insp["layers"]] == [la.diff_id for la in busybox.layers]
    if transport == "oci-archive":
        assert insp["digest"] == busybox.manifest_digest
    _runs(cli, pushed)


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_archives_written_by_podman_save_load_and_run(cli, tmp_path, podman, pushed, fmt):
    podman("pull", "--tls-verify=false", f"docker://{pushed}")
    path = tmp_path / "podman.tar"
    podman("save", "--format", fmt, "-o", path, pushed)
    _loaded_ok(cli, path, pushed)
    _runs(cli, pushed)


@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_archives_written_by_imagetool_are_read_by_skopeo_and_podman(cli, tmp_path, podman, pushed, fmt, busybox):
    src = tmp_path / "src.tar"
    _skopeo("copy", "--src-tls-verify=false", f"docker://{pushed}", f"oci-archive:{src}:{pushed}")
    cli("load", "-i", src, check=True)
    out = tmp_path / "out.tar"
    cli("save", "--format", fmt, "-o", out, pushed, check=True)
    transport = "docker-archive" if fmt == "docker" else "oci-archive"
    info = json.loads(_skopeo("inspect", f"{transport}:{out}").stdout)
    assert info["Layers"][0] in (busybox.layers[0].digest, busybox.layers[0].diff_id)
    if fmt == "oci":  # the exact manifest survives: skopeo sees the digest the registry has
        raw = _skopeo("inspect", "--raw", f"oci-archive:{out}").stdout.encode()
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == busybox.manifest_digest
        copied = tmp_path / "copied"
        _skopeo("copy", f"oci-archive:{out}", f"oci:{copied}:x")
        index = json.loads((copied / "index.json").read_text())
        assert index["manifests"][0]["digest"] == busybox.manifest_digest
    else:
        _skopeo("copy", f"docker-archive:{out}", f"oci:{tmp_path / 'copied'}:x")
    r = podman("load", "-i", out)
    assert pushed in r.stdout
    listed = podman("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert pushed in listed


def test_podman_save_of_imagetool_import_round_trips(cli, tmp_path, podman):
    """import → save (docker) → podman load → podman save (oci) → imagetool load: same diff_id."""
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hello").write_text("hello\n")
    cli("import", root, "localhost/imported:1", check=True)
    diff = json.loads(cli("inspect", "localhost/imported:1", check=True).stdout)["layers"][0]["diffID"]
    cli("save", "-o", tmp_path / "i.tar", "localhost/imported:1", check=True)
    podman("load", "-i", tmp_path / "i.tar")
    podman("save", "--format", "oci-archive", "-o", tmp_path / "p.tar", "localhost/imported:1")
    cli("rmi", "localhost/imported:1", check=True)
    _loaded_ok(cli, tmp_path / "p.tar", "localhost/imported:1")
    assert json.loads(cli("inspect", "localhost/imported:1", check=True).stdout)["layers"][0]["diffID"] == diff
