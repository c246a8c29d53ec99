"""Image references: the Docker grammar and its normalisation (`busybox` → `docker.io/library/busybox:latest`).

The grammar is the one of distribution/reference:

    reference   := name [ ":" tag ] [ "@" digest ]
    name        := [ domain "/" ] path            (at most 255 characters, domain included)
    domain      := host [ ":" port ]              host: DNS name (letters, digits, "-", ".") or "[ipv6]"
    path        := component ( "/" component )*   component: [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag         := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest      := "sha256:" 64 lowercase hex     (the only algorithm the store keeps)

Normalisation (`splitDockerDomain`): the first path component is a registry host only when it
contains "." or ":", equals "localhost", or has an uppercase letter; otherwise the domain is
`docker.io`. `index.docker.io` is `docker.io`. On docker.io a one-component path gets `library/`.
A reference with neither tag nor digest gets the tag `latest`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from store.digest import is_hex

from imagetool.errors import InvalidReference

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
DOCKER_HUB_HOST = "registry-1.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_MAX = 255

# The grammar is checked with str methods (store.digest.is_hex and the _is_* functions, each with
# its pattern): compiling the regexes cost ~0.1 ms each at the first reference of every `run`,
# `images` or `inspect`. Only a digest algorithm other than sha256 (an error) is matched by a regex.
_DIGEST_ALGORITHM = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*"
_DIGITS = "0123456789"
_LOWER_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
_ALNUM = _LOWER_ALNUM + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_TAG_CHARS = _ALNUM + "_.-"
_ALNUM_TO_SPACE = str.maketrans(dict.fromkeys(_LOWER_ALNUM, " "))


def _match(pattern: str, text: str) -> bool:
    """Whether all of `text` matches `pattern` (ASCII classes)."""
    return re.fullmatch(pattern, text, re.ASCII) is not None


def is_sha256(text: str) -> bool:
    """`sha256:[0-9a-f]{64}` (a full canonical digest; image.py's ID check too)"""
    return text.startswith("sha256:") and is_hex(text[7:], 64)


def _is_tag(text: str) -> bool:
    """`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`"""
    return 0 < len(text) <= 128 and text[0] not in ".-" and not text.strip(_TAG_CHARS)


def _is_host(text: str) -> bool:
    r"""`label(\.label)*` (label: `[a-zA-Z0-9]` or `[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`) or
    `\[[a-fA-F0-9:]+\]` (an IPv6 address)."""
    if text.startswith("["):
        return len(text) > 2 and text.endswith("]") and not text[1:-1].strip(_DIGITS + "abcdefABCDEF:")
    return all(label and label[0] != "-" and label[-1] != "-" and not label.strip(_ALNUM + "-")
               for label in text.split("."))


def _is_component(text: str) -> bool:
    """`[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*`: lowercase letters and digits, first and last one
    of them, separated by runs that are ".", "_", "__" or dashes only."""
    if not text or text[0] not in _LOWER_ALNUM or text[-1] not in _LOWER_ALNUM or text.strip(_LOWER_ALNUM + "._-"):
        return False
    return all(run in (".", "_", "__") or not run.strip("-") for run in text.translate(_ALNUM_TO_SPACE).split())


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Reference:
    """A normalised reference. Build it with `parse()`; the fields are already valid.

    domain: "docker.io", "localhost:5000", "ghcr.io"; path: "library/busybox";
    tag: "latest" or None (only when a digest is given); digest: "sha256:<hex>" or None.
    Equal (and hashed alike) when all four fields are; __eq__, __hash__ and __repr__ are written
    out as dataclass would generate them (generated ones are compiled at every start).
    """

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The full repository name: `docker.io/library/busybox`."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """The short repository name Docker shows: `busybox`, `user/app`, `localhost:5000/app`."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        if self.path.startswith(OFFICIAL_PREFIX) and self.path.count("/") == 1:
            return self.path[len(OFFICIAL_PREFIX):]
        return self.path

    @property
    def familiar(self) -> str:
        """The short form of the whole reference: `busybox:latest`, `user/app@sha256:…`."""
        return self.familiar_name + self._suffix()

    @property
    def registry_host(self) -> str:
        """The host to talk to: docker.io is served at registry-1.docker.io."""
        return DOCKER_HUB_HOST if self.domain == DEFAULT_DOMAIN else self.domain

    @property
    def reference(self) -> str:
        """What goes in `/v2/<path>/manifests/<reference>`: the digest when pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_digest(self, digest) -> "Reference":
        """The same reference pinned to `digest` (a Digest or "sha256:<hex>"); the tag is kept."""
        d = str(digest)
        if not is_sha256(d):
            raise InvalidReference(f"invalid digest {d!r}: expected sha256:<64 lowercase hex>")
        return dataclasses.replace(self, digest=d)

    def with_tag(self, tag: str) -> "Reference":
        """The same repository with another tag and no digest."""
        if not _is_tag(tag):
            raise InvalidReference(f"invalid tag {tag!r}")
        return dataclasses.replace(self, tag=tag, digest=None)

    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.name + self._suffix()

    def __eq__(self, other):
        if other.__class__ is self.__class__:
            return (self.domain, self.path, self.tag, self.digest) == (other.domain, other.path, other.tag, other.digest)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.domain, self.path, self.tag, self.digest))

    def __repr__(self) -> str:
        return f"Reference(domain={self.domain!r}, path={self.path!r}, tag={self.tag!r}, digest={self.digest!r})"


def _fail(text: str, why: str) -> InvalidReference:
    return InvalidReference(f'invalid reference "{text}": {why}')


def split_domain(name: str) -> tuple[str, str]:
    """(domain, path) of a name without tag or digest, with the docker.io and library/ defaults."""
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        domain, path = first, rest
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_PREFIX + path
    return domain, path


def parse(text: str) -> Reference:
    """Parse and normalise `text`; raise InvalidReference naming the offending part."""
    if not isinstance(text, str):
        raise InvalidReference(f"invalid reference {text!r}: not a string")
    if text == "":
        raise _fail(text, "repository name must have at least one component")
    if is_hex(text, 64):
        raise _fail(text, "a 64-character hexadecimal string is an image ID, not a repository name")
    rest, at, digest = text.partition("@")
    if at:
        _check_digest(text, digest)
    colon, slash = rest.rfind(":"), rest.rfind("/")
    tag = None
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _is_tag(tag):
            if tag == "":
                raise _fail(text, "empty tag after ':'")
            raise _fail(text, f'invalid tag "{tag}" (allowed: letters, digits, "_", ".", "-"; '
                              "first not \".\" or \"-\"; at most 128 characters)")
    if rest == "":
        raise _fail(text, "repository name must have at least one component")
    domain, path = split_domain(rest)
    if domain != DEFAULT_DOMAIN:   # (the default is a valid host: no need to check it)
        _check_domain(text, domain)
    if path.lower() != path:
        raise _fail(text, "repository name must be lowercase")
    for component in path.split("/"):
        if component == "":
            raise _fail(text, "repository name has an empty path component")
        if not _is_component(component):
            raise _fail(text, f'invalid repository path component "{component}" (lowercase letters and digits, '
                              'separated by ".", "_", "__" or "-")')
    if len(domain) + 1 + len(path) > NAME_MAX:
        raise _fail(text, f"repository name must not be more than {NAME_MAX} characters")
    if tag is None and not digest:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest or None)


def _check_digest(text: str, digest: str) -> None:
    if digest == "":
        raise _fail(text, "empty digest after '@'")
    algorithm, colon, hexpart = digest.partition(":")
    if not colon or (algorithm != "sha256" and not _match(_DIGEST_ALGORITHM, algorithm)):
        raise _fail(text, f'invalid digest "{digest}" (expected sha256:<64 hex>)')
    if algorithm != "sha256":
        raise _fail(text, f'unsupported digest algorithm "{algorithm}" (only sha256)')
    if not is_sha256(digest):
        raise _fail(text, f'invalid digest "{digest}" (sha256 needs 64 lowercase hex digits)')


def _check_domain(text: str, domain: str) -> None:
    host, port = domain, None
    if domain.startswith("["):
        end = domain.find("]")
        if end != -1 and domain[end + 1:end + 2] == ":":
            host, port = domain[:end + 1], domain[end + 2:]
    elif ":" in domain:
        host, _, port = domain.partition(":")
    if not _is_host(host):
        raise _fail(text, f'invalid registry host "{host}"')
    if port is not None and (not port or port.strip(_DIGITS)):
        raise _fail(text, f'invalid port "{port}" in registry "{domain}"')


def is_valid(text: str) -> bool:
    """True when `parse(text)` would succeed."""
    try:
        parse(text)
    except InvalidReference:
        return False
    return True
