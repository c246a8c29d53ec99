"""`commit`: a container that added, changed and deleted files becomes a new image whose layer
carries OCI whiteouts; it runs, pushes and pulls elsewhere; `history` lists the new layer first."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import pytest

from tests.runhelpers import HostSnapshot, Imagetool, add_image, kernel_skip_reason

_reason = kernel_skip_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

CHANGE = ("echo new > /new.txt; echo changed > /etc/hostname; rm /etc/group; "
          "rm -rf /usr; mkdir -p /usr/only; echo o > /usr/only/file")


@pytest.fixture
def store(tmp_path):
    from fixtures.images import busybox_image

    root = tmp_path / "store"
    add_image(root, busybox_image(), "docker.io/library/busybox:latest")
    before = HostSnapshot(root)
    yield root
    before.assert_unchanged()


def _layer_tar(store_root, manifest_digest: str) -> bytes:
    """The uncompressed tar of the image's last layer."""
    from store import Digest, Store

    st = Store.open(store_root)
    manifest = json.loads(st.read(Digest.parse(manifest_digest)))
    return gzip.decompress(st.read(Digest.parse(manifest["layers"][-1]["digest"]), limit=1 << 30))


def _layer_names(store_root, manifest_digest: str) -> dict:
    with tarfile.open(fileobj=io.BytesIO(_layer_tar(store_root, manifest_digest))) as tf:
        return {m.name: m for m in tf.getmembers()}


def test_commit_turns_added_changed_and_deleted_files_into_a_layer_that_runs(store, registry, tmp_path):
    from store import Store

    from imagetool.commit import commit, history
    from imagetool.pull import pull
    from imagetool.push import push

    it = Imagetool(store)
    # private: on a bridge /etc/hostname is the container's bind-mounted file, outside its layer (docker's too)
    r = it("run", "--name", "changer", "--network", "private", "busybox", "sh", "-c", CHANGE)
    assert r.returncode == 0, r.stderr
    name = f"{registry.host}/commit/changed:v1"
    res = commit(Store.open(store), "changer", name, changes=['CMD ["cat", "/new.txt"]', "ENV MODE=committed"],
                 message="three kinds of change")
    names = _layer_names(store, res.digest)
    assert names["new.txt"].isfile() and names["etc/hostname"].isfile()
    assert names["etc/.wh.group"].isfile() and names["etc/.wh.group"].size == 0   # deleted: OCI whiteout
    assert "usr/.wh..wh..opq" in names and names["usr/only/file"].isfile()          # replaced dir: opaque
    assert not [n for n in names.values() if n.ischr()]                              # no overlay whiteouts
    it("rm", "changer")

    r = it("run", "--rm", name)
    assert (r.returncode, r.stdout) == (0, "new\n"), r.stderr
    r = it("run", "--rm", "--network", "private", name, "sh", "-c",
           "cat /etc/hostname; test -e /etc/group || echo gone; ls /usr; echo $MODE")
    assert r.stdout.split() == ["changed", "gone", "only", "committed"], r.stderr

    rows = history(Store.open(store), name)
    assert (rows[0].created_by, rows[0].comment) == ("imagetool commit", "three kinds of change")
    assert rows[0].layer and rows[0].size > 0

    push(Store.open(store), name)
    other = Store.open(tmp_path / "elsewhere")
    pull(other, name)
    assert str(other.resolve(name).digest) == res.digest


@pytest.mark.parametrize("change", ["FROM x", "CMD", 'CMD ["a", 1]', "LABEL nokey"])
def test_an_invalid_change_is_one_clear_error(change):
    from imagetool.commit import apply_change
    from imagetool.errors import ImagetoolError

    with pytest.raises(ImagetoolError, match="invalid --change"):
        apply_change({}, change)


def test_commit_stores_links_as_links_never_the_files_they_point_at(store, tmp_path):
    """A container's upper dir is hostile: a symlink to a host path (or out through ..) is archived
    as a symlink; commit never opens what it points at."""
    from store import Store

    from imagetool.commit import commit

    it = Imagetool(store)
    secret = tmp_path / "host-secret"
    secret.write_text("host only\n")
    r = it("run", "--name", "linker", "busybox", "sh", "-c",
           f"ln -s {secret} /abs; ln -s ../../../../../../{secret} /rel; mkdir /d; ln -s / /d/root")
    assert r.returncode == 0, r.stderr
    res = commit(Store.open(store), "linker", "linked:v1")
    names = _layer_names(store, res.digest)
    assert names["abs"].issym() and names["abs"].linkname == str(secret)
    assert names["rel"].issym() and names["d/root"].issym() and names["d/root"].linkname == "/"
    assert all(m.size == 0 for m in names.values() if not m.isfile())
    assert b"host only" not in _layer_tar(store, res.digest)
    it("rm", "linker")
