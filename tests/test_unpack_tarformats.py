"""Layers written by GNU tar in every format it has (gnu, oldgnu, ustar, posix/PAX; sparse files in
each of GNU's sparse formats) and by Python's tarfile (ustar, GNU, PAX; every entry kind it
writes): imagetool's streaming reader gives the same tree as GNU tar's own extraction of the same
archive (content compared byte for byte; holes of sparse files stay holes in both).
Go's archive/tar is not covered here: no Go toolchain is installed on the machines these run on.
Refused with a one-line error: what cannot be extracted from one layer (multi-volume parts, old
GNU long-name entries) and corrupt sparse maps."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from fixtures.corpus import import_image, tree_manifest
from fixtures.images import Layer, build_image

from imagetool.errors import UnpackError

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


# ---------------------------------------------------------------- helpers


def _unpack(tmp_path, store_dir, tar: bytes, name: str, compression: str = "zstd"):
    """imagetool's flattened tree of a one-layer image made of `tar` (through the store and the
    layer stream, as `imagetool unpack` does)."""
    from store import Store

    from imagetool import image as images
    from imagetool.unpack.flatten import flatten_new

    st = Store.open(store_dir)
    image = images.load(st, import_image(st, build_image([Layer(tar, compression)]), f"localhost/fmt/{name}"))
    return flatten_new(st, image, tmp_path / f"out-{name}")


def _gnu_extract(tmp_path, tar: bytes, name: str, *flags: str):
    src = tmp_path / f"{name}.tar"
    src.write_bytes(tar)
    dest = tmp_path / f"ref-{name}"
    dest.mkdir()
    subprocess.run(["tar", *flags, "--same-owner", "--numeric-owner", "-xpf", str(src), "-C", str(dest)],
                   check=True, capture_output=True)
    return dest


def _gnu_create(tmp_path, src, name: str, *flags: str) -> bytes:
    out = tmp_path / f"{name}.tar"
    subprocess.run(["tar", *flags, "--numeric-owner", "-C", str(src), "-cf", str(out), "."],
                   check=True, capture_output=True)
    return out.read_bytes()


# ---------------------------------------------------------------- GNU sparse files

MB = 1 << 20


def _sparse_tree(src) -> dict:
    """Sparse files of every shape: a few segments, many (past old GNU's 4 in the header and
    21 per extension block), only a hole, data at the very end, and a plain file after them
    (the stream must stay aligned). Returns path -> data bytes the file holds."""
    src.mkdir()
    shapes = {
        "few": [(0, b"A" * 5000), (MB, b"B" * 100), (3 * MB, b"C" * 10)],
        "many": [(i * 64 * 1024, bytes([65 + i % 26]) * (1 + i * 37)) for i in range(60)],
        "hole-only": [],
        "tail": [(7 * MB - 3, b"end")],
        "lead": [(0, os.urandom(9000))],
    }
    sizes = {"few": 5 * MB, "many": 4 * MB, "hole-only": 10 * MB, "tail": 7 * MB, "lead": 2 * MB}
    for name, segments in shapes.items():
        fd = os.open(src / name, os.O_WRONLY | os.O_CREAT, 0o640)
        for off, data in segments:
            os.pwrite(fd, data, off)
        os.ftruncate(fd, sizes[name])
        os.close(fd)
        os.chown(src / name, 1000, 2000)
    (src / "zz-after").write_bytes(os.urandom(3000))
    return sizes


SPARSE_FORMATS = {
    "gnu": ["--format=gnu"],
    "oldgnu": ["--format=oldgnu"],
    "pax-0.0": ["--format=posix", "--sparse-version=0.0"],
    "pax-0.1": ["--format=posix", "--sparse-version=0.1"],
    "pax-1.0": ["--format=posix", "--sparse-version=1.0"],
}


def _allocated(p) -> int:
    return os.stat(p).st_blocks * 512


@pytest.mark.parametrize("fmt", sorted(SPARSE_FORMATS))
def test_gnu_sparse_files(fmt, tmp_path, store_dir):
    from imagetool.unpack.tarstream import TarReader

    sizes = _sparse_tree(tmp_path / "src")
    tar = _gnu_create(tmp_path, tmp_path / "src", fmt, "--sparse", *SPARSE_FORMATS[fmt])
    import io

    kinds = {e.name.lstrip("./"): e.sparse for e in TarReader(io.BytesIO(tar)) if e.isreg()}
    assert all(kinds[n] is not None for n in sizes), kinds          # GNU tar did write them sparse
    if fmt in ("gnu", "oldgnu"):
        assert len(kinds["many"]) > 4 + 21                           # extension blocks were needed
    ref = _gnu_extract(tmp_path, tar, fmt)
    out = _unpack(tmp_path, store_dir, tar, fmt)
    assert tree_manifest(out) == tree_manifest(ref)
    assert sorted(os.listdir(out)) == sorted([*sizes, "zz-after"])
    for name, size in sizes.items():
        assert os.path.getsize(out / name) == size
        assert (out / name).read_bytes() == (tmp_path / "src" / name).read_bytes()
        # the holes are kept: no more is allocated than GNU tar's own extraction takes (+ a block)
        assert _allocated(out / name) <= _allocated(ref / name) + 4096, name
    assert _allocated(out / "hole-only") <= 4096


def _sparse_pax(records: list[tuple[str, str]], data: bytes, name: str = "f") -> bytes:
    """A hand-made PAX sparse member (for corrupt maps GNU tar would not write)."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo(name)
        ti.size = len(data)
        ti.pax_headers = dict(records)
        tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("records,data,match", [
    ([("GNU.sparse.map", "0,10,5,10"), ("GNU.sparse.size", "100")], b"x" * 20, "overlap"),
    ([("GNU.sparse.map", "0,10,95,10"), ("GNU.sparse.size", "100")], b"x" * 20, "pass the file's size"),
    ([("GNU.sparse.map", "0,10"), ("GNU.sparse.size", "100")], b"x" * 20, "hold 10 bytes, the archive 20"),
    ([("GNU.sparse.map", "0,10,20"), ("GNU.sparse.size", "100")], b"x" * 20, "without its length"),
    ([("GNU.sparse.map", "0,-1"), ("GNU.sparse.size", "100")], b"", "bad length"),
    ([("GNU.sparse.map", "0,1"), ("GNU.sparse.size", "x")], b"x", "bad real size"),
    ([("GNU.sparse.major", "2"), ("GNU.sparse.minor", "0")], b"", "unsupported GNU sparse format 2.0"),
    ([("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"), ("GNU.sparse.realsize", "10")],
     b"9\n".ljust(512, b"\0"), "runs past|too many"),
])
def test_corrupt_sparse_maps_are_refused(records, data, match):
    import io

    from imagetool.unpack.tarstream import TarReader

    with pytest.raises(UnpackError, match=match):
        list(TarReader(io.BytesIO(_sparse_pax(records, data))))


def test_sparse_map_applies_to_its_data(tmp_path):
    """A hand-made 0.1 member: segments land at their offsets, the rest reads as zeros."""
    import io

    from imagetool.unpack.apply import Applier

    tar = _sparse_pax([("GNU.sparse.map", "3,2,10,3,20,0"), ("GNU.sparse.size", "20"),
                       ("GNU.sparse.name", "real-name")], b"abXYZ", name="GNUSparseFile.1/real-name")
    a = Applier(tmp_path, "plain")
    try:
        a.apply(io.BytesIO(tar))
        a.finish()
    finally:
        a.close()
    assert os.listdir(tmp_path) == ["real-name"]
    assert (tmp_path / "real-name").read_bytes() == b"\0\0\0ab\0\0\0\0\0XYZ" + b"\0" * 7


# ---------------------------------------------------------------- Python's tarfile, every kind


def _python_tar(fmt: int) -> bytes:
    """Every entry kind tarfile writes, with long names/links and numbers too big for octal."""
    import io
    import tarfile

    buf = io.BytesIO()
    big_mtime = 8 ** 11 + 12345          # past 11 octal digits: base-256 (GNU) or a PAX record
    big_id = 8 ** 7 + 7                  # past 7 octal digits
    long = fmt != tarfile.USTAR_FORMAT

    def add(name, type_=tarfile.REGTYPE, data=b"", **kw):
        ti = tarfile.TarInfo(name)
        ti.type = type_
        ti.size = len(data)
        ti.mtime = kw.pop("mtime", 1_600_000_000)
        ti.mode = kw.pop("mode", 0o644)
        for k, v in kw.items():
            setattr(ti, k, v)
        tf.addfile(ti, io.BytesIO(data) if data else None)

    with tarfile.open(fileobj=buf, mode="w", format=fmt,
                      pax_headers={"comment": "a global header"} if fmt == tarfile.PAX_FORMAT else None) as tf:
        add("dir/", tarfile.DIRTYPE, mode=0o750)
        add("dir/plain", data=b"plain\n")
        add("dir/contiguous", tarfile.CONTTYPE, data=b"a contiguous file\n")
        add("dir/aregtype-dir/", tarfile.AREGTYPE, mode=0o755)
        add("dir/aregtype-file", tarfile.AREGTYPE, data=b"old style\n")
        add("hardlink", tarfile.LNKTYPE, linkname="dir/plain")
        add("symlink", tarfile.SYMTYPE, linkname="dir/plain", mode=0o777)
        add("fifo", tarfile.FIFOTYPE, mode=0o600)
        add("chardev", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
        add("blockdev", tarfile.BLKTYPE, devmajor=7, devminor=0, mode=0o660)
        add("setuid", data=b"s", mode=0o4755, uid=1234, gid=4321)
        add("prefix-" + "p" * 90 + "/" + "q" * 90, data=b"needs the ustar prefix\n")
        if long:
            add("n" * 150 + "/" + "m" * 150, data=b"a long name\n")
            add("longlink", tarfile.SYMTYPE, linkname="t" * 200, mode=0o777)
            add("big-owner", data=b"b", uid=big_id, gid=big_id + 1)
            add("big-mtime", data=b"m", mtime=big_mtime)
            add("hardlink-to-long", tarfile.LNKTYPE, linkname="n" * 150 + "/" + "m" * 150)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["ustar", "gnu", "pax"])
def test_python_tarfile_formats(fmt, tmp_path, store_dir):
    import tarfile

    tar = _python_tar({"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}[fmt])
    if fmt == "gnu":
        assert b"././@LongLink" in tar
    ref = _gnu_extract(tmp_path, tar, f"py-{fmt}")
    out = _unpack(tmp_path, store_dir, tar, f"py-{fmt}", "gzip")
    got, want = tree_manifest(out), tree_manifest(ref)
    assert got == want
    assert got["dir/contiguous"][0] == "file" and got["dir/aregtype-dir"][0] == "dir"
    assert got["chardev"][5] == "1:3" and got["blockdev"][5] == "7:0"
    if fmt != "ustar":
        assert got["big-owner"][2:4] == (8 ** 7 + 7, 8 ** 7 + 8)
        assert got["big-mtime"][7] == (8 ** 11 + 12345) * 1_000_000_000


# ---------------------------------------------------------------- GNU tar's other entry kinds


def test_gnu_volume_label_dump_dirs_and_base256(tmp_path, store_dir):
    """A volume label ('V', skipped), GNU incremental dump directories ('D', directories, as
    GNU tar extracts them without --incremental) and base-256 numbers written by GNU tar."""
    src = tmp_path / "src"
    (src / "d" / "sub").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"in a dump dir\n")
    (src / "future").write_bytes(b"far future\n")
    os.utime(src / "future", (8 ** 11 + 99, 8 ** 11 + 99))      # GNU tar writes it in base-256
    os.chown(src / "future", 8 ** 7 + 3, 8 ** 7 + 4)
    tar = _gnu_create(tmp_path, src, "inc", "--format=gnu", "-V", "a label",
                      f"--listed-incremental={tmp_path / 'snar'}")
    assert b"a label" in tar[:512]
    from imagetool.unpack.tarstream import TarReader
    import io

    types = {tar[i + 156:i + 157] for i in range(0, len(tar), 512)}
    assert {b"V", b"D"} <= types
    assert any(e.name.rstrip("/") in ("./d", "d") and e.isdir() for e in TarReader(io.BytesIO(tar)))
    ref = _gnu_extract(tmp_path, tar, "inc")
    out = _unpack(tmp_path, store_dir, tar, "inc")
    got, want = tree_manifest(out), tree_manifest(ref)
    assert got == want
    assert got["future"][2:4] == (8 ** 7 + 3, 8 ** 7 + 4)
    assert got["future"][7] == (8 ** 11 + 99) * 1_000_000_000


def _header(name: bytes, typeflag: bytes, size: int = 0) -> bytes:
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = b"0000644\0"
    h[108:116] = h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"00000000000\0"
    h[156:157] = typeflag
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"        "
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


@pytest.mark.parametrize("typeflag,what", [(b"M", "multi-volume continuation"), (b"N", "old GNU long-names")])
def test_entries_one_layer_cannot_hold_are_refused(typeflag, what):
    import io

    from imagetool.unpack.tarstream import TarReader

    tar = _header(b"x", typeflag, 3) + b"abc".ljust(512, b"\0") + b"\0" * 1024
    with pytest.raises(UnpackError, match=f"unsupported tar entry \\({what}"):
        list(TarReader(io.BytesIO(tar)))


def test_vendor_typeflags_are_regular_files():
    """POSIX: unknown typeflags are read as regular files (GNU tar and tarfile do the same)."""
    import io

    from imagetool.unpack.tarstream import TarReader

    tar = _header(b"vendor", b"Z", 3) + b"abc".ljust(512, b"\0") + _header(b"next", b"0") + b"\0" * 1024
    r = TarReader(io.BytesIO(tar))
    e = next(r)
    assert (e.name, e.type, e.size) == ("vendor", "file", 3)
    assert b"".join(bytes(v) for v in r.read_data(e)) == b"abc"
    assert next(r).name == "next"


def test_negative_base256_owner_is_refused():
    import io

    from imagetool.unpack.tarstream import TarReader

    h = bytearray(_header(b"neg", b"0"))
    h[108:116] = b"\xff" * 8                       # base-256 -1: "leave the owner as it is" to chown
    h[148:156] = b"        "
    h[148:156] = b"%06o\0 " % sum(h)
    with pytest.raises(UnpackError, match="negative owner"):
        list(TarReader(io.BytesIO(bytes(h) + b"\0" * 1024)))
