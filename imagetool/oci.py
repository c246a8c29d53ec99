"""OCI value types (Platform, Manifest, Index, ImageConfig) and the strict parsers that build them from raw bytes.

The exact bytes (`raw`) always travel with the parsed form: digests are computed over `raw`,
never over a re-serialisation. Parsers refuse what imagetool cannot use safely: schema 1,
unknown media types, a body `mediaType` that contradicts the Content-Type, malformed
descriptors, documents over 4 MiB and absurd layer counts.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from store import Descriptor, Digest
from store.errors import InvalidDescriptor, InvalidDigest

from imagetool import mediatypes as mt
from imagetool.errors import ImagetoolError, ManifestError

MAX_JSON_SIZE = 4 << 20      # manifests, indexes and configs (containerd / distribution-spec: 4 MiB)
MAX_LAYERS = 1000            # layers in one manifest (overlayfs itself stops near 500 lowerdirs)
MAX_INDEX_ENTRIES = 1000     # manifests in one index
ATTESTATION_TYPE = "attestation-manifest"
REFERENCE_TYPE_ANNOTATION = "vnd.docker.reference.type"

# ---------------------------------------------------------------- platforms

_ARCH_ALIASES = {
    "x86_64": "amd64", "x86-64": "amd64", "amd64": "amd64",
    "aarch64": "arm64", "arm64": "arm64",
    "i386": "386", "i486": "386", "i586": "386", "i686": "386", "386": "386",
    "armhf": "arm", "armel": "arm", "armv5l": "arm", "armv6l": "arm", "armv7l": "arm", "armv7": "arm",
    "arm": "arm",
}
_ARCH_VARIANT = {"armhf": "v7", "armv7l": "v7", "armv7": "v7", "armel": "v6", "armv6l": "v6", "armv5l": "v5"}
_OS_ALIASES = {"macos": "darwin"}
_PLATFORM_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"   # (compiled on first use: re's cache)


def _norm_arch(architecture: str, variant: str | None) -> tuple[str, str | None]:
    a = architecture.strip().lower()
    v = (variant or "").strip().lower() or None
    arch = _ARCH_ALIASES.get(a, a)
    if a in _ARCH_VARIANT and v is None:
        v = _ARCH_VARIANT[a]
    if v is not None and not v.startswith("v") and v.replace(".", "").isdigit():
        v = "v" + v
    if arch == "arm64" and v in (None, "v8.0"):
        v = "v8"                     # arm64 without a variant means v8
    elif arch == "arm" and v is None:
        v = "v7"                     # containerd: plain "arm" is armv7
    elif arch == "amd64" and v == "v1":
        v = None                     # x86-64-v1 is the baseline
    return arch, v


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Platform:
    """os/architecture[/variant], normalised (x86_64 → amd64, aarch64 → arm64/v8, armhf → arm/v7).

    Construct with `Platform.parse()`, `Platform.from_dict()` or `Platform.host()`; the direct
    constructor normalises too. Equal (and hashed alike) when all three fields are; __eq__,
    __hash__ and __repr__ are written out as dataclass would generate them (generated ones are
    compiled at every start of every command that loads this module).
    """

    os: str
    architecture: str
    variant: str | None = None

    def __post_init__(self) -> None:
        arch, variant = _norm_arch(self.architecture, self.variant)
        os_ = self.os.strip().lower()
        object.__setattr__(self, "os", _OS_ALIASES.get(os_, os_))
        object.__setattr__(self, "architecture", arch)
        object.__setattr__(self, "variant", variant)

    @classmethod
    def parse(cls, text: str) -> "Platform":
        """"linux/amd64", "linux/arm64/v8", "linux/arm/v7"; an ImagetoolError for anything else."""
        parts = text.strip().split("/") if isinstance(text, str) else []
        if len(parts) not in (2, 3) or not all(re.fullmatch(_PLATFORM_PART, p, re.ASCII) for p in parts):
            raise ImagetoolError(f"invalid platform {text!r}: expected os/arch[/variant], e.g. linux/arm64")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Platform | None":
        """The platform of an OCI descriptor or config ({"os", "architecture", "variant"}); None if absent."""
        if not isinstance(d, dict):
            return None
        os_, arch, variant = d.get("os"), d.get("architecture"), d.get("variant")
        if not isinstance(os_, str) or not isinstance(arch, str) or not os_ or not arch:
            return None
        return cls(os_, arch, variant if isinstance(variant, str) else None)

    @classmethod
    def host(cls) -> "Platform":
        """This machine's platform (Linux; architecture from uname(2), as `platform.machine()` gives it
        without that module's ~1 ms import)."""
        return cls("linux", os.uname().machine or "amd64")

    def matches(self, other: "Platform | None") -> bool:
        """Same os, architecture and variant after normalisation (arm64 "" == v8; arm "" == v7)."""
        return (other is not None and self.os == other.os and self.architecture == other.architecture
                and self.variant == other.variant)

    def compatible(self) -> list["Platform"]:
        """This platform, then the older variants of its architecture it also runs, best first
        (containerd's `platforms.Only`): arm/v7 → v6, v5; amd64/v3 → v2, baseline. No cross-arch
        fallback (arm64 → arm, amd64 → 386): many hosts cannot run those."""
        out = [self]
        level = self.variant[1:] if self.variant and self.variant.startswith("v") else ""
        if self.architecture == "arm" and level.isdigit():
            out += [Platform(self.os, "arm", f"v{n}") for n in range(int(level) - 1, 4, -1)]
        elif self.architecture == "amd64" and level.isdigit():
            out += [Platform(self.os, "amd64", f"v{n}") for n in range(int(level) - 1, 1, -1)]
            out.append(Platform(self.os, "amd64"))
        return out

    def to_dict(self) -> dict:
        d = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            d["variant"] = self.variant
        return d

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")

    def __eq__(self, other):
        if other.__class__ is self.__class__:
            return (self.os, self.architecture, self.variant) == (other.os, other.architecture, other.variant)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.os, self.architecture, self.variant))

    def __repr__(self) -> str:
        return f"Platform(os={self.os!r}, architecture={self.architecture!r}, variant={self.variant!r})"


# ---------------------------------------------------------------- documents


# The documents are hashed by digest and compared by identity (compare their digests): no generated
# __eq__ to compile at every command that loads this module (`run`, `images`, `inspect`, pull...).


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Manifest:
    """An image manifest (OCI or Docker v2 schema 2); `layers` are base first."""

    raw: bytes = field(repr=False)
    digest: Digest
    media_type: str
    config: Descriptor
    layers: list = field(default_factory=list)
    annotations: dict = field(default_factory=dict)
    subject: Descriptor | None = None

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:   # (written: a generated one is compiled at every start, ~0.2 ms)
        return f"Manifest({self.digest}, {len(self.layers)} layers)"


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Index:
    """An OCI image index or a Docker manifest list."""

    raw: bytes = field(repr=False)
    digest: Digest
    media_type: str
    manifests: list = field(default_factory=list)
    annotations: dict = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"Index({self.digest}, {len(self.manifests)} manifests)"


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class ImageConfig:
    """The runtime-relevant fields of an image config; `raw` keeps the exact bytes (diff_ids base first)."""

    raw: bytes = field(repr=False)
    digest: Digest
    os: str
    architecture: str
    variant: str | None = None
    entrypoint: list | None = None
    cmd: list | None = None
    env: list = field(default_factory=list)
    working_dir: str = ""
    user: str = ""
    diff_ids: list = field(default_factory=list)
    labels: dict = field(default_factory=dict)
    stop_signal: str | None = None
    created: str | None = None
    exposed_ports: list = field(default_factory=list)
    volumes: list = field(default_factory=list)
    healthcheck: dict | None = None   # config.Healthcheck as the JSON has it (checked by health.py)

    @property
    def platform(self) -> Platform:
        return Platform(self.os or "linux", self.architecture or "unknown", self.variant)

    def to_json(self) -> dict:
        """The parsed JSON of `raw`."""
        return json.loads(self.raw)

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"ImageConfig({self.digest}, {self.os}/{self.architecture})"


# ---------------------------------------------------------------- parsers


class _DuplicateKey(Exception):
    pass


# Fields Go decodes into structs (matched case-insensitively there); map keys such as labels or
# annotations are matched exactly, so "Foo" and "foo" labels stay legal.
_STRUCT_FIELDS = frozenset(k.casefold() for k in (
    "schemaVersion", "mediaType", "artifactType", "config", "layers", "manifests", "subject", "annotations",
    "digest", "size", "urls", "platform", "os", "architecture", "variant", "os.version", "os.features",
    "features", "data", "rootfs", "type", "diff_ids", "history", "created", "author",
    "Entrypoint", "Cmd", "Env", "WorkingDir", "User", "Labels", "StopSignal", "ExposedPorts", "Volumes",
    "Healthcheck"))


def _unique_keys(pairs: list) -> dict:
    """A JSON object without duplicate keys, and without two spellings of one struct field:
    Go clients (registries, containerd) keep the last duplicate and match struct fields
    case-insensitively, so {"layers": A, "Layers": B} would mean B to them and A to Python.
    Refusing such documents closes that parser differential."""
    seen, folded = set(), set()
    for k, _ in pairs:
        if k in seen:
            raise _DuplicateKey(k)
        seen.add(k)
        f = k.casefold()
        if f in _STRUCT_FIELDS:
            if f in folded:
                raise _DuplicateKey(k)
            folded.add(f)
    return dict(pairs)


def _load_json(raw: bytes, what: str, where: str) -> dict:
    if not isinstance(raw, (bytes, bytearray)):
        raise ManifestError(f"{what} {where}: expected bytes, got {type(raw).__name__}")
    if len(raw) > MAX_JSON_SIZE:
        raise ManifestError(f"{what} {where} is {len(raw)} bytes, more than the {MAX_JSON_SIZE >> 20} MiB limit")
    try:
        doc = json.loads(raw, object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:
        raise ManifestError(f"{what} {where} is ambiguous: key {e.args[0]!r} appears more than once "
                            "(field names compared case-insensitively, as Go's JSON decoder does)") from None
    except (ValueError, RecursionError) as e:
        raise ManifestError(f"{what} {where} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"{what} {where} is not a JSON object")
    return doc


def _schema1_error(where: str) -> ManifestError:
    return ManifestError(f"manifest {where} is Docker image manifest schema 1, which is not supported "
                         "(deprecated, unsigned content addressing)",
                         hint="rebuild or re-push the image with a current tool (OCI or Docker schema 2)")


def _descriptor(d, where: str, field_name: str) -> Descriptor:
    try:
        desc = Descriptor.from_dict(d)
    except (InvalidDescriptor, InvalidDigest) as e:
        raise ManifestError(f"manifest {where}: {field_name}: {e}") from None
    if not desc.media_type:
        raise ManifestError(f"manifest {where}: {field_name} ({desc.digest}) has no mediaType")
    return desc


def _annotations(doc: dict, where: str) -> dict:
    ann = doc.get("annotations")
    if ann is None:
        return {}
    if not isinstance(ann, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in ann.items()):
        raise ManifestError(f"manifest {where}: annotations must map strings to strings")
    return dict(ann)


def parse_manifest(raw: bytes, digest, content_type: str | None = None) -> Manifest | Index:
    """Parse an image manifest or index.

    `digest` (Digest or str) names the bytes in messages and is stored on the result; the caller has
    already verified it. `content_type` is the registry's Content-Type or the descriptor's
    mediaType (parameters ignored); a body `mediaType` that disagrees with it is refused.
    Without a body `mediaType` the type comes from `content_type`, else from the structure.
    """
    d = Digest.parse(str(digest))
    where = str(d)
    ct = mt.base(content_type)
    if mt.is_schema1(ct):
        raise _schema1_error(where)
    doc = _load_json(raw, "manifest", where)
    body_mt = doc.get("mediaType")
    if body_mt is not None and not isinstance(body_mt, str):
        raise ManifestError(f"manifest {where}: mediaType must be a string")
    if doc.get("schemaVersion") == 1 or mt.is_schema1(body_mt):
        raise _schema1_error(where)
    if doc.get("schemaVersion") is not None and doc.get("schemaVersion") != 2:
        raise ManifestError(f"manifest {where}: unsupported schemaVersion {doc.get('schemaVersion')!r}")
    body = mt.base(body_mt)
    if body and ct not in mt.GENERIC_TYPES and body != ct:
        raise ManifestError(f"manifest {where}: its mediaType {body_mt!r} contradicts the Content-Type "
                            f"{content_type!r}")
    kind = body or (ct if ct not in mt.GENERIC_TYPES else "")
    if not kind:
        has_index, has_manifest = "manifests" in doc, ("config" in doc or "layers" in doc)
        if has_index and has_manifest:
            raise ManifestError(f"manifest {where} is ambiguous: it has both 'manifests' and 'config'/'layers' "
                                "and no mediaType")
        if has_index:
            kind = mt.OCI_INDEX
        elif has_manifest:
            kind = mt.OCI_MANIFEST
        else:
            raise ManifestError(f"manifest {where} has no mediaType and is neither an index nor a manifest")
    if mt.is_index(kind):
        return _parse_index(doc, raw, d, kind)
    if mt.is_manifest(kind):
        return _parse_image_manifest(doc, raw, d, kind)
    raise ManifestError(f"manifest {where} has unsupported media type {kind!r}",
                        hint="imagetool reads OCI image manifests/indexes and Docker schema 2 manifests/lists")


def _parse_image_manifest(doc: dict, raw: bytes, d: Digest, kind: str) -> Manifest:
    where = str(d)
    if "manifests" in doc:
        raise ManifestError(f"manifest {where}: an image manifest must not have 'manifests'")
    if "config" not in doc:
        raise ManifestError(f"manifest {where} has no config descriptor")
    config = _descriptor(doc["config"], where, "config")
    layers_doc = doc.get("layers", [])
    if not isinstance(layers_doc, list):
        raise ManifestError(f"manifest {where}: layers must be a list")
    if len(layers_doc) > MAX_LAYERS:
        raise ManifestError(f"manifest {where} has {len(layers_doc)} layers, more than the limit of {MAX_LAYERS}")
    layers = [_descriptor(x, where, f"layers[{i}]") for i, x in enumerate(layers_doc)]
    subject = _descriptor(doc["subject"], where, "subject") if doc.get("subject") is not None else None
    return Manifest(bytes(raw), d, kind, config, layers, _annotations(doc, where), subject)


def _parse_index(doc: dict, raw: bytes, d: Digest, kind: str) -> Index:
    where = str(d)
    if "config" in doc or "layers" in doc:
        raise ManifestError(f"manifest {where}: an index must not have 'config' or 'layers'")
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise ManifestError(f"index {where}: manifests must be a list")
    if len(entries) > MAX_INDEX_ENTRIES:
        raise ManifestError(f"index {where} has {len(entries)} entries, more than the limit of {MAX_INDEX_ENTRIES}")
    manifests = [_descriptor(x, where, f"manifests[{i}]") for i, x in enumerate(entries)]
    return Index(bytes(raw), d, kind, manifests, _annotations(doc, where))


def _str_list(value, where: str, key: str) -> list | None:
    if value is None:
        return None
    if isinstance(value, str):     # some old builders wrote a bare string
        return [value]
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise ManifestError(f"config {where}: {key} must be a list of strings")
    return list(value)


def _healthcheck(doc, where: str) -> dict | None:
    """config.Healthcheck: an object or absent (its fields are checked where it is used: health.py)."""
    if doc is not None and not isinstance(doc, dict):
        raise ManifestError(f"config {where}: config.Healthcheck must be an object")
    return doc or None


def _keys(value, where: str, key: str) -> list:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise ManifestError(f"config {where}: {key} must be an object")
    return sorted(value)


def parse_config(raw: bytes, digest) -> ImageConfig:
    """Parse an image config (OCI or Docker): the runtime fields and rootfs.diff_ids (validated digests)."""
    d = Digest.parse(str(digest))
    where = str(d)
    doc = _load_json(raw, "config", where)
    rootfs = doc.get("rootfs")
    if rootfs is None:
        raise ManifestError(f"config {where} has no rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type", "layers") != "layers":
        raise ManifestError(f"config {where}: rootfs.type must be 'layers'")
    diff_ids_doc = rootfs.get("diff_ids") or []
    if not isinstance(diff_ids_doc, list) or len(diff_ids_doc) > MAX_LAYERS:
        raise ManifestError(f"config {where}: rootfs.diff_ids must be a list of at most {MAX_LAYERS} digests")
    try:
        diff_ids = [Digest.parse(x) for x in diff_ids_doc]
    except InvalidDigest as e:
        raise ManifestError(f"config {where}: rootfs.diff_ids: {e}") from None
    cfg = doc.get("config")
    cfg = {} if cfg is None else cfg
    if not isinstance(cfg, dict):
        raise ManifestError(f"config {where}: config must be an object")
    strings = {}
    for key in ("os", "architecture", "variant", "created"):
        v = doc.get(key)
        if v is not None and not isinstance(v, str):
            raise ManifestError(f"config {where}: {key} must be a string")
        strings[key] = v
    for key in ("WorkingDir", "User", "StopSignal"):
        v = cfg.get(key)
        if v is not None and not isinstance(v, str):
            raise ManifestError(f"config {where}: config.{key} must be a string")
        strings[key] = v
    labels = cfg.get("Labels")
    labels = {} if labels is None else labels
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise ManifestError(f"config {where}: config.Labels must map strings to strings")
    return ImageConfig(
        raw=bytes(raw), digest=d,
        os=strings["os"] or "", architecture=strings["architecture"] or "", variant=strings["variant"] or None,
        entrypoint=_str_list(cfg.get("Entrypoint"), where, "config.Entrypoint"),
        cmd=_str_list(cfg.get("Cmd"), where, "config.Cmd"),
        env=_str_list(cfg.get("Env"), where, "config.Env") or [],
        working_dir=strings["WorkingDir"] or "", user=strings["User"] or "",
        diff_ids=diff_ids, labels=dict(labels), stop_signal=strings["StopSignal"] or None,
        created=strings["created"],
        exposed_ports=_keys(cfg.get("ExposedPorts"), where, "config.ExposedPorts"),
        volumes=_keys(cfg.get("Volumes"), where, "config.Volumes"),
        healthcheck=_healthcheck(cfg.get("Healthcheck"), where),
    )


# ---------------------------------------------------------------- platform selection


def is_attestation(desc: Descriptor) -> bool:
    """A BuildKit attestation entry of an index (not an image to run)."""
    if (desc.annotations or {}).get(REFERENCE_TYPE_ANNOTATION) == ATTESTATION_TYPE:
        return True
    p = desc.platform or {}
    return p.get("os") == "unknown" and p.get("architecture") == "unknown"


def available_platforms(index: Index) -> list[str]:
    """The platforms an index offers (attestations skipped), in index order."""
    out = []
    for desc in index.manifests:
        if is_attestation(desc):
            continue
        p = Platform.from_dict(desc.platform)
        # index content reaches the terminal in messages: no control characters (escape sequences)
        out.append("".join(c if c.isprintable() else "?" for c in str(p)[:100]) if p else "unknown")
    return out


def select_platform(index: Index, platform: Platform | str | None = None) -> Descriptor:
    """The first entry of `index` for `platform` (default: the host's).

    Exact match after normalisation first; then an older variant the platform also runs
    (`Platform.compatible`: arm/v7 takes arm/v6, then v5); otherwise the first entry that declares
    no platform (as containerd does). Attestation entries are never chosen. ManifestError lists
    what exists.
    """
    want = Platform.parse(platform) if isinstance(platform, str) else (platform or Platform.host())
    entries = [d for d in index.manifests
               if not is_attestation(d) and (mt.is_manifest(d.media_type) or mt.is_index(d.media_type))]
    for candidate in want.compatible():
        for desc in entries:
            if desc.platform is not None and candidate.matches(Platform.from_dict(desc.platform)):
                return desc
    unplatformed = next((d for d in entries if d.platform is None), None)
    if unplatformed is not None:
        return unplatformed
    offered = ", ".join(available_platforms(index)) or "none"
    raise ManifestError(f"no image for platform {want} in index {index.digest} (available: {offered})",
                        hint="choose one of the available platforms with --platform")
