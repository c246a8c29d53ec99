"""The store is closed to other users (issue 14 item 2, the CVE-2021-41091 class): a setuid-root
binary that a layer puts into a snapshot cannot be run by another host user, fresh and old (0755)
stores alike end up 0700 on open, and root's own tools (skopeo, umoci) still read the layout."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from store import Store
from store.errors import NotAStore, StoreError

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user (nobody)")


def _as_nobody(*argv: str) -> subprocess.CompletedProcess | OSError:
    """argv run as nobody with no capabilities left at the exec, or the exec's error. (Not
    `setpriv --reuid`: it still holds root's effective capabilities while it resolves the path
    it execs, so it reaches what nobody cannot.)"""
    try:
        return subprocess.run(list(argv), user=NOBODY, group=NOBODY, extra_groups=[], capture_output=True,
                              text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    except OSError as e:
        return e


@pytest.fixture
def open_tmp():
    """A 0755 directory that nobody can reach (pytest's tmp_path sits below a 0700 directory, which
    would make every "nobody cannot" below true for the wrong reason); removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="store-permissions-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


# --- fresh and old stores --------------------------------------------------------------------
def _fresh(root: Path) -> None:
    pass


def _old_0755(root: Path) -> None:
    """A store as imagetool made it before this rule: everything 0755."""
    Store.open(root)
    for p in (root, root / "blobs", root / "snapshots", root / "containers"):
        os.chmod(p, 0o755)


def _world_writable(root: Path) -> None:
    Store.open(root)
    os.chmod(root, 0o777)


def _empty_dir_0755(root: Path) -> None:
    root.mkdir()
    os.chmod(root, 0o755)


STORES = {"fresh": _fresh, "old_0755": _old_0755, "world_writable": _world_writable,
          "empty_dir_0755": _empty_dir_0755}


@pytest.mark.parametrize("make", STORES)
def test_store_root_ends_up_closed_to_other_users(tmp_path, make):
    root = tmp_path / "parent" / "store"
    root.parent.mkdir()
    os.chmod(root.parent, 0o755)
    STORES[make](root)
    st = Store.open(root)
    assert _mode(st.root) == 0o700
    assert _mode(root.parent) == 0o755  # nothing above the store root is touched
    assert Store.open(root).root == st.root  # and it stays open for its owner


def test_opening_a_closed_store_changes_no_mode(tmp_path, monkeypatch):
    import store.store as store_module

    root = tmp_path / "store"
    Store.open(root)

    def refuse(*a, **kw):
        raise AssertionError(f"chmod{a} on the hot path")

    monkeypatch.setattr(store_module.os, "chmod", refuse)
    assert Store.open(root).root == root
    assert _mode(root) == 0o700


@needs_root
def test_store_someone_else_owns_is_refused_not_left_open(open_tmp):
    root = open_tmp / "store"
    Store.open(root)
    os.chmod(root, 0o755)
    code = ("import sys; from store import Store\n"
            "try:\n    Store.open(sys.argv[1])\nexcept Exception as e:\n    print(type(e).__name__, e); sys.exit(3)\n")
    repo = Path(__file__).resolve().parent.parent
    # Debian's interpreter: the test's own lives under /root; the store package is stdlib only
    r = _as_nobody("/usr/bin/env", f"PYTHONPATH={repo}", "/usr/bin/python3", "-c", code, str(root))
    assert r.returncode == 3, r.stderr
    assert r.stdout.startswith("NotAStore") and "open to other users (mode 0755)" in r.stdout
    assert _mode(root) == 0o755  # refused, not half-changed


REFUSED = {
    "foreign_directory": lambda root: (root / "notes.txt").write_text("mine"),
    "other_layout_version": lambda root: (root / "oci-layout").write_text('{"imageLayoutVersion": "9"}'),
    "corrupt_layout": lambda root: (root / "oci-layout").write_text("{"),
}


@pytest.mark.parametrize("make", REFUSED)
def test_directory_refused_as_a_store_keeps_its_mode(tmp_path, make):
    root = tmp_path / "dir"
    root.mkdir()
    os.chmod(root, 0o755)
    REFUSED[make](root)
    with pytest.raises(StoreError):
        Store.open(root)
    assert _mode(root) == 0o755


def test_store_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotAStore, match="cannot create store directory .*: File exists"):
        Store.open(tmp_path / "f")


# --- the attack: a setuid-root binary from a layer, run by another user ---------------------------
def _setuid_image():
    from fixtures.images import Layer, build_image
    from fixtures.tarbuild import directory, file

    # coreutils' id, not busybox: busybox drops a setuid root for applets that do not need it, so
    # its `id -u` would say 65534 even where the attack works; `id` shows the euid it got.
    idbin = shutil.which("id")
    return build_image([Layer([directory("bin"), file("bin/id", Path(idbin).read_bytes(), mode=0o4755)])])


@needs_root
@pytest.mark.parametrize("store_mode", [None, 0o755])
def test_setuid_binary_in_a_snapshot_gives_other_users_no_root(open_tmp, store_mode):
    """store_mode None: the store as Store.open leaves it. 0755: the old store, reopened after the
    attack is set up, shows the same binary gave root before the fix (the test's control)."""
    from fixtures.corpus import import_image

    from imagetool import image as images
    from imagetool.unpack.snapshots import ensure_snapshots

    st = Store.open(open_tmp / "store")
    img = images.load(st, import_image(st, _setuid_image(), "localhost/suid/id"))
    (snap,) = ensure_snapshots(st, img)
    target = snap / "bin" / "id"
    s = os.stat(target)
    assert s.st_uid == 0 and s.st_mode & stat.S_ISUID  # the real unpack kept the setuid bit
    if store_mode is not None:
        for p in [st.root, *st.root.iterdir()]:
            if p.is_dir():
                os.chmod(p, store_mode)
    r = _as_nobody(str(target), "-u")
    if store_mode is None:
        assert isinstance(r, PermissionError), r
        assert "Permission denied" in _as_nobody("/bin/cat", str(st.root / "index.json")).stderr
    else:
        assert r.stdout.strip() == "0", r.stderr  # the CVE-2021-41091 class, reproduced
        assert _mode(Store.open(st.root).root) == 0o700  # reopening closes it
        assert isinstance(_as_nobody(str(target), "-u"), PermissionError)


# --- root's own tools still read the closed layout -----------------------------------------------
def test_skopeo_and_umoci_read_a_closed_store(tmp_path):
    from fixtures.corpus import import_image
    from fixtures.images import busybox_image

    tools = {t: shutil.which(t) for t in ("skopeo", "umoci")}
    if not all(tools.values()):
        pytest.skip(f"needs skopeo and umoci (missing: {[t for t, p in tools.items() if not p]})")
    root = tmp_path / "store"
    _old_0755(root)
    st = Store.open(root)
    ref = import_image(st, busybox_image(), "busybox")
    assert _mode(st.root) == 0o700
    r = subprocess.run([tools["skopeo"], "inspect", f"oci:{st.root}:{ref}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([tools["umoci"], "ls", "--layout", str(st.root)], capture_output=True, text=True)
    assert r.returncode == 0 and ref in r.stdout.split(), r.stderr
