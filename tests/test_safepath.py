"""safepath.Root.resolve / open / read_file: a whole path (its last symlink too) resolved inside the
root as in a chroot, never to a host file. The tar appliers' use of the resolver is covered by
test_unpack_security.py; the user lookup's by test_users.py; here, the resolver itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagetool.errors import UnpackError
from imagetool.safepath import MissingPath, Root


@pytest.fixture
def tree(tmp_path) -> Path:
    """rootfs/ with real files and links of every kind; host/secret outside it."""
    (tmp_path / "host").mkdir()
    (tmp_path / "host" / "secret").write_text("host\n")
    r = tmp_path / "rootfs"
    for d in ("etc", "data/deep", "host"):
        (r / d).mkdir(parents=True)
    (r / "etc" / "real").write_text("image\n")
    (r / "host" / "secret").write_text("image copy\n")
    links = {
        "etc/abs": str(tmp_path / "host" / "secret"),     # an absolute host path
        "etc/up": "../../../../../../host/secret",        # climbing out with ..
        "etc/rel": "real",
        "etc/chain": "rel",
        "etc/dir-link": "/data/deep",
        "etc/loop": "loop",
        "etc/dangling": "/nowhere",
        "etc/to-root": "/..",
        "etc/trailing-dotdot": "../data/deep/..",
        "etc/empty": "",
    }
    for name, target in links.items():
        if target:
            os.symlink(target, r / name)
    return r


@pytest.mark.parametrize("path,canon", [
    ("etc/real", "etc/real"),
    ("etc/rel", "etc/real"),
    ("etc/chain", "etc/real"),
    ("etc/abs", None),                 # <tmp>/host/secret inside the root: absent
    ("etc/up", "host/secret"),         # clamped at the root: the image's own copy
    ("etc/dir-link", "data/deep"),
    ("etc/dir-link/../../etc/real", "etc/real"),
    ("etc/trailing-dotdot", "data"),
    ("etc/dangling", "nowhere"),
])
def test_resolve_follows_every_link_inside_the_root(tree, path, canon):
    with Root(tree) as root:
        comps = tuple(path.split("/"))
        if canon is None:
            with pytest.raises(MissingPath):
                root.resolve(comps)
            return
        pfd, name, pcanon, st = root.resolve(comps)
        got = f"{pcanon}/{name}" if pcanon else name
        assert got == canon
        assert os.readlink(f"/proc/self/fd/{pfd}") == str(tree / pcanon).rstrip("/")
        assert (st is None) == (canon == "nowhere")


@pytest.mark.parametrize("path,message", [
    ("etc/loop", "too many levels"),
    ("etc/to-root", "root directory itself"),
    ("etc/real/x", "not a directory"),
])
def test_resolve_refuses_loops_the_root_and_files_as_directories(tree, path, message):
    with Root(tree) as root:
        with pytest.raises(UnpackError, match=message):
            root.resolve(tuple(path.split("/")))


@pytest.mark.parametrize("path,content", [
    ("etc/real", b"image\n"), ("etc/chain", b"image\n"), ("etc/up", b"image copy\n"),
    ("etc/abs", None), ("etc/loop", None), ("etc/dangling", None), ("etc/dir-link", None),
])
def test_read_file_reads_only_regular_files_inside_the_root(tree, path, content):
    with Root(tree) as root:
        assert root.read_file(tuple(path.split("/")), 1 << 20) == content


def test_open_gives_an_fd_of_what_was_checked_even_after_a_swap(tree, tmp_path):
    """The CVE-2021-30465 shape: resolve a mount target, then swap a path component for a
    symlink to a host directory: the fd still names the directory inside the root."""
    with Root(tree) as root:
        fd = root.open(("etc", "dir-link"))
        try:
            os.rename(tree / "data", tree / "data-old")
            os.symlink(str(tmp_path / "host"), tree / "data")
            assert os.readlink(f"/proc/self/fd/{fd}") == str(tree / "data-old" / "deep")
        finally:
            os.close(fd)
        with pytest.raises(MissingPath):
            root.open(("etc", "dangling"))
