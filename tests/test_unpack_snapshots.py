"""Snapshots: one per layer, shared between images, atomic under concurrency; overlay root
filesystems of 128 layers mount; a container's writes never reach the snapshots."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fixtures.corpus import import_image, tree_digest
from fixtures.images import Layer, build_image
from fixtures.tarbuild import directory, file, whiteout

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="overlay snapshots need root")


def _overlay_ok() -> bool:
    from imagetool.unpack.rootfs import overlay_supported

    return os.geteuid() == 0 and overlay_supported()


needs_overlay = pytest.mark.skipif(not _overlay_ok(), reason="needs root and overlayfs")


def _load(st, built, name):
    from imagetool import image as images

    return images.load(st, import_image(st, built, name))


def _mount(plan):
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", ",".join(plan.options), str(plan.target)],
                   cwd=plan.cwd, check=True, capture_output=True, text=True)


def _umount(target):
    subprocess.run(["umount", str(target)], check=False, capture_output=True)


@needs_root
def test_images_sharing_a_layer_share_its_snapshot(store_dir):
    from store import Store

    from imagetool.unpack.snapshots import ensure_snapshots

    st = Store.open(store_dir)
    base = Layer([directory("etc"), file("etc/os-release", b"ID=test\n")])
    a = _load(st, build_image([base, Layer([file("a", b"a")])]), "localhost/share/a")
    b = _load(st, build_image([base, Layer([file("b", b"b")])]), "localhost/share/b")
    pa = ensure_snapshots(st, a)
    ino = pa[0].stat().st_ino
    pb = ensure_snapshots(st, b)
    assert pa[0] == pb[0] and pb[0].stat().st_ino == ino
    assert pa[0].name == base.diff_id.split(":")[1]
    assert sorted(p.name for p in st.snapshots_dir.iterdir()) == sorted({p.name for p in pa + pb})


@needs_root
def test_losing_the_rename_race_discards_the_temp_dir(store_dir):
    """The second creator of an existing snapshot (the loser of the rename) succeeds and cleans up."""
    from store import Store

    from imagetool.unpack.layers import Limits
    from imagetool.unpack.snapshots import _create, ensure_snapshots

    st = Store.open(store_dir)
    la = Layer([directory("d"), file("d/f", b"x" * 1000)])
    img = _load(st, build_image([la]), "localhost/race/one")
    (winner,) = ensure_snapshots(st, img)
    before = tree_digest(winner)
    desc, diff_id = img.manifest.layers[0], img.config.diff_ids[0]
    with st.open(desc.digest) as raw:                                # what the loser runs
        _create(raw, desc, diff_id, winner, (), Limits(), "layer 1")
    assert tree_digest(winner) == before
    assert [p.name for p in st.snapshots_dir.iterdir()] == [winner.name]


@needs_root
def test_two_processes_unpack_the_same_image_at_once(store_dir, tmp_path):
    from store import Store

    st = Store.open(store_dir)
    layers = [Layer([directory(f"l{i}")] + [file(f"l{i}/f{j}", os.urandom(4096)) for j in range(400)])
              for i in range(3)]
    ref = import_image(st, build_image(layers), "localhost/race/many")
    go = tmp_path / "go"
    script = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(os.getcwd())!r})
        from store import Store
        from imagetool import image
        from imagetool.unpack.snapshots import ensure_snapshots
        st = Store.open({str(store_dir)!r})
        img = image.load(st, {ref!r})
        while not os.path.exists({str(go)!r}):
            time.sleep(0.005)
        print(len(ensure_snapshots(st, img)))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    try:
        go.touch()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.strip() == "3"
    names = sorted(p.name for p in st.snapshots_dir.iterdir())
    assert names == sorted(la.diff_id.split(":")[1] for la in layers)
    for la, name in zip(layers, [la.diff_id.split(":")[1] for la in layers]):
        assert len(os.listdir(st.snapshots_dir / name / os.listdir(st.snapshots_dir / name)[0])) == 400


@needs_overlay
def test_128_layer_image_mounts_as_one_overlay(store_dir, tmp_path):
    from store import Store

    from imagetool.unpack.rootfs import MOUNT_DATA_LIMIT, lowerdirs, overlay_mount

    st = Store.open(store_dir)
    layers = [Layer([directory("layers"), file(f"layers/{i:03d}", str(i).encode()), file("top", str(i).encode())])
              for i in range(127)]
    layers.append(Layer([whiteout("layers/000")]))
    image = _load(st, build_image(layers), "localhost/deep/128")
    plan = overlay_mount(st, image, tmp_path / "containers" / "c128")
    assert len(lowerdirs(plan)) == 128
    absolute = ":".join(str(p) for p in lowerdirs(plan))
    assert len(absolute) > MOUNT_DATA_LIMIT, "absolute lowerdirs would not even fit: the test proves nothing"
    assert len(",".join(plan.options)) < MOUNT_DATA_LIMIT
    _mount(plan)
    try:
        root = Path(plan.target)
        assert (root / "top").read_bytes() == b"126"
        assert sorted(os.listdir(root / "layers")) == [f"{i:03d}" for i in range(1, 127)]
        assert (root / "layers" / "042").read_bytes() == b"42"
    finally:
        _umount(plan.target)


@needs_overlay
def test_container_writes_stay_in_its_upper_dir(store_dir, tmp_path):
    from store import Store

    from imagetool.unpack.rootfs import lowerdirs, overlay_mount

    st = Store.open(store_dir)
    image = _load(st, build_image([Layer([directory("etc"), file("etc/conf", b"v1")])]), "localhost/cow/img")
    plan = overlay_mount(st, image, tmp_path / "ctr")
    snap = lowerdirs(plan)[0]
    before = tree_digest(snap)
    _mount(plan)
    try:
        (Path(plan.target) / "etc" / "conf").write_bytes(b"changed")
        (Path(plan.target) / "new").write_bytes(b"n")
        os.unlink(Path(plan.target) / "etc" / "conf")
    finally:
        _umount(plan.target)
    assert tree_digest(snap) == before
    assert (Path(plan.cwd) / "upper" / "new").read_bytes() == b"n"
    assert snap.parent == st.snapshots_dir


def test_copy_fallback_rootfs(store_dir, tmp_path):
    from store import Store

    from imagetool.unpack.rootfs import prepare_rootfs

    st = Store.open(store_dir)
    image = _load(st, build_image([Layer([directory("etc"), file("etc/x", b"1")]), Layer([whiteout("etc/x")]),
                                   Layer([file("etc/y", b"2")])]), "localhost/copy/img")
    plan = prepare_rootfs(st, image, tmp_path / "ctr", backend="copy")
    assert plan.type == "bind"
    assert sorted(os.listdir(Path(plan.target) / "etc")) == ["y"]
    assert not list(st.snapshots_dir.iterdir())


@needs_overlay
@pytest.mark.parametrize("second", ["dir-replaces-followed-link", "whiteout-of-followed-link"])
def test_entry_hiding_a_lower_symlink_already_followed(second, store_dir, tmp_path):
    """Layer 2 first writes a/x through layer 1's symlink a -> b, then replaces (or whites out) a:
    its later entries a/… land in the new a in the overlay rootfs too, as in the flattened one."""
    from store import Store

    from fixtures.corpus import tree_manifest
    from fixtures.tarbuild import symlink

    from imagetool.unpack.flatten import flatten_new
    from imagetool.unpack.rootfs import overlay_mount

    hide = [directory("a")] if second == "dir-replaces-followed-link" else [whiteout("a")]
    layers = [Layer([directory("b"), symlink("a", "b")]), Layer([file("a/x", b"x")] + hide + [file("a/y", b"y")])]
    st = Store.open(store_dir)
    image = _load(st, build_image(layers), f"localhost/shadow/{second}")
    flat = tree_manifest(flatten_new(st, image, tmp_path / "flat"))
    assert flat["a/y"][0] == "file" and "b/y" not in flat
    plan = overlay_mount(st, image, tmp_path / "ctr")
    _mount(plan)
    try:
        merged = tree_manifest(plan.target)
    finally:
        _umount(plan.target)
    assert {k: v[0] for k, v in merged.items()} == {k: v[0] for k, v in flat.items()}
