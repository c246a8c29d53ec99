"""Garbage collection: mark what refs reach, sweep unreferenced blobs, snapshots and old ingests.

Marking starts at every descriptor in index.json (named or not) and walks OCI/Docker JSON
generically: an index's `manifests[]`, a manifest's `config` and `layers[]` (and `subject`).
Layers are never parsed. A config's `rootfs.diff_ids` keep `snapshots/<hex>`, and so do the
`snapshots` listed in `containers/*/state.json`. Missing or unparsable blobs are tolerated.

Sweeping happens under the exclusive `gc.lock`; every creator (ingest, put, tag, and callers of
`Store.lock_shared()`) holds it shared, so GC never removes something a pull is about to tag.
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from store import blobs
from store.digest import ALGORITHMS, Digest
from store.errors import InvalidDigest, StoreError
from store.layout import TEMP_PREFIX, Layout
from store.locking import SHARED, flocked
from store.refs import read_index

#: temp files/dirs (named TEMP_PREFIX*) younger than this are left alone: someone may be writing
TEMP_GRACE = 3600.0
_TRASH = TEMP_PREFIX + "gc-"


@dataclass(frozen=True, slots=True)
class GCReport:
    """What one collection removed: blobs and their bytes, snapshots, stale partial downloads."""

    blobs: int = 0
    bytes: int = 0
    snapshots: int = 0
    ingests: int = 0


def collect(layout: Layout, ingest_max_age: float = 86400, now: float | None = None) -> GCReport:
    if SHARED.held(layout.gc_lock):
        raise StoreError(f"gc of {layout.root} called while this process holds the store's shared lock "
                         "(it would wait for itself)")
    with flocked(layout.gc_lock, exclusive=True):
        now = time.time() if now is None else now
        live_blobs, live_snapshots = _mark(layout)
        n_blobs, n_bytes = _sweep_blobs(layout, live_blobs, now)
        n_snap = _sweep_snapshots(layout, live_snapshots, now)
        n_ingest = _sweep_ingest(layout, ingest_max_age, now)
    return GCReport(n_blobs, n_bytes, n_snap, n_ingest)


# -- mark ----------------------------------------------------------------------------------------
def _mark(layout: Layout) -> tuple[set[Digest], set[str] | None]:
    """Digests of reachable blobs, and hex names of snapshots to keep (None: keep them all)."""
    live: set[Digest] = set()
    snaps: set[str] = set()
    # (digest, parse?) - JSON documents are parsed, layers only marked
    stack: list[tuple[Digest, bool]] = []
    for entry in read_index(layout)["manifests"]:
        d = _digest_of(entry)
        if d is not None:
            stack.append((d, True))
    while stack:
        d, parse = stack.pop()
        if d in live:
            continue
        live.add(d)
        if not parse:
            continue
        doc = _load_json(layout, d)
        if not isinstance(doc, dict):
            continue
        for key in ("manifests",):
            for child in doc.get(key) or ():
                if (cd := _digest_of(child)) is not None:
                    stack.append((cd, True))
        for key in ("config", "subject"):
            if (cd := _digest_of(doc.get(key))) is not None:
                stack.append((cd, True))
        layers = doc.get("layers")
        for child in layers if isinstance(layers, list) else ():
            if (cd := _digest_of(child)) is not None:
                stack.append((cd, False))
        rootfs = doc.get("rootfs")
        if isinstance(rootfs, dict) and isinstance(rootfs.get("diff_ids"), list):
            snaps.update(h for h in map(_snapshot_hex, rootfs["diff_ids"]) if h)
    in_use = _container_snapshots(layout)
    return live, (None if in_use is None else snaps | in_use)


def _digest_of(desc) -> Digest | None:
    if not isinstance(desc, dict):
        return None
    try:
        return Digest.parse(desc.get("digest"))
    except InvalidDigest:
        return None


def _load_json(layout: Layout, d: Digest):
    try:
        return json.loads(blobs.read(layout, d))
    except (StoreError, OSError, ValueError, UnicodeDecodeError):
        return None  # missing, too large, corrupt or not JSON: nothing more to mark through it


def _snapshot_hex(value) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        d = Digest.parse(value if ":" in value else f"sha256:{value}")
    except InvalidDigest:
        return None
    return d.hex


def _container_snapshots(layout: Layout) -> set[str] | None:
    """Snapshots listed by containers/*/state.json; None when one of them cannot be read (then
    no snapshot is swept: better keep garbage than delete a running container's rootfs)."""
    keep: set[str] = set()
    try:
        entries = list(os.scandir(layout.containers_dir))
    except FileNotFoundError:
        return keep
    for e in entries:
        if not e.is_dir(follow_symlinks=False):
            continue
        state = Path(e.path) / "state.json"
        try:
            with open(state, "rb") as f:
                doc = json.loads(f.read(16 << 20))
        except FileNotFoundError:
            continue
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        listed = doc.get("snapshots") if isinstance(doc, dict) else None
        if listed is None:
            continue
        if not isinstance(listed, list):
            return None
        keep.update(h for h in map(_snapshot_hex, listed) if h)
    return keep


# -- sweep ---------------------------------------------------------------------------------------
def _old(st: os.stat_result, now: float, age: float) -> bool:
    return now - st.st_mtime > age


def _sweep_blobs(layout: Layout, live: set[Digest], now: float) -> tuple[int, int]:
    count = size = 0
    for algorithm in ALGORITHMS:
        directory = layout.blob_dir(algorithm)
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue
        for e in entries:
            try:
                d = Digest(algorithm, e.name)
            except InvalidDigest:
                if e.name.startswith(TEMP_PREFIX) and _old(e.stat(follow_symlinks=False), now, TEMP_GRACE):
                    _remove_any(Path(e.path))
                continue  # not ours: leave it
            if d in live:
                continue
            st = e.stat(follow_symlinks=False)
            _remove_any(Path(e.path))
            count += 1
            size += st.st_size
    return count, size


def _sweep_snapshots(layout: Layout, keep: set[str] | None, now: float) -> int:
    count = 0
    try:
        entries = list(os.scandir(layout.snapshots_dir))
    except FileNotFoundError:
        return 0
    for e in entries:
        path = Path(e.path)
        if e.name.startswith(_TRASH):  # left by an interrupted gc (we hold the gc lock)
            _remove_any(path)
        elif e.name.startswith(TEMP_PREFIX):
            if _old(e.stat(follow_symlinks=False), now, TEMP_GRACE):
                _remove_any(path)
        elif keep is not None and _snapshot_hex(e.name) == e.name and e.name not in keep:
            # Rename first so a half-removed snapshot is never seen under its real name.
            trash = path.with_name(f"{_TRASH}{e.name[:12]}-{os.urandom(4).hex()}")
            os.rename(path, trash)
            _remove_any(trash)
            count += 1
    return count


def _sweep_ingest(layout: Layout, max_age: float, now: float) -> int:
    count = 0
    try:
        entries = list(os.scandir(layout.ingest_dir))
    except FileNotFoundError:
        return 0
    partials = set()
    for e in entries:
        st = e.stat(follow_symlinks=False)
        if e.name.endswith(".partial"):
            if _old(st, now, max_age):
                os.unlink(e.path)
                count += 1
            else:
                partials.add(e.name[: -len(".partial")])
        elif e.name.startswith(TEMP_PREFIX) and _old(st, now, TEMP_GRACE):
            _remove_any(Path(e.path))
    # Lock files (normally removed by their holder): nobody holds one now, since ingest holds
    # the gc lock shared while it does, so the ones left by a killed writer can go.
    for e in entries:
        if e.name.endswith(".lock") and e.name[: -len(".lock")] not in partials:
            try:
                os.unlink(e.path)
            except FileNotFoundError:
                pass
    return count


def _remove_any(path: Path) -> None:
    """Remove a file, symlink or directory tree that may hold read-only dirs and device nodes.
    Never follows a symlink and never descends into another filesystem (a mount)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # the parent's device: `path` itself being a mount point is refused too
        _rmtree_at(parent, path.name, os.fstat(parent).st_dev, str(path))
    finally:
        os.close(parent)


def _rmtree_at(parent_fd: int, name: str, dev: int, shown: str) -> None:
    os.chmod(name, 0o700, dir_fd=parent_fd)  # we checked it is a directory, not a symlink
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    try:
        if os.fstat(fd).st_dev != dev:
            raise StoreError(f"refusing to remove {shown}: it is a mount point",
                             hint=f"unmount it (umount {shown}) and run gc again")
        with os.scandir(fd) as it:
            children = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for child, is_dir in children:
            if is_dir:
                _rmtree_at(fd, child, dev, f"{shown}/{child}")
            else:
                os.unlink(child, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)
