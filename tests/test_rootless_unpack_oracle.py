"""The exact-unpack oracle in rootless mode: every corpus image unpacked by the test user (in its
user namespace) is, seen from inside that namespace (the container's view: owners as the image
says), the tree root's `imagetool unpack` makes (itself held to umoci by test_unpack_oracle.py),
minus the device nodes a user namespace cannot make (skipped, as podman rootless does). The
per-layer snapshots made there, mounted as overlay with `userxattr` in the namespace, show
exactly that flattened tree too (whiteouts as char 0/0, opaque dirs as user.overlay.opaque).
"""

from __future__ import annotations

import ast
import os
import shutil

import pytest

from fixtures.corpus import import_image, oracle_corpus, tree_manifest
from fixtures.images import write_oci_layout
from tests.rootless import rootless_user  # noqa: F401 (fixture)

CORPUS = oracle_corpus()
DEVICES = ("char", "block")


@pytest.fixture(scope="module")
def user_with_corpus(rootless_user):
    """The test user, with every corpus image loaded into its store from an OCI layout it can read."""
    u = rootless_user
    layout = u.base / "oracle-layout"
    names = {n: f"localhost/oracle/{n}:latest" for n in CORPUS}
    write_oci_layout(layout, {names[n]: img for n, img in CORPUS.items()})
    for d, dirs, files in os.walk(layout):
        os.chmod(d, 0o755)
        for f in files:
            os.chmod(os.path.join(d, f), 0o644)
    r = u.imagetool("load", "-i", layout)
    assert r.returncode == 0, r.stderr
    yield u, names
    shutil.rmtree(layout, ignore_errors=True)


_VIEW = """
import os
from store import Store
from imagetool import image as images, settings
from imagetool.unpack.rootfs import overlay_mount
from fixtures.corpus import tree_manifest
import subprocess
flat = tree_manifest({flat!r})
st = Store.open(settings.store_root())
image = images.load(st, {ref!r})
plan = overlay_mount(st, image, {ctr!r})
subprocess.run(["mount", "-t", "overlay", "overlay", "-o", ",".join(list(plan.options) + ["userxattr"]),
                str(plan.target)], cwd=plan.cwd, check=True)
try:
    merged = tree_manifest(plan.target)
finally:
    subprocess.run(["umount", str(plan.target)], check=True)
print(repr([flat, merged]))
"""


def _diff(a: dict, b: dict) -> list:
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_rootless_unpack_and_snapshots_match_roots_unpack(name, user_with_corpus, tmp_path, store_dir, cli):
    u, names = user_with_corpus
    ref = names[name]
    # root's tree: the oracle of test_unpack_oracle.py
    from store import Store

    import_image(Store.open(store_dir), CORPUS[name], ref)
    cli("unpack", ref, tmp_path / "root-rootfs", check=True)
    expected = tree_manifest(tmp_path / "root-rootfs")
    devices = {k for k, v in expected.items() if v[0] in DEVICES}
    expected = {k: v for k, v in expected.items() if k not in devices}
    assert len(expected) > 5

    out = u.base / "home" / f"oracle-{name}"
    r = u.imagetool("unpack", ref, out)
    assert r.returncode == 0, r.stderr
    for d in sorted(devices):
        assert f"skipping device {d!r}" in r.stderr
    view = u.in_userns(_VIEW.format(flat=str(out), ref=ref, ctr=str(u.home / f"ctr-{name}")))
    assert view.returncode == 0, view.stderr
    flat, merged = ast.literal_eval(view.stdout)
    assert _diff(flat, expected) == []
    assert _diff(merged, expected) == []
    # on disk, outside: an owner N >= 1 of the image is subordinate id subuid_start + N - 1
    for rel, row in expected.items():
        if row[0] == "symlink":
            continue
        st = os.lstat(out / rel)
        uid = row[2]
        assert st.st_uid == (u.uid if uid == 0 else u.subuid_start + uid - 1), rel
