"""Store: the content-addressed store (an OCI image layout) that every other module goes through."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from store import blobs, refs
from store.atomic import write_atomic
from store.descriptor import Descriptor
from store.digest import Digest
from store.errors import CorruptStore, NotAStore, StoreError
from store.layout import KNOWN_ENTRIES, LAYOUT_VERSION, TEMP_PREFIX, Layout

TYPE_CHECKING = False  # typing is not imported at run time (~2 ms of every start): annotations only
if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from typing import BinaryIO

    from store.ingest import IngestWriter   # (loaded by ingest(): commands that only read never write one)

    from store.gc import GCReport

#: the store root's mode: only its owner may enter (podman's 0700; docker uses 0710). Layers and
#: containers put setuid-root binaries and device nodes below it (snapshots/, containers/*/upper);
#: a host user who could reach them would run those as root (the CVE-2021-41091 class). The root
#: alone is enough: nobody else can resolve any path below it, whatever the modes further down.
ROOT_MODE = 0o700


class _OpenDispatch:
    """`Store.open(root)` opens a store; `st.open(digest)` opens a blob (both are contract names)."""

    def __get__(self, obj, cls):
        return cls.open_store if obj is None else obj.open_blob


class Store:
    """A store rooted at `root`. Create it with `Store.open(root)`; every method is safe to call
    from several threads and processes at once (see ingest.py, refs.py and gc.py)."""

    open = _OpenDispatch()

    def __init__(self, root: Path):
        self._layout = Layout(root)

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open_store(cls, root: Path | str) -> "Store":
        """Open the store at `root`, creating the layout when missing (idempotent, concurrent safe).

        Refuses (StoreError) an `oci-layout` of another version, a corrupt index.json, and a
        non-empty directory that is not a store.

        The root is closed to other users (mode 0700, see `_close_to_others`): a store made open
        (0755, as before this rule) is closed here; the check is one stat of the root."""
        root = Path(os.path.abspath(root))
        try:
            root.mkdir(mode=ROOT_MODE, parents=True, exist_ok=True)
            root_stat = os.stat(root)
        except OSError as e:
            raise NotAStore(f"cannot create store directory {root}: {e.strerror}") from None
        if not stat.S_ISDIR(root_stat.st_mode):
            raise NotAStore(f"store path {root} is not a directory")
        st = cls(root)
        lay = st._layout
        has_layout = lay.oci_layout.exists()
        if has_layout:
            _check_oci_layout(lay.oci_layout)
        else:
            foreign = sorted(n for n in os.listdir(root)
                             if n not in KNOWN_ENTRIES and not n.startswith(TEMP_PREFIX))
            if foreign:
                raise NotAStore(f"{root} is not empty and is not an image store (no oci-layout; "
                                f"found {', '.join(foreign[:3])}{', …' if len(foreign) > 3 else ''})",
                                hint="choose an empty or new directory with --store")
        if root_stat.st_mode & 0o077:  # only once we know it is ours: a refused directory is left as it was
            _close_to_others(root, root_stat.st_mode)
        if not has_layout:
            write_atomic(lay.oci_layout, json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode())
        for d in (lay.blob_dir("sha256"), lay.ingest_dir, lay.snapshots_dir, lay.containers_dir):
            d.mkdir(parents=True, exist_ok=True)
        refs.ensure_index(lay)
        refs.read_index(lay)  # refuse a corrupt index.json now, not in the middle of a pull
        return st

    # -- paths ---------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return self._layout.root

    @property
    def blobs_dir(self) -> Path:
        return self._layout.blobs_dir

    @property
    def ingest_dir(self) -> Path:
        return self._layout.ingest_dir

    @property
    def snapshots_dir(self) -> Path:
        return self._layout.snapshots_dir

    @property
    def containers_dir(self) -> Path:
        return self._layout.containers_dir

    @property
    def layout(self) -> Layout:
        return self._layout

    def snapshot_path(self, diff_id: Digest) -> Path:
        """`snapshots/<hex>` for a layer's diff_id (whether or not it exists)."""
        return self._layout.snapshot(diff_id)

    # -- blobs ---------------------------------------------------------------------------------
    def has(self, d: Digest) -> bool:
        return blobs.has(self._layout, d)

    def path(self, d: Digest) -> Path:
        """The path of a committed blob (read-only file); BlobNotFound when absent."""
        if not self.has(d):
            raise blobs._not_found(self._layout, d)
        return self._layout.blob(d)

    def size(self, d: Digest) -> int:
        return blobs.size(self._layout, d)

    def open_blob(self, d: Digest) -> BinaryIO:
        return blobs.open_blob(self._layout, d)

    def read(self, d: Digest, limit: int = blobs.DEFAULT_READ_LIMIT) -> bytes:
        """The whole blob, verified; BlobTooLarge (a StoreError) when bigger than `limit`."""
        return blobs.read(self._layout, d, limit)

    def delete(self, d: Digest) -> None:
        blobs.delete(self._layout, d)

    def put(self, data: bytes, expected: Digest | None = None) -> Digest:
        """Store `data` (verified against `expected`); DigestMismatch stores nothing."""
        with self.lock_shared():
            return blobs.put(self._layout, data, expected)

    def ingest(self, expected: Digest, size: int | None = None) -> IngestWriter:
        """A resumable writer for one blob; use as `with st.ingest(d, size) as w:` (see ingest.py)."""
        from store.ingest import IngestWriter

        return IngestWriter(self._layout, expected, size)

    # -- refs ----------------------------------------------------------------------------------
    def tag(self, name: str, desc: Descriptor) -> None:
        with self.lock_shared():
            refs.tag(self._layout, name, desc)

    def resolve(self, name: str) -> Descriptor:
        return refs.resolve(self._layout, name)

    def untag(self, name: str) -> None:
        refs.untag(self._layout, name)

    def refs(self) -> list[tuple[str, Descriptor]]:
        return refs.refs(self._layout)

    # -- gc ------------------------------------------------------------------------------------
    def lock_shared(self) -> AbstractContextManager[None]:
        """Hold the store-wide GC lock shared (`with st.lock_shared():`): gc() waits until every
        holder is done.

        Hold it across a whole pull / load / unpack / container creation, from the first blob or
        snapshot written until the ref or state.json that makes them reachable is written.
        Reentrant and thread-safe within a process; never call gc() while holding it."""
        from store.locking import SHARED   # (here: commands that only read load neither it nor contextlib)

        return SHARED.hold(self._layout.gc_lock)

    def gc(self, ingest_max_age: float = 86400) -> GCReport:
        """Remove what no ref and no container reaches (see gc.py); waits for shared holders."""
        from store import gc

        return gc.collect(self._layout, ingest_max_age)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"


def _close_to_others(root: Path, mode: int) -> None:
    """chmod the root to ROOT_MODE; StoreError when we may not (someone else owns it)."""
    try:
        os.chmod(root, ROOT_MODE)
    except OSError as e:
        raise NotAStore(f"store {root} is open to other users (mode {stat.S_IMODE(mode):04o}) and cannot be "
                        f"closed: {e.strerror}", hint=f"chmod go-rwx {root}, or use a store you own") from None


def _check_oci_layout(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read(1 << 16))
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptStore(f"{path} is not valid JSON ({e})") from None
    version = doc.get("imageLayoutVersion") if isinstance(doc, dict) else None
    if version != LAYOUT_VERSION:
        raise NotAStore(f"{path.parent} has an OCI layout of version {version!r}; this tool "
                        f"supports {LAYOUT_VERSION!r}", hint="use another --store directory")


def __getattr__(name: str):
    """GCReport, from store.gc (loaded with the first collection)."""
    if name == "GCReport":
        from store.gc import GCReport

        return GCReport
    raise AttributeError(f"module 'store.store' has no attribute {name!r}")


__all__ = ["Store", "GCReport", "StoreError", "CorruptStore"]
