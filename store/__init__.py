"""store: a content-addressed image store (an OCI image layout). Standard library only.

    from store import Store, Digest, Descriptor, GCReport
"""

from store.descriptor import Descriptor
from store.digest import Digest
from store.gc import GCReport
from store.store import Store

__all__ = ["Store", "Digest", "Descriptor", "GCReport"]
