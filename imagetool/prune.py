"""The service of `prune`: exited containers, then what no ref or container reaches (it returns data
and never prints). Apart from images.py so the read commands do not define its report."""

from __future__ import annotations

from dataclasses import dataclass, field

from imagetool.images import human_size


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class PruneReport:
    """What `prune` removed: container ids, then the store's GC counts (printed, never compared)."""

    containers: list = field(default_factory=list)
    blobs: int = 0
    bytes: int = 0
    snapshots: int = 0
    ingests: int = 0

    def lines(self) -> list[str]:
        out = []
        if self.containers:
            out.append("Deleted Containers: " + ", ".join(c[:12] for c in self.containers))
        out.append(f"Deleted {self.blobs} blobs, {self.snapshots} snapshots, {self.ingests} partial downloads")
        out.append(f"Total reclaimed space: {human_size(self.bytes)}")
        return out


def prune(store) -> PruneReport:
    """Remove exited containers, then everything no ref or container reaches (store GC)."""
    from imagetool import containers

    removed = list(containers.prune_exited(store))
    report = store.gc()
    return PruneReport(removed, report.blobs, report.bytes, report.snapshots, report.ingests)
