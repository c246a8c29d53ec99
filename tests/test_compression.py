"""imagetool.compression, the one gzip/zstd module: what it detects, reads and writes, and how it
fails (layers and archives rely on the same rules; their own tests cover them end to end)."""

from __future__ import annotations

import gzip
import io
import lzma
import bz2
import os

import pytest

from imagetool import compression as C

DATA = os.urandom(3000) * 700 + b"tail"          # ~2 MiB, compressible, more than one CHUNK


def _compress(kind: str, data: bytes = DATA, level: int | None = None) -> bytes:
    c = C.compressor(kind, level)
    return c.compress(data) + c.flush()


def _read_all(blob: bytes, kind: str, n: int = C.CHUNK) -> bytes:
    r = C.decompressing(io.BytesIO(blob), kind, "blob")
    out = []
    while True:
        piece = r.read(n)
        assert len(piece) <= n
        if not piece:
            return b"".join(out)
        out.append(piece)


@pytest.mark.parametrize("head,kind,other", [
    (gzip.compress(b"x"), "gzip", None),
    (_compress("zstd", b"x"), "zstd", None),
    (lzma.compress(b"x"), None, "xz"),
    (bz2.compress(b"x"), None, "bzip2"),
    (b"ustar\0", None, None),
    (b"", None, None),
])
def test_sniff_names_what_it_reads_and_what_it_refuses(head, kind, other):
    assert C.sniff(head[:C.MAGIC_LEN]) == kind
    assert C.unsupported(head[:C.MAGIC_LEN]) == other


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
@pytest.mark.parametrize("n", [C.CHUNK, 777])
def test_what_compressor_writes_decompressing_reads_back_in_bounded_pieces(kind, n):
    assert _read_all(_compress(kind), kind, n) == DATA


def test_gzip_members_and_zero_padding_are_read_through():
    blob = gzip.compress(b"one ") + gzip.compress(b"two") + b"\0" * 700
    assert _read_all(blob, "gzip") == b"one two"


def test_zstd_frames_are_read_through():
    assert _read_all(_compress("zstd", b"one ") + _compress("zstd", b"two"), "zstd") == b"one two"


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_a_cut_stream_is_truncated_with_its_label(kind):
    blob = _compress(kind)
    with pytest.raises(C.Truncated) as e:
        _read_all(blob[: len(blob) // 2], kind)
    assert str(e.value).startswith("blob: truncated ") and e.value.detail.startswith("truncated ")


@pytest.mark.parametrize("kind,tail", [("gzip", b"garbage!"), ("zstd", b"garbage!"), ("zstd", b"\0\0\0\0")])
def test_bytes_after_the_end_are_corruption(kind, tail):
    with pytest.raises(C.Corrupt) as e:
        _read_all(_compress(kind, b"x" * 100) + tail, kind)
    assert not isinstance(e.value, C.Truncated) or kind == "zstd"


def test_a_zstd_bomb_costs_no_more_than_the_read_size():
    blob = _compress("zstd", b"\0" * (64 << 20), level=19)
    r = C.decompressing(io.BytesIO(blob), "zstd", "bomb")
    assert len(blob) < 64 << 10
    assert all(len(r.read(4096)) == 4096 for _ in range(100))


def test_unknown_kinds_are_refused():
    with pytest.raises(ValueError):
        C.decompressing(io.BytesIO(b""), "xz")
    with pytest.raises(ValueError):
        C.compressor("bzip2")
