"""Descriptor: the OCI content descriptor (media type, digest, size and optional extras)."""

from __future__ import annotations

from dataclasses import dataclass, field

from store.digest import Digest
from store.errors import InvalidDescriptor, InvalidDigest

TYPE_CHECKING = False  # typing is not imported at run time (~2 ms of every start): annotations only
if TYPE_CHECKING:
    from typing import Any


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Descriptor:
    """An OCI descriptor. `annotations` and `platform` are plain dicts (treat them as read-only);
    `to_dict()` / `from_dict()` round-trip the OCI JSON form (empty extras are omitted).

    Equal when every field is; hashed by media type, digest and size. __eq__ and __repr__ are
    written out as dataclass would generate them (generated ones are compiled at every start)."""

    media_type: str
    digest: Digest
    size: int
    annotations: dict | None = None
    platform: dict | None = None
    urls: tuple = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.digest, Digest):
            raise InvalidDescriptor(f"descriptor digest must be a Digest, not {type(self.digest).__name__}")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise InvalidDescriptor(f"descriptor {self.digest}: invalid size {self.size!r}")
        if not isinstance(self.media_type, str):
            raise InvalidDescriptor(f"descriptor {self.digest}: invalid mediaType {self.media_type!r}")

    def __hash__(self) -> int:
        return hash((self.media_type, self.digest, self.size))

    def __eq__(self, other):
        if other.__class__ is self.__class__:
            return ((self.media_type, self.digest, self.size, self.annotations, self.platform, self.urls)
                    == (other.media_type, other.digest, other.size, other.annotations, other.platform, other.urls))
        return NotImplemented

    def __repr__(self) -> str:
        return (f"Descriptor(media_type={self.media_type!r}, digest={self.digest!r}, size={self.size!r}, "
                f"annotations={self.annotations!r}, platform={self.platform!r}, urls={self.urls!r})")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.urls:
            d["urls"] = list(self.urls)
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        if self.platform:
            d["platform"] = dict(self.platform)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "Descriptor":
        """Parse an OCI descriptor object; raises InvalidDescriptor (a ValueError) when unusable."""
        if not isinstance(d, dict):
            raise InvalidDescriptor(f"descriptor must be a JSON object, not {type(d).__name__}")
        try:
            digest = Digest.parse(d.get("digest"))
        except InvalidDigest as e:
            raise InvalidDescriptor(f"descriptor has {e}") from None
        size = d.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidDescriptor(f"descriptor {digest}: invalid size {size!r}")
        mt = d.get("mediaType", "")
        if not isinstance(mt, str):
            raise InvalidDescriptor(f"descriptor {digest}: invalid mediaType {mt!r}")
        ann = d.get("annotations")
        if ann is not None and not (isinstance(ann, dict)
                                    and all(isinstance(k, str) and isinstance(v, str) for k, v in ann.items())):
            raise InvalidDescriptor(f"descriptor {digest}: annotations must map strings to strings")
        plat = d.get("platform")
        if plat is not None and not isinstance(plat, dict):
            raise InvalidDescriptor(f"descriptor {digest}: platform must be an object")
        urls = d.get("urls") or ()
        if not isinstance(urls, (list, tuple)) or not all(isinstance(u, str) for u in urls):
            raise InvalidDescriptor(f"descriptor {digest}: urls must be a list of strings")
        return cls(mt, digest, size, dict(ann) if ann else None, dict(plat) if plat else None, tuple(urls))
