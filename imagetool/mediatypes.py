"""Media types of OCI and Docker images, and the questions asked about them (index? manifest? layer compression?).

Media types are compared exactly after dropping parameters (`; charset=utf-8`) and case;
never by substring.
"""

from __future__ import annotations

from imagetool.errors import ManifestError

# OCI image spec
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_ND = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_ND_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_ND_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYOUT_HEADER = "application/vnd.oci.layout.header.v1+json"

# Docker image manifest v2 schema 2 (and the schema 1 types imagetool refuses)
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"          # seen in the wild
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"    # containerd's name
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})

_LAYER_COMPRESSION: dict[str, str | None] = {
    OCI_LAYER: None,
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    OCI_LAYER_ND: None,
    OCI_LAYER_ND_GZIP: "gzip",
    OCI_LAYER_ND_ZSTD: "zstd",
    DOCKER_LAYER: "gzip",
    DOCKER_LAYER_FOREIGN: "gzip",
    DOCKER_LAYER_TAR: None,
    DOCKER_LAYER_ZSTD: "zstd",
}
LAYER_TYPES = frozenset(_LAYER_COMPRESSION)
NONDISTRIBUTABLE_TYPES = frozenset({OCI_LAYER_ND, OCI_LAYER_ND_GZIP, OCI_LAYER_ND_ZSTD, DOCKER_LAYER_FOREIGN})

# The Accept header of a manifest request (containerd's list, most specific first).
MANIFEST_ACCEPT = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT_HEADER = ", ".join(MANIFEST_ACCEPT + ("*/*;q=0.1",))

# Content-Types that say nothing about which manifest this is.
GENERIC_TYPES = frozenset({"", "application/json", "application/octet-stream", "text/plain"})


def base(media_type: str | None) -> str:
    """The media type without parameters, lower case: "application/json; charset=utf-8" → "application/json"."""
    return (media_type or "").split(";", 1)[0].strip().lower()


def is_index(media_type: str | None) -> bool:
    """An OCI image index or a Docker manifest list."""
    return base(media_type) in INDEX_TYPES


def is_manifest(media_type: str | None) -> bool:
    """An OCI image manifest or a Docker v2 schema 2 manifest (not schema 1)."""
    return base(media_type) in MANIFEST_TYPES


def is_schema1(media_type: str | None) -> bool:
    return base(media_type) in SCHEMA1_TYPES


def is_config(media_type: str | None) -> bool:
    return base(media_type) in CONFIG_TYPES


def is_layer(media_type: str | None) -> bool:
    return base(media_type) in LAYER_TYPES


def is_nondistributable(media_type: str | None) -> bool:
    """Foreign / non-distributable layers: download them when referenced (from `urls` if the registry lacks them)."""
    return base(media_type) in NONDISTRIBUTABLE_TYPES


def is_docker(media_type: str | None) -> bool:
    """A Docker (not OCI) media type."""
    return base(media_type).startswith("application/vnd.docker.")


def layer_compression(media_type: str) -> str | None:
    """"gzip", "zstd" or None (plain tar) for a layer media type; ManifestError for anything else."""
    mt = base(media_type)
    try:
        return _LAYER_COMPRESSION[mt]
    except KeyError:
        raise ManifestError(f"unsupported layer media type {media_type!r}",
                            hint="imagetool reads tar layers (plain, gzip or zstd)") from None


def layer_media_type(compression: str | None, docker: bool = False) -> str:
    """The layer media type for a compression ("gzip", "zstd", None); Docker has gzip (and plain tar)."""
    if docker:
        return {"gzip": DOCKER_LAYER, None: DOCKER_LAYER_TAR, "zstd": DOCKER_LAYER_ZSTD}[compression]
    return {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD, None: OCI_LAYER}[compression]
