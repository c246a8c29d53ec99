"""Exactness: imagetool unpack vs Debian's umoci on the oracle corpus, and the overlay-mounted
snapshots vs the flattened tree (same type, mode, owner, size, content, link target, hardlink
groups, user xattrs and file mtimes)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from fixtures.corpus import GZIP_TWIN, import_image, oracle_corpus, tree_manifest
from fixtures.images import write_oci_layout

CORPUS = oracle_corpus()


def _diff(a: dict, b: dict) -> list:
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


@pytest.fixture(scope="module")
def umoci_trees(tmp_path_factory):
    """umoci's flattened rootfs of every gzip image of the corpus (OCI media types only)."""
    if shutil.which("umoci") is None:
        pytest.skip("umoci not installed")
    base = tmp_path_factory.mktemp("umoci")
    refs = {n: img for n, img in CORPUS.items() if n not in GZIP_TWIN and not n.startswith("docker-")}
    layout = write_oci_layout(base / "layout", refs)
    trees = {}
    rootless = [] if os.geteuid() == 0 else ["--rootless"]
    for name in refs:
        bundle = base / f"bundle-{name}"
        subprocess.run(["umoci", "unpack", *rootless, "--image", f"{layout}:{name}", str(bundle)],
                       check=True, capture_output=True)
        trees[name] = tree_manifest(bundle / "rootfs")
    return trees


def test_corpus_size():
    assert len(CORPUS) >= 12


@pytest.mark.skipif(os.geteuid() != 0, reason="the corpus has devices and owners: compare as root")
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_unpack_matches_umoci(name, umoci_trees, tmp_path, store_dir, cli):
    from store import Store

    ref = import_image(Store.open(store_dir), CORPUS[name], f"localhost/oracle/{name}")
    out = tmp_path / "rootfs"
    r = cli("unpack", ref, out)
    assert r.returncode == 0, r.stderr
    twin = GZIP_TWIN.get(name) or {"docker-symlinks": "symlinks", "plain-opaque": "opaque"}.get(name, name)
    expected = umoci_trees[twin]
    assert len(expected) > 5
    assert _diff(tree_manifest(out), expected) == []


def _mount_overlay(plan) -> None:
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", ",".join(plan.options), str(plan.target)],
                   cwd=plan.cwd, check=True, capture_output=True)


def _umount(target) -> None:
    subprocess.run(["umount", str(target)], check=False, capture_output=True)


def _overlay_ok():
    from imagetool.unpack.rootfs import overlay_supported

    return os.geteuid() == 0 and overlay_supported()


@pytest.mark.skipif(not _overlay_ok(), reason="needs root and overlayfs")
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_overlay_rootfs_equals_flattened(name, tmp_path, store_dir):
    """The per-layer snapshots mounted as overlay show exactly the flattened tree."""
    from store import Store

    from imagetool import image as images
    from imagetool.unpack.flatten import flatten_new
    from imagetool.unpack.rootfs import overlay_mount

    st = Store.open(store_dir)
    image = images.load(st, import_image(st, CORPUS[name], f"localhost/oracle/{name}"))
    flat = flatten_new(st, image, tmp_path / "flat")
    plan = overlay_mount(st, image, tmp_path / "ctr")
    _mount_overlay(plan)
    try:
        got = tree_manifest(plan.target)
    finally:
        _umount(plan.target)
    assert _diff(got, tree_manifest(flat)) == []
    # snapshots are reused, not re-extracted, by a second container
    before = {p.name: p.stat().st_ino for p in st.snapshots_dir.iterdir()}
    overlay_mount(st, image, tmp_path / "ctr2")
    assert {p.name: p.stat().st_ino for p in st.snapshots_dir.iterdir()} == before
    assert len(before) == len({la.diff_id for la in CORPUS[name].layers})
