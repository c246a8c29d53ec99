"""Per-layer snapshots: each layer extracted once into `snapshots/<diffid-hex>/`, overlay format.

Snapshot lifecycle (the contract):
1. `snapshots/<hex>/` exists  ⇒ it is complete and never changes again (read-only lowerdir).
2. Creating one: extract into `snapshots/imagetool-tmp-<random>/` (overlay whiteouts, see apply.py),
   drain and verify the diff_id and reach the blob's verified end (a download followed through
   fetch.BlobTap ends only once its digest checked out), then `rename()` it to `<hex>` — the point
   of no return. `build_snapshots` does this for several layers at once, from stored blobs
   (`ensure_snapshots`) or from downloads in progress (pull).
3. Two processes racing on the same layer both extract; the loser's rename fails because the
   name exists, and it discards its temp dir and uses the winner's. Both succeed.
4. Any failure (diff_id mismatch, corrupt or truncated data, limits, unsafe entries) removes the
   temp dir: no partial snapshot is ever visible under a diff_id.
5. The store's shared GC lock is held while creating, so `gc` never removes a snapshot that is
   being made; callers that make the snapshots reachable (a container's state.json) should hold
   `store.lock_shared()` themselves across both steps.

While a snapshot is built, paths resolve through the merged view of the lower snapshots (a lower
symlink is followed, a lower directory a layer writes into is copied up with its attributes, a
hardlink to a lower file copies that file up), exactly as if the layer were applied onto the
mounted overlay. Such a snapshot therefore assumes the lower layers it was built on, yet it is
keyed by diff_id (the contract, and what gc keeps): two images that share a layer over different
bases share its snapshot. Docker/BuildKit layers write parent directories explicitly, so this only
matters for hand-made layers; a ChainID key would be exact.

Durability: snapshot files are not fsynced (a crash during extraction leaves only a temp dir,
which gc removes; a crash right after the rename may leave a snapshot with unwritten data on
filesystems without ordered data mode).
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path

from imagetool.errors import UnpackError

TEMP_PREFIX = "imagetool-tmp-"
WORKERS = 2   # layers in progress at once; one of them applies entries at a time (see build_snapshots)
PREFETCH = 8  # chunks (layers.CHUNK, 256 KiB) decoded ahead per layer in progress: 2 MiB (LayerStream's
              # default is 8 MiB for one). The tar reader's buffers and the writer's batches hold views of
              # the chunks (issue 16: with 1 MiB chunks, 2 ahead, the 1.26 GB pull peaked at 62-63 MB;
              # with these, 52-56 MB)


def make_temp_dir(parent: Path) -> Path:
    """A new directory `parent/imagetool-tmp-<random>`, mode 0755 (what tempfile.mkdtemp does,
    without loading tempfile and random on the unpack path: os.urandom names, O_EXCL by mkdir)."""
    for _ in range(100):
        tmp = parent / f"{TEMP_PREFIX}{os.urandom(6).hex()}"
        try:
            os.mkdir(tmp, 0o700)
        except FileExistsError:
            continue
        try:
            os.chmod(tmp, 0o755)   # whatever the umask
        except BaseException:
            os.rmdir(tmp)
            raise
        return tmp
    raise UnpackError(f"cannot make a temporary directory in {parent}")


def remove_tree(path: Path) -> None:
    """Remove a temp dir and everything in it, ignoring errors (shutil loaded only here)."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _layer_pairs(image) -> list:
    layers = list(image.manifest.layers)
    diff_ids = list(image.config.diff_ids)
    if len(layers) != len(diff_ids):
        raise UnpackError(f"image {image.name}: {len(layers)} layers but {len(diff_ids)} diff_ids in its config")
    return list(zip(layers, diff_ids))


def ensure_snapshots(store, image, limits: Limits | None = None, workers: int = WORKERS) -> list[Path]:
    """The snapshot directories of `image`'s layers, base first, creating those that are missing
    from the stored blobs (`workers` layers at a time, see build_snapshots)."""

    def from_store(i: int, desc):
        return store.open(desc.digest)

    with store.lock_shared():
        return build_snapshots(store, _layer_pairs(image), from_store, limits, workers)


def build_snapshots(store, pairs: list, open_layer, limits: Limits | None = None, workers: int = WORKERS,
                    on_done=None) -> list[Path]:
    """Make the missing snapshots of `pairs` [(layer descriptor, diff_id)], base first; returns
    every layer's snapshot directory, base first. The caller holds `store.lock_shared()`.

    `open_layer(i, desc)` returns the layer's blob as a context-managed stream whose `read(n)`
    returns b"" only once the blob is complete and its digest verified (a stored blob; or
    fetch.BlobTap's reader of a blob still downloading, which blocks while the download is
    behind). A snapshot is renamed to its diff_id only after the stream's end AND the diff_id
    check: a corrupt or cut download leaves no usable snapshot.

    Concurrency, exact: up to `workers` layers are in progress at once, taken base first, and one
    of them applies entries at a time (a turn: Python's tar loop is CPU-bound under one lock, so
    two at once only contend); a layer waiting for bytes of its download, or for its lower
    snapshots, gives the turn to another whose bytes are there. A layer
    waits for its lower snapshots only when one of its entries needs the merged lower view (a
    parent directory it does not carry, a hardlink to a lower file, a whiteout or opaque marker
    over lower content: the only places apply.py consults unpack/lowerview.py). So every snapshot
    is byte for byte what the one-at-a-time build makes, and the limit in the module docstring
    (a snapshot keyed by diff_id is built over the lower layers of the first image that made it)
    is no worse. Deadlock-free: the lowest unfinished layer never waits on another.
    The first failure in time is raised; it stops the other layers (their readers are aborted,
    their temp dirs removed); snapshots already committed stay (they are complete).
    `on_done(i)`, when given, is called as layer i's snapshot is committed."""
    finals = [store.snapshot_path(diff_id) for _, diff_id in pairs]
    if all(p.is_dir() for p in finals):   # all made already (the run of a present image): nothing to load
        if on_done is not None:
            for i in range(len(finals)):
                on_done(i)
        return finals
    import threading

    from imagetool.unpack.layers import Limits

    limits = limits or Limits.from_env()
    done = [threading.Event() for _ in pairs]
    turn = _Turn() if workers > 1 and len(pairs) > 1 else None
    failed: list = [None] * len(pairs)
    first: list = []               # the first failure in time; the others are its consequences
    lock = threading.Lock()
    readers: dict = {}             # layer index -> its open stream (aborted after a failure)

    def lowers_ready(i: int):
        def ready() -> None:
            with turn.given_up() if turn is not None else nullcontext():
                for j in range(i):
                    done[j].wait()
                    if failed[j] is not None:
                        raise LowerFailed(f"layer {i + 1}: lower layer {j + 1} failed")
        return ready

    def one(i: int) -> None:
        desc, diff_id = pairs[i]
        try:
            if first:
                raise LowerFailed(f"layer {i + 1}: not unpacked after an earlier failure")
            if not finals[i].is_dir():
                with open_layer(i, desc) as raw:
                    with lock:
                        readers[i] = raw
                    try:
                        _create(raw, desc, diff_id, finals[i], tuple(reversed(finals[:i])), limits,
                                f"layer {i + 1} ({desc.digest})", lowers_ready(i), turn)
                    finally:
                        with lock:
                            readers.pop(i, None)
            if on_done is not None:
                on_done(i)
        except BaseException as e:
            failed[i] = e
            with lock:
                if not first:
                    first.append(e)
                    for r in readers.values():   # the others stop instead of waiting for bytes
                        abort = getattr(r, "abort", None)
                        if abort is not None:
                            abort()
            raise
        finally:
            done[i].set()

    todo = list(range(len(pairs)))
    if workers <= 1 or len(todo) <= 1:
        for i in todo:
            one(i)
        return finals
    from concurrent.futures import ThreadPoolExecutor, wait

    with ThreadPoolExecutor(max_workers=min(workers, len(todo)), thread_name_prefix="imagetool-unpack") as pool:
        futures = [pool.submit(one, i) for i in todo]
        try:
            wait(futures)
        except BaseException as e:    # an interrupt: the workers stop too, without waiting for bytes
            with lock:
                first.append(e)
                for r in readers.values():
                    abort = getattr(r, "abort", None)
                    if abort is not None:
                        abort()
            raise
    if first:
        raise first[0]
    return finals


class _Turn:
    """The right to apply entries: held while a layer's tar loop runs, given up while it waits."""

    def __init__(self):
        import threading

        self._lock = threading.Lock()

    def __enter__(self) -> "_Turn":
        self._lock.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()

    @contextmanager
    def given_up(self):
        self._lock.release()
        try:
            yield
        finally:
            self._lock.acquire()


class _TakingTurns:
    """A LayerStream as the tar loop reads it: a read that would wait gives up the turn first."""

    def __init__(self, stream, turn: _Turn):
        self.stream, self.turn = stream, turn

    def read(self, n: int = -1) -> bytes:
        if self.stream.ready():
            return self.stream.read(n)
        with self.turn.given_up():
            return self.stream.read(n)


class LowerFailed(UnpackError):
    """A layer needed the lower view, and a lower snapshot failed (that failure is the one raised)."""


def _create(raw, desc, diff_id, final: Path, lowers: tuple, limits: Limits, name: str, lowers_ready=None,
            turn: _Turn | None = None) -> None:
    from imagetool.unpack.apply import Applier  # lazy: `run` of an unpacked image never applies a layer
    from imagetool.unpack.layers import LayerStream

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(final.parent)
    try:
        applier = Applier(tmp, "overlay", lowers=lowers, limits=limits, lowers_ready=lowers_ready)
        try:
            stream = LayerStream(raw, desc.media_type, diff_id, limits, name=name,
                                 prefetch=PREFETCH if turn is not None else None)
            try:
                if turn is None:
                    applier.apply(stream, name)
                else:
                    with turn:
                        applier.apply(_TakingTurns(stream, turn), name)
                stream.finish()          # the diff_id of everything that streamed through
                if raw.read(1):          # the blob's end: verified (contract of open_layer)
                    raise UnpackError(f"{name}: bytes after the end of the compressed layer")
            except BaseException:
                abort = getattr(raw, "abort", None)   # a reader waiting for a download: stop it,
                if abort is not None:                 # so close() below need not wait for bytes
                    abort()
                raise
            finally:
                stream.close()
            applier.finish()
        finally:
            applier.close()
        # point of no return: the snapshot appears complete under its diff_id, or not at all
        try:
            os.rename(tmp, final)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST) and final.is_dir():
                remove_tree(tmp)   # another process won the race: use its snapshot
                return
            raise UnpackError(f"cannot commit snapshot {final}: {e.strerror}") from None
    except BaseException:
        remove_tree(tmp)
        raise
