"""Cold runs, pipelined: `pull` (and `run` of a missing image) builds each layer's snapshot while
its blob downloads. Every snapshot equals the one-at-a-time build from the stored blob; a corrupt,
cut or killed download never leaves a usable snapshot or a ref; a killed pull run again reuses
what was finished; layers unpack concurrently yet a layer needing its lower view waits for it."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from test_pull_support import assert_consistent, random_layer, refs

from fixtures.corpus import hostile_corpus, import_image, oracle_corpus, tree_digest, tree_manifest
from fixtures.images import Layer, build_image
from fixtures.tarbuild import directory, file, symlink, whiteout


def _snapshots_ok() -> bool:
    from imagetool.pull import snapshots_usable

    return snapshots_usable()


pytestmark = pytest.mark.skipif(not _snapshots_ok(), reason="snapshots need root and overlayfs")


def _layers():
    """Three layers: a base, one writing through the base's symlink and whiting out, a big one."""
    return [Layer([directory("etc"), file("etc/os-release", b"ID=cold\n"), directory("real"),
                   symlink("link", "real"), file("gone", b"x")]),
            Layer([file("link/through", b"written through the lower symlink"), whiteout("gone")]),
            random_layer(400_000, name="big.bin")]


def _tree(path) -> dict:
    """tree_manifest of a snapshot, without the mtimes of overlay whiteouts (made 'now')."""
    return {k: (v[:7] + (None,) + v[8:] if v[0] == "char" and v[5] == "0:0" else v)
            for k, v in tree_manifest(path).items()}


def _reference(tmp_path: Path, built, name: str) -> dict:
    """diff_id hex -> tree of each snapshot built one layer at a time from stored blobs."""
    from store import Store

    from imagetool import image as images
    from imagetool.unpack.snapshots import ensure_snapshots

    st = Store.open(tmp_path / f"ref-{name.replace('/', '-')}")
    img = images.load(st, import_image(st, built, f"localhost/{name}"))
    return {p.name: _tree(p) for p in ensure_snapshots(st, img, workers=1)}


def _snapshots(store_dir: Path) -> dict:
    return {p.name: _tree(p) for p in (store_dir / "snapshots").iterdir()
            if not p.name.startswith("imagetool-")}


def _temp_snapshots(store_dir: Path) -> list:
    return [p.name for p in (store_dir / "snapshots").iterdir() if p.name.startswith("imagetool-")]


def _diff_hexes(built) -> set:
    return {la.diff_id.split(":")[1] for la in built.layers}


# ------------------------------------------------------------------ the pipelined pull


def test_pull_prepares_snapshots_equal_to_the_sequential_build(registry, cli, store_dir, tmp_path):
    img = build_image(_layers())
    registry.push(img, "cold/three:v1")
    r = cli("pull", f"{registry.host}/cold/three:v1")
    assert r.returncode == 0, r.stderr
    assert _snapshots(store_dir) == _reference(tmp_path, img, "cold/three")
    assert set(_snapshots(store_dir)) == _diff_hexes(img)
    assert not _temp_snapshots(store_dir)


def test_no_unpack_stores_only_blobs_and_a_repull_prepares_them_without_downloading(
        registry, cli, store_dir, tmp_path):
    img = build_image(_layers())
    registry.push(img, "cold/nounpack:v1")
    ref = f"{registry.host}/cold/nounpack:v1"
    cli("pull", "--no-unpack", ref, check=True)
    assert _snapshots(store_dir) == {}
    mark = registry.mark()
    r = cli("pull", ref, check=True)
    assert "Image is up to date" in r.stdout
    assert not [p for m, p, s in registry.requests(mark) if "/blobs/" in p]
    assert _snapshots(store_dir) == _reference(tmp_path, img, "cold/nounpack")


def test_blob_corrupted_in_transit_leaves_no_snapshot_and_no_ref(registry, cli, store_dir):
    from fixtures.proxy import Fault, FaultProxy

    img = build_image(_layers())
    registry.push(img, "cold/corrupt:v1")
    with FaultProxy(registry.url) as proxy:
        proxy.add(Fault("corrupt", f"/blobs/{img.layers[2].digest}"))
        r = cli("pull", f"{proxy.host}/cold/corrupt:v1")
    assert r.returncode == 1 and "corrupt" in r.stderr and "Traceback" not in r.stderr
    assert img.layers[2].diff_id.split(":")[1] not in _snapshots(store_dir)
    assert not _temp_snapshots(store_dir)
    assert refs(store_dir) == {}


@pytest.mark.parametrize("fault", ["reset", "norange"])
def test_cut_download_resumed_or_restarted_still_gives_exact_snapshots(fault, registry, cli, store_dir, tmp_path):
    """A reset mid-blob resumes with Range (the unpacker keeps reading the same partial); a server
    that then ignores Range restarts from byte 0 (the tap breaks: unpacked from the stored blob)."""
    from fixtures.proxy import Fault, FaultProxy

    img = build_image(_layers())
    registry.push(img, f"cold/{fault}:v1")
    big = f"/blobs/{img.layers[2].digest}"
    with FaultProxy(registry.url) as proxy:
        proxy.add(Fault("reset", big, after=150_000))
        if fault == "norange":
            proxy.add(Fault("norange", big))
        r = cli("pull", f"{proxy.host}/cold/{fault}:v1", env={"IMAGETOOL_RETRY_BACKOFF": "0.05"})
        assert r.returncode == 0, r.stderr
        assert len(proxy.records(big, "GET")) == 2
    assert _snapshots(store_dir) == _reference(tmp_path, img, f"cold/{fault}")
    assert not _temp_snapshots(store_dir)


def _killed(cli, argv: list, until) -> None:
    p = subprocess.Popen(cli.argv(*argv), env=cli.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not until():
            assert p.poll() is None, f"{argv[0]} ended before it could be killed: {p.stderr.read()}"
            assert time.monotonic() < deadline, f"{argv[0]} never reached the point to kill it at"
            time.sleep(0.02)
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        p.stderr.close()


@pytest.mark.parametrize("command", ["pull", "run"])
def test_sigkill_mid_download_and_unpack_then_again_reuses_what_was_finished(
        command, registry, busybox, cli, store_dir, tmp_path):
    from fixtures.proxy import Fault, FaultProxy

    layers = _layers()[:2] + [random_layer(3_000_000, name="big.bin")]
    img = build_image(layers) if command == "pull" else _runnable(busybox, layers)
    registry.push(img, f"cold/killed-{command}:v1")
    big = img.layers[-1]
    partial = store_dir / "ingest" / f"{big.digest.split(':')[1]}.partial"
    with FaultProxy(registry.url) as proxy:
        proxy.add(Fault("throttle", f"/blobs/{big.digest}", times=None, rate=1_000_000))
        ref = f"{proxy.host}/cold/killed-{command}:v1"
        argv = ["pull", ref] if command == "pull" else ["run", "--rm", ref, "cat", "/etc/os-release"]
        # killed while the big layer downloads (the client writes 1 MiB pieces) and is being
        # unpacked into a temp snapshot
        _killed(cli, argv, lambda: partial.exists() and partial.stat().st_size > 0 and _temp_snapshots(store_dir))
        kept = partial.stat().st_size
        assert big.diff_id.split(":")[1] not in _snapshots(store_dir), "a half snapshot is usable"
        assert refs(store_dir) == {}
        finished = set(_snapshots(store_dir))       # the small layers may be complete: reused
        inodes = {n: (store_dir / "snapshots" / n).stat().st_ino for n in finished}
        proxy.clear()
        mark = len(proxy.records())
        r = cli(*argv)
        assert r.returncode == 0, r.stderr
        if command == "run":
            assert r.stdout == "ID=cold\n"
        again = [rec for rec in proxy.records()[mark:] if f"/blobs/{big.digest}" in rec.path]
        assert again and sum(rec.sent for rec in again) <= big.size - kept   # resumed, not restarted
    if command == "run":   # the killed run's record (and its cgroups): reaped by the next `ps`
        cli("ps", "-a", check=True)
        assert [p.name for p in (store_dir / "containers").iterdir() if not p.name.startswith(".")] == []
    assert {n: (store_dir / "snapshots" / n).stat().st_ino for n in finished} == inodes
    assert _snapshots(store_dir) == _reference(tmp_path, img, f"cold/killed-{command}")
    assert assert_consistent(store_dir) == len(img.blobs) + 1   # and the manifest


def test_sigkill_while_unpacking_a_stored_blob_then_again(registry, cli, store_dir, tmp_path):
    img = build_image([Layer([directory("many")] + [file(f"many/f{i}", b"%d" % i) for i in range(30_000)])])
    registry.push(img, "cold/many:v1")
    ref = f"{registry.host}/cold/many:v1"
    cli("pull", "--no-unpack", ref, check=True)
    _killed(cli, ["pull", ref], lambda: _temp_snapshots(store_dir))
    assert _snapshots(store_dir) == {}, "a half snapshot is usable"
    mark = registry.mark()
    cli("pull", ref, check=True)
    assert not [p for m, p, s in registry.requests(mark) if "/blobs/" in p]
    assert _snapshots(store_dir) == _reference(tmp_path, img, "cold/many")


def _runnable(busybox, extra: list):
    """busybox's layer under `extra` layers, busybox's config, the host's platform."""
    from tests.runhelpers import kernel_skip_reason

    from fixtures.images import host_platform

    why = kernel_skip_reason()
    if why:
        pytest.skip(why)
    return build_image(list(busybox.layers) + extra, config=busybox.config["config"], platform=host_platform())


def test_two_cold_runs_at_once_both_succeed_with_one_download(registry, busybox, cli, store_dir, tmp_path):
    from fixtures.proxy import Fault, FaultProxy

    img = _runnable(busybox, _layers())
    registry.push(img, "cold/twice:v1")
    with FaultProxy(registry.url) as proxy:
        proxy.add(Fault("throttle", r"/blobs/", times=None, rate=2_000_000))
        argv = cli.argv("run", "--rm", f"{proxy.host}/cold/twice:v1", "cat", "/etc/os-release")
        runs = [subprocess.Popen(argv, env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
        outs = [r.communicate(timeout=180) for r in runs]
        assert [(r.returncode, out) for r, (out, _) in zip(runs, outs)] == [(0, "ID=cold\n")] * 2, outs
        assert {d: len(proxy.records(f"/blobs/{d}", "GET")) for d in img.blobs} == {d: 1 for d in img.blobs}
    assert _snapshots(store_dir) == _reference(tmp_path, img, "cold/twice")
    assert not _temp_snapshots(store_dir)


def test_cold_run_pulls_unpacks_and_runs(registry, busybox, cli, store_dir):
    img = _runnable(busybox, _layers()[:2])
    registry.push(img, "cold/run:v1")
    r = cli("run", "--rm", f"{registry.host}/cold/run:v1", "cat", "/real/through", "/etc/os-release")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "written through the lower symlinkID=cold\n"
    assert set(_snapshots(store_dir)) == _diff_hexes(img)


# ------------------------------------------------------------------ build_snapshots from taps


def _image(st, built, name: str):
    from imagetool import image as images

    return images.load(st, import_image(st, built, f"localhost/{name}"))


def _pairs(image) -> list:
    return list(zip(image.manifest.layers, image.config.diff_ids))


def _trickle(st, desc, tap, where: Path, chunk: int = 4096, start: threading.Event | None = None):
    """Feed `tap` the stored blob `chunk` bytes at a time from another thread, as a download does
    (after `start` is set, when given); the tap commits at the end."""
    data = Path(st.path(desc.digest)).read_bytes()
    path = where / f"dl-{desc.digest.hex}"
    out = open(path, "wb")

    def feed():
        try:
            if start is not None:
                start.wait(60)
            tap.attach(path, 0)
            for off in range(0, len(data), chunk):
                out.write(data[off:off + chunk])
                out.flush()
                tap.advance(off + len(data[off:off + chunk]))
            tap.commit()
        finally:
            out.close()

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    return t


def test_a_layer_that_needs_no_lower_view_is_unpacked_before_its_lower_layer(store_dir, tmp_path):
    """Layer 2 carries its own parents: it is committed while layer 1 is still 'downloading'
    (layer 1's bytes arrive only once layer 2's snapshot exists; a sequential build would hang)."""
    from store import Store

    from imagetool.fetch import BlobTap
    from imagetool.unpack.snapshots import build_snapshots

    st = Store.open(store_dir)
    built = build_image([Layer([directory("a"), file("a/one", b"1")]), Layer([directory("b"), file("b/two", b"2")])])
    image = _image(st, built, "order/two")
    taps = [BlobTap(), BlobTap()]
    upper_done = threading.Event()
    order = []

    def on_done(i):
        order.append(i)
        if i == 1:
            upper_done.set()

    _trickle(st, image.manifest.layers[0], taps[0], tmp_path, start=upper_done)
    _trickle(st, image.manifest.layers[1], taps[1], tmp_path)
    with st.lock_shared():
        build_snapshots(st, _pairs(image), lambda i, d: taps[i], on_done=on_done)
    assert order == [1, 0]
    assert _snapshots(store_dir) == _reference(tmp_path, built, "order/two")


class _Counting:
    """A tap reader that says when its raw stream was read to its (verified) end."""

    def __init__(self, tap, at_end: threading.Event):
        self.tap, self.at_end = tap, at_end

    def read(self, n=-1):
        data = self.tap.read(n)
        if not data:
            self.at_end.set()
        return data

    def abort(self):
        self.tap.abort()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.tap.close()


def test_a_layer_writing_through_a_lower_symlink_waits_for_the_lower_snapshot(store_dir, tmp_path):
    """Layer 2 writes link/x through layer 1's symlink link -> real and whites out a lower file;
    its bytes are all there before layer 1's first byte, yet its snapshot is the sequential one
    (real/x copied up, a whiteout for gone): it waited for the lower view."""
    from store import Store

    from imagetool.fetch import BlobTap
    from imagetool.unpack.snapshots import build_snapshots

    st = Store.open(store_dir)
    built = build_image(_layers()[:2])
    image = _image(st, built, "gate/two")
    taps = [BlobTap(), BlobTap()]
    upper_read = threading.Event()
    _trickle(st, image.manifest.layers[0], taps[0], tmp_path, start=upper_read)
    _trickle(st, image.manifest.layers[1], taps[1], tmp_path)
    readers = [taps[0], _Counting(taps[1], upper_read)]
    with st.lock_shared():
        build_snapshots(st, _pairs(image), lambda i, d: readers[i])
    got = _snapshots(store_dir)
    assert got == _reference(tmp_path, built, "gate/two")
    upper = got[built.layers[1].diff_id.split(":")[1]]
    assert "real/through" in upper and upper["gone"][0] == "char"


@pytest.mark.parametrize("name", sorted(h.name for h in hostile_corpus("/placeholder")))
def test_hostile_layers_through_the_pipelined_path(name, store_dir, tmp_path):
    """The hostile-layer corpus fed through download taps: the same outcome as from the store,
    nothing outside the store changes, no temp snapshot is left."""
    from store import Store

    from imagetool.errors import UnpackError, UnsafeLayer
    from imagetool.fetch import BlobTap
    from imagetool.unpack.snapshots import build_snapshots

    canary = tmp_path / "canary"
    (canary / "sub").mkdir(parents=True)
    (canary / "victim").write_bytes(b"original victim\n")
    before = tree_digest(canary)
    (h,) = [h for h in hostile_corpus(str(canary)) if h.name == name]
    st = Store.open(store_dir)
    image = _image(st, build_image([Layer(list(la), "gzip") for la in h.layers]), f"hostile/{name}")
    taps = [BlobTap() for _ in image.manifest.layers]
    for d, t in zip(image.manifest.layers, taps):
        _trickle(st, d, t, tmp_path)
    with st.lock_shared():
        if h.outcome == "ok":
            assert len(build_snapshots(st, _pairs(image), lambda i, d: taps[i])) == len(h.layers)
        else:
            with pytest.raises(UnsafeLayer if h.outcome == "refuse" else UnpackError) as ei:
                build_snapshots(st, _pairs(image), lambda i, d: taps[i])
            if h.message:
                assert h.message in str(ei.value)
            assert len(_snapshots(store_dir)) < len(h.layers)
    assert not _temp_snapshots(store_dir)
    assert tree_digest(canary) == before
    assert not Path("/etc/imagetool-pwned").exists()


ORACLE = oracle_corpus()


@pytest.mark.parametrize("name", sorted(ORACLE))
def test_oracle_corpus_through_the_pipelined_path_equals_the_sequential_build(name, store_dir, tmp_path):
    from store import Store

    from imagetool.fetch import BlobTap
    from imagetool.unpack.snapshots import build_snapshots

    st = Store.open(store_dir)
    image = _image(st, ORACLE[name], f"oracle/{name}")
    firsts = {}
    for i, d in enumerate(image.manifest.layers):
        firsts.setdefault(d.digest, i)
    taps = {d.digest: BlobTap() for d in image.manifest.layers}
    for d in image.manifest.layers:
        if firsts[d.digest] == image.manifest.layers.index(d):
            _trickle(st, d, taps[d.digest], tmp_path, chunk=1000)

    def open_layer(i, d):
        return taps[d.digest] if firsts[d.digest] == i else st.open(d.digest)

    with st.lock_shared():
        build_snapshots(st, _pairs(image), open_layer)
    assert _snapshots(store_dir) == _reference(tmp_path, ORACLE[name], f"oracle/{name}")


# ------------------------------------------------------------------ the tap itself


def _tap_with(tmp_path: Path, data: bytes):
    from imagetool.fetch import BlobTap

    path = tmp_path / "partial"
    path.write_bytes(data)
    tap = BlobTap("blob x")
    tap.attach(path, 0)
    tap.advance(len(data))
    return tap, path


def test_tap_ends_only_after_the_blob_is_committed(tmp_path):
    tap, _ = _tap_with(tmp_path, b"0123456789")
    got = []
    reader = threading.Thread(target=lambda: got.extend([tap.read(4), tap.read(100), tap.read(100)]))
    reader.start()
    tap.commit()
    reader.join(30)
    assert got == [b"0123", b"456789", b""]
    tap.fail("a failure after the commit")     # changes nothing: the blob was verified
    assert tap.read(1) == b""
    tap.close()


@pytest.mark.parametrize("event", ["failure", "restart", "reader gave up"])
def test_a_broken_tap_never_ends_like_a_verified_blob(event, tmp_path):
    from imagetool.fetch import TapBroken

    tap, path = _tap_with(tmp_path, b"0123456789")
    assert tap.read(3) == b"012"
    if event == "failure":
        tap.fail("the connection was reset")
    elif event == "restart":
        tap.attach(path, 0)                    # a second attempt from byte 0
    else:
        tap.abort()
    with pytest.raises(TapBroken):
        tap.read(100)
    tap.commit()                               # too late: what was read may not be the blob's
    with pytest.raises(TapBroken):
        tap.read(100)
    tap.close()
