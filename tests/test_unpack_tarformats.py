"""Layers written by GNU tar in every format it has (gnu, oldgnu, ustar, posix/PAX): imagetool's
streaming reader gives the same tree as GNU tar's own extraction."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from fixtures.corpus import import_image, tree_manifest
from fixtures.images import Layer, build_image

pytestmark = pytest.mark.skipif(shutil.which("tar") is None or os.geteuid() != 0,
                                reason="needs GNU tar and root (owners, devices)")


def _tree(src, long_names: bool) -> None:
    deep = src / ("a" * 90) / ("b" * 90) / "c"
    deep.mkdir(parents=True)
    (deep / "file").write_bytes(b"deep\n" * 1000)
    if long_names:
        (deep / ("n" * 200)).write_bytes(b"long name")
        os.symlink("x" * 150 + "/target", src / "longlink")
        os.link(deep / ("n" * 200), src / "hl-to-long")
    (src / "exec").write_bytes(os.urandom(70000))
    os.chmod(src / "exec", 0o4755)
    os.chown(src / "exec", 1234, 5678)
    os.link(src / "exec", src / "exec-link")
    os.symlink("exec", src / "rel-link")
    os.symlink("/etc/passwd", src / "abs-link")
    os.mkfifo(src / "fifo", 0o600)
    (src / "sticky").mkdir(mode=0o1777)
    os.chmod(src / "sticky", 0o1777)
    os.setxattr(src / "exec-link", "user.note", b"\x00binary\xff")
    (src / "empty").write_bytes(b"")
    for p in [src / "exec", src / "empty", src / "fifo", deep / "file"]:
        os.utime(p, ns=(1_500_000_000_123_456_789, 1_500_000_000_123_456_789))
    os.utime(src / "abs-link", ns=(1_400_000_000_000_000_000,) * 2, follow_symlinks=False)


@pytest.mark.parametrize("fmt", ["gnu", "oldgnu", "ustar", "posix"])
def test_gnu_tar_formats(fmt, tmp_path, store_dir):
    from store import Store

    from imagetool import image as images
    from imagetool.unpack.flatten import flatten_new

    src = tmp_path / "src"
    src.mkdir()
    _tree(src, long_names=fmt != "ustar")
    tar = tmp_path / "layer.tar"
    subprocess.run(["tar", f"--format={fmt}", "--xattrs", "--numeric-owner", "-C", str(src), "-cf", str(tar), "."],
                   check=True, capture_output=True)
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    subprocess.run(["tar", "--xattrs", "--xattrs-include=user.*", "--same-owner", "--numeric-owner", "-xpf", str(tar),
                    "-C", str(ref_dir)], check=True, capture_output=True)
    st = Store.open(store_dir)
    image = images.load(st, import_image(st, build_image([Layer(tar.read_bytes(), "gzip")]), f"localhost/fmt/{fmt}"))
    out = flatten_new(st, image, tmp_path / "out")
    want = tree_manifest(ref_dir)
    got = tree_manifest(out)
    if fmt != "posix":   # only PAX keeps sub-second mtimes and xattrs
        want = {k: v[:6] + v[7:] for k, v in want.items()}
        got = {k: v[:6] + v[7:] for k, v in got.items()}
    assert got == want
    assert len(got) >= 10
