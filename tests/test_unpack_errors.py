"""Bad layers: a clear one-line error, exit 1, and nothing left behind (no partial tree, no snapshot)."""

from __future__ import annotations

import io
import os

import pytest

from fixtures.corpus import import_image
from fixtures.images import Layer, build_image
from fixtures.tarbuild import build_tar, compress, directory, file

ENTRIES = [directory("etc"), file("etc/a", b"a" * 5000), file("etc/b", os.urandom(20000)), file("etc/c", b"c")]
TAR = build_tar(ENTRIES)


def _layer(kind: str) -> Layer:
    if kind == "diffid-mismatch":
        return Layer(TAR, "gzip", blob=compress(build_tar(ENTRIES[:-1]), "gzip"))
    if kind == "truncated-gzip":
        blob = compress(TAR, "gzip")
        return Layer(TAR, "gzip", blob=blob[: len(blob) // 2])
    if kind == "gzip-garbage":
        return Layer(TAR, "gzip", blob=b"\x1f\x8b\x08\x00" + os.urandom(3000))
    if kind == "zstd-garbage":
        return Layer(TAR, "zstd", blob=b"\x28\xb5\x2f\xfd" + os.urandom(3000))
    if kind == "truncated-zstd":
        blob = compress(TAR, "zstd")
        return Layer(TAR, "zstd", blob=blob[: len(blob) // 2])
    if kind == "not-a-tar":
        return Layer(TAR, None, blob=os.urandom(4096))
    if kind == "unknown-media-type":
        la = Layer(TAR, "gzip")
        la.media_type = "application/vnd.example.layer.v1.tar+lz4"
        return la
    if kind in ("expansion-limit", "entry-limit"):
        return Layer(TAR, "gzip")
    if kind in BAD_HEADERS:
        return Layer(_bad_header_tar(kind), "gzip")
    raise AssertionError(kind)


# hostile numeric fields in tar headers: each must be a clear UnpackError, never an internal error,
# and a negative size must not move the reader backwards (that looped until the entry limit)
BAD_HEADERS = {
    "pax-negative-size-loop": ({"size": "-1536"}, None),
    "pax-bad-uid": ({"uid": "abc"}, None),
    "pax-nan-mtime": ({"mtime": "NaN"}, None),
    "pax-uid-out-of-range": ({"uid": str(1 << 40)}, None),
    "base256-negative-size": ({}, b"\xff" * 12),
    "pax-nul-in-linkpath": ({"linkpath": "x\x00y"}, None),
    "pax-nul-in-xattr-name": ({"SCHILY.xattr.user.a\x00b": "v"}, None),
}


def _bad_header_tar(kind: str) -> bytes:
    import io
    import tarfile

    pax, size_field = BAD_HEADERS[kind]
    ti = tarfile.TarInfo("d")
    ti.type, ti.mtime, ti.pax_headers = tarfile.SYMTYPE if "linkpath" in pax else tarfile.DIRTYPE, 0, dict(pax)
    member = bytearray(ti.tobuf(format=tarfile.PAX_FORMAT if pax else tarfile.USTAR_FORMAT))
    if size_field is not None:          # patch the last header's size field and fix its checksum
        hdr = len(member) - 512
        member[hdr + 124:hdr + 136] = size_field
        member[hdr + 148:hdr + 156] = b" " * 8
        member[hdr + 148:hdr + 156] = b"%06o\0 " % sum(member[hdr:hdr + 512])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(tarfile.TarInfo("before"))
    return buf.getvalue()[:512] + bytes(member) + b"\0" * 1024


# kind -> (words expected in the error line, environment)
CASES = {
    "diffid-mismatch": ("the image config says", {}),
    "truncated-gzip": ("truncated", {}),
    "gzip-garbage": ("corrupt", {}),
    "zstd-garbage": ("corrupt zstd", {}),
    "truncated-zstd": ("", {}),
    "not-a-tar": ("", {}),
    "unknown-media-type": ("unsupported layer media type", {}),
    "expansion-limit": ("expands past the limit", {"IMAGETOOL_MAX_LAYER_BYTES": "15000"}),
    "entry-limit": ("more than 2 entries", {"IMAGETOOL_MAX_LAYER_ENTRIES": "2"}),
    "pax-negative-size-loop": ("corrupt PAX header: bad size", {"IMAGETOOL_MAX_LAYER_ENTRIES": "50"}),
    "pax-bad-uid": ("corrupt PAX header: bad uid", {}),
    "pax-nan-mtime": ("corrupt PAX mtime", {}),
    "base256-negative-size": ("negative size", {}),
    "pax-nul-in-linkpath": ("NUL byte in the link target", {}),
    "pax-nul-in-xattr-name": ("NUL byte in an xattr name", {}),
}
if os.geteuid() == 0:   # chown is only attempted as root
    CASES["pax-uid-out-of-range"] = ("cannot apply 'd/'", {})


def _image(kind):
    good = Layer([directory("base"), file("base/ok", b"ok")], "gzip")
    return build_image([good, _layer(kind)])


@pytest.mark.parametrize("kind", sorted(CASES))
def test_bad_layer_unpack_cli(kind, tmp_path, store_dir, cli):
    from store import Store

    words, env = CASES[kind]
    ref = import_image(Store.open(store_dir), _image(kind), f"localhost/bad/{kind}")
    out = tmp_path / "out"
    r = cli("unpack", ref, out, env=env)
    assert r.returncode == 1, (r.stdout, r.stderr)
    first = r.stderr.strip().splitlines()[0]
    assert first.startswith("imagetool: error: ") and words in first, r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("imagetool-")]


@pytest.mark.skipif(os.geteuid() != 0, reason="overlay snapshots need root")
@pytest.mark.parametrize("kind", sorted(CASES))
def test_bad_layer_leaves_no_snapshot(kind, store_dir, monkeypatch):
    from store import Store

    from imagetool import image as images
    from imagetool.errors import ImagetoolError
    from imagetool.unpack.snapshots import ensure_snapshots

    words, env = CASES[kind]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    st = Store.open(store_dir)
    built = _image(kind)
    image = images.load(st, import_image(st, built, f"localhost/bad/{kind}"))
    with pytest.raises(ImagetoolError) as ei:
        ensure_snapshots(st, image)
    assert words in str(ei.value)
    left = sorted(p.name for p in st.snapshots_dir.iterdir())
    # the good base layer is complete and kept; the bad one left nothing, not even a temp dir
    assert left == [built.layers[0].diff_id.split(":")[1]]


@pytest.mark.parametrize("mode", ["plain", "overlay"])
def test_same_path_twice_in_one_layer_replaces(mode, tmp_path):
    """Duplicate paths in one layer (the spec says they should not occur): the last one wins,
    also below a parent directory whose cached fd the replacement retires."""

    from imagetool.unpack.apply import Applier

    if mode == "overlay" and os.geteuid() != 0:
        pytest.skip("overlay mode needs root")
    tar = build_tar([file("x", b"first"), file("x", b"second"), directory("d"), file("d", b"now a file"),
                     directory("p"), directory("p/q"), directory("p/q/r"), file("p/q/r/f", b"f"),
                     file("p/q", b"q is a file now"), file("p/s", b"s"),
                     directory("p/l"), file("p/l/x"), file("p/l", b"was a dir")])
    a = Applier(tmp_path, mode)
    _apply_plain_tar(a, tar)
    assert (tmp_path / "x").read_bytes() == b"second"
    assert (tmp_path / "d").read_bytes() == b"now a file"
    assert (tmp_path / "p" / "q").read_bytes() == b"q is a file now"
    assert (tmp_path / "p" / "s").read_bytes() == b"s"
    assert (tmp_path / "p" / "l").read_bytes() == b"was a dir"


def test_thousands_of_directories(tmp_path):
    """More directories than the fd cache holds (the cache is retired and refilled safely)."""
    import io

    from imagetool.unpack.apply import Applier
    from imagetool.unpack.layers import LayerStream

    entries = []
    for i in range(40):
        entries.append(directory(f"top{i}", mode=0o750))
        for j in range(40):
            entries += [directory(f"top{i}/d{j}", mode=0o711), file(f"top{i}/d{j}/f", b"x")]
    a = Applier(tmp_path, "plain")
    try:
        s = LayerStream(io.BytesIO(build_tar(entries)), "application/vnd.oci.image.layer.v1.tar")
        a.apply(s)
        s.finish()
        a.finish()
    finally:
        a.close()
    assert oct((tmp_path / "top39" / "d39").stat().st_mode & 0o777) == "0o711"
    assert oct((tmp_path / "top0").stat().st_mode & 0o777) == "0o750"
    assert len(os.listdir(f"/proc/{os.getpid()}/fd")) < 100


def test_unprivileged_apply_skips_devices_with_a_warning(tmp_path):

    from fixtures.tarbuild import device, fifo

    from imagetool.unpack.apply import Applier

    warnings = []
    tar = build_tar([directory("dev"), device("dev/null", "char", 1, 3), device("dev/sda", "block", 8, 0),
                     fifo("dev/fifo"), file("suid", b"x", mode=0o4755, uid=1000, gid=1000)])
    a = Applier(tmp_path, "plain", privileged=False, warn=warnings.append)
    _apply_plain_tar(a, tar)
    assert sorted(os.listdir(tmp_path / "dev")) == ["fifo"]
    assert len(warnings) == 2 and all("needs root" in w for w in warnings)
    assert a.stats.skipped == ["dev/null", "dev/sda"]
    assert oct((tmp_path / "suid").stat().st_mode & 0o7777) == "0o4755"


def test_removed_directory_does_not_pass_its_mode_to_a_successor(tmp_path):
    """Layer 1 makes x 0700 (mode deferred); layer 2 whites it out and creates x/y implicitly:
    the new x is 0755, not the old x's deferred 0700."""
    import io

    from fixtures.tarbuild import whiteout

    from imagetool.unpack.apply import Applier
    from imagetool.unpack.layers import LayerStream

    a = Applier(tmp_path, "plain")
    try:
        for entries in ([directory("x", mode=0o700), file("x/old", b"o")], [whiteout("x"), file("x/y", b"y")]):
            s = LayerStream(io.BytesIO(build_tar(entries)), "application/vnd.oci.image.layer.v1.tar")
            a.apply(s)
            s.finish()
        a.finish()
    finally:
        a.close()
    assert os.listdir(tmp_path / "x") == ["y"]
    assert oct((tmp_path / "x").stat().st_mode & 0o777) == "0o755"


def _apply_plain_tar(applier, tar: bytes) -> None:
    """Apply one uncompressed layer with `applier`, then close it whatever happens."""
    from imagetool.unpack.layers import LayerStream

    try:
        s = LayerStream(io.BytesIO(tar), "application/vnd.oci.image.layer.v1.tar")
        applier.apply(s)
        s.finish()
        applier.finish()
    finally:
        applier.close()
