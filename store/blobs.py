"""Blobs: immutable, verified content under blobs/<algorithm>/<hex> (read side and small puts)."""

from __future__ import annotations

import os

from store.atomic import write_atomic
from store.digest import Digest
from store.errors import BlobNotFound, BlobTooLarge, DigestMismatch
from store.layout import Layout

TYPE_CHECKING = False  # typing is not imported at run time (~2 ms of every start): annotations only
if TYPE_CHECKING:
    from typing import BinaryIO

#: mode of committed blobs: nobody writes a blob after it is named by its digest
BLOB_MODE = 0o444
DEFAULT_READ_LIMIT = 4 << 20


def has(layout: Layout, d: Digest) -> bool:
    return os.path.isfile(layout.blob(d))


def size(layout: Layout, d: Digest) -> int:
    try:
        return os.stat(layout.blob(d)).st_size
    except FileNotFoundError:
        raise _not_found(layout, d) from None


def open_blob(layout: Layout, d: Digest) -> BinaryIO:
    """Open a committed blob for reading (not re-verified: the caller hashes when it matters)."""
    try:
        return open(layout.blob(d), "rb")
    except FileNotFoundError:
        raise _not_found(layout, d) from None


def read(layout: Layout, d: Digest, limit: int = DEFAULT_READ_LIMIT) -> bytes:
    """Read a whole blob of at most `limit` bytes and verify its digest (manifests, configs)."""
    with open_blob(layout, d) as f:
        n = os.fstat(f.fileno()).st_size
        if n > limit:
            raise BlobTooLarge(f"blob {d} is {n} bytes, more than the {limit} bytes allowed for this read")
        data = f.read(limit + 1)
    if len(data) > limit:  # grew under us: cannot happen to a committed blob, but stay bounded
        raise BlobTooLarge(f"blob {d} is more than the {limit} bytes allowed for this read")
    actual = Digest.of_bytes(data, d.algorithm)
    if actual != d:
        raise DigestMismatch(f"blob {layout.blob(d)} is corrupt: its content hashes to {actual}",
                             hint="delete it and pull the image again")
    return data


def delete(layout: Layout, d: Digest) -> None:
    try:
        os.unlink(layout.blob(d))
    except FileNotFoundError:
        raise _not_found(layout, d) from None


def put(layout: Layout, data: bytes, expected: Digest | None = None) -> Digest:
    """Store `data`, verified against `expected` when given; atomic; already present is success.

    The caller holds the store's shared GC lock (Store.put does)."""
    actual = Digest.of_bytes(data, expected.algorithm if expected else "sha256")
    if expected is not None and actual != expected:
        raise DigestMismatch(f"content for {expected} hashes to {actual} ({len(data)} bytes); not stored")
    if has(layout, actual):
        return actual
    dest = layout.blob(actual)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # temp in ingest/, never under blobs/; the rename is the point of no return
    write_atomic(dest, data, BLOB_MODE, temp_dir=layout.ingest_dir)
    return actual


def _not_found(layout: Layout, d: Digest) -> BlobNotFound:
    return BlobNotFound(f"blob {d} not found in store {layout.root}")
