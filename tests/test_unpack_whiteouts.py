"""unpack.whiteouts, the one definition of a whiteout: OCI names and overlay nodes (the appliers'
and the exporter's behaviour with them is tested end to end in test_unpack_* and test_archive)."""

from __future__ import annotations

import os

import pytest

from imagetool.unpack import whiteouts as W


@pytest.mark.parametrize("base,expected", [
    ("file", (W.ENTRY, None)),
    (".whatever", (W.ENTRY, None)),
    (".wh.file", (W.WHITEOUT, "file")),
    (".wh..hidden", (W.WHITEOUT, ".hidden")),
    (".wh..wh..opq", (W.OPAQUE_MARKER, None)),
    (".wh..wh.plnk", (W.META, None)),
    (".wh..wh..opqx", (W.META, None)),
    (".wh.", (W.INVALID, None)),
    (".wh..", (W.INVALID, None)),
    (".wh...", (W.INVALID, None)),
])
def test_classify_reads_oci_names_as_the_image_spec_and_docker_do(base, expected):
    assert W.classify(base) == expected


@pytest.mark.parametrize("name", ["file", ".hidden", "a b"])
def test_oci_name_is_what_classify_reads_back(name):
    assert W.classify(W.oci_name(name)) == (W.WHITEOUT, name)


@pytest.mark.skipif(os.geteuid() != 0, reason="whiteout device nodes and trusted.* xattrs need root")
def test_overlay_form_round_trips_on_disk(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        W.make_overlay_whiteout("gone", fd)
    finally:
        os.close(fd)
    (tmp_path / "plain").write_text("")
    os.mknod(tmp_path / "null", 0o600 | 0o020000, os.makedev(1, 3))
    assert W.is_overlay_whiteout(os.lstat(tmp_path / "gone"))
    assert not W.is_overlay_whiteout(os.lstat(tmp_path / "plain"))
    assert not W.is_overlay_whiteout(os.lstat(tmp_path / "null"))
    (tmp_path / "d").mkdir()
    assert not W.is_opaque(str(tmp_path / "d"))
    try:
        W.set_opaque(str(tmp_path / "d"))
    except OSError as e:
        pytest.skip(f"this filesystem refuses trusted.* xattrs ({e.strerror})")
    dfd = os.open(tmp_path / "d", os.O_PATH)
    try:
        assert W.is_opaque(f"/proc/self/fd/{dfd}")
    finally:
        os.close(dfd)
