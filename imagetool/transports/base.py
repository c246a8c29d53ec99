"""The image contract every transport implements, and the one copy loop that joins two of them.

    class Source:                            where an image is read from; lazy (nothing is read
        label                                until asked)
        top() -> Descriptor                  what the reference names (an index or a manifest)
        read(desc) -> bytes                  a manifest/index/config blob: verified, ≤ 4 MiB
        chunks(desc, offset=0) -> iterator   a blob's bytes from `offset` (the sink verifies them)
        mount_source(desc) -> (host, repo)?  where a registry already holds it (cross-repo mount)
        carries(entry) -> bool               the manifest an index entry names is here
        path(desc) -> Path | None            a verified local file of the blob (sendfile), if any
        registry_client() -> client | None   the registry the blobs come from (resumable fetch)

    class Sink:                              where an image is written to
        has(desc) -> bool                    present already: never sent again
        put_blob(desc, source)               write a config or layer (verified: digest unchanged)
        put_manifest(node)                   a manifest after its blobs, an index after its manifests
        finish(top)                          name the image (tag, index.json entry, archive file)

`copy_image(source, sink, platform, all_platforms)` writes one platform's image manifest (the
host's by default) or, with `all_platforms`, every index and manifest below the top in the order
above. Bytes are copied as they are, so every digest is preserved.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from store import Descriptor

from imagetool.progress import NullProgress, Progress
from imagetool.transports import walk

PUSHED = "Pushed"
COPIED = "Copied"
EXISTS = "Layer already exists"
MOUNTED = "Mounted"


class Source:
    label = "image"

    def top(self) -> Descriptor:
        raise NotImplementedError

    def read(self, desc: Descriptor) -> bytes:
        raise NotImplementedError

    def chunks(self, desc: Descriptor, offset: int = 0):
        raise NotImplementedError

    def mount_source(self, desc: Descriptor) -> tuple[str, str] | None:
        return None

    def path(self, desc: Descriptor):
        """A local file holding the blob's verified bytes (the store's), else None."""
        return None

    def registry_client(self):
        """The RegistryClient the blobs come from (the store then fetches them resumably), else None."""
        return None

    def carries(self, entry: Descriptor) -> bool:
        """Does this source hold the manifest an index entry names? (a store or an archive may
        hold only some platforms of an index; the index is copied as it is)"""
        return True

    def close(self) -> None:
        pass


class Sink:
    label = "destination"

    def has(self, desc: Descriptor) -> bool:
        raise NotImplementedError

    def put_blob(self, desc: Descriptor, source: Source, progress: Progress) -> str:
        """Write one blob; returns the status to report (PUSHED or MOUNTED to a registry, COPIED)."""
        raise NotImplementedError

    def put_manifest(self, node: walk.Node) -> None:
        raise NotImplementedError

    def finish(self, top: Descriptor) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Copied:
    """What a copy wrote: the descriptor the destination names, and the blobs actually sent."""

    descriptor: Descriptor
    sent: tuple = ()


def copy_image(source: Source, sink: Sink, platform=None, all_platforms: bool = False,
               progress: Progress | None = None, max_concurrent: int = 3) -> Copied:
    """Copy the image `source` names into `sink` (see the module docstring); the first failure
    stops the other blob copies and is raised, and nothing is named in the sink."""
    progress = progress or NullProgress()
    top = source.top()
    if all_platforms:
        nodes = walk.walk(source.read, top, lambda e: walk.is_image_entry(e) and source.carries(e))
    else:
        nodes = walk.select(source.read, top, platform)[-1:]
    sent: list = []
    for n in nodes:
        if not n.is_index:  # each worker checks (HEAD) and then sends its blob
            sent += _each(lambda d: _put(sink, source, d, progress), walk.blobs_of(n.document), max_concurrent)
        sink.put_manifest(n)
    final = nodes[-1].descriptor
    sink.finish(final)
    return Copied(final, tuple(d.digest for d, status in sent if status in (PUSHED, COPIED)))


def skip(chunks, offset: int):
    """The bytes of `chunks` after the first `offset` (for sources that cannot seek)."""
    for chunk in chunks:
        if offset >= len(chunk):
            offset -= len(chunk)
            continue
        yield chunk[offset:] if offset else chunk
        offset = 0


def _put(sink: Sink, source: Source, desc: Descriptor, progress: Progress):
    status = EXISTS if sink.has(desc) else sink.put_blob(desc, source, progress)
    progress.blob_done(str(desc.digest), status)
    return desc, status


def _each(fn, items: list, workers: int) -> list:
    """fn(item) for each item, `workers` at a time; the first failure is raised after the others
    were told to stop (they finish their current request)."""
    if len(items) <= 1 or workers <= 1:
        return [fn(i) for i in items]
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    stop = threading.Event()

    def guarded(item):
        if stop.is_set():
            return None
        return fn(item)

    with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="imagetool-copy") as pool:
        futures = [pool.submit(guarded, i) for i in items]
        wait(futures, return_when=FIRST_EXCEPTION)
        for f in futures:
            if f.done() and f.exception() is not None:
                stop.set()
                for g in futures:
                    g.cancel()
                raise f.exception()
    return [f.result() for f in futures]
