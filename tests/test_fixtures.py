"""The shared fixtures build what they claim: tars, images, layouts and archives that the peer tools
(skopeo, umoci) accept, with digests that match their bytes; the registry fixture serves them."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from fixtures.images import (
    DOCKER_LAYER, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, Layer, build_archive, build_image, build_index,
    busybox_archive, full_name, sha256, write_oci_layout,
)
from fixtures.tarbuild import (
    build_tar, compress, decompress, device, directory, fifo, file, hardlink, opaque, symlink, whiteout,
)


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.skip(f"{tool} is not installed")
    return path


def _members(tar: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        return {m.name: m for m in tf.getmembers()}


# ---------------------------------------------------------------- tar DSL


def test_tar_dsl_writes_every_entry_type_as_described():
    tar = build_tar([
        directory("etc", mode=0o750, uid=1, gid=2),
        file("etc/passwd", b"root:x:0:0\n", mode=0o600, xattrs={"user.k": b"v"}),
        symlink("etc/link", "passwd"),
        hardlink("etc/hard", "etc/passwd"),
        whiteout("usr/share/doc"),
        opaque("var/cache/"),
        device("dev/null", "char", 1, 3),
        device("dev/sda", "block", 8, 0),
        fifo("run/fifo"),
        file("/abs/x", b"stripped leading slash"),
        file("ignored", b"evil", raw_name="../escape"),
    ])
    m = _members(tar)
    assert m["etc"].isdir() and m["etc"].mode == 0o750 and (m["etc"].uid, m["etc"].gid) == (1, 2)
    assert m["etc/passwd"].isreg() and m["etc/passwd"].size == 11 and m["etc/passwd"].mode == 0o600
    assert m["etc/passwd"].pax_headers["SCHILY.xattr.user.k"] == "v"
    assert m["etc/link"].issym() and m["etc/link"].linkname == "passwd"
    assert m["etc/hard"].islnk() and m["etc/hard"].linkname == "etc/passwd"
    assert m["usr/share/.wh.doc"].isreg() and m["usr/share/.wh.doc"].size == 0
    assert m["var/cache/.wh..wh..opq"].isreg()
    assert m["dev/null"].ischr() and (m["dev/null"].devmajor, m["dev/null"].devminor) == (1, 3)
    assert m["dev/sda"].isblk()
    assert m["run/fifo"].isfifo()
    assert "abs/x" in m
    assert "../escape" in m and "ignored" not in m


def test_tar_dsl_is_deterministic_and_compression_round_trips():
    entries = [directory("a"), file("a/b", b"x" * 5000)]
    tar = build_tar(entries)
    assert tar == build_tar(list(entries))
    for kind in ("gzip", "zstd"):
        blob = compress(tar, kind)
        assert blob == compress(tar, kind), f"{kind} output is not deterministic"
        assert blob != tar and decompress(blob) == tar
    assert compress(tar, None) == tar
    with pytest.raises(ValueError):
        compress(tar, "bzip2")


# ---------------------------------------------------------------- images and layouts


@pytest.mark.parametrize("compression,suffix", [("gzip", "+gzip"), ("zstd", "+zstd"), (None, "")])
def test_layer_digests_match_its_bytes(compression, suffix):
    la = Layer([file("hello", b"hi\n")], compression)
    assert la.digest == sha256(la.blob) and la.size == len(la.blob)
    assert la.diff_id == sha256(la.tar) and decompress(la.blob) == la.tar
    assert la.media_type == "application/vnd.oci.image.layer.v1.tar" + suffix


def test_image_manifest_and_config_agree_with_the_blobs():
    img = build_image([[file("a", b"1")], Layer([file("b", b"2")], "zstd")],
                      config={"Cmd": ["/a"], "Env": ["X=1"]}, platform="linux/arm64/v8")
    man = json.loads(img.manifest)
    assert img.manifest_digest == sha256(img.manifest) and img.manifest_media_type == OCI_MANIFEST
    assert man["config"]["digest"] == img.config_digest == sha256(img.config_bytes)
    cfg = img.config
    assert (cfg["os"], cfg["architecture"], cfg["variant"]) == ("linux", "arm64", "v8")
    assert cfg["config"] == {"Cmd": ["/a"], "Env": ["X=1"]}
    assert cfg["rootfs"]["diff_ids"] == [la.diff_id for la in img.layers]
    for d in [man["config"], *man["layers"]]:
        assert sha256(img.blobs[d["digest"]]) == d["digest"] and len(img.blobs[d["digest"]]) == d["size"]
    docker = build_image([[file("a")]], docker=True)
    assert docker.manifest_media_type == DOCKER_MANIFEST
    assert json.loads(docker.manifest)["layers"][0]["mediaType"] == DOCKER_LAYER
    with pytest.raises(ValueError):
        build_image([Layer([file("a")], "zstd")], docker=True)


def test_oci_layout_is_read_by_umoci_and_skopeo(tmp_path):
    _need("skopeo")
    _need("umoci")
    amd = build_image([[file("arch", b"amd64\n")]], config={"Cmd": ["/bin/true"]})
    arm = build_image([[file("arch", b"arm64\n")]], platform="linux/arm64/v8")
    idx = build_index([amd, arm])
    layout = write_oci_layout(tmp_path / "layout", {"single": amd, "multi": idx})
    ls = subprocess.run(["umoci", "ls", "--layout", str(layout)], capture_output=True, text=True, check=True)
    assert sorted(ls.stdout.split()) == ["multi", "single"]
    out = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{layout}:multi"],
                         capture_output=True, check=True).stdout
    assert out == idx.manifest and json.loads(out)["mediaType"] == OCI_INDEX
    info = json.loads(subprocess.run(["skopeo", "inspect", f"oci:{layout}:single"],
                                     capture_output=True, check=True).stdout)
    assert info["Digest"] == amd.manifest_digest and info["Layers"] == [amd.layers[0].digest]
    for blob in (layout / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def test_umoci_applies_fixture_whiteouts(tmp_path):
    """The whiteout/opaque helpers mean what the OCI spec says (umoci is the oracle)."""
    _need("umoci")
    if os.geteuid() != 0:
        pytest.skip("umoci unpack without --rootless needs root")
    base = [directory("etc"), file("etc/gone", b"x"), file("etc/kept", b"y"),
            directory("var"), directory("var/cache"), file("var/cache/old", b"z")]
    top = [whiteout("etc/gone"), directory("var/cache"), opaque("var/cache"), file("var/cache/new", b"n")]
    img = build_image([base, top])
    layout = write_oci_layout(tmp_path / "layout", {"t": img})
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:t", str(tmp_path / "bundle")],
                   capture_output=True, check=True)
    root = tmp_path / "bundle" / "rootfs"
    assert sorted(os.listdir(root / "etc")) == ["kept"]
    assert sorted(os.listdir(root / "var" / "cache")) == ["new"]


def test_busybox_image_holds_the_host_busybox(busybox):
    m = _members(decompress(busybox.layers[0].blob))
    assert m["bin/busybox"].isreg() and m["bin/busybox"].mode == 0o755
    assert m["bin/busybox"].size == Path("/bin/busybox").stat().st_size
    assert m["bin/sh"].issym() and m["bin/sh"].linkname == "busybox"
    assert m["tmp"].mode == 0o1777 and "etc/passwd" in m and "etc/group" in m
    assert busybox.config["config"]["Cmd"] == ["sh"]


def test_full_name_normalises_like_docker():
    assert full_name("busybox") == "docker.io/library/busybox:latest"
    assert full_name("user/app:1") == "docker.io/user/app:1"
    assert full_name("localhost:5000/x") == "localhost:5000/x:latest"
    assert full_name("quay.io/a/b@sha256:" + "0" * 64) == "quay.io/a/b@sha256:" + "0" * 64


@pytest.mark.parametrize("fmt", ["docker", "docker25", "oci"])
def test_archives_are_read_by_skopeo(tmp_path, fmt):
    _need("skopeo")
    img = build_image([[file("a", b"1")], [file("b", b"2")]], config={"Cmd": ["/a"]})
    path = tmp_path / "img.tar"
    path.write_bytes(build_archive({"example.com/app:v1": img}, format=fmt))
    src = f"oci-archive:{path}:example.com/app:v1" if fmt == "oci" else f"docker-archive:{path}"
    info = json.loads(subprocess.run(["skopeo", "inspect", "--config", src],
                                     capture_output=True, check=True).stdout)
    assert info["rootfs"]["diff_ids"] == [la.diff_id for la in img.layers]
    if fmt == "docker25":  # also an OCI layout: the tag is the ref name
        info = json.loads(subprocess.run(["skopeo", "inspect", f"oci-archive:{path}:v1"],
                                         capture_output=True, check=True).stdout)
        assert info["Digest"] == img.manifest_digest


def test_busybox_tar_command_writes_a_docker25_archive(tmp_path):
    out = tmp_path / "busybox.tar"
    r = subprocess.run([sys.executable, "-m", "fixtures", "busybox-tar", str(out)],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == busybox_archive()
    with tarfile.open(out) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))
        index = json.load(tf.extractfile("index.json"))
        names = set(tf.getnames())
    assert manifest[0]["RepoTags"] == ["busybox:latest"]
    assert {manifest[0]["Config"], *manifest[0]["Layers"], "oci-layout"} <= names
    ann = index["manifests"][0]["annotations"]
    assert ann == {"io.containerd.image.name": "docker.io/library/busybox:latest",
                   "org.opencontainers.image.ref.name": "latest"}
    assert not list(tmp_path.glob(".imagetool-*")), "temp file left behind"


# ---------------------------------------------------------------- registry servers


@pytest.mark.parametrize("kind", ["oci", "docker", "index"])
def test_registry_push_keeps_bytes_and_digests(registry, unique_repo, kind):
    _need("skopeo")
    img = build_image([[file("k", kind.encode())]], config={"Cmd": ["/k"]}, docker=kind == "docker")
    built = build_index([img, build_image([[file("arm")]], platform="linux/arm64/v8")]) if kind == "index" else img
    mark = registry.mark()
    registry.push(built, f"{unique_repo}:v1")
    content_type, raw, digest = registry.manifest(f"{unique_repo}:v1")
    assert (raw, digest, content_type) == (built.manifest, built.manifest_digest, built.manifest_media_type)
    for blob_digest, data in built.blobs.items():
        status, _, body = registry.get(f"/v2/{unique_repo}/blobs/{blob_digest}")
        if status == 404:  # an index's child manifests live under /manifests/
            _, body, _ = registry.manifest(f"{unique_repo}@{blob_digest}")
            status = 200
        assert status == 200 and body == data
    seen = registry.requests(mark)
    assert ("PUT", f"/v2/{unique_repo}/manifests/v1", 201) in seen
    assert ("GET", f"/v2/{unique_repo}/manifests/v1", 200) in seen


def test_auth_registry_refuses_anonymous_and_accepts_its_credentials(auth_registry, unique_repo):
    _need("skopeo")
    status, headers, _ = auth_registry.get("/v2/", auth=False)
    assert status == 401 and headers["www-authenticate"].startswith("Basic ")
    assert auth_registry.get("/v2/")[0] == 200
    img = build_image([[file("secret", b"s")]])
    auth_registry.push(img, f"{unique_repo}:v1")
    assert auth_registry.manifest(f"{unique_repo}:v1")[2] == img.manifest_digest
    assert auth_registry.get(f"/v2/{unique_repo}/manifests/v1", auth=False)[0] == 401


def test_tls_registry_is_trusted_only_with_its_ca(tls_registry, unique_repo):
    import ssl
    import urllib.request

    assert (tls_registry.cert_dir / "ca.crt").read_bytes() == tls_registry.ca_cert.read_bytes()
    assert tls_registry.get("/v2/")[0] == 200
    with pytest.raises(Exception) as e:  # the system CAs do not know ours
        urllib.request.urlopen(tls_registry.url + "/v2/", timeout=5,
                               context=ssl.create_default_context())
    assert "CERTIFICATE_VERIFY_FAILED" in str(e.value)
    img = build_image([[file("tls", b"t")]])
    tls_registry.push(img, f"{unique_repo}:v1")
    assert tls_registry.manifest(f"{unique_repo}:v1")[2] == img.manifest_digest


def test_registry_stop_removes_everything_it_made():
    from fixtures.registry import RegistryServer, RegistryUnavailable

    try:
        server = RegistryServer.start()
    except RegistryUnavailable as e:
        pytest.skip(str(e))
    pid, workdir = server.proc.pid, server.workdir
    assert workdir.name.startswith("imagetool-registry-") and workdir.is_dir()
    server.stop()
    server.stop()  # idempotent
    assert not workdir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_cli_fixture_runs_imagetool_against_the_test_store(cli, store_dir):
    r = cli("--help")
    assert r.returncode == 0 and "pull" in r.stdout and r.stderr == ""
    assert cli.argv("images")[-3:] == ["--store", str(store_dir), "images"]
    assert cli.env["IMAGETOOL_CONFIG_DIR"].startswith(str(store_dir.parent))


def test_busybox_image_runs_under_runc(busybox, tmp_path):
    """The busybox fixture is a working root filesystem (umoci unpacks it, runc runs it)."""
    _need("umoci")
    runc = _need("runc")
    if os.geteuid() != 0:
        pytest.skip("runc needs root")
    layout = write_oci_layout(tmp_path / "layout", {"latest": busybox})
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:latest", str(bundle)], capture_output=True, check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["sh", "-c", "echo hello from $(busybox | head -1 | cut -d' ' -f1) as $(id -un)"]
    (bundle / "config.json").write_text(json.dumps(spec))
    cid = f"imagetool-fixture-{os.getpid()}"
    root = tmp_path / "runc-root"
    try:
        r = subprocess.run([runc, "--root", str(root), "run", "--bundle", str(bundle), cid],
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    finally:
        subprocess.run([runc, "--root", str(root), "delete", "--force", cid], capture_output=True)
    if r.returncode != 0 and "cgroup" in r.stderr:
        pytest.skip(f"runc cannot run containers here: {r.stderr.strip()[-200:]}")
    assert (r.returncode, r.stdout) == (0, "hello from BusyBox as root\n"), r.stderr
