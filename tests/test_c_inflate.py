"""gzip inflation through zlib-ng (when installed) and the standard library's zlib give the same
bytes and the same errors; the writer thread's work sharing and the snapshot chunk size keep
every file exact (issue 16)."""

from __future__ import annotations

import gzip
import io
import os
import zlib

import pytest

from imagetool import compression


def _blob(n_members: int = 2) -> tuple[bytes, bytes]:
    plain = b"".join(os.urandom(50_000) + b"a" * 300_000 for _ in range(n_members))
    step = len(plain) // n_members
    blob = b"".join(gzip.compress(plain[i * step:(i + 1) * step]) for i in range(n_members))
    return plain, blob


def _read_all(blob: bytes, n: int, chunk: int) -> bytes:
    r = compression.decompressing(io.BytesIO(blob), "gzip", "t", chunk)
    out = []
    while True:
        data = r.read(n)
        assert len(data) <= n
        if not data:
            return b"".join(out)
        out.append(data)


@pytest.fixture(params=["zlib-ng", "stdlib"])
def inflater(request, monkeypatch):
    if request.param == "zlib-ng":
        z = pytest.importorskip("zlib_ng.zlib_ng", reason="zlib-ng is not installed")
    else:
        z = zlib
    monkeypatch.setattr(compression, "_INFLATE", z)
    return z


@pytest.mark.parametrize("n,chunk", [(1 << 20, 1 << 20), (4096, 1 << 20), (256 << 10, 256 << 10), (1 << 20, 1000)])
def test_same_bytes_whatever_the_sizes(inflater, n, chunk):
    plain, blob = _blob()
    assert _read_all(blob + b"\0" * 1024, n, chunk) == plain


def test_corrupt_and_truncated(inflater):
    plain, blob = _blob(1)
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0xFF
    with pytest.raises(compression.Corrupt) as e:
        _read_all(bytes(bad), 1 << 20, 1 << 20)
    assert str(e.value).startswith("t: corrupt gzip data")
    with pytest.raises(compression.Truncated):
        _read_all(blob[:-10], 1 << 20, 1 << 20)
    with pytest.raises(compression.Corrupt, match="trailing garbage"):
        _read_all(blob + b"junk", 1 << 20, 1 << 20)


def test_zlib_ng_is_used_when_installed():
    pytest.importorskip("zlib_ng.zlib_ng", reason="zlib-ng is not installed")
    assert compression._inflate().__name__ == "zlib_ng.zlib_ng"


def test_writer_shares_work_when_behind(tmp_path, monkeypatch):
    """When the writer thread is IN_FLIGHT batches behind, the applier finishes a batch itself: every
    file still gets its data, mode and mtime."""
    from fixtures.tarbuild import build_tar, directory, file
    from imagetool.unpack.apply import Applier, _Writer

    monkeypatch.setattr(_Writer, "THREADED", True)
    monkeypatch.setattr(_Writer, "BATCH", 2)
    monkeypatch.setattr(_Writer, "IN_FLIGHT", 1)
    shared = []
    real = _Writer._finish

    def finish(self, batch):
        import threading

        shared.append(threading.current_thread().name)
        real(self, batch)

    monkeypatch.setattr(_Writer, "_finish", finish)
    entries = [directory("d")] + [file(f"d/f{i}", os.urandom(i * 37 % 3000), mode=0o640, mtime=1_000_000 + i)
                                  for i in range(400)]
    tar = build_tar(entries)
    root = tmp_path / "root"
    root.mkdir()
    a = Applier(root, "plain")
    try:
        a.apply(io.BytesIO(tar))
        a.finish()
    finally:
        a.close()
    for i in range(400):
        p = root / "d" / f"f{i}"
        st = p.stat()
        assert p.read_bytes() == entries[i + 1].data
        assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o640, (1_000_000 + i) * 1_000_000_000)
    assert "imagetool-file-writer" in shared


def test_writer_inline_below_three_cpus(tmp_path, monkeypatch):
    """Without a core for it (the decoder thread and the tar loop take two), batches are finished
    by the applier itself: no writer thread is started."""
    import threading

    from imagetool.unpack.apply import _Writer

    monkeypatch.setattr(_Writer, "THREADED", None)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert _Writer._threaded() is False
    monkeypatch.setattr(_Writer, "THREADED", None)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert _Writer._threaded() is True
    monkeypatch.setattr(_Writer, "THREADED", False)
    w = _Writer()
    fds = [os.open(tmp_path / f"f{i}", os.O_WRONLY | os.O_CREAT) for i in range(_Writer.BATCH)]
    for i, fd in enumerate(fds):
        w.add(fd, b"data %d" % i, 1_000_000_000 * i, f"f{i}")
    assert w._thread is None and not [t for t in threading.enumerate() if t.name == "imagetool-file-writer"]
    assert w.drain() is None
    w.close()
    for i in range(_Writer.BATCH):
        assert (tmp_path / f"f{i}").read_bytes() == b"data %d" % i
        assert (tmp_path / f"f{i}").stat().st_mtime_ns == 1_000_000_000 * i


def test_make_temp_dir(tmp_path):
    from imagetool.unpack.snapshots import TEMP_PREFIX, make_temp_dir

    old = os.umask(0o077)
    try:
        a, b = make_temp_dir(tmp_path), make_temp_dir(tmp_path)
    finally:
        os.umask(old)
    assert a != b and a.name.startswith(TEMP_PREFIX) and b.name.startswith(TEMP_PREFIX)
    assert a.stat().st_mode & 0o777 == 0o755
