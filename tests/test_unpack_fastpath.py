"""The applier's fast path (an entry created with its own mode, no fchmod; no fchown when the
owner is ours) gives exactly what the slow path gives: whatever the umask, under setgid
directories (which pass their group on), under default ACLs (which replace the umask), for
setuid/setgid/sticky modes and foreign owners. Checked against fixed expectations and against
GNU tar's own extraction of the same layer."""

from __future__ import annotations

import io
import os
import stat
import struct
import subprocess

import pytest

from fixtures.corpus import tree_manifest
from fixtures.tarbuild import build_tar, directory, file, hardlink, symlink
from imagetool.unpack.apply import Applier

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="owners and setuid bits: needs root")


def _apply(root, entries, umask: int | None = None) -> None:
    old = os.umask(umask) if umask is not None else None
    try:
        a = Applier(root, "plain")
        try:
            a.apply(io.BytesIO(build_tar(entries)))
            a.finish()
        finally:
            a.close()
    finally:
        if old is not None:
            os.umask(old)


def _gnu_tar(tar: bytes, dest, tmp_path) -> None:
    src = tmp_path / "layer.tar"
    src.write_bytes(tar)
    dest.mkdir()
    subprocess.run(["tar", "--same-owner", "--numeric-owner", "-xpf", str(src), "-C", str(dest)],
                   check=True, capture_output=True)


def _mode(p) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


MODES = [
    file("f666", b"a", mode=0o666),
    file("f777", b"b", mode=0o777),
    file("f600", b"c", mode=0o600),
    file("f000", b"d", mode=0o000),
    file("suid", b"e", mode=0o4755, uid=1000, gid=1000),
    file("sgid", b"f", mode=0o2755, gid=50),
    file("owned", b"g", mode=0o644, uid=1234, gid=5678),
    directory("d777", mode=0o777),
    directory("sticky", mode=0o1777),
    directory("d700", mode=0o700, uid=7, gid=8),
    directory("d555", mode=0o555),
    file("d555/inside", b"h", mode=0o444),
    symlink("link", "f666", uid=1234, gid=5678),
    hardlink("hl", "owned"),
]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002, 0o000, 0o777])
def test_modes_and_owners_exact_whatever_the_umask(umask, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    _apply(root, MODES, umask)
    want = {"f666": 0o666, "f777": 0o777, "f600": 0o600, "f000": 0o000, "suid": 0o4755, "sgid": 0o2755,
            "owned": 0o644, "d777": 0o777, "sticky": 0o1777, "d700": 0o700, "d555": 0o555,
            "d555/inside": 0o444}
    assert {p: _mode(root / p) for p in want} == want
    owners = {p: (os.lstat(root / p).st_uid, os.lstat(root / p).st_gid)
              for p in ("suid", "sgid", "owned", "d700", "link", "f666")}
    assert owners == {"suid": (1000, 1000), "sgid": (0, 50), "owned": (1234, 5678), "d700": (7, 8),
                      "link": (1234, 5678), "f666": (0, 0)}
    assert os.stat(root / "hl").st_ino == os.stat(root / "owned").st_ino


def test_modes_and_owners_match_gnu_tar(tmp_path):
    tar = build_tar(MODES)
    ours, theirs = tmp_path / "ours", tmp_path / "tar"
    ours.mkdir()
    _apply(ours, MODES, 0o022)
    _gnu_tar(tar, theirs, tmp_path)
    assert tree_manifest(ours) == tree_manifest(theirs)


SETGID = [
    directory("g", mode=0o2775, gid=1234),
    file("g/f", b"x", mode=0o644, gid=0),
    directory("g/d", mode=0o755, gid=0),
    file("g/d/f", b"y", mode=0o644),
    symlink("g/l", "f"),
    directory("plain", mode=0o755),
    file("plain/f", b"w", mode=0o644),
]


def test_setgid_directory_does_not_leak_its_group(tmp_path):
    """A file of gid 0 in a setgid directory of gid 1234 is gid 0, as the layer says (the kernel
    would give it 1234 if the fchown were skipped)."""
    ours, theirs = tmp_path / "ours", tmp_path / "tar"
    ours.mkdir()
    _apply(ours, SETGID, 0o022)
    assert os.lstat(ours / "g" / "f").st_gid == 0
    assert os.lstat(ours / "g" / "d").st_gid == 0
    assert os.lstat(ours / "g" / "d" / "f").st_gid == 0
    assert os.lstat(ours / "g" / "l").st_gid == 0
    assert _mode(ours / "g" / "d") == 0o755
    _gnu_tar(build_tar(SETGID), theirs, tmp_path)
    assert tree_manifest(ours) == tree_manifest(theirs)


def test_setgid_root_directory(tmp_path):
    """The target itself is setgid (a directory the caller made): nothing takes its group."""
    root = tmp_path / "root"
    root.mkdir()
    os.chown(root, 0, 4321)
    os.chmod(root, 0o2755)
    _apply(root, [file("f", b"x"), directory("d"), file("d/f", b"y"), symlink("l", "f")], 0o022)
    assert {p: os.lstat(root / p).st_gid for p in ("f", "d", "d/f", "l")} == {"f": 0, "d": 0, "d/f": 0, "l": 0}
    assert _mode(root / "d") == 0o755


def _acl(entries) -> bytes:
    """A POSIX ACL xattr value (version 2): (tag, perm, id) triples."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i) for t, p, i in entries)


_UNDEFINED = 0xFFFFFFFF
DEFAULT_ACL = _acl([(0x01, 7, _UNDEFINED), (0x04, 5, _UNDEFINED), (0x20, 0, _UNDEFINED)])   # u::rwx g::r-x o::---


def test_default_acl_does_not_replace_the_layers_modes(tmp_path):
    """Under a directory with a default ACL the kernel ignores the umask and masks new entries'
    modes with the ACL: the layer's modes still win."""
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        os.setxattr(probe, "system.posix_acl_default", DEFAULT_ACL)
    except OSError as e:
        pytest.skip(f"no POSIX ACLs on {tmp_path}: {e.strerror}")
    root = tmp_path / "root"
    root.mkdir()
    _apply(root, [directory("a", mode=0o755, xattrs={"system.posix_acl_default": DEFAULT_ACL}),
                  file("a/f", b"x", mode=0o644), directory("a/d", mode=0o775), file("a/d/g", b"y", mode=0o666)],
           0o022)
    assert {p: _mode(root / p) for p in ("a", "a/f", "a/d", "a/d/g")} == \
        {"a": 0o755, "a/f": 0o644, "a/d": 0o775, "a/d/g": 0o666}


def test_default_acl_on_the_target(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    try:
        os.setxattr(root, "system.posix_acl_default", DEFAULT_ACL)
    except OSError as e:
        pytest.skip(f"no POSIX ACLs on {tmp_path}: {e.strerror}")
    _apply(root, [file("f", b"x", mode=0o644), directory("d", mode=0o777)], 0o022)
    assert (_mode(root / "f"), _mode(root / "d")) == (0o644, 0o777)


def test_replacing_entries_take_the_slow_path_exactly(tmp_path):
    """An entry over an existing one (file over file, dir over file, file over dir) still ends as
    the later entry says."""
    entries = [file("x", b"1", mode=0o600), file("x", b"22", mode=0o755, uid=5),
               file("y", b"3"), directory("y", mode=0o750, gid=9), directory("z"), file("z/in", b"4"),
               file("z", b"5", mode=0o640)]
    root = tmp_path / "root"
    root.mkdir()
    _apply(root, entries, 0o022)
    got = {k: v[:6] for k, v in tree_manifest(root).items()}
    assert got == {"x": ("file", "0o755", 5, 0, 2, got["x"][5]), "y": ("dir", "0o750", 0, 9, None, ""),
                   "z": ("file", "0o640", 0, 0, 1, got["z"][5])}
    assert (root / "x").read_bytes() == b"22"


# ---------------------------------------------------------------- the writer thread


def _fds() -> set:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(params=[True, False], ids=["threaded", "inline"])
def writer(request, monkeypatch):
    """Both ways _Writer finishes batches: on its thread (>= 3 CPUs) and inline (fewer)."""
    from imagetool.unpack.apply import _Writer

    monkeypatch.setattr(_Writer, "THREADED", request.param)
    return request.param


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs (unmounted after the test)."""
    d = tmp_path / "small"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=True)


def test_a_failed_write_on_the_writer_thread_is_one_clear_error(small_fs, writer):
    """Files finished on the writer thread: ENOSPC there becomes the layer's UnpackError naming
    the entry, and every fd is closed (the thread stops with the applier)."""
    from imagetool.errors import UnpackError

    before = _fds()
    entries = [file(f"f{i:03}", os.urandom(20_000)) for i in range(200)]      # ~4 MB into 1 MiB
    a = Applier(small_fs, "plain")
    try:
        with pytest.raises(UnpackError, match=r"cannot apply 'f\d+': No space left on device"):
            a.apply(io.BytesIO(build_tar(entries)), "layer 1")
    finally:
        a.close()
    assert _fds() == before
    assert not [t for t in __import__("threading").enumerate() if t.name == "imagetool-file-writer"]


def test_a_truncated_layer_leaves_no_fd_open(tmp_path, writer):
    from imagetool.errors import UnpackError

    tar = build_tar([file(f"f{i:03}", b"x" * (i * 50)) for i in range(300)])
    before = _fds()
    a = Applier(tmp_path, "plain")
    try:
        with pytest.raises(UnpackError, match="truncated"):
            a.apply(io.BytesIO(tar[:len(tar) // 2]))
    finally:
        a.close()
    assert _fds() == before
    # what was written before the cut is complete (content and mtime), not half-done
    done = sorted(p for p in os.listdir(tmp_path))
    assert len(done) > 50
    for p in done[:-1]:
        i = int(p[1:])
        assert (tmp_path / p).read_bytes() == b"x" * (i * 50)
        assert os.stat(tmp_path / p).st_mtime == 1_600_000_000


def test_many_small_files_keep_content_mtime_and_owner(tmp_path, writer):
    """More files than the writer's batches hold, with owners that need an fchown and empty files."""
    entries = [file(f"d{i % 7}/f{i}", os.urandom(i % 3000), mode=0o640 if i % 2 else 0o644,
                    uid=i % 3, gid=i % 5, mtime=1_500_000_000 + i) for i in range(1000)]
    _apply(tmp_path, entries, 0o022)
    for i, e in enumerate(entries):
        p = tmp_path / e.path
        st = os.stat(p)
        assert p.read_bytes() == e.data
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_mtime) == \
            (i % 3, i % 5, e.mode, 1_500_000_000 + i)


def test_names_created_by_the_writer_are_seen_by_later_entries(tmp_path, writer):
    """Files created on the writer thread exist for every later entry of the layer: a hardlink to
    one, a symlink, a directory or a file over one, an opaque marker or whiteout next to them."""
    from fixtures.tarbuild import opaque, whiteout

    entries = [file("x", b"first"), hardlink("x-link", "x"),
               file("s", b"to be a symlink"), symlink("s", "x"),
               file("d", b"to be a dir"), directory("d"), file("d/in", b"inside"),
               file("r", b"old"), file("r", b"new", mode=0o600),
               file("keep/a", b"a"), opaque("keep"), file("keep/b", b"b"),
               file("gone", b"g"), whiteout("gone")]
    _apply(tmp_path, entries, 0o022)
    assert (tmp_path / "x-link").read_bytes() == b"first"
    assert os.stat(tmp_path / "x").st_ino == os.stat(tmp_path / "x-link").st_ino
    assert os.readlink(tmp_path / "s") == "x"
    assert (tmp_path / "d" / "in").read_bytes() == b"inside"
    assert (tmp_path / "r").read_bytes() == b"new" and _mode(tmp_path / "r") == 0o600
    assert sorted(os.listdir(tmp_path / "keep")) == ["a", "b"]     # this layer's own entries survive
    assert (tmp_path / "gone").read_bytes() == b"g"                  # a whiteout never hides its own layer


def test_a_file_then_a_path_through_it_is_refused(tmp_path, writer):
    from imagetool.errors import UnpackError

    before = _fds()
    a = Applier(tmp_path, "plain")
    try:
        with pytest.raises(UnpackError, match="in the way|File exists|Not a directory"):
            a.apply(io.BytesIO(build_tar([file("a", b"file"), file("a/b", b"below a file")])))
    finally:
        a.close()
    assert _fds() == before
    assert (tmp_path / "a").read_bytes() == b"file"


def test_more_directories_than_cached_fds(tmp_path, writer):
    """Past safepath's fd cache the applier retires directory fds: the writer's pending files
    in them are created first (never through a closed or reused fd)."""
    from imagetool.safepath import MAX_CACHED_FDS

    n = MAX_CACHED_FDS + 200
    entries = []
    for i in range(n):
        entries += [directory(f"d{i}"), file(f"d{i}/f", b"%d" % i), file(f"d{i}/g", b"g%d" % i)]
    _apply(tmp_path, entries, 0o022)
    for i in range(n):
        assert (tmp_path / f"d{i}" / "f").read_bytes() == b"%d" % i
        assert (tmp_path / f"d{i}" / "g").read_bytes() == b"g%d" % i
    assert sorted(os.listdir(tmp_path)) == sorted(f"d{i}" for i in range(n))


def test_a_later_layer_replaces_a_file_the_writer_made(tmp_path, writer):
    a = Applier(tmp_path, "plain")
    try:
        a.apply(io.BytesIO(build_tar([file("etc/x", b"layer 1"), file("etc/y", b"y")])))
        a.apply(io.BytesIO(build_tar([file("etc/x", b"layer 2", mode=0o600), file("etc/z", b"z")])))
        a.finish()
    finally:
        a.close()
    assert (tmp_path / "etc" / "x").read_bytes() == b"layer 2"
    assert _mode(tmp_path / "etc" / "x") == 0o600
    assert sorted(os.listdir(tmp_path / "etc")) == ["x", "y", "z"]
