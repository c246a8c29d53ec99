"""The store's exceptions: every message says what, where and why.

    StoreError                  base class (.message, .hint)
    ├── InvalidDigest           a string that is not a digest the store accepts (also a ValueError)
    ├── InvalidDescriptor       a descriptor dict that is not usable (also a ValueError)
    ├── BlobNotFound            no blob with that digest in blobs/
    ├── BlobTooLarge            a bounded read of a blob bigger than the limit
    ├── DigestMismatch          bytes whose digest is not the expected one
    ├── SizeMismatch            bytes whose length is not the expected one
    ├── RefNotFound             no ref with that name in index.json
    ├── CorruptStore            oci-layout / index.json / a blob that cannot be trusted
    └── NotAStore               a directory that is not (and cannot become) a store
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error raised by `store`."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InvalidDigest(StoreError, ValueError):
    pass


class InvalidDescriptor(StoreError, ValueError):
    pass


class BlobNotFound(StoreError):
    pass


class BlobTooLarge(StoreError):
    pass


class DigestMismatch(StoreError):
    pass


class SizeMismatch(StoreError):
    pass


class RefNotFound(StoreError):
    pass


class CorruptStore(StoreError):
    pass


class NotAStore(StoreError):
    pass
