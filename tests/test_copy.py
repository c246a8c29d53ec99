"""The one image abstraction: the shared index walk (one depth limit for every source), and
`copy` between transports with skopeo as the oracle."""

from __future__ import annotations

import json

import pytest

from store import Descriptor, Digest

from imagetool import mediatypes as mt
from imagetool.errors import ManifestError
from imagetool.transports import walk
from test_push import env  # noqa: F401 - the fixture: no host configuration


def _doc(obj) -> tuple[Descriptor, bytes]:
    raw = json.dumps(obj).encode()
    return Descriptor(obj["mediaType"], Digest.of_bytes(raw), len(raw)), raw


def _manifest(tag: str) -> tuple[Descriptor, bytes]:
    cfg = Descriptor(mt.OCI_CONFIG, Digest.of_bytes(tag.encode()), len(tag))
    return _doc({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": cfg.to_dict(), "layers": []})


def _index(*entries: Descriptor) -> tuple[Descriptor, bytes]:
    return _doc({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [e.to_dict() for e in entries]})


def _nest(depth: int) -> tuple[Descriptor, dict]:
    """A manifest wrapped in `depth` indexes; (top, blobs)."""
    desc, raw = _manifest("x")
    blobs = {desc.digest: raw}
    for _ in range(depth):
        desc, raw = _index(Descriptor(desc.media_type, desc.digest, desc.size, platform={"os": "linux", "architecture": "amd64"}))
        blobs[desc.digest] = raw
    return desc, blobs


@pytest.mark.parametrize("depth,ok", [(0, True), (1, True), (walk.MAX_INDEX_DEPTH, True),
                                      (walk.MAX_INDEX_DEPTH + 1, False), (40, False)])
def test_index_nesting_has_one_limit_for_select_and_walk(depth, ok):
    top, blobs = _nest(depth)
    read = lambda d: blobs[d.digest]  # noqa: E731
    for fn in (lambda: walk.select(read, top, "linux/amd64"), lambda: walk.walk(read, top)):
        if ok:
            nodes = fn()
            assert len(nodes) == depth + 1
        else:
            with pytest.raises(ManifestError, match="nested more than"):
                fn()


def test_walk_lists_children_before_their_index_and_skips_refused_entries():
    a, raw_a = _manifest("a")
    b, raw_b = _manifest("b")
    top, raw_top = _index(a, b, a)
    blobs = {a.digest: raw_a, b.digest: raw_b, top.digest: raw_top}
    nodes = walk.walk(lambda d: blobs[d.digest], top)
    assert [n.descriptor.digest for n in nodes] == [a.digest, b.digest, top.digest]
    nodes = walk.walk(lambda d: blobs[d.digest], top, keep=lambda e: e.digest != b.digest)
    assert [n.descriptor.digest for n in nodes] == [a.digest, top.digest]


@pytest.mark.parametrize("lie", ["size", "media_type"])
def test_an_index_entry_that_lies_about_its_manifest_is_refused(lie):
    a, raw_a = _manifest("a")
    entry = Descriptor(a.media_type, a.digest, a.size + 1) if lie == "size" else \
        Descriptor(mt.OCI_INDEX, a.digest, a.size)
    top, raw_top = _index(entry)
    blobs = {a.digest: raw_a, top.digest: raw_top}
    with pytest.raises(ManifestError):
        walk.walk(lambda d: blobs[d.digest], top)


# ---------------------------------------------------------------- copy between transports

SOURCES = ["docker", "oci", "oci-archive", "docker-archive", "store"]


@pytest.fixture(scope="module")
def copy_image_built():
    from fixtures.images import Layer, build_image
    from fixtures.tarbuild import file

    from test_pull_support import random_layer

    return build_image([random_layer(200_000), Layer([file("etc/motd", b"copied\n")], compression=None)])


def _source(kind: str, registry, img, tmp_path, store) -> str:
    from fixtures.images import build_archive, write_oci_layout

    if kind == "docker":
        registry.push(img, "copy/src:v1")
        return f"docker://{registry.host}/copy/src:v1"
    if kind == "oci":
        return f"oci:{write_oci_layout(tmp_path / 'src-oci', {'v1': img})}:v1"
    if kind == "store":
        layout = write_oci_layout(tmp_path / "src-load", {"v1": img}, {"v1": "copy/src:v1"})
        from imagetool.archive import load_images

        load_images(store, str(layout))
        return "store:copy/src:v1"
    path = tmp_path / f"src-{kind}.tar"
    path.write_bytes(build_archive({"copy/src:v1": img}, "oci" if kind == "oci-archive" else "docker"))
    return f"{kind}:{path}:copy/src:v1"


def _dest(kind: str, registry, tmp_path, n: str) -> tuple[str, list[str]]:
    """(imagetool address, skopeo's name for the same image)."""
    if kind == "docker":
        return f"docker://{registry.host}/copy/dst-{n}:v1", [f"docker://{registry.host}/copy/dst-{n}:v1",
                                                            "--tls-verify=false"]
    if kind == "oci":
        return f"oci:{tmp_path / 'dst-oci'}:v1", [f"oci:{tmp_path / 'dst-oci'}:v1"]
    if kind == "oci-archive":
        return f"oci-archive:{tmp_path / 'dst.tar'}:v1", [f"oci-archive:{tmp_path / 'dst.tar'}:v1"]
    if kind == "docker-archive":
        return f"docker-archive:{tmp_path / 'dst-d.tar'}:copy/dst:v1", [f"docker-archive:{tmp_path / 'dst-d.tar'}"]
    return "store:copy/dst:v1", [f"oci:{tmp_path / 'store'}:docker.io/copy/dst:v1"]


def _skopeo(*args) -> bytes:
    import subprocess

    r = subprocess.run(["skopeo", "inspect", *args], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("dst", SOURCES)
@pytest.mark.parametrize("src", SOURCES)
def test_copy_between_every_pair_of_transports_keeps_what_skopeo_sees(
        src, dst, registry, copy_image_built, tmp_path, store_dir, env):
    from store import Store

    from imagetool.transfer import copy

    img = copy_image_built
    store = Store.open(store_dir)
    source = _source(src, registry, img, tmp_path, store)
    dest, seen_as = _dest(dst, registry, tmp_path, f"{src}-{dst}")
    result = copy(store, source, dest)
    name, *flags = seen_as
    # the oracle: skopeo reads the destination and finds the same config (every transport) and,
    # where both formats carry the manifest as is, the very same manifest bytes
    assert _skopeo("--config", "--raw", *flags, name) == img.config_bytes
    if "docker-archive" not in (src, dst):
        assert _skopeo("--raw", *flags, name) == img.manifest
        assert result.digest == img.manifest_digest
        assert _skopeo_copy_back(registry, flags, name, tmp_path) == img.all_blobs()


def _skopeo_copy_back(registry, flags, name: str, tmp_path, every: bool = False) -> dict:
    """Every blob skopeo copies from `name` into an OCI layout (digests preserved)."""
    import subprocess

    out = tmp_path / "back"
    flags = (["--src-tls-verify=false"] if flags else []) + (["--all"] if every else [])
    r = subprocess.run(["skopeo", "--policy", str(registry._policy()), "copy", "--preserve-digests", *flags,
                        name, f"oci:{out}:x"], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return {"sha256:" + p.name: p.read_bytes() for p in (out / "blobs" / "sha256").iterdir()}


@pytest.mark.parametrize("dst", ["oci", "oci-archive", "docker-archive", "store", "docker"])
def test_a_corrupt_source_names_nothing_at_the_destination_and_leaves_no_temp_files(
        dst, registry, copy_image_built, tmp_path, store_dir, env):
    from fixtures.images import write_oci_layout
    from store import Store

    from imagetool.errors import ImagetoolError
    from imagetool.transfer import copy

    img = copy_image_built
    layout = write_oci_layout(tmp_path / "bad", {"v1": img})
    layer = layout / "blobs" / "sha256" / img.layers[0].digest.split(":")[1]
    data = bytearray(layer.read_bytes())
    data[len(data) // 2] ^= 0xFF
    layer.write_bytes(bytes(data))
    store = Store.open(store_dir)
    dest, _ = _dest(dst, registry, tmp_path, f"corrupt-{dst}")
    with pytest.raises(ImagetoolError):
        copy(store, f"oci:{layout}:v1", dest)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("imagetool-") or p.suffix == ".tar"
                and p.name.startswith("dst")]
    if dst == "oci":
        assert not (tmp_path / "dst-oci" / "index.json").exists()
    if dst == "store":
        assert Store.open(store_dir).refs() == []
    if dst == "docker":
        status, _, _ = registry.get("/v2/copy/dst-corrupt-docker/manifests/v1")
        assert status == 404


@pytest.fixture(scope="module")
def two_platforms():
    from fixtures.images import Layer, build_image, build_index
    from fixtures.tarbuild import file

    amd = build_image([Layer([file("arch", b"amd64\n")])], platform="linux/amd64")
    arm = build_image([Layer([file("arch", b"arm64\n")])], platform="linux/arm64/v8")
    return build_index([amd, arm])


@pytest.mark.parametrize("dst", ["docker", "oci", "oci-archive", "store"])
def test_copy_all_keeps_the_index_and_every_platform(dst, registry, two_platforms, tmp_path, store_dir, env):
    from store import Store

    from imagetool.transfer import copy

    registry.push(two_platforms, "copy/multi:v1")
    dest, (name, *flags) = _dest(dst, registry, tmp_path, f"all-{dst}")
    result = copy(Store.open(store_dir), f"docker://{registry.host}/copy/multi:v1", dest, all_platforms=True)
    assert result.digest == two_platforms.manifest_digest
    assert _skopeo("--raw", *flags, name) == two_platforms.manifest
    assert _skopeo_copy_back(registry, flags, name, tmp_path, every=True) == two_platforms.all_blobs()


def test_copy_without_all_takes_one_platform_and_docker_archive_refuses_an_index(
        registry, two_platforms, tmp_path, store_dir, env):
    from store import Store

    from imagetool.errors import ArchiveError
    from imagetool.transfer import copy

    registry.push(two_platforms, "copy/multi:v1")
    store = Store.open(store_dir)
    arm = two_platforms.images[1]
    r = copy(store, f"docker://{registry.host}/copy/multi:v1", f"oci:{tmp_path / 'one'}:v1",
             platform="linux/arm64/v8")
    assert r.digest == arm.manifest_digest
    assert _skopeo("--raw", f"oci:{tmp_path / 'one'}:v1") == arm.manifest
    with pytest.raises(ArchiveError, match="one platform"):
        copy(store, f"docker://{registry.host}/copy/multi:v1", f"docker-archive:{tmp_path / 'd.tar'}:x:v1",
             all_platforms=True)
    assert not (tmp_path / "d.tar").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("imagetool-")]



@pytest.mark.parametrize("text", ["busybox", "dir:/tmp/x", "oci:", "store:", "docker://Bad/Name", "oci-archive"])
def test_an_unknown_or_malformed_address_is_an_invalid_reference(text):
    from imagetool.errors import InvalidReference
    from imagetool.transfer import parse

    with pytest.raises(InvalidReference):
        parse(text)


@pytest.mark.parametrize("text,want", [
    ("docker://localhost:5000/a/b:v1", ("docker", "", "localhost:5000/a/b:v1")),
    ("oci:/tmp/lay", ("oci", "/tmp/lay", None)),
    ("oci:/tmp/lay:v1", ("oci", "/tmp/lay", "v1")),
    ("oci-archive:/tmp/x.tar:busybox:latest", ("oci-archive", "/tmp/x.tar", "busybox:latest")),
    ("docker-archive:x.tar", ("docker-archive", "x.tar", None)),
    ("store:busybox", ("store", "", "busybox")),
])
def test_addresses_read_as_skopeo_reads_them(text, want):
    from imagetool.transfer import parse

    a = parse(text)
    assert (a.transport, a.path, a.ref) == want


def test_copy_into_a_directory_that_is_not_a_layout_is_refused_and_leaves_it_alone(
        registry, copy_image_built, tmp_path, store_dir, env):
    from store import Store

    from imagetool.errors import ArchiveError
    from imagetool.transfer import copy

    registry.push(copy_image_built, "copy/src:v1")
    target = tmp_path / "home"
    target.mkdir()
    (target / "notes.txt").write_text("mine\n")
    with pytest.raises(ArchiveError, match="not an OCI layout"):
        copy(Store.open(store_dir), f"docker://{registry.host}/copy/src:v1", f"oci:{target}:v1")
    assert [p.name for p in target.iterdir()] == ["notes.txt"]


def test_a_docker25_save_keeps_its_manifest_digest_through_copy(registry, copy_image_built, tmp_path, store_dir, env):
    from fixtures.images import build_archive
    from store import Store

    from imagetool.transfer import copy

    archive = tmp_path / "d25.tar"
    archive.write_bytes(build_archive({"copy/src:v1": copy_image_built}, "docker25"))
    r = copy(Store.open(store_dir), f"docker-archive:{archive}:copy/src:v1", f"oci:{tmp_path / 'o'}:v1")
    assert r.digest == copy_image_built.manifest_digest
    assert _skopeo("--raw", f"oci:{tmp_path / 'o'}:v1") == copy_image_built.manifest


@pytest.mark.parametrize("fmt", ["oci", "docker"])
def test_save_of_an_image_missing_a_blob_writes_nothing(fmt, copy_image_built, tmp_path, store_dir, env):
    from fixtures.images import write_oci_layout
    from store import Digest, Store

    from imagetool.archive import load_images, save
    from imagetool.errors import ArchiveError

    store = Store.open(store_dir)
    load_images(store, str(write_oci_layout(tmp_path / "l", {"v1": copy_image_built}, {"v1": "copy/partial:v1"})))
    store.delete(Digest.parse(copy_image_built.layers[1].digest))
    with pytest.raises(ArchiveError, match="incomplete in the store"):
        save(store, ["copy/partial:v1"], str(tmp_path / "out.tar"), fmt)
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tar" or p.name.startswith("imagetool-")]


def test_copy_format_docker_renames_the_manifest_types_and_keeps_every_blob(registry, tmp_path, store_dir, env):
    from fixtures.images import build_image
    from store import Digest, Store

    from imagetool import mediatypes as mt
    from imagetool.transfer import copy

    from test_pull_support import random_layer

    copy_image_built = build_image([random_layer(50_000)])  # gzip only: Docker names it as it is
    registry.push(copy_image_built, "copy/gz:v1")
    store = Store.open(store_dir)
    r = copy(store, f"docker://{registry.host}/copy/gz:v1", "store:copy/docker:v1", format="docker")
    desc = store.resolve("docker.io/copy/docker:v1")
    manifest = json.loads(store.read(desc.digest))
    assert (desc.media_type, manifest["mediaType"], r.digest) == (mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST, str(desc.digest))
    assert [la["digest"] for la in manifest["layers"]] == [la.digest for la in copy_image_built.layers]
    for digest, data in copy_image_built.blobs.items():
        assert store.read(Digest.parse(digest), limit=1 << 30) == data


def test_copy_from_a_registry_into_the_store_resumes_a_cut_blob_with_range(registry, tmp_path, store_dir, env):
    from fixtures.images import build_image
    from fixtures.proxy import Fault, FaultProxy
    from store import Digest, Store

    from imagetool.transfer import copy

    from test_pull_support import random_layer

    img = build_image([random_layer(600_000)])
    registry.push(img, "copy/cut:v1")
    layer = img.layers[0]
    with FaultProxy(registry.url) as proxy:
        proxy.add(Fault("reset", f"/blobs/{layer.digest}", after=200_000))
        store = Store.open(store_dir)
        copy(store, f"docker://{proxy.host}/copy/cut:v1", "store:copy/cut:v1")
        gets = proxy.records(f"/blobs/{layer.digest}", "GET")
        assert [r.headers.get("Range") for r in gets][:2] == [None, f"bytes={gets[0].sent}-"]
        assert sum(r.sent for r in gets) == len(layer.blob)      # nothing fetched twice
    assert store.read(Digest.parse(layer.digest), limit=1 << 30) == layer.blob


def test_a_load_whose_archive_changes_after_the_plan_leaves_the_store_as_it_was(tmp_path, store_dir, env):
    """Phase 2 (archive/commit.py, a copy into the store) meets a layer that no longer matches:
    the first image's blobs, already committed, are deleted again and no name is written."""
    from fixtures.images import build_image, write_oci_layout
    from store import Store

    from imagetool.archive.commit import commit
    from imagetool.archive.plan import read_archive
    from imagetool.archive.source import open_source
    from imagetool.errors import DigestError

    from test_pull_support import random_layer, store_state

    first, second = build_image([random_layer(3000, "a")]), build_image([random_layer(3000, "b")])
    layout = write_oci_layout(tmp_path / "two", {"a": first, "b": second}, {"a": "x/a:1", "b": "x/b:1"})
    store = Store.open(store_dir)
    before = store_state(store_dir)
    with open_source(str(layout), store.root) as src:
        plan = read_archive(src, store)
        path = layout / "blobs" / "sha256" / second.layers[0].digest.split(":")[1]
        data = bytearray(path.read_bytes())
        data[-40] ^= 0xFF  # same size, other bytes: changed after it was verified
        path.write_bytes(bytes(data))
        with pytest.raises(DigestError):
            commit(store, src, plan)
    assert store_state(store_dir) == before
