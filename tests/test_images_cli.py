"""`imagetool images / inspect / tag / rmi / prune` through the real CLI, on stores filled with the store
API and images built in code; skopeo reads the same store (an OCI layout) as the oracle."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from fixtures.images import Layer, build_image, build_index, host_platform
from fixtures.tarbuild import directory, file
from imagetool.oci import Platform
from store import Descriptor, Digest, Store

BUSYBOX = "docker.io/library/busybox:latest"
APP = "localhost:5000/app:v1"


def put(store_dir, built, name: str | None) -> Store:
    """Store every blob of `built` (image or index) and, when `name` is given, tag it."""
    st = Store.open(store_dir)
    for dg, data in built.all_blobs().items():
        st.put(data, Digest.parse(dg))
    if name:
        st.tag(name, Descriptor(built.manifest_media_type, Digest.parse(built.manifest_digest), len(built.manifest)))
    return st


def app_image(tag: str = "app", platform: str | None = None, docker: bool = False):
    layers = [Layer([directory("app"), file("app/hello", f"hello {tag}\n".encode(), mode=0o755)]),
              Layer([file("etc/app.conf", tag.encode())], compression=None if not docker else "gzip")]
    return build_image(layers, config={"Cmd": ["/app/hello"], "Env": ["APP=" + tag], "WorkingDir": "/app",
                                       "Labels": {"name": tag}},
                       platform=platform or host_platform(), docker=docker)


def image_size(built) -> int:
    return len(built.manifest) + len(built.config_bytes) + sum(la.size for la in built.layers)


def one_line_error(r, fragment: str) -> None:
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert lines and lines[0].startswith("imagetool: error: "), r.stderr
    assert fragment in lines[0], r.stderr
    assert all(ln.startswith("hint: ") for ln in lines[1:]), r.stderr
    assert "Traceback" not in r.stderr


def skopeo(*args) -> subprocess.CompletedProcess:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo not installed")
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------- images


def test_images_on_an_empty_store(cli):
    r = cli("images", check=True)
    assert r.stdout.split() == ["REPOSITORY", "TAG", "DIGEST", "SIZE"]
    assert json.loads(cli("images", "--format", "json", check=True).stdout) == []


def test_images_table_and_json_list_every_name(cli, store_dir, busybox):
    app, arm = app_image(), app_image(platform="linux/arm64" if "amd64" in host_platform() else "linux/amd64")
    index = build_index([app, arm])
    put(store_dir, busybox, BUSYBOX)
    put(store_dir, index, APP)
    put(store_dir, app, "docker.io/user/app@" + app.manifest_digest)

    rows = json.loads(cli("images", "--format", "json", check=True).stdout)
    assert [(r["repository"], r["tag"]) for r in rows] == [
        ("busybox", "latest"), ("localhost:5000/app", "v1"), ("user/app", None)]
    by_repo = {r["repository"]: r for r in rows}
    assert by_repo["busybox"] == {"repository": "busybox", "tag": "latest", "digest": busybox.manifest_digest,
                                  "size": image_size(busybox), "name": BUSYBOX}
    # an index counts itself plus the image chosen for this host
    assert by_repo["localhost:5000/app"]["digest"] == index.manifest_digest
    assert by_repo["localhost:5000/app"]["size"] == len(index.manifest) + image_size(app)
    assert by_repo["user/app"]["name"] == "docker.io/user/app@" + app.manifest_digest

    table = cli("images", check=True).stdout.splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "DIGEST", "SIZE"]
    cells = [ln.split() for ln in table[1:]]
    assert cells[0][:3] == ["busybox", "latest", busybox.manifest_digest[:19]]
    assert cells[1][:3] == ["localhost:5000/app", "v1", index.manifest_digest[:19]]
    assert cells[2][:2] == ["user/app", "<none>"]
    assert cells[0][3].endswith("MB")


def test_images_rejects_an_unknown_format(cli):
    one_line_error(cli("images", "--format", "yaml"), "unknown format")


# ---------------------------------------------------------------- inspect


def test_inspect_reports_manifest_config_and_layers(cli, store_dir):
    app = app_image("inspected")
    put(store_dir, app, APP)
    out = json.loads(cli("inspect", "localhost:5000/app:v1", check=True).stdout)
    assert out["name"] == APP
    assert out["digest"] == app.manifest_digest
    assert out["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert out["platform"] == str(Platform.parse(host_platform()))     # linux/arm64 reads linux/arm64/v8
    assert out["config"] == app.config
    assert out["config"]["config"]["Cmd"] == ["/app/hello"]
    assert out["layers"] == [{"digest": la.digest, "size": la.size, "mediaType": la.media_type,
                              "diffID": la.diff_id} for la in app.layers]
    assert out["size"] == image_size(app)

    # the same image through skopeo reading the store as an OCI layout
    r = skopeo("inspect", f"oci:{store_dir}:{APP}")
    assert r.returncode == 0, r.stderr
    sk = json.loads(r.stdout)
    assert sk["Digest"] == out["digest"]
    assert sk["Layers"] == [la["digest"] for la in out["layers"]]
    assert sk["Env"] == out["config"]["config"]["Env"]


def test_inspect_finds_an_image_by_digest_and_prefix(cli, store_dir, busybox):
    put(store_dir, busybox, BUSYBOX)
    hexd = busybox.manifest_digest.split(":", 1)[1]
    for ref in ("busybox", "busybox:latest", "docker.io/library/busybox", "index.docker.io/library/busybox",
                busybox.manifest_digest, hexd[:12], hexd, "busybox@" + busybox.manifest_digest):
        out = json.loads(cli("inspect", ref, check=True).stdout)
        assert out["digest"] == busybox.manifest_digest, ref
        assert out["name"] == BUSYBOX
    one_line_error(cli("inspect", hexd[:11]), "not found in the store")
    one_line_error(cli("inspect", "busybox@sha256:" + "0" * 64), "not found in the store")


def test_inspect_of_an_index_follows_the_host_platform(cli, store_dir):
    host = app_image("host")
    other = app_image("other", platform="linux/s390x" if "s390x" not in host_platform() else "linux/amd64")
    index = build_index([other, host], docker=False)
    put(store_dir, index, APP)
    out = json.loads(cli("inspect", APP, check=True).stdout)
    assert out["digest"] == host.manifest_digest
    assert out["index"]["digest"] == index.manifest_digest
    assert out["config"]["config"]["Env"] == ["APP=host"]


def test_an_index_entry_digest_finds_the_image_through_its_index(cli, store_dir):
    host = app_image("host")
    other = app_image("other", platform="linux/s390x" if "s390x" not in host_platform() else "linux/amd64")
    index = build_index([other, host])
    put(store_dir, index, APP)
    for ref in (other.manifest_digest, other.manifest_digest[7:19], "localhost:5000/app@" + other.manifest_digest):
        out = json.loads(cli("inspect", ref, check=True).stdout)
        assert out["digest"] == other.manifest_digest, ref
        assert out["config"]["config"]["Env"] == ["APP=other"]
        assert out["name"] == APP
    one_line_error(cli("inspect", "localhost:5000/other@" + other.manifest_digest), "not found in the store")
    # an entry's digest can be tagged: the new name points at that manifest
    cli("tag", other.manifest_digest, "localhost:5000/other:1", check=True)
    out = json.loads(cli("inspect", "localhost:5000/other:1", check=True).stdout)
    assert out["digest"] == other.manifest_digest and "index" not in out


def test_a_foreign_only_index_can_be_tagged_but_not_inspected_for_this_host(cli, store_dir):
    other = app_image("other", platform="linux/s390x" if "s390x" not in host_platform() else "linux/amd64")
    foreign = build_index([other])
    put(store_dir, foreign, "localhost:5000/foreign:1")
    cli("tag", "localhost:5000/foreign:1", "localhost:5000/foreign:2", check=True)
    rows = json.loads(cli("images", "--format", "json", check=True).stdout)
    assert {r["name"]: r["digest"] for r in rows} == {"localhost:5000/foreign:1": foreign.manifest_digest,
                                                      "localhost:5000/foreign:2": foreign.manifest_digest}
    r = cli("inspect", "localhost:5000/foreign:2")
    one_line_error(r, "no image for platform")
    assert str(Platform.parse(other.platform["os"] + "/" + other.platform["architecture"])) in r.stderr


def test_inspect_of_a_docker_schema2_image(cli, store_dir):
    app = app_image("docker", docker=True)
    put(store_dir, app, APP)
    out = json.loads(cli("inspect", APP, check=True).stdout)
    assert out["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert {la["mediaType"] for la in out["layers"]} == {"application/vnd.docker.image.rootfs.diff.tar.gzip"}


def test_inspect_of_an_image_with_a_missing_config_blob_is_one_line(cli, store_dir):
    app = app_image()
    st = put(store_dir, app, APP)
    st.delete(Digest.parse(app.config_digest))
    one_line_error(cli("inspect", APP), "is missing from the store")


# ---------------------------------------------------------------- tag and rmi


def test_tag_then_rmi_keeps_the_blobs_until_prune(cli, store_dir, busybox):
    st = put(store_dir, busybox, BUSYBOX)
    assert cli("tag", "busybox", "mine/app:v2", check=True).stdout == ""
    rows = json.loads(cli("images", "--format", "json", check=True).stdout)
    assert {(r["name"], r["digest"]) for r in rows} == {(BUSYBOX, busybox.manifest_digest),
                                                        ("docker.io/mine/app:v2", busybox.manifest_digest)}
    assert json.loads(cli("inspect", "mine/app:v2", check=True).stdout)["digest"] == busybox.manifest_digest

    # an ID prefix shared by two names is ambiguous for rmi
    one_line_error(cli("rmi", busybox.manifest_digest[7:19]), "referenced by 2 names")

    r = cli("rmi", "mine/app:v2", check=True)
    assert r.stdout == "Untagged: mine/app:v2\n"
    assert [r["name"] for r in json.loads(cli("images", "--format", "json", check=True).stdout)] == [BUSYBOX]
    assert all(st.has(Digest.parse(d)) for d in busybox.all_blobs())

    r = cli("rmi", busybox.manifest_digest[7:19], check=True)   # now a unique ID
    assert r.stdout == "Untagged: busybox:latest\n"
    assert json.loads(cli("images", "--format", "json", check=True).stdout) == []
    assert all(st.has(Digest.parse(d)) for d in busybox.all_blobs())


def test_tag_moves_an_existing_name(cli, store_dir):
    a, b = app_image("a"), app_image("b")
    put(store_dir, a, "docker.io/library/a:latest")
    put(store_dir, b, "docker.io/library/b:latest")
    cli("tag", "a", "b", check=True)
    rows = json.loads(cli("images", "--format", "json", check=True).stdout)
    assert {r["name"]: r["digest"] for r in rows} == {"docker.io/library/a:latest": a.manifest_digest,
                                                      "docker.io/library/b:latest": a.manifest_digest}


@pytest.mark.parametrize("args,fragment", [
    (["rmi", "nope"], "image nope not found in the store"),
    (["rmi", "Busybox"], 'invalid reference "Busybox": repository name must be lowercase'),
    (["inspect", "nope:1"], "image nope:1 not found in the store"),
    (["inspect", "a" * 64], "not found in the store"),
    (["tag", "nope", "x"], "image nope not found in the store"),
    (["tag", "busybox", "UP"], "must be lowercase"),
    (["tag", "busybox", "x@sha256:" + "1" * 64], "cannot contain a digest"),
    (["tag", "busybox", "x:"], "empty tag"),
])
def test_bad_names_give_one_line_errors(cli, store_dir, busybox, args, fragment):
    put(store_dir, busybox, BUSYBOX)
    before = (store_dir / "index.json").read_bytes()
    r = cli(*args)
    one_line_error(r, fragment)
    assert r.stdout == ""
    assert (store_dir / "index.json").read_bytes() == before


def test_rmi_of_unknown_hints_at_pull(cli):
    r = cli("rmi", "localhost:5000/nothing:here")
    one_line_error(r, "image localhost:5000/nothing:here not found in the store")
    assert "hint: pull it with `imagetool pull localhost:5000/nothing:here`" in r.stderr


def test_rmi_stops_at_the_first_unknown_name(cli, store_dir, busybox):
    put(store_dir, busybox, BUSYBOX)
    put(store_dir, app_image(), APP)
    r = cli("rmi", APP, "nope", "busybox")
    one_line_error(r, "image nope not found")
    assert r.stdout == "Untagged: localhost:5000/app:v1\n"
    assert [x["name"] for x in json.loads(cli("images", "--format", "json", check=True).stdout)] == [BUSYBOX]


# ---------------------------------------------------------------- prune


def test_prune_reclaims_an_untagged_image_and_keeps_tagged_ones(cli, store_dir, busybox, tmp_path):
    app = app_image("pruned")
    st = put(store_dir, busybox, BUSYBOX)
    put(store_dir, app, APP)
    shared_free = set(app.all_blobs()) - set(busybox.all_blobs())
    assert shared_free == set(app.all_blobs())
    cli("rmi", APP, check=True)

    r = cli("prune", check=True)
    reclaimed = sum(len(v) for v in app.all_blobs().values())
    assert f"Deleted {len(app.all_blobs())} blobs, 0 snapshots, 0 partial downloads" in r.stdout
    assert "Total reclaimed space: " in r.stdout
    assert r.stdout.splitlines()[-1] == "Total reclaimed space: " + _human(reclaimed)
    assert not any(st.has(Digest.parse(d)) for d in app.all_blobs())
    assert all(st.has(Digest.parse(d)) for d in busybox.all_blobs())

    # busybox is intact: our inspect and skopeo (copying every blob, digests checked) both read it
    assert json.loads(cli("inspect", "busybox", check=True).stdout)["digest"] == busybox.manifest_digest
    r = skopeo("copy", "--quiet", f"oci:{store_dir}:{BUSYBOX}", f"dir:{tmp_path / 'copy'}")
    assert r.returncode == 0, r.stderr

    # nothing left to reclaim
    again = cli("prune", check=True).stdout.splitlines()
    assert "Deleted 0 blobs, 0 snapshots, 0 partial downloads" in again
    assert again[-1] == "Total reclaimed space: 0B"


def test_prune_keeps_blobs_shared_with_a_tagged_image(cli, store_dir, busybox):
    base = Layer([file("shared", b"shared layer\n")])
    top_a, top_b = Layer([file("a", b"a")]), Layer([file("b", b"b")])
    a = build_image([base, top_a], platform=host_platform())
    b = build_image([base, top_b], platform=host_platform())
    st = put(store_dir, a, "docker.io/library/a:latest")
    put(store_dir, b, "docker.io/library/b:latest")
    cli("rmi", "b", check=True)
    cli("prune", check=True)
    assert st.has(Digest.parse(base.digest)) and st.has(Digest.parse(top_a.digest))
    assert not st.has(Digest.parse(top_b.digest)) and not st.has(Digest.parse(b.manifest_digest))
    out = json.loads(cli("inspect", "a", check=True).stdout)
    assert [la["digest"] for la in out["layers"]] == [base.digest, top_a.digest]


def _human(n: int) -> str:
    from imagetool.images import human_size

    return human_size(n)


def test_load_with_an_explicit_platform(store_dir):
    """In process: image.load picks the index entry for a platform and refuses a single image of another."""
    from imagetool import image
    from imagetool.errors import ImageNotFound, ManifestError

    amd, arm = app_image("amd", platform="linux/amd64"), app_image("arm", platform="linux/arm64")
    st = put(store_dir, build_index([amd, arm]), "docker.io/library/multi:latest")
    put(store_dir, amd, "docker.io/library/single:latest")
    assert str(image.load(st, "multi", platform="linux/arm64/v8").digest) == arm.manifest_digest
    assert str(image.load(st, "multi", platform=Platform.parse("linux/amd64")).digest) == amd.manifest_digest
    with pytest.raises(ManifestError, match="available: linux/amd64, linux/arm64/v8"):
        image.load(st, "multi", platform="linux/s390x")
    assert image.load(st, "single", platform="linux/x86_64").config.env == ["APP=amd"]
    with pytest.raises(ImageNotFound, match="is linux/amd64, not linux/arm64/v8"):
        image.load(st, "single", platform="linux/arm64")
