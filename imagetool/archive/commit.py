"""Phase 2 of a load: write a verified Plan into the store, then tag — or leave the store as it was.

Order: large blobs (layers) through `store.ingest`, then configs and manifests through
`store.put`, then the names. All under the store's shared GC lock, so a concurrent `prune`
cannot remove a blob between its commit and the tag that makes it reachable. On any failure
the blobs this load committed are deleted again and its partial ingest files removed, so the
store holds exactly what it held before (refs are only written after every blob is in).
"""

from __future__ import annotations

import os

from store import Digest

from imagetool.archive.plan import WORKERS, Plan
from imagetool.archive.source import Source


def commit(store, src: Source, plan: Plan) -> None:
    written: list[Digest] = []
    partials: set[Digest] = set()

    def copy(d: Digest) -> None:
        member = plan.copies[d]
        with store.ingest(d, member.size) as w:
            if w.exists:
                return
            partials.add(d)
            if w.offset:
                w.reset()  # someone's abandoned partial: start from scratch
            for chunk in src.chunks(member):
                w.write(chunk)
            w.commit()
            written.append(d)
            partials.discard(d)

    try:
        with store.lock_shared():
            _each(copy, list(plan.copies))
            for d, data in plan.puts.items():
                if not store.has(d):
                    store.put(data, d)
                    written.append(d)
            for img in plan.images:
                for name in img.names:
                    store.tag(name, img.descriptor)
    except BaseException:
        for d in reversed(written):
            try:
                store.delete(d)
            except Exception:
                pass
        for d in partials:
            _remove_partial(store, d)
        raise


def _each(fn, items: list) -> None:
    """fn(item) for every item, a few at a time; waits for all, then raises the first failure."""
    if len(items) <= 1 or WORKERS <= 1:
        for it in items:
            fn(it)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(WORKERS, len(items))) as pool:
        futures = [pool.submit(fn, it) for it in items]
    for f in futures:
        f.result()


def _remove_partial(store, d: Digest) -> None:
    name = d.hex if d.algorithm == "sha256" else f"{d.algorithm}-{d.hex}"
    try:
        os.unlink(os.path.join(store.ingest_dir, name + ".partial"))
    except OSError:
        pass
