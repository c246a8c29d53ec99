"""load / save / import / export and `run ARCHIVE`, with archives built in code (fixtures/).

Interop with the real peer tools (skopeo, podman) is in test_archive_interop.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from fixtures.images import Layer, build_archive, build_image, build_index, busybox_image, write_oci_layout
from fixtures.tarbuild import compress, directory, file

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="running containers needs root here")


# ---------------------------------------------------------------- helpers


def store_state(store: Path) -> tuple:
    """Every file of the store (path, size, inode) and the exact bytes of index.json."""
    files = []
    for dirpath, dirnames, filenames in os.walk(store):
        for n in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            files.append((os.path.relpath(p, store), st.st_size, st.st_ino))
    index = (store / "index.json").read_bytes() if (store / "index.json").exists() else b""
    return sorted(files), index


def tar_of(members: list) -> bytes:
    """A tar from (name, bytes) / (name, "symlink", target) / (name, "dir") tuples, names verbatim."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for m in members:
            ti = tarfile.TarInfo(m[0])
            if len(m) == 3 and m[1] == "symlink":
                ti.type, ti.linkname = tarfile.SYMTYPE, m[2]
                tf.addfile(ti)
            elif len(m) == 2 and m[1] == "dir":
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            else:
                ti.size = len(m[1])
                tf.addfile(ti, io.BytesIO(m[1]))
    return buf.getvalue()


def members_of(data: bytes) -> dict:
    """{name: bytes or ('symlink', target)} of a tar."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for ti in tf:
            if ti.isfile():
                out[ti.name] = tf.extractfile(ti).read()
            elif ti.issym():
                out[ti.name] = ("symlink", ti.linkname)
            elif ti.isdir():
                out[ti.name] = ("dir",)
    return out


def oci_members(img, name="busybox:latest") -> list:
    """The members of an oci-archive holding `img` under the ref name `name`."""
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [img.descriptor({"org.opencontainers.image.ref.name": name})]}
    out = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", json.dumps(index).encode())]
    out += [("blobs/sha256/" + d.split(":", 1)[1], data) for d, data in img.all_blobs().items()]
    return out


def manifest_digest(cli, ref: str) -> str:
    r = cli("inspect", ref, check=True)
    return json.loads(r.stdout)["digest"]


def small_image(tag: str, compression="gzip"):
    return build_image([Layer([directory("etc"), file("etc/" + tag, tag.encode())], compression)],
                       config={"Cmd": ["sh"]})


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize("fmt", ["oci", "docker", "docker25"])
@pytest.mark.parametrize("whole", [None, "gzip", "zstd"])
def test_every_archive_format_loads_and_keeps_names(store_dir, tmp_path, fmt, whole):
    from store import Store

    from imagetool import archive, image

    img = busybox_image(compression=None if fmt == "docker" else "gzip")
    data = build_archive({"busybox:latest": img}, format=fmt)
    path = tmp_path / "bb.tar"
    path.write_bytes(compress(data, whole) if whole else data)
    st = Store.open(store_dir)
    assert archive.load(st, str(path)) == ["Loaded image: busybox:latest"]
    loaded = image.load(st, "busybox")
    if fmt != "docker":  # the exact manifest survives; a legacy docker save has none to keep
        assert str(loaded.digest) == img.manifest_digest
    assert [str(d) for d in loaded.config.diff_ids] == [la.diff_id for la in img.layers]
    assert [n for n, _ in st.refs()] == ["docker.io/library/busybox:latest"]
    assert not list((store_dir / "ingest").glob("*.partial"))
    assert not [p for p in store_dir.iterdir() if p.name.startswith("imagetool-")]


def test_load_from_stdin_pipe(cli, tmp_path):
    img = busybox_image()
    r = cli("load", input=compress(build_archive({"example.com/team/app:v1": img}, "oci"), "gzip"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Loaded image: example.com/team/app:v1\n"
    assert manifest_digest(cli, "example.com/team/app:v1") == img.manifest_digest


def test_oci_layout_directory_with_index_loads_every_present_platform(cli, tmp_path, busybox):
    other = build_image([Layer([file("x", b"arm")])], platform="linux/arm64")
    idx = build_index([busybox, other])
    layout = write_oci_layout(tmp_path / "layout", {"localhost/multi:1": idx})
    r = cli("load", "-i", layout)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Loaded image: localhost/multi:1\n"
    listed = json.loads(cli("images", "--format", "json", check=True).stdout)
    assert listed[0]["digest"] == idx.manifest_digest  # the index itself is what the name keeps


def test_several_images_in_one_archive(cli, tmp_path):
    a, b = small_image("a"), small_image("b")
    for fmt in ("docker", "docker25", "oci"):
        data = build_archive({"one:1": a, "two:2": b} if fmt != "oci" else
                             {"docker.io/library/one:1": a, "docker.io/library/two:2": b}, fmt)
        (tmp_path / f"{fmt}.tar").write_bytes(data)
        r = cli("load", "-i", tmp_path / f"{fmt}.tar")
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ["Loaded image: one:1", "Loaded image: two:2"]


def test_untagged_image_is_reported_by_id_and_stays_usable(cli, tmp_path):
    img = small_image("u")
    data = build_archive({"x": img}, "oci")  # a bare ref name ("x") is a tag, not an image name
    (tmp_path / "u.tar").write_bytes(data)
    r = cli("load", "-i", tmp_path / "u.tar")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"Loaded image ID: {img.manifest_digest}\n"
    assert manifest_digest(cli, img.manifest_digest) == img.manifest_digest


def test_docker_archive_with_symlinked_duplicate_layers(cli, tmp_path):
    """A legacy docker save writes a layer shared by two images once and symlinks the other."""
    base = Layer([directory("etc"), file("etc/base", b"base")], compression=None)
    a = build_image([base, Layer([file("a", b"a")], None)])
    b = build_image([base, Layer([file("b", b"b")], None)])
    members = [("bb/layer.tar", base.tar), ("cc/layer.tar", a.layers[1].tar), ("dd/layer.tar", b.layers[1].tar),
               ("ee", "dir"), ("ee/layer.tar", "symlink", "../bb/layer.tar"),
               (a.config_digest[7:] + ".json", a.config_bytes), (b.config_digest[7:] + ".json", b.config_bytes)]
    manifest = [{"Config": a.config_digest[7:] + ".json", "RepoTags": ["a:1"], "Layers": ["bb/layer.tar", "cc/layer.tar"]},
                {"Config": b.config_digest[7:] + ".json", "RepoTags": ["b:1"], "Layers": ["ee/layer.tar", "dd/layer.tar"]}]
    members.append(("manifest.json", json.dumps(manifest).encode()))
    (tmp_path / "d.tar").write_bytes(tar_of(members))
    r = cli("load", "-i", tmp_path / "d.tar")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["Loaded image: a:1", "Loaded image: b:1"]
    insp = json.loads(cli("inspect", "b:1", check=True).stdout)
    assert [la["diffID"] for la in insp["layers"]] == [base.diff_id, b.layers[1].diff_id]


def test_docker_archive_with_gzip_layers_is_checked_against_diff_ids(cli, tmp_path):
    img = small_image("g", compression="gzip")
    la = img.layers[0]
    members = [("cfg.json", img.config_bytes), ("l/layer.tar", la.blob),
               ("manifest.json", json.dumps([{"Config": "cfg.json", "RepoTags": ["g:1"], "Layers": ["l/layer.tar"]}]).encode())]
    (tmp_path / "g.tar").write_bytes(tar_of(members))
    r = cli("load", "-i", tmp_path / "g.tar")
    assert r.returncode == 0, r.stderr
    insp = json.loads(cli("inspect", "g:1", check=True).stdout)
    assert insp["layers"][0]["digest"] == la.digest and insp["layers"][0]["diffID"] == la.diff_id


def test_loading_again_writes_nothing(cli, store_dir, tmp_path):
    (tmp_path / "a.tar").write_bytes(build_archive({"busybox:latest": busybox_image()}, "docker25"))
    cli("load", "-i", tmp_path / "a.tar", check=True)
    before = store_state(store_dir)
    r = cli("load", "-i", tmp_path / "a.tar")
    assert r.returncode == 0 and r.stdout == "Loaded image: busybox:latest\n"
    blobs = lambda state: [f for f in state[0] if f[0].startswith("blobs/")]  # noqa: E731
    assert blobs(store_state(store_dir)) == blobs(before)  # same blobs, same inodes: nothing rewritten


# ---------------------------------------------------------------- bad archives


def _bad_archives(tmp_path: Path) -> dict:
    img = small_image("bad")
    good = build_archive({"docker.io/library/bad:1": img}, "oci")
    layer_hex = img.layers[0].digest[7:]
    cases = {}
    cut = good.find(img.layers[0].blob) + img.layers[0].size // 2
    assert cut > 0
    cases["truncated"] = good[:cut]  # in the middle of the layer's data
    members = oci_members(img, "docker.io/library/bad:1")
    flipped = [(n, (d[:100] + bytes([d[100] ^ 1]) + d[101:]) if n.endswith(layer_hex) else d) for n, d in members]
    cases["wrong-digest"] = tar_of(flipped)
    cases["missing-blob"] = tar_of([m for m in members if not m[0].endswith(layer_hex)])
    legacy = build_archive({"bad:1": small_image("bad", None)}, "docker")
    mem = members_of(legacy)
    man = json.loads(mem["manifest.json"])
    man[0]["Layers"] = ["nothere/layer.tar"]
    cases["manifest-names-absent-file"] = tar_of([(k, v) for k, v in mem.items() if isinstance(v, bytes) and k != "manifest.json"]
                                                 + [("manifest.json", json.dumps(man).encode())])
    flipped_layer = {k: (v[:600] + bytes([v[600] ^ 1]) + v[601:]) if k.endswith("layer.tar") else v
                     for k, v in mem.items() if isinstance(v, bytes)}
    cases["docker-layer-not-matching-diff-id"] = tar_of(list(flipped_layer.items()))
    man[0]["Layers"] = ["../../../../../../etc/passwd"]
    cases["manifest-names-parent-path"] = tar_of([(k, v) for k, v in mem.items() if isinstance(v, bytes) and k != "manifest.json"]
                                                 + [("manifest.json", json.dumps(man).encode())])
    cases["member-with-dotdot"] = tar_of(members + [("../escape", b"x")])
    cases["absolute-member"] = tar_of(members + [("/tmp/imagetool-absolute", b"x")])
    cases["blob-symlink-out"] = tar_of([m for m in members if not m[0].endswith(layer_hex)]
                                       + [("blobs/sha256/" + layer_hex, "symlink", "/etc/passwd")])
    cases["empty-file"] = b""
    cases["not-a-tar"] = hashlib.sha256(b"x").digest() * 100
    cases["truncated-gzip"] = compress(good, "gzip")[:-40]
    cases["truncated-zstd"] = compress(good, "zstd")[:-40]
    cases["truncated-at-a-member-boundary"] = good[:good.find(img.layers[0].blob) - 512]
    cases["no-image-inside"] = tar_of([("hello.txt", b"hello")])
    import lzma
    cases["xz-compressed"] = lzma.compress(good)
    return cases


#: a word the one-line error must contain, per bad archive
EXPECTED_WORDS = {
    "truncated": "truncated", "truncated-at-a-member-boundary": "truncated",
    "wrong-digest": "does not match", "missing-blob": "missing", "manifest-names-absent-file": "missing",
    "manifest-names-parent-path": "..", "member-with-dotdot": "..", "absolute-member": "absolute",
    "blob-symlink-out": "outside", "empty-file": "empty", "not-a-tar": "not a tar",
    "truncated-gzip": "truncated", "truncated-zstd": "truncated", "no-image-inside": "not an image archive",
    "docker-layer-not-matching-diff-id": "does not match", "xz-compressed": "xz",
}


def test_bad_archives_fail_cleanly_and_leave_the_store_unchanged(cli, store_dir, tmp_path):
    """Each bad archive: exit 1, one `imagetool: error:` line saying what is wrong, no traceback,
    and the store's files (names, sizes, inodes) and index.json exactly as before."""
    (tmp_path / "ok.tar").write_bytes(build_archive({"busybox:latest": busybox_image()}, "oci"))
    cli("load", "-i", tmp_path / "ok.tar", check=True)
    before = store_state(store_dir)
    cases = _bad_archives(tmp_path)
    assert set(cases) == set(EXPECTED_WORDS)
    failures = {}
    for name, data in cases.items():
        path = tmp_path / f"{name}.tar"
        path.write_bytes(data)
        r = cli("load", "-i", path)
        lines = r.stderr.splitlines()
        ok = (r.returncode == 1 and lines and lines[0].startswith("imagetool: error: ")
              and EXPECTED_WORDS[name] in lines[0]
              and "Traceback" not in r.stderr and "internal error" not in r.stderr
              and store_state(store_dir) == before)
        if not ok:
            failures[name] = (r.returncode, r.stderr[-300:], store_state(store_dir) == before)
    assert not failures, failures
    assert (tmp_path / "escape").exists() is False
    assert not os.path.exists("/tmp/imagetool-absolute")


def test_failure_after_some_blobs_rolls_back(cli, store_dir, tmp_path):
    """A second image with a corrupt layer: the first image's blobs must not stay behind."""
    a, b = small_image("first"), small_image("second")
    members = oci_members(a, "docker.io/library/a:1")
    bm = oci_members(b, "docker.io/library/b:1")
    index = json.loads(members[1][1])
    index["manifests"] += json.loads(bm[1][1])["manifests"]
    hexb = b.layers[0].digest[7:]
    blobs = [m for m in members[2:]] + [(n, d if not n.endswith(hexb) else d[:100] + bytes([d[100] ^ 1]) + d[101:])
                                        for n, d in bm[2:]]
    (tmp_path / "two.tar").write_bytes(tar_of([members[0], ("index.json", json.dumps(index).encode())] + blobs))
    cli("images", check=True)  # create the store
    before = store_state(store_dir)
    r = cli("load", "-i", tmp_path / "two.tar")
    assert r.returncode == 1
    assert store_state(store_dir) == before


# ---------------------------------------------------------------- save


@pytest.mark.parametrize("fmt", ["oci", "docker"])
def test_save_then_load_keeps_the_manifest_digest(cli, tmp_path, fmt):
    img = busybox_image()
    (tmp_path / "in.tar").write_bytes(build_archive({"busybox:latest": img}, "oci"))
    cli("load", "-i", tmp_path / "in.tar", check=True)
    r = cli("save", "--format", fmt, "-o", tmp_path / "out.tar", "busybox")
    assert r.returncode == 0, r.stderr
    names = members_of((tmp_path / "out.tar").read_bytes())
    assert "index.json" in names and "oci-layout" in names
    if fmt == "docker":
        man = json.loads(names["manifest.json"])
        assert man[0]["RepoTags"] == ["busybox:latest"]
        assert man[0]["Config"] == "blobs/sha256/" + img.config_digest[7:]
    from tests.conftest import Cli
    fresh = Cli(tmp_path / "store2", tmp_path)
    (tmp_path / "store2").mkdir()
    r = fresh("load", "-i", tmp_path / "out.tar")
    assert r.returncode == 0 and r.stdout == "Loaded image: busybox:latest\n", r.stderr
    assert manifest_digest(fresh, "busybox") == img.manifest_digest


def test_save_to_stdout_streams_the_same_archive(cli, tmp_path):
    (tmp_path / "in.tar").write_bytes(build_archive({"busybox:latest": busybox_image()}, "oci"))
    cli("load", "-i", tmp_path / "in.tar", check=True)
    cli("save", "-o", tmp_path / "file.tar", "busybox", check=True)
    r = cli("save", "busybox", binary=True)
    assert r.returncode == 0
    assert r.stdout == (tmp_path / "file.tar").read_bytes()  # deterministic, whatever the sink


def test_save_of_unknown_image_writes_nothing(cli, tmp_path):
    r = cli("save", "-o", tmp_path / "x.tar", "nosuch:image")
    assert r.returncode == 1 and "imagetool: error:" in r.stderr
    assert not list(tmp_path.glob("*.tar")) and not list(tmp_path.glob("imagetool-*"))


# ---------------------------------------------------------------- import / export / run


def _rootfs_dir(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "tmp").mkdir(mode=0o1777)
    os.chmod(root / "tmp", 0o1777)
    data = Path("/bin/busybox").read_bytes()
    (root / "bin" / "busybox").write_bytes(data)
    os.chmod(root / "bin" / "busybox", 0o755)
    os.symlink("busybox", root / "bin" / "sh")
    (root / "etc" / "motd").write_text("imported\n")
    os.link(root / "etc" / "motd", root / "etc" / "motd.link")
    os.mkfifo(root / "etc" / "fifo")
    return root


def test_import_directory_keeps_types_and_modes(cli, tmp_path):
    root = _rootfs_dir(tmp_path)
    r = cli("import", root, "imported:1")
    assert r.returncode == 0, r.stderr
    digest = r.stdout.strip()
    assert digest.startswith("sha256:") and manifest_digest(cli, "imported:1") == digest
    cli("export", "imported:1", "-o", tmp_path / "exp.tar", check=True)
    with tarfile.open(tmp_path / "exp.tar") as tf:
        got = {ti.name: ti for ti in tf}
    assert got["bin/sh"].issym() and got["bin/sh"].linkname == "busybox"
    assert got["tmp"].mode == 0o1777 and got["bin/busybox"].mode == 0o755
    assert got["etc/fifo"].isfifo()
    links = {n for n in ("etc/motd", "etc/motd.link") if got[n].islnk()}
    assert len(links) == 1  # one file, one hard link to it


def test_import_tarball_gzip_zstd_and_stdin(cli, tmp_path):
    tar = tar_of([("bin", "dir"), ("bin/hello", b"hello")])
    for i, (kind, how) in enumerate([(None, "file"), ("gzip", "file"), ("zstd", "file"), ("gzip", "stdin")]):
        data = compress(tar, kind) if kind else tar
        if how == "file":
            (tmp_path / f"r{i}.tar").write_bytes(data)
            r = cli("import", tmp_path / f"r{i}.tar", f"imp:{i}")
        else:
            r = cli("import", "-", f"imp:{i}", input=data)
        assert r.returncode == 0, r.stderr
        insp = json.loads(cli("inspect", f"imp:{i}", check=True).stdout)
        assert insp["layers"][0]["diffID"] == "sha256:" + hashlib.sha256(tar).hexdigest()
        assert insp["layers"][0]["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()


def test_import_rejects_non_tar_and_unsafe_names(cli, store_dir, tmp_path):
    cli("images", check=True)
    before = store_state(store_dir)
    (tmp_path / "bad1").write_bytes(b"not a tar at all" * 100)
    (tmp_path / "bad2").write_bytes(tar_of([("../../evil", b"x")]))
    for p in ("bad1", "bad2"):
        r = cli("import", tmp_path / p, "bad:1")
        assert r.returncode == 1 and r.stderr.startswith("imagetool: error:"), r.stderr
    assert store_state(store_dir) == before


@needs_root
def test_import_directory_then_run(cli, tmp_path):
    cli("import", _rootfs_dir(tmp_path), "imported:run", check=True)
    r = cli("run", "--rm", "imported:run", "/bin/busybox", "cat", "/etc/motd")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "imported\n"


@needs_root
@pytest.mark.parametrize("arg", ["./bb.tar", "oci-archive:bb.tar", "docker-archive:bb-docker.tar",
                                 "./untagged.tar", "oci:layout:latest", "./bb.tar.zst", "bb.tar.zst",
                                 "bb.tar.gz", "./bb.tgz", "bb.tar"])
def test_run_straight_from_an_archive(cli, tmp_path, arg):
    """An archive named on the command line is loaded and run, never looked up in a registry
    (a pull would go through a closed loopback proxy and fail at once)."""
    bb = build_archive({"busybox:latest": busybox_image()}, "oci")
    (tmp_path / "bb.tar").write_bytes(bb)
    for name, kind in (("bb.tar.zst", "zstd"), ("bb.tar.gz", "gzip"), ("bb.tgz", "gzip")):
        (tmp_path / name).write_bytes(compress(bb, kind))
    (tmp_path / "bb-docker.tar").write_bytes(build_archive({"busybox:latest": busybox_image(None)}, "docker"))
    (tmp_path / "untagged.tar").write_bytes(build_archive({"latest": busybox_image()}, "oci"))
    write_oci_layout(tmp_path / "layout", {"docker.io/library/busybox:latest": busybox_image()})
    no_registry = {"IMAGETOOL_RETRIES": "1", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}
    r = cli("run", "--rm", arg, "/bin/busybox", "echo", "ok", cwd=tmp_path, env=no_registry)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ok\n" and "Unable to find image" not in r.stderr


@needs_root
def test_export_of_a_container_has_its_changes(cli, tmp_path):
    (tmp_path / "bb.tar").write_bytes(build_archive({"busybox:latest": busybox_image()}, "oci"))
    cli("load", "-i", tmp_path / "bb.tar", check=True)
    r = cli("run", "--name", "exp", "--network", "private", "busybox", "/bin/busybox", "sh", "-c",   # /etc/hostname in its layer
            "echo new > /new.txt && rm /etc/hostname && mkdir -p /var/x && echo y > /var/x/y")
    assert r.returncode == 0, r.stderr
    r = cli("export", "exp", "-o", tmp_path / "c.tar")
    assert r.returncode == 0, r.stderr
    got = members_of((tmp_path / "c.tar").read_bytes())
    assert got["new.txt"] == b"new\n" and got["var/x/y"] == b"y\n"
    assert "etc/hostname" not in got and got["etc/passwd"].startswith(b"root:")
    assert not any(".wh." in n for n in got)
    cli("rm", "exp", check=True)
