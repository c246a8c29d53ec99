"""Digest: the validated `algorithm:hex` name of some bytes (safe to use as a path component)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from store.errors import InvalidDigest

#: algorithm -> length of its lowercase hex encoding
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}
CANONICAL = "sha256"
_HEX_DIGITS = "0123456789abcdef"
#: Digest.of_bytes hashes up to this many bytes without loading hashlib (see _small_hasher)
SMALL = 1 << 20


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Digest:
    """A content digest. Construction validates, so `hex` never contains `/`, `.` or anything but
    lowercase hex of the algorithm's exact length: a Digest can always be used as a file name.

    Equal (and hashed alike) when algorithm and hex are. __eq__, __hash__ and __repr__ are written
    out as dataclass would generate them: generated ones are compiled (exec) at every start of
    every command, and the store loads this class first (no ordering: nothing sorts digests)."""

    algorithm: str
    hex: str

    def __post_init__(self) -> None:
        if not isinstance(self.algorithm, str) or self.algorithm not in ALGORITHMS:
            raise InvalidDigest(f"invalid digest algorithm {self.algorithm!r}: "
                                f"expected one of {', '.join(sorted(ALGORITHMS))}")
        want = ALGORITHMS[self.algorithm]
        if not isinstance(self.hex, str) or not is_hex(self.hex, want):
            raise InvalidDigest(f"invalid {self.algorithm} digest hex {self.hex!r}: "
                                f"expected {want} lowercase hex characters")

    @classmethod
    def parse(cls, s: str) -> "Digest":
        """Parse `algorithm:hex`; raises InvalidDigest (a ValueError) for anything else."""
        if isinstance(s, Digest):
            return s
        if not isinstance(s, str):
            raise InvalidDigest(f"invalid digest {s!r}: not a string")
        algorithm, sep, hexpart = s.partition(":")
        if not sep:
            raise InvalidDigest(f"invalid digest {s!r}: expected 'algorithm:hex'")
        return cls(algorithm, hexpart)

    @classmethod
    def of_bytes(cls, data: bytes, algorithm: str = CANONICAL) -> "Digest":
        h = _small_hasher(algorithm) if len(data) <= SMALL and "hashlib" not in sys.modules else None
        h = h or new_hasher(algorithm)
        h.update(data)
        return cls(algorithm, h.hexdigest())

    def hasher(self):
        """A fresh hashlib object of this digest's algorithm."""
        return new_hasher(self.algorithm)

    @property
    def short(self) -> str:
        """The first 12 hex characters (as `docker images` shows them)."""
        return self.hex[:12]

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def __eq__(self, other):
        if other.__class__ is self.__class__:
            return (self.algorithm, self.hex) == (other.algorithm, other.hex)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.algorithm, self.hex))

    def __repr__(self) -> str:
        return f"Digest(algorithm={self.algorithm!r}, hex={self.hex!r})"


def is_hex(text: str, length: int) -> bool:
    """`text` is exactly `length` lowercase hex digits (`[0-9a-f]{length}`, with str methods: a
    regex compiled for it cost ~0.1 ms of every start)."""
    return len(text) == length and not text.strip(_HEX_DIGITS)


def _small_hasher(algorithm: str):
    """The interpreter's own implementation of `algorithm` (the modules hashlib falls back to without
    OpenSSL), or None where this Python lacks it. For a small one-shot hash (a manifest or config a
    read command verifies) it is as quick as OpenSSL's, and loading hashlib's OpenSSL module costs
    ~2 ms of `images` or `inspect`; streams and large blobs go through hashlib."""
    if algorithm not in ALGORITHMS:
        return None
    if sys.version_info >= (3, 12):
        module = "_sha2"
    else:
        module = "_sha256" if algorithm == "sha256" else "_sha512"
    try:
        return getattr(__import__(module), algorithm)()
    except (ImportError, AttributeError):
        return None


def new_hasher(algorithm: str = CANONICAL):
    if algorithm not in ALGORITHMS:
        raise InvalidDigest(f"invalid digest algorithm {algorithm!r}")
    import hashlib  # here, not at the top: commands that hash nothing never load OpenSSL (~2 ms)

    return hashlib.new(algorithm)
