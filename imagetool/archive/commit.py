"""Phase 2 of a load: write a verified Plan into the store, then tag — or leave the store as it was.

A load is a copy from the archive into the store (transports.layout.ArchiveSource →
transports.store.StoreSink), image by image: blobs through `store.ingest`, each manifest after
its blobs and an index after its manifests, and only when every image is in, the names. All
under the store's shared GC lock, so a concurrent `prune` cannot remove a blob between its
commit and the tag that makes it reachable. On any failure the blobs this load committed are
deleted again and its partial ingest files removed, so the store holds exactly what it held
before (refs are only written after every blob is in).
"""

from __future__ import annotations

from imagetool.archive.plan import WORKERS, Plan
from imagetool.archive.source import Source


def commit(store, src: Source, plan: Plan) -> None:
    from imagetool.transports.base import copy_image
    from imagetool.transports.layout import ArchiveSource
    from imagetool.transports.store import StoreSink

    source = ArchiveSource(src, plan, store)
    sink = StoreSink(store, None, deferred=True)
    try:
        with store.lock_shared():
            for img in plan.images:
                sink.names = list(img.names)
                copy_image(source.choose(img.descriptor), sink, all_platforms=True, max_concurrent=WORKERS)
            sink.tag_all()
    except BaseException:
        sink.roll_back()
        raise
