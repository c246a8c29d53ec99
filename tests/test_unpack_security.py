"""Hostile layers: nothing outside the target is ever created or changed, and each class of attack
gets the outcome documented in fixtures/corpus.py (refuse = exit 1 UnsafeLayer, error = exit 1,
ok = applied with the escape clamped inside the root, like a chroot would)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fixtures.corpus import hostile_corpus, import_image, tree_digest
from fixtures.images import Layer, build_image

CASES = {h.name: h for h in hostile_corpus("/placeholder")}
HOST_PWNED = Path("/etc/imagetool-pwned")
AIMED_AT_HOST = {"symlink-to-etc-then-write"}     # every other case aims at the test's canary dir


def _canary(tmp_path: Path) -> Path:
    c = tmp_path / "canary"
    (c / "sub").mkdir(parents=True)
    (c / "victim").write_bytes(b"original victim\n")
    (c / "sub" / "inner").write_bytes(b"inner\n")
    os.symlink("victim", c / "link")
    os.chmod(c / "victim", 0o640)
    return c


def _case(name: str, canary: Path):
    (h,) = [h for h in hostile_corpus(str(canary)) if h.name == name]
    return h, build_image([Layer(list(la), "gzip") for la in h.layers])


def test_corpus_is_big_enough():
    assert len(CASES) >= 15
    assert {h.outcome for h in CASES.values()} == {"ok", "refuse", "error"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_layer_flatten_cli(name, tmp_path, store_dir, cli):
    canary = _canary(tmp_path)
    before = tree_digest(canary)
    h, img = _case(name, canary)
    from store import Store

    ref = import_image(Store.open(store_dir), img, f"localhost/hostile/{name}")
    out = tmp_path / "out"
    r = cli("unpack", ref, out)
    assert tree_digest(canary) == before, "the canary outside the target changed"
    assert not HOST_PWNED.exists()
    if h.outcome == "ok":
        assert r.returncode == 0, r.stderr
        for p in h.inside:
            assert os.path.lexists(out / p), f"{p} should have landed inside the root"
    else:
        assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert lines[0].startswith("imagetool: error: "), r.stderr
        assert "Traceback" not in r.stderr
        if h.message:
            assert h.message in r.stderr
        assert not out.exists(), "a failed unpack left a partial tree"
        assert not [p for p in tmp_path.iterdir() if p.name.startswith("imagetool-tmp-")]


@pytest.mark.skipif(os.geteuid() != 0, reason="overlay snapshots need root (whiteout device nodes)")
@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_layer_snapshots(name, tmp_path, store_dir):
    from store import Store

    from imagetool import image as images
    from imagetool.errors import UnpackError, UnsafeLayer
    from imagetool.unpack.snapshots import ensure_snapshots

    canary = _canary(tmp_path)
    before = tree_digest(canary)
    h, img = _case(name, canary)
    st = Store.open(store_dir)
    image = images.load(st, import_image(st, img, f"localhost/hostile/{name}"))
    if h.outcome == "ok":
        snaps = ensure_snapshots(st, image)
        assert len(snaps) == len(h.layers)
    else:
        expected = UnsafeLayer if h.outcome == "refuse" else UnpackError
        with pytest.raises(expected) as ei:
            ensure_snapshots(st, image)
        if h.message:
            assert h.message in str(ei.value)
        made = {p.name for p in st.snapshots_dir.iterdir()}
        assert not [n for n in made if n.startswith("imagetool-")], "temp snapshot left behind"
        # only the layers before the failing one may exist
        assert len(made) < len(h.layers)
    assert tree_digest(canary) == before, "the canary outside the target changed"
    assert not HOST_PWNED.exists()


def test_corpus_has_teeth(tmp_path):
    """Most hostile layers really escape a naive extractor (tarfile.extractall, no filter):
    the canary checks above would catch an unsafe imagetool."""
    import io
    import shutil
    import tarfile

    from fixtures.tarbuild import build_tar

    escaped = []
    for h in hostile_corpus(str(tmp_path / "canary")):
        if h.name in AIMED_AT_HOST:
            continue   # a naive extractor would really write into the host's /etc
        shutil.rmtree(tmp_path / "canary", ignore_errors=True)
        canary = _canary(tmp_path)
        before = tree_digest(canary)
        root = tmp_path / "naive"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        try:
            for la in h.layers:
                with tarfile.open(fileobj=io.BytesIO(build_tar(list(la)))) as tf:
                    tf.extractall(root, filter="fully_trusted")
        except (OSError, tarfile.TarError):
            pass
        if tree_digest(canary) != before:
            escaped.append(h.name)
    assert len(escaped) >= 12, escaped
