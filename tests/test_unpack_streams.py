"""LayerStream and TarReader below the applier: zstd frame following (truncation at every cut,
checked against the zstd CLI), bounded reads, the helper thread's lifetime and error order, and
tar header numbers in every padding style GNU tar, bsdtar and Python write (tarfile as the oracle)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import threading

import pytest

from imagetool.errors import DigestError, UnpackError
from imagetool.unpack.layers import CHUNK, LayerStream, Limits
from imagetool.unpack.tarstream import TarReader

ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR = "application/vnd.oci.image.layer.v1.tar"


def _zstd(data: bytes, **kw) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(**kw).compress(data)


def _skippable(payload: bytes) -> bytes:
    return (0x184D2A53).to_bytes(4, "little") + len(payload).to_bytes(4, "little") + payload


def _drain(blob: bytes, media_type: str, diff_id=None, n: int = CHUNK, limits=None) -> bytes:
    s = LayerStream(io.BytesIO(blob), media_type, diff_id, limits)
    try:
        out = []
        while True:
            b = s.read(n)
            if not b:
                break
            assert len(b) <= n
            out.append(b)
        s.finish()
        return b"".join(out)
    finally:
        s.close()


# several frames: with and without checksums, content sizes, a skippable frame, an RLE-friendly
# run, incompressible bytes (raw blocks) and an empty frame
PARTS = [(os.urandom(3000) + b"a" * 200_000, {"write_checksum": True}),
         (b"", {}),
         (b"hello " * 5000, {"write_content_size": False}),
         (os.urandom(140_000), {"write_checksum": True, "level": 1})]
CONTENT = b"".join(p for p, _ in PARTS)
BLOB = (_skippable(b"meta") + _zstd(PARTS[0][0], **PARTS[0][1]) + _zstd(PARTS[1][0], **PARTS[1][1])
        + _skippable(b"") + _zstd(PARTS[2][0], **PARTS[2][1]) + _zstd(PARTS[3][0], **PARTS[3][1]))
DIFF_ID = "sha256:" + hashlib.sha256(CONTENT).hexdigest()


def test_zstd_frames_decode_completely():
    assert _drain(BLOB, ZSTD, DIFF_ID) == CONTENT
    assert _drain(BLOB, ZSTD, DIFF_ID, n=777) == CONTENT      # short reads hand out the rest later


@pytest.mark.skipif(shutil.which("zstd") is None, reason="the zstd CLI (oracle) is not installed")
def test_zstd_every_cut_agrees_with_the_zstd_cli(tmp_path):
    """A prefix that zstd -t rejects (truncated) is an UnpackError; one it accepts (a cut between
    frames) decodes, and only the diff_id can tell it is short (DigestError)."""
    cuts = sorted({*range(0, 40), *range(0, len(BLOB), 997), *range(len(BLOB) - 40, len(BLOB))})
    seen = {"truncated": 0, "complete": 0}
    for cut in cuts:
        blob = BLOB[:cut]
        p = tmp_path / "b.zst"
        p.write_bytes(blob)
        ok = subprocess.run(["zstd", "-t", "-q", str(p)], capture_output=True).returncode == 0
        if cut == 0:
            ok = True    # zstd -t refuses empty input; for us it is an empty stream (no frames)
        if ok:
            seen["complete"] += 1
            with pytest.raises(DigestError):
                _drain(blob, ZSTD, DIFF_ID)
        else:
            seen["truncated"] += 1
            with pytest.raises(UnpackError, match="truncated|corrupt"):
                _drain(blob, ZSTD, DIFF_ID)
    assert seen["truncated"] > 50 and seen["complete"] >= 2


def test_zstd_trailing_bytes_are_corruption():
    for tail in (b"garbage!", b"\0\0\0\0", b"\x28\xb5"):
        with pytest.raises(UnpackError, match="corrupt|truncated"):
            _drain(BLOB + tail, ZSTD, DIFF_ID)


def test_zstd_bomb_stays_bounded():
    """200 MiB of zeros in a few KiB: every read is at most its n, and the limit stops it."""
    import zstandard

    blob = zstandard.ZstdCompressor(level=19).compress(b"\0" * (200 << 20))
    assert len(blob) < 64 << 10
    s = LayerStream(io.BytesIO(blob), ZSTD, None, Limits(max_bytes=8 << 20))
    try:
        with pytest.raises(UnpackError, match="expands past the limit"):
            while s.read(CHUNK):
                pass
    finally:
        s.close()


def test_errors_come_after_the_data_before_them():
    """A gzip member then garbage: every byte of the member is delivered, then the error."""
    import gzip

    good = os.urandom(3 * CHUNK + 123)
    s = LayerStream(io.BytesIO(gzip.compress(good) + b"XXXXjunk"), GZIP)
    got = []
    try:
        with pytest.raises(UnpackError, match="corrupt gzip"):
            while True:
                b = s.read(CHUNK)
                if not b:
                    break
                got.append(b)
        assert b"".join(got) == good
        with pytest.raises(UnpackError):      # and it stays failed
            s.read(CHUNK)
    finally:
        s.close()


def _helpers() -> list:
    return [t for t in threading.enumerate() if t.name == "imagetool-layer-read"]


def test_close_stops_the_helper_thread_mid_stream():
    before = len(_helpers())
    s = LayerStream(io.BytesIO(os.urandom(20 * CHUNK)), TAR)
    assert s.read(100)
    assert len(_helpers()) == before + 1       # it is blocked on the full queue by now
    s.close()
    assert len(_helpers()) == before


def test_finish_ends_the_helper_thread():
    before = len(_helpers())
    data = os.urandom(5 * CHUNK)
    s = LayerStream(io.BytesIO(data), TAR, "sha256:" + hashlib.sha256(data).hexdigest())
    s.read(10)
    s.finish()
    assert len(_helpers()) == before
    s.close()


# -- tar header numbers


def _header_variants() -> list[bytes]:
    """One ustar member, its numeric fields re-padded in the styles tar writers use."""
    ti = tarfile.TarInfo("d/f")
    ti.size, ti.mode, ti.uid, ti.gid, ti.mtime = 5, 0o4755, 1000, 100, 1_600_000_123
    base = bytearray(ti.tobuf(format=tarfile.USTAR_FORMAT))
    fields = {"mode": (100, 8, 0o4755), "uid": (108, 8, 1000), "gid": (116, 8, 100),
              "size": (124, 12, 5), "mtime": (136, 12, 1_600_000_123)}
    styles = [lambda v, w: b"%0*o\0" % (w - 1, v),           # POSIX: zero-padded, NUL
              lambda v, w: b"%0*o " % (w - 1, v),            # old GNU/V7: space-terminated
              lambda v, w: b"%*o\0" % (w - 1, v),            # space-padded on the left
              lambda v, w: (b"%o" % v).ljust(w, b"\0"),      # no padding, NULs after
              lambda v, w: b"%0*o" % (w, v),                 # every byte a digit, no terminator
              lambda v, w: b"\x80" + v.to_bytes(w - 1, "big")]   # GNU base-256
    out = []
    for style in styles:
        h = bytearray(base)
        for off, width, v in fields.values():
            f = style(v, width)
            assert len(f) == width
            h[off:off + width] = f
        h[148:156] = b" " * 8
        h[148:156] = b"%06o\0 " % sum(h[:512])
        out.append(bytes(h[:512]) + b"hello".ljust(512, b"\0") + b"\0" * 1024)
    h = bytearray(out[0])
    h[148:156] = b"%07o\0" % (sum(h[:148]) + sum(h[156:512]) + 256)   # checksum: 7 digits + NUL
    out.append(bytes(h))
    return out


@pytest.mark.parametrize("i", range(7))
def test_header_numbers_match_tarfile(i):
    blob = _header_variants()[i]
    ref = tarfile.open(fileobj=io.BytesIO(blob)).getmembers()[0]
    entries = list(TarReader(io.BytesIO(blob)))
    assert len(entries) == 1
    e = entries[0]
    assert (e.name, e.mode, e.uid, e.gid, e.size, e.mtime_ns) == \
        (ref.name, ref.mode, ref.uid, ref.gid, ref.size, ref.mtime * 1_000_000_000)


def test_bad_checksum_is_refused():
    h = bytearray(_header_variants()[0])
    h[0] ^= 1                                        # the name changes, the checksum does not
    with pytest.raises(UnpackError, match="bad header checksum"):
        list(TarReader(io.BytesIO(bytes(h))))
    h = bytearray(_header_variants()[0])
    h[148:156] = b"0x12\0   "                       # not octal: the field itself is reported
    with pytest.raises(UnpackError, match="bad checksum field"):
        list(TarReader(io.BytesIO(bytes(h))))


@pytest.mark.parametrize("name", ["plain/ascii-name", "d/é" * 30, "ü/" + "ÿ" * 45])
def test_header_checksum_with_and_without_high_bytes(name):
    """ASCII headers take the adler32 shortcut, others sum(): both must accept the real checksum
    and refuse a header changed by one byte."""
    ti = tarfile.TarInfo(name)
    ti.size = 3
    blob = ti.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8") + b"abc".ljust(512, b"\0") + b"\0" * 1024
    assert blob[:512].isascii() == name.isascii()
    (e,) = list(TarReader(io.BytesIO(blob)))
    assert e.name == name and e.size == 3
    bad = bytearray(blob)
    bad[5] = (bad[5] + 1) % 256
    with pytest.raises(UnpackError, match="bad header checksum"):
        list(TarReader(io.BytesIO(bytes(bad))))


@pytest.mark.parametrize("media_type", [TAR, GZIP, ZSTD])
def test_files_across_chunk_boundaries_keep_their_bytes(media_type, tmp_path):
    """Sizes around the 1 MiB read size and 512-byte padding: buffered and streamed files alike."""
    from fixtures.tarbuild import build_tar, compress, file

    from imagetool.unpack.apply import Applier

    rnd = os.urandom(3 * CHUNK)
    sizes = [0, 1, 511, 512, 513, CHUNK - 600, 1000, CHUNK, CHUNK + 1, 3, 2 * CHUNK + 511, 7, 100_000]
    entries, off = [], 0
    for i, n in enumerate(sizes):
        entries.append(file(f"f{i}", rnd[off % CHUNK:off % CHUNK + n]))
        off += 4097
    tar = build_tar(entries)
    kind = {TAR: None, GZIP: "gzip", ZSTD: "zstd"}[media_type]
    a = Applier(tmp_path, "plain")
    s = LayerStream(io.BytesIO(compress(tar, kind)), media_type, "sha256:" + hashlib.sha256(tar).hexdigest())
    try:
        a.apply(s)
        s.finish()
        a.finish()
    finally:
        s.close()
        a.close()
    for i, e in enumerate(entries):
        assert (tmp_path / f"f{i}").read_bytes() == e.data, (i, sizes[i])
