"""Where everything lives inside a store root (an OCI image layout plus imagetool's own dirs)."""

from __future__ import annotations

from store.digest import Digest

TYPE_CHECKING = False  # annotations only (pathlib is loaded by whoever makes the root a Path)
if TYPE_CHECKING:
    from pathlib import Path

LAYOUT_VERSION = "1.0.0"
#: prefix of every temporary file or directory the store (or its users) create inside the root
TEMP_PREFIX = "imagetool-"
#: entries a store root may contain (anything else makes Store.open refuse a root without oci-layout)
KNOWN_ENTRIES = frozenset({"oci-layout", "index.json", "index.json.lock", "gc.lock",
                           "blobs", "ingest", "snapshots", "containers", "networks", "lost+found"})


class Layout:
    """Paths of one store (`root` is a Path). Every digest-derived path uses a validated Digest, so
    it stays inside.

    A plain class with slots, not a dataclass: every command opens a store, and making this one
    frozen dataclass cost ~0.3 ms of each start. One per Store, never compared; `root` is
    read-only (a property: assigning it raises AttributeError, as the frozen dataclass did)."""

    __slots__ = ("_root",)

    def __init__(self, root: Path):
        self._root = root

    @property
    def root(self) -> Path:
        return self._root

    def __repr__(self) -> str:
        return f"Layout(root={self.root!r})"

    @property
    def oci_layout(self) -> Path:
        return self.root / "oci-layout"

    @property
    def index_json(self) -> Path:
        return self.root / "index.json"

    @property
    def index_lock(self) -> Path:
        return self.root / "index.json.lock"

    @property
    def gc_lock(self) -> Path:
        return self.root / "gc.lock"

    @property
    def blobs_dir(self) -> Path:
        return self.root / "blobs"

    @property
    def ingest_dir(self) -> Path:
        return self.root / "ingest"

    @property
    def snapshots_dir(self) -> Path:
        return self.root / "snapshots"

    @property
    def containers_dir(self) -> Path:
        return self.root / "containers"

    def blob_dir(self, algorithm: str) -> Path:
        return self.blobs_dir / algorithm

    def blob(self, d: Digest) -> Path:
        return self.blobs_dir / d.algorithm / d.hex

    def partial(self, d: Digest) -> Path:
        # sha512 partials carry the algorithm so two algorithms never share a file
        name = d.hex if d.algorithm == "sha256" else f"{d.algorithm}-{d.hex}"
        return self.ingest_dir / f"{name}.partial"

    def ingest_lock(self, d: Digest) -> Path:
        name = d.hex if d.algorithm == "sha256" else f"{d.algorithm}-{d.hex}"
        return self.ingest_dir / f"{name}.lock"

    def snapshot(self, diff_id: Digest) -> Path:
        return self.snapshots_dir / diff_id.hex
