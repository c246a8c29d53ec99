"""store: a content-addressed image store (an OCI image layout). Standard library only.

    from store import Store, Digest, Descriptor, GCReport
"""

from store.descriptor import Descriptor
from store.digest import Digest
from store.store import Store

__all__ = ["Store", "Digest", "Descriptor", "GCReport"]


def __getattr__(name: str):
    """GCReport: store.gc loads with the first collection, not with every command that reads."""
    if name == "GCReport":
        from store.gc import GCReport

        return GCReport
    raise AttributeError(f"module 'store' has no attribute {name!r}")
