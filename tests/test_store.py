"""store/: blobs, resumable ingest, refs in index.json, gc, and interop with skopeo/umoci.

Real processes and real locks: writers are SIGKILLed, refs are written by 8 processes at once,
and skopeo/umoci read the result as the oracle for "this is a valid OCI image layout"."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from store import Descriptor, Digest, GCReport, Store
from store.errors import (BlobNotFound, BlobTooLarge, CorruptStore, DigestMismatch, InvalidDescriptor,
                          InvalidDigest, NotAStore, RefNotFound, SizeMismatch, StoreError)

REPO = Path(__file__).resolve().parent.parent
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
FULL_NAME = "docker.io/library/busybox:latest"
MP = multiprocessing.get_context("fork")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


# ---------------------------------------------------------------- images put into a store

def _hand_image(tag: str = "a") -> dict[str, bytes]:
    """manifest + config + one gzip layer, by hand (used when fixtures.images is unavailable)."""
    import gzip
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        data = f"hello {tag}\n".encode()
        ti = tarfile.TarInfo("hello.txt")
        ti.size, ti.mtime = len(data), 1_600_000_000
        tf.addfile(ti, io.BytesIO(data))
    tar = buf.getvalue()
    blob = gzip.compress(tar, mtime=0)
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                      "rootfs": {"type": "layers", "diff_ids": [str(Digest.of_bytes(tar))]}}).encode()
    man = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                      "config": {"mediaType": OCI_CONFIG, "digest": str(Digest.of_bytes(cfg)), "size": len(cfg)},
                      "layers": [{"mediaType": OCI_LAYER_GZ, "digest": str(Digest.of_bytes(blob)),
                                  "size": len(blob)}]}).encode()
    return {"manifest": man, "config": cfg, "layers": [blob], "diff_ids": [str(Digest.of_bytes(tar))]}


def _built_image(tag: str = "a"):
    """(manifest bytes, media type, {digest: bytes} of config+layers, [diff_id]) of a small image."""
    try:
        from fixtures.images import build_image
        from fixtures.tarbuild import directory, file
    except ImportError:
        h = _hand_image(tag)
        blobs = {str(Digest.of_bytes(b)): b for b in [h["config"], *h["layers"]]}
        return h["manifest"], OCI_MANIFEST, blobs, h["diff_ids"]
    img = build_image([[directory("etc"), file(f"etc/{tag}", tag.encode())],
                       [file("hello.txt", f"hello {tag}\n".encode())]],
                      config={"Cmd": ["sh"]})
    return img.manifest, img.manifest_media_type, dict(img.blobs), [la.diff_id for la in img.layers]


def _store_image(st: Store, name: str | None, tag: str = "a") -> tuple[Descriptor, list[Digest], list[str]]:
    """Put an image's blobs through the Store API (and tag it when `name`); returns its
    manifest descriptor, every blob digest and its diff_id hexes."""
    manifest, mt, blobs, diff_ids = _built_image(tag)
    digests = [st.put(data, Digest.parse(d)) for d, data in blobs.items()]
    md = st.put(manifest)
    desc = Descriptor(mt, md, len(manifest))
    if name:
        st.tag(name, desc)
    return desc, [md, *digests], [Digest.parse(d).hex for d in diff_ids]


# ---------------------------------------------------------------- digests and descriptors

GOOD = "sha256:" + "a" * 64


@pytest.mark.parametrize("text", [
    "", "sha256", "sha256:", GOOD.upper(), "SHA256:" + "a" * 64, "sha256:" + "A" * 64,
    "sha256:" + "a" * 63, "sha256:" + "a" * 65, "sha256:" + "g" * 64, "md5:" + "a" * 32,
    "sha512:" + "a" * 64, "sha256:../../../../etc/passwd", "sha256:" + "a" * 62 + "/.",
    "sha256:" + "a" * 64 + "\n", " " + GOOD, "sha256:" + "a" * 32 + ":" + "a" * 31, "../sha256:" + "a" * 64,
], ids=repr)
def test_invalid_digests_are_rejected(text):
    with pytest.raises(InvalidDigest):
        Digest.parse(text)


@pytest.mark.parametrize("algorithm,hexpart", [("sha256", "../" + "a" * 61), ("sha256", ""), ("sha1", "a" * 40),
                                               ("sha256", "a" * 63 + "/"), ("", "")])
def test_digest_constructor_validates_so_no_path_escapes_blobs(algorithm, hexpart):
    with pytest.raises(InvalidDigest):
        Digest(algorithm, hexpart)


@pytest.mark.parametrize("text", [GOOD, "sha512:" + "0123456789abcdef" * 8])
def test_valid_digests_round_trip(text):
    d = Digest.parse(text)
    assert str(d) == text and Digest.parse(str(d)) == d


def test_digest_of_bytes_matches_hashlib():
    import hashlib
    assert Digest.of_bytes(b"abc") == Digest("sha256", hashlib.sha256(b"abc").hexdigest())
    assert Digest.of_bytes(b"abc", "sha512").hex == hashlib.sha512(b"abc").hexdigest()


def test_descriptor_round_trips_and_omits_empty_extras():
    d = Descriptor(OCI_MANIFEST, Digest.parse(GOOD), 12, {"k": "v"}, {"os": "linux", "architecture": "amd64"},
                   ("https://example.test/x",))
    assert Descriptor.from_dict(d.to_dict()) == d
    assert Descriptor(OCI_MANIFEST, Digest.parse(GOOD), 1).to_dict() == \
        {"mediaType": OCI_MANIFEST, "digest": GOOD, "size": 1}


@pytest.mark.parametrize("bad", [
    None, [], {"mediaType": OCI_MANIFEST, "size": 1}, {"digest": "sha256:zz", "size": 1},
    {"digest": GOOD, "size": -1}, {"digest": GOOD, "size": "1"}, {"digest": GOOD, "size": True},
    {"digest": GOOD, "size": 1, "annotations": {"a": 1}}, {"digest": GOOD, "size": 1, "urls": "x"},
], ids=repr)
def test_descriptor_from_bad_dict_raises(bad):
    with pytest.raises(InvalidDescriptor):
        Descriptor.from_dict(bad)


# ---------------------------------------------------------------- opening

def test_open_creates_the_oci_layout_idempotently(tmp_path):
    st = Store.open(tmp_path / "s")
    for p in (st.blobs_dir / "sha256", st.ingest_dir, st.snapshots_dir, st.containers_dir):
        assert p.is_dir(), p
    assert json.loads((st.root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert json.loads((st.root / "index.json").read_text())["manifests"] == []
    d = st.put(b"x")
    st.tag("example.test/a:1", Descriptor(OCI_MANIFEST, d, 1))
    again = Store.open(tmp_path / "s")
    assert again.resolve("example.test/a:1").digest == d


@pytest.mark.parametrize("name,files,error", [
    ("other layout version", {"oci-layout": '{"imageLayoutVersion": "2.0.0"}'}, NotAStore),
    ("oci-layout not json", {"oci-layout": "{not json"}, CorruptStore),
    ("index.json not json", {"oci-layout": '{"imageLayoutVersion": "1.0.0"}', "index.json": '{"schemaVer'},
     CorruptStore),
    ("index.json not an index", {"oci-layout": '{"imageLayoutVersion": "1.0.0"}', "index.json": "[]"},
     CorruptStore),
    ("index.json manifests not a list",
     {"oci-layout": '{"imageLayoutVersion": "1.0.0"}', "index.json": '{"schemaVersion":2,"manifests":{}}'},
     CorruptStore),
    ("a foreign non-empty directory", {"notes.txt": "mine"}, NotAStore),
])
def test_open_refuses_what_is_not_a_store(tmp_path, name, files, error):
    root = tmp_path / "s"
    root.mkdir()
    for rel, text in files.items():
        (root / rel).write_text(text)
    before = sorted(os.listdir(root))
    with pytest.raises(error) as e:
        Store.open(root)
    assert str(root) in str(e.value) and "\n" not in str(e.value)
    if "oci-layout" not in files:
        assert sorted(os.listdir(root)) == before  # nothing written into a foreign directory


def test_open_accepts_a_layout_written_by_skopeo_style_tools(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    d = Digest.of_bytes(b"m")
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": str(d), "size": 1,
         "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))
    assert [(n, x.digest) for n, x in Store.open(root).refs()] == [("latest", d)]


# ---------------------------------------------------------------- blobs

def test_put_then_read_open_size_path_delete(tmp_path):
    st = Store.open(tmp_path / "s")
    d = st.put(b"hello")
    assert d == Digest.of_bytes(b"hello") and st.has(d)
    assert st.read(d) == b"hello" and st.size(d) == 5
    with st.open(d) as f:
        assert f.read() == b"hello"
    assert st.path(d) == st.blobs_dir / "sha256" / d.hex
    assert stat.S_IMODE(os.stat(st.path(d)).st_mode) == 0o444
    assert st.put(b"hello", d) == d  # already there: success
    st.delete(d)
    assert not st.has(d)
    for call in (st.read, st.open, st.size, st.path, st.delete):
        with pytest.raises(BlobNotFound):
            call(d)


def test_put_with_wrong_digest_stores_nothing(tmp_path):
    st = Store.open(tmp_path / "s")
    with pytest.raises(DigestMismatch):
        st.put(b"evil", Digest.of_bytes(b"good"))
    assert list((st.blobs_dir / "sha256").iterdir()) == [] and list(st.ingest_dir.iterdir()) == []


def test_read_is_bounded(tmp_path):
    st = Store.open(tmp_path / "s")
    d = st.put(b"x" * 1000)
    assert st.read(d, limit=1000) == b"x" * 1000
    with pytest.raises(BlobTooLarge):
        st.read(d, limit=999)


def test_read_detects_a_corrupted_blob(tmp_path):
    st = Store.open(tmp_path / "s")
    d = st.put(b"manifest")
    p = st.path(d)
    os.chmod(p, 0o644)
    p.write_bytes(b"tampered")
    with pytest.raises(DigestMismatch):
        st.read(d)


# ---------------------------------------------------------------- ingest

DATA = os.urandom(3 * 1024 * 1024 + 17)


def test_ingest_writes_hashes_and_commits_read_only(tmp_path):
    st = Store.open(tmp_path / "s")
    d = Digest.of_bytes(DATA)
    with st.ingest(d, len(DATA)) as w:
        assert not w.exists and w.offset == 0
        for i in range(0, len(DATA), 65536):
            w.write(DATA[i:i + 65536])
        assert not st.has(d)  # never visible before commit
        w.commit()
    assert st.has(d) and st.open(d).read() == DATA
    assert stat.S_IMODE(os.stat(st.path(d)).st_mode) == 0o444
    assert list(st.ingest_dir.iterdir()) == []  # no partial, no lock file left behind
    with st.ingest(d, len(DATA)) as w:
        assert w.exists
        w.commit()  # no-op
    assert list(st.ingest_dir.iterdir()) == []


def test_ingest_abandoned_before_any_byte_leaves_nothing(tmp_path):
    st = Store.open(tmp_path / "s")
    with st.ingest(Digest.of_bytes(b"never"), 5) as w:
        assert w.offset == 0
    assert list(st.ingest_dir.iterdir()) == []


@pytest.mark.parametrize("how", ["put", "ingest"])
def test_sha512_blobs_live_under_blobs_sha512(tmp_path, how):
    st = Store.open(tmp_path / "s")
    d = Digest.of_bytes(b"five!", "sha512")
    if how == "put":
        assert st.put(b"five!", d) == d
    else:
        with st.ingest(d, 5) as w:
            w.write(b"five!")
            w.commit()
    assert st.path(d) == st.blobs_dir / "sha512" / d.hex and st.read(d) == b"five!"


def test_ingest_without_commit_keeps_a_resumable_partial(tmp_path):
    st = Store.open(tmp_path / "s")
    d = Digest.of_bytes(DATA)
    with st.ingest(d, len(DATA)) as w:
        w.write(DATA[:1000])
    assert not st.has(d)
    with st.ingest(d, len(DATA)) as w:
        assert w.offset == 1000
        w.write(DATA[1000:])
        w.commit()
    assert st.read(d, limit=len(DATA)) == DATA


def test_ingest_reset_starts_over(tmp_path):
    st = Store.open(tmp_path / "s")
    d = Digest.of_bytes(DATA)
    with st.ingest(d, len(DATA)) as w:
        w.write(b"garbage that the server sent before ignoring Range")
        w.reset()
        assert w.offset == 0
        w.write(DATA)
        w.commit()
    assert st.has(d)


WRITER = r"""
import sys, time
from store import Store, Digest
root, digest, n, src = sys.argv[1], Digest.parse(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
data = open(src, "rb").read()
st = Store.open(root)
with st.ingest(digest, len(data)) as w:
    w.write(data[w.offset:n])
    print(w.offset, flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("cut", [0, 1, 1 << 20, len(DATA) - 1])
def test_ingest_resumes_after_the_writer_is_sigkilled(tmp_path, cut):
    st = Store.open(tmp_path / "s")
    src = tmp_path / "src"
    src.write_bytes(DATA)
    d = Digest.of_bytes(DATA)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(st.root), str(d), str(cut), str(src)],
                            stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert int(proc.stdout.readline()) == cut
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert not st.has(d)
    with st.ingest(d, len(DATA)) as w:  # the dead writer's lock is gone with it
        assert w.offset == cut
        w.write(DATA[cut:])
        assert w.commit() == d
    assert st.has(d) and st.open(d).read() == DATA and Digest.of_bytes(st.open(d).read()) == d


def test_digest_mismatch_leaves_nothing(tmp_path):
    st = Store.open(tmp_path / "s")
    d = Digest.of_bytes(DATA)
    with st.ingest(d, len(DATA)) as w:
        w.write(DATA[:-1] + b"\0")
        with pytest.raises(DigestMismatch):
            w.commit()
    assert not st.has(d)
    assert list((st.blobs_dir / "sha256").iterdir()) == []
    assert not any(p.name.endswith(".partial") for p in st.ingest_dir.iterdir())


def test_size_mismatch_short_keeps_partial_and_long_discards_it(tmp_path):
    st = Store.open(tmp_path / "s")
    d = Digest.of_bytes(DATA)
    with st.ingest(d, len(DATA)) as w:
        w.write(DATA[:100])
        with pytest.raises(SizeMismatch):
            w.commit()
    with st.ingest(d, len(DATA)) as w:
        assert w.offset == 100
        with pytest.raises(SizeMismatch):
            w.write(DATA[100:] + b"extra")
        assert w.offset == 0
    with st.ingest(d, len(DATA)) as w:
        assert w.offset == 0
    assert not st.has(d)


def test_ingest_of_an_existing_blob_with_another_size_is_refused(tmp_path):
    st = Store.open(tmp_path / "s")
    d = st.put(b"four")
    with pytest.raises(SizeMismatch):
        with st.ingest(d, 5):
            pass


def _ingest_once(root, digest, data, started, results, first):
    st = Store.open(root)
    d = Digest.parse(digest)
    if not first:
        started.wait(30)
    with st.ingest(d, len(data)) as w:
        if first:
            started.set()
            time.sleep(0.5)  # hold the digest lock while the others try to start
        if w.exists:
            results.put("exists")
            return
        w.write(data)
        w.commit()
        results.put("wrote")


def test_concurrent_ingest_of_one_digest_writes_it_once(tmp_path):
    st = Store.open(tmp_path / "s")
    data = DATA[:200_000]
    d = Digest.of_bytes(data)
    started, results = MP.Event(), MP.Queue()
    procs = [MP.Process(target=_ingest_once, args=(str(st.root), str(d), data, started, results, i == 0))
             for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    outcomes = sorted(results.get(timeout=5) for _ in procs)
    assert [p.exitcode for p in procs] == [0] * 4
    assert outcomes == ["exists", "exists", "exists", "wrote"]
    assert st.read(d) == data


# ---------------------------------------------------------------- refs

def test_tag_resolve_untag_refs(tmp_path):
    st = Store.open(tmp_path / "s")
    a, b = st.put(b"a"), st.put(b"b")
    st.tag(FULL_NAME, Descriptor(OCI_MANIFEST, a, 1, annotations={"x": "y"}))
    st.tag("example.test/app@sha256:" + "c" * 64, Descriptor(OCI_MANIFEST, b, 1))
    got = st.resolve(FULL_NAME)
    assert got.digest == a and got.annotations == {
        "x": "y", "org.opencontainers.image.ref.name": FULL_NAME, "io.containerd.image.name": FULL_NAME}
    st.tag(FULL_NAME, Descriptor(OCI_MANIFEST, b, 1))  # retag replaces in place
    assert [(n, x.digest) for n, x in st.refs()] == [(FULL_NAME, b), ("example.test/app@sha256:" + "c" * 64, b)]
    st.untag(FULL_NAME)
    with pytest.raises(RefNotFound):
        st.resolve(FULL_NAME)
    with pytest.raises(RefNotFound):
        st.untag(FULL_NAME)


@pytest.mark.parametrize("name", ["", "a b", "a\nb", "tab\tname"], ids=repr)
def test_tag_rejects_invalid_names(tmp_path, name):
    st = Store.open(tmp_path / "s")
    with pytest.raises(StoreError):
        st.tag(name, Descriptor(OCI_MANIFEST, st.put(b"a"), 1))


def _tag_many(root, worker, desc_dict, barrier):
    barrier.wait(30)
    st = Store.open(root)  # 8 processes create the layout at once
    desc = Descriptor.from_dict(desc_dict)
    for i in range(50):
        st.tag(f"registry.test/w{worker}/img{i}:latest", desc)


def test_eight_processes_tagging_at_once_lose_no_ref_and_never_tear_index(tmp_path):
    root = tmp_path / "s"
    desc = Descriptor(OCI_MANIFEST, Digest.of_bytes(b"m"), 1)
    barrier = MP.Barrier(8)
    procs = [MP.Process(target=_tag_many, args=(str(root), w, desc.to_dict(), barrier)) for w in range(8)]
    for p in procs:
        p.start()
    reads, last, index = 0, 0, root / "index.json"
    while any(p.is_alive() for p in procs) or reads == 0:
        try:
            raw = index.read_bytes()
        except FileNotFoundError:
            continue
        doc = json.loads(raw)  # a torn file would raise here
        n = len(doc["manifests"])
        assert n >= last, "a ref disappeared"
        last, reads = n, reads + 1
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 8
    names = [n for n, _ in Store.open(root).refs()]
    assert len(names) == 400 and set(names) == {f"registry.test/w{w}/img{i}:latest"
                                                for w in range(8) for i in range(50)}
    assert not [p for p in root.iterdir() if p.name.startswith("imagetool-")]


# ---------------------------------------------------------------- gc

def _old(path: Path, seconds: float = 7200) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t), follow_symlinks=False)


def test_gc_keeps_reachable_and_removes_unreachable(tmp_path):
    st = Store.open(tmp_path / "s")
    kept_desc, kept_blobs, kept_diffs = _store_image(st, FULL_NAME, "kept")
    _, gone_blobs, gone_diffs = _store_image(st, None, "gone")
    # an index (as pulled for a multi-platform tag) whose child manifest is another image
    _, child_blobs, child_diffs = _store_image(st, None, "child")
    idx = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": str(child_blobs[0]), "size": st.size(child_blobs[0])},
        {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "9" * 64, "size": 3}]}).encode()  # missing: tolerated
    idx_d = st.put(idx)
    st.tag("example.test/multi:1", Descriptor(OCI_INDEX, idx_d, len(idx)))
    in_container = "e" * 64
    for h in kept_diffs + gone_diffs + child_diffs + [in_container, "f" * 64]:
        (st.snapshots_dir / h).mkdir()
        (st.snapshots_dir / h / "file").write_text(h)
    (st.containers_dir / "c1").mkdir()
    (st.containers_dir / "c1" / "state.json").write_text(json.dumps({"snapshots": [f"sha256:{in_container}"]}))
    (st.containers_dir / "c2").mkdir()  # being created: no state.json yet
    young_tmp = st.snapshots_dir / "imagetool-unpack-young"
    old_tmp = st.snapshots_dir / "imagetool-unpack-old"
    young_tmp.mkdir()
    old_tmp.mkdir()
    _old(old_tmp)
    stranger = st.snapshots_dir / "not-a-snapshot"
    stranger.mkdir()
    gone_bytes = sum(st.size(d) for d in gone_blobs)

    report = st.gc()

    expectations = [(f"blob {d}", st.blobs_dir / "sha256" / d.hex, True) for d in kept_blobs + child_blobs] \
        + [(f"index blob", st.blobs_dir / "sha256" / idx_d.hex, True)] \
        + [(f"unreachable blob {d}", st.blobs_dir / "sha256" / d.hex, False) for d in gone_blobs] \
        + [(f"snapshot of reachable diff_id {h}", st.snapshots_dir / h, True) for h in kept_diffs + child_diffs] \
        + [(f"snapshot of unreachable diff_id {h}", st.snapshots_dir / h, False) for h in gone_diffs] \
        + [("snapshot in use by a container", st.snapshots_dir / in_container, True),
           ("unreferenced snapshot", st.snapshots_dir / ("f" * 64), False),
           ("young temp dir", young_tmp, True), ("old temp dir", old_tmp, False),
           ("a directory gc did not create", stranger, True)]
    wrong = [what for what, path, keep in expectations if path.exists() != keep]
    assert wrong == []
    assert report == GCReport(blobs=len(gone_blobs), bytes=gone_bytes,
                              snapshots=len(set(gone_diffs)) + 1, ingests=0)
    assert st.resolve(FULL_NAME).digest == kept_desc.digest
    assert st.gc() == GCReport(0, 0, 0, 0)  # idempotent


def test_gc_removes_old_ingests_and_keeps_fresh_ones(tmp_path):
    st = Store.open(tmp_path / "s")
    old_d, new_d = Digest.of_bytes(b"old"), Digest.of_bytes(b"new")
    for d in (old_d, new_d):
        with st.ingest(d, 3) as w:
            w.write(b"ol")
    _old(st.ingest_dir / f"{old_d.hex}.partial", 7200)
    report = st.gc(ingest_max_age=3600)
    assert report.ingests == 1
    assert not (st.ingest_dir / f"{old_d.hex}.partial").exists()
    assert (st.ingest_dir / f"{new_d.hex}.partial").exists()
    with st.ingest(new_d, 3) as w:
        assert w.offset == 2


def test_gc_keeps_all_snapshots_when_a_container_state_is_unreadable(tmp_path):
    st = Store.open(tmp_path / "s")
    (st.snapshots_dir / ("f" * 64)).mkdir()
    (st.containers_dir / "c1").mkdir()
    (st.containers_dir / "c1" / "state.json").write_text('{"snapshots": [')
    assert st.gc().snapshots == 0
    assert (st.snapshots_dir / ("f" * 64)).is_dir()


def test_gc_removes_hostile_snapshot_trees_without_following_symlinks(tmp_path):
    st = Store.open(tmp_path / "s")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    snap = st.snapshots_dir / ("d" * 64)
    (snap / "ro" / "deeper").mkdir(parents=True)
    (snap / "ro" / "deeper" / "f").write_text("x")
    os.chmod(snap / "ro" / "deeper" / "f", 0o000)
    os.chmod(snap / "ro" / "deeper", 0o500)
    os.chmod(snap / "ro", 0o000)
    (snap / "link-out").symlink_to(outside)
    (snap / "link-file").symlink_to(outside / "precious")
    os.mkfifo(snap / "fifo")
    if os.geteuid() == 0:
        os.mknod(snap / "whiteout", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    os.chmod(snap, 0o555)
    assert st.gc().snapshots == 1
    assert not snap.exists() and list(st.snapshots_dir.iterdir()) == []
    assert (outside / "precious").read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
@pytest.mark.parametrize("where", ["an old temp dir", "a dir inside a snapshot"])
def test_gc_refuses_to_remove_anything_on_a_mount(tmp_path, where):
    st = Store.open(tmp_path / "s")
    if where == "an old temp dir":
        victim = mnt = st.snapshots_dir / "imagetool-tmp-crashed"
    else:
        victim, mnt = st.snapshots_dir / ("c" * 64), st.snapshots_dir / ("c" * 64) / "sub"
    mnt.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "imagetool-test", str(mnt)], check=True)
    mounted = lambda: [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
                       if line.startswith("imagetool-test ") and line.split()[1].startswith(str(tmp_path))]
    try:
        (mnt / "precious").write_text("keep me")
        _old(victim)
        with pytest.raises(StoreError, match="mount point"):
            st.gc()
        (where_now,) = mounted()     # a swept snapshot is renamed first: the mount moves with it
        assert (Path(where_now) / "precious").read_text() == "keep me"
    finally:
        for m in mounted():
            subprocess.run(["umount", "-l", m], check=True)


def test_gc_refuses_when_the_caller_holds_the_shared_lock(tmp_path):
    st = Store.open(tmp_path / "s")
    with st.lock_shared():
        with pytest.raises(StoreError):
            st.gc()


PULLER = r"""
import json, sys
from store import Store, Descriptor
st = Store.open(sys.argv[1])
with st.lock_shared():
    d = st.put(b'{"schemaVersion": 2, "layers": []}')
    print(d, flush=True)
    sys.stdin.readline()            # the test says: finish the pull
    st.tag("example.test/pulling:1", Descriptor("application/vnd.oci.image.manifest.v1+json", d, st.size(d)))
"""


def test_gc_waits_for_a_pull_holding_the_shared_lock(tmp_path):
    st = Store.open(tmp_path / "s")
    proc = subprocess.Popen([sys.executable, "-c", PULLER, str(st.root)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=_env())
    reports = []
    try:
        d = Digest.parse(proc.stdout.readline().strip())
        assert st.has(d)  # written, not yet tagged
        t = threading.Thread(target=lambda: reports.append(st.gc()))
        t.start()
        t.join(1.0)  # without the lock, gc would sweep the untagged blob now
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(30) == 0
        t.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    assert reports == [GCReport(0, 0, 0, 0)]
    assert st.has(d) and st.resolve("example.test/pulling:1").digest == d


# ---------------------------------------------------------------- interop with skopeo and umoci

def _tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.skip(f"{name} is not installed")
    return path


def test_skopeo_and_umoci_read_a_store_filled_through_the_api(tmp_path):
    skopeo, umoci = _tool("skopeo"), _tool("umoci")
    st = Store.open(tmp_path / "s")
    assert ":" not in str(st.root)  # skopeo's oci: transport splits at the first ':'
    desc, blobs, _ = _store_image(st, FULL_NAME)
    r = subprocess.run([skopeo, "inspect", f"oci:{st.root}:{FULL_NAME}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["Digest"] == str(desc.digest)
    r = subprocess.run([skopeo, "inspect", "--raw", f"oci:{st.root}:{FULL_NAME}"], capture_output=True)
    assert r.returncode == 0 and r.stdout == st.read(desc.digest)
    r = subprocess.run([umoci, "ls", "--layout", str(st.root)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert FULL_NAME in r.stdout.split()
    r = subprocess.run([umoci, "stat", "--image", f"{st.root}:{FULL_NAME}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_an_image_copied_in_by_skopeo_is_resolvable_and_survives_gc(tmp_path):
    skopeo = _tool("skopeo")
    src = Store.open(tmp_path / "src")
    desc, blobs, _ = _store_image(src, FULL_NAME)
    dst = Store.open(tmp_path / "dst")
    name = "example.test/copied/app:v1"
    r = subprocess.run([skopeo, "copy", "--quiet", f"oci:{src.root}:{FULL_NAME}", f"oci:{dst.root}:{name}"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    dst = Store.open(dst.root)
    got = dst.resolve(name)
    assert dst.gc().blobs == 0
    assert all(dst.has(d) for d in [got.digest]) and dst.read(got.digest)
    r = subprocess.run([skopeo, "inspect", f"oci:{dst.root}:{name}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
