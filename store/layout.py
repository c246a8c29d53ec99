"""Where everything lives inside a store root (an OCI image layout plus imagetool's own dirs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from store.digest import Digest

LAYOUT_VERSION = "1.0.0"
#: prefix of every temporary file or directory the store (or its users) create inside the root
TEMP_PREFIX = "imagetool-"
#: entries a store root may contain (anything else makes Store.open refuse a root without oci-layout)
KNOWN_ENTRIES = frozenset({"oci-layout", "index.json", "index.json.lock", "gc.lock",
                           "blobs", "ingest", "snapshots", "containers", "networks", "lost+found"})


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Layout:
    """Paths of one store. Every digest-derived path uses a validated Digest, so it stays inside.
    One per Store, never compared (no generated __eq__/__repr__ to compile at every start)."""

    root: Path

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
