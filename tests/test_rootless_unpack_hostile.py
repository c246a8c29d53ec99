"""The hostile-layer corpus (fixtures/corpus.py) unpacked by an ordinary user in its user namespace.

Rootless, the stakes move: the user may write its own files, so a layer that escaped the target
could rewrite them. The canary here is a directory in the test user's home, owned by the user;
every hostile image, flattened (`imagetool unpack`) and as per-layer snapshots (built in the
namespace as `pull` and `run` build them), must leave it byte for byte as it was, end as the root
tests say (applied with the escape clamped inside, or one clear error and nothing half-made).
The one difference from root: a device node the corpus plants inside is skipped, not made.
"""

from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path

import pytest

from fixtures.corpus import hostile_corpus, tree_digest
from fixtures.images import Layer, build_image, write_oci_layout
from tests.rootless import rootless_user  # noqa: F401 (fixture)

CASES = sorted(h.name for h in hostile_corpus("/placeholder"))
HOST_PWNED = Path("/etc/imagetool-pwned")


def _canary(u) -> Path:
    c = u.home / "canary"
    shutil.rmtree(c, ignore_errors=True)
    (c / "sub").mkdir(parents=True)
    (c / "victim").write_bytes(b"original victim\n")
    (c / "sub" / "inner").write_bytes(b"inner\n")
    os.symlink("victim", c / "link")
    os.chmod(c / "victim", 0o640)
    for p in (c, c / "sub", c / "victim", c / "sub" / "inner", c / "link"):
        os.chown(p, u.uid, u.gid, follow_symlinks=False)
    return c


@pytest.fixture(scope="module")
def hostile_user(rootless_user):
    """The test user with every hostile image (aimed at its own canary) loaded into its store."""
    u = rootless_user
    cases = {h.name: h for h in hostile_corpus(str(u.home / "canary"))}
    images = {f"localhost/hostile/{n}:latest": build_image([Layer(list(la), "gzip") for la in h.layers])
              for n, h in cases.items()}
    layout = u.base / "hostile-layout"
    write_oci_layout(layout, images)
    for d, _, files in os.walk(layout):
        os.chmod(d, 0o755)
        for f in files:
            os.chmod(os.path.join(d, f), 0o644)
    r = u.imagetool("load", "-i", layout)
    assert r.returncode == 0, r.stderr
    yield u, cases
    shutil.rmtree(layout, ignore_errors=True)


_SNAPSHOTS = """
from store import Store
from imagetool import image as images, settings
from imagetool.errors import UnpackError
from imagetool.unpack.snapshots import ensure_snapshots
st = Store.open(settings.store_root())
image = images.load(st, {ref!r})
try:
    print(repr(("ok", len(ensure_snapshots(st, image)), "")))
except UnpackError as e:
    print(repr((type(e).__name__, 0, str(e))))
print(repr(sorted(p.name for p in st.snapshots_dir.iterdir() if p.name.startswith("imagetool-"))))
"""


@pytest.mark.parametrize("name", CASES)
def test_hostile_layer_as_a_user(name, hostile_user):
    u, cases = hostile_user
    h = cases[name]
    ref = f"localhost/hostile/{name}:latest"
    has_device = any(e.type in ("char", "block") for la in h.layers for e in la)

    canary = _canary(u)
    before = tree_digest(canary)
    out = u.home / f"hostile-{name}"
    r = u.imagetool("unpack", ref, out)
    assert tree_digest(canary) == before, "the canary (the user's own files) changed"
    assert not HOST_PWNED.exists()
    if h.outcome == "ok":
        assert r.returncode == 0, r.stderr
        for p in h.inside:
            if not has_device:
                assert os.path.lexists(out / p), f"{p} should have landed inside the root"
    else:
        assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
        assert r.stderr.strip().splitlines()[-1].startswith(("imagetool: error: ", "hint: ")), r.stderr
        assert "Traceback" not in r.stderr
        if h.message:
            assert h.message in r.stderr
        assert not out.exists(), "a failed unpack left a partial tree"

    canary = _canary(u)
    before = tree_digest(canary)
    v = u.in_userns(_SNAPSHOTS.format(ref=ref))
    assert v.returncode == 0, v.stderr
    (outcome, count, message), temps = (ast.literal_eval(line) for line in v.stdout.splitlines())
    assert tree_digest(canary) == before, "the canary (the user's own files) changed"
    assert not HOST_PWNED.exists()
    if h.outcome == "ok":
        assert (outcome, count) == ("ok", len(h.layers)), message
    else:
        assert outcome == ("UnsafeLayer" if h.outcome == "refuse" else "UnpackError"), (outcome, message)
        if h.message:
            assert h.message in message
    assert temps == [], "temp snapshot left behind"
