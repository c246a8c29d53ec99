"""Phase 1 of a load: read an archive's index/manifests, verify every blob, decide what to write.

Nothing here writes to the store. `read_archive(source, store)` returns a `Plan` whose every
blob has been hashed and matched against its digest (or, for a docker-archive layer, against
the config's diff_id), so phase 2 (`commit.py`) only copies bytes already known to be right.
Blobs the store already holds are neither read nor written again.

Formats (chosen by what the archive holds):
  * index.json            an OCI image layout (oci-archive, OCI layout directory, and the
                          Engine 25+ docker save, whose manifest.json then only adds names);
  * manifest.json only    a legacy docker save: `Config` + `Layers` (plain or compressed tars,
                          possibly symlinks to each other) + `RepoTags`; imagetool writes an OCI
                          manifest for it (uncompressed layers stored as `…layer.v1.tar`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from store import Descriptor, Digest
from store.errors import InvalidDescriptor, InvalidDigest

from imagetool import mediatypes as mt
from imagetool import oci, reference
from imagetool import compression
from imagetool.archive.source import JSON_LIMIT, Member, Source, normalise
from imagetool.errors import ArchiveError, InvalidReference, ManifestError
from imagetool.transports import walk
from imagetool.transports.archive import CONTAINERD_NAME, REF_NAME, blob_name

MAX_IMAGES = 1000
WORKERS = min(4, os.cpu_count() or 1)  # blobs hashed / copied at once


@dataclass(frozen=True, slots=True)
class Loaded:
    """One image of the archive: the descriptor its names point at, and those names (full form)."""

    descriptor: Descriptor
    names: tuple[str, ...] = ()


@dataclass
class Plan:
    """What phase 2 writes: small verified blobs in memory, large verified blobs still in the source."""

    images: list[Loaded] = field(default_factory=list)
    puts: dict[Digest, bytes] = field(default_factory=dict)
    copies: dict[Digest, Member] = field(default_factory=dict)

    def add_image(self, img: Loaded) -> None:
        for i, old in enumerate(self.images):
            if old.descriptor.digest == img.descriptor.digest:
                merged = old.names + tuple(n for n in img.names if n not in old.names)
                self.images[i] = Loaded(old.descriptor, merged)
                return
        if len(self.images) >= MAX_IMAGES:
            raise ArchiveError(f"more than {MAX_IMAGES} images in one archive")
        self.images.append(img)


def read_archive(src: Source, store) -> Plan:
    """The verified plan for everything `src` holds; ArchiveError/DigestError-like messages."""
    reader = _Reader(src, store)
    has_index = src.exists("index.json")
    has_manifest = src.exists("manifest.json")
    if has_index:
        reader.read_oci_layout(docker_names=reader.docker_entries() if has_manifest else None)
    elif has_manifest:
        reader.read_docker(reader.docker_entries())
    elif src.exists("repositories"):
        raise ArchiveError(f"{src.label}: a docker save from before Docker 1.10 (no manifest.json) "
                           "is not supported")
    else:
        raise ArchiveError(f"{src.label}: not an image archive (no index.json or manifest.json)"
                           + src.truncated_hint,
                           hint="imagetool loads docker-archive, oci-archive and OCI layout directories")
    if not reader.plan.images:
        raise ArchiveError(f"{src.label}: the archive holds no image")
    reader.verify_pending()
    return reader.plan


def _json(data: bytes, what: str, label: str):
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ArchiveError(f"{label}: {what} is not valid JSON ({e})") from None


def _digest_in_name(name: str) -> Digest | None:
    """The digest a member name states (`blobs/sha256/<hex>`, `<hex>.json`, `<hex>.tar`), if any."""
    parts = name.split("/")
    try:
        if len(parts) == 3 and parts[0] == "blobs":
            return Digest(parts[1], parts[2])
        base = parts[-1]
        for ext in (".json", ".tar"):
            if base.endswith(ext) and len(base) == 64 + len(ext):
                return Digest("sha256", base[:-len(ext)])
    except InvalidDigest:
        return None
    return None


def full_name(name: str, label: str, where: str) -> str | None:
    """The full normalised tag name for a name found in an archive; None for a digest reference."""
    try:
        ref = reference.parse(name)
    except InvalidReference as e:
        raise ArchiveError(f"{label}: {where} names an invalid image {name!r} ({e})") from None
    if ref.digest:
        return None
    return str(ref)


class _Reader:
    def __init__(self, src: Source, store):
        self.src = src
        self.store = store
        self.plan = Plan()
        self._checked: dict[str, tuple] = {}  # member name -> (digest, diff_id) already verified
        self.pending: list[tuple] = []  # (descriptor, member, what) to hash before phase 2

    # -- blobs ---------------------------------------------------------------------------------
    def _present(self, d: Digest) -> bool:
        return d in self.plan.puts or d in self.plan.copies or self.store.has(d)

    def json_blob(self, desc: Descriptor, what: str) -> bytes:
        """A manifest/index/config blob, verified; from the store when it is already there."""
        if desc.size > JSON_LIMIT:
            raise ArchiveError(f"{self.src.label}: {what} {desc.digest} is {desc.size} bytes, "
                               f"more than the {JSON_LIMIT >> 20} MiB allowed")
        if desc.digest in self.plan.puts:
            return self.plan.puts[desc.digest]
        if self.store.has(desc.digest):
            return self.store.read(desc.digest, limit=JSON_LIMIT)
        data = self.src.read(blob_name(desc.digest), what=f"{what} blob")
        self._check(desc, Digest.of_bytes(data, desc.digest.algorithm), len(data), what)
        self.plan.puts[desc.digest] = data
        return data

    def file_blob(self, desc: Descriptor, what: str) -> None:
        """A layer (or any large blob): hashed by `verify_pending`, copied in phase 2."""
        if self._present(desc.digest):
            return
        m = self.src.resolve(blob_name(desc.digest), what=f"{what} blob")
        if m.size != desc.size:
            raise ArchiveError(f"{self.src.label}: {what} {desc.digest} is {m.size} bytes in the "
                               f"archive but its descriptor says {desc.size}")
        self.plan.copies[desc.digest] = m
        self.pending.append((desc, m, what))

    def verify_pending(self) -> None:
        """Hash every blob queued by file_blob, a few at a time (hashlib releases the GIL)."""
        if not self.pending:
            return

        def check(item) -> None:
            desc, m, what = item
            h = desc.digest.hasher()
            for chunk in self.src.chunks(m):
                h.update(chunk)
            self._check(desc, Digest(desc.digest.algorithm, h.hexdigest()), m.size, what)

        if len(self.pending) == 1:
            check(self.pending[0])
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(WORKERS, len(self.pending))) as pool:
            for f in [pool.submit(check, item) for item in self.pending]:
                f.result()  # the first failure (in queue order) is the one reported

    def _check(self, desc: Descriptor, actual: Digest, size: int, what: str) -> None:
        if actual != desc.digest:
            raise ArchiveError(f"{self.src.label}: {what} {desc.digest} does not match its content "
                               f"(it hashes to {actual}): the archive is corrupt")
        if size != desc.size:
            raise ArchiveError(f"{self.src.label}: {what} {desc.digest} is {size} bytes but its "
                               f"descriptor says {desc.size}")

    # -- OCI layout ----------------------------------------------------------------------------
    def read_oci_layout(self, docker_names: list | None) -> None:
        label = self.src.label
        if self.src.exists("oci-layout"):
            doc = _json(self.src.read("oci-layout", limit=64 << 10), "oci-layout", label)
            version = doc.get("imageLayoutVersion") if isinstance(doc, dict) else None
            if not isinstance(version, str) or not version.startswith("1."):
                raise ArchiveError(f"{label}: unsupported OCI layout version {version!r}")
        index = _json(self.src.read("index.json", what="index.json"), "index.json", label)
        if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
            raise ArchiveError(f"{label}: index.json is not an OCI image index (no manifests list)")
        names_by_config: dict[Digest, list[str]] = {}
        for entry in docker_names or ():
            cfg = _digest_in_name(entry["config"])
            if cfg is not None:
                names_by_config.setdefault(cfg, []).extend(entry["names"])
        covered: set[Digest] = set()
        for i, raw_desc in enumerate(index["manifests"]):
            try:
                desc = Descriptor.from_dict(raw_desc)
            except InvalidDescriptor as e:
                raise ArchiveError(f"{label}: index.json manifests[{i}]: {e}") from None
            configs = self.walk(desc)
            if configs is None:
                continue  # not an image (an artifact, a signature): not ours to load
            covered.update(configs)
            names = list(self._annotation_names(desc.annotations or {}))
            for c in configs:
                names += [n for n in names_by_config.get(c, ()) if n not in names]
            self.plan.add_image(Loaded(Descriptor(desc.media_type, desc.digest, desc.size), tuple(names)))
        # manifest.json entries whose config index.json does not cover: load them the legacy way
        rest = [e for e in docker_names or () if _digest_in_name(e["config"]) not in covered]
        if rest:
            self.read_docker(rest)

    def _annotation_names(self, ann: dict):
        name = ann.get(CONTAINERD_NAME)
        if name:
            full = full_name(name, self.src.label, "index.json")
            if full:
                yield full
            return
        ref = ann.get(REF_NAME)
        # a bare ref name ("latest", "v1") is a tag without a repository: not an image name
        if ref and ("/" in ref or ":" in ref):
            try:
                full = full_name(ref, self.src.label, "index.json")
            except ArchiveError:
                return
            if full:
                yield full

    def walk(self, desc: Descriptor) -> list[Digest] | None:
        """Verify `desc` and everything below it; the config digests found (None: not an image).

        Index entries whose manifest the archive does not carry are skipped (docker save keeps
        only one platform of an index); OCI artifacts (a non-image config) are not loaded."""
        media = desc.media_type
        if not (mt.is_index(media) or mt.is_manifest(media) or media == ""):
            return None

        def keep(entry: Descriptor) -> bool:
            return (mt.is_index(entry.media_type) or mt.is_manifest(entry.media_type)) and \
                (self._present(entry.digest) or self.src.exists(blob_name(entry.digest)))

        try:
            nodes = walk.walk(lambda d: self.json_blob(d, "manifest"), desc, keep)
        except ManifestError as e:
            raise ArchiveError(f"{self.src.label}: {e.message}") from None
        configs: list[Digest] = []
        for n in nodes:
            if n.is_index:
                continue
            if n.document.config.media_type and not mt.is_config(n.document.config.media_type):
                continue  # an OCI artifact, not a container image
            self.json_blob(n.document.config, "config")
            for layer in n.document.layers:
                self.file_blob(layer, "layer")
            configs.append(n.document.config.digest)
        if not configs:
            if nodes[-1].is_index:
                raise ArchiveError(f"{self.src.label}: index {desc.digest} lists no image whose "
                                   "manifest is in the archive")
            return None
        return configs

    # -- docker save (manifest.json) ------------------------------------------------------------
    def docker_entries(self) -> list[dict]:
        """manifest.json as a list of {config, layers, names}, validated."""
        label = self.src.label
        doc = _json(self.src.read("manifest.json", what="manifest.json"), "manifest.json", label)
        if not isinstance(doc, list):
            raise ArchiveError(f"{label}: manifest.json is not a list of images")
        if len(doc) > MAX_IMAGES:
            raise ArchiveError(f"{label}: manifest.json lists more than {MAX_IMAGES} images")
        out = []
        for i, e in enumerate(doc):
            where = f"manifest.json[{i}]"
            if not isinstance(e, dict) or not isinstance(e.get("Config"), str) \
                    or not isinstance(e.get("Layers"), list) \
                    or not all(isinstance(x, str) for x in e["Layers"]):
                raise ArchiveError(f"{label}: {where} needs a Config string and a Layers list")
            tags = e.get("RepoTags") or []
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise ArchiveError(f"{label}: {where}: RepoTags must be a list of names")
            if len(e["Layers"]) > oci.MAX_LAYERS:
                raise ArchiveError(f"{label}: {where} has more than {oci.MAX_LAYERS} layers")
            names = [n for n in (full_name(t, label, where) for t in tags) if n]
            out.append({"config": normalise(e["Config"], f"{where} Config path"),
                        "layers": [normalise(x, f"{where} layer path") for x in e["Layers"]],
                        "names": names})
        return out

    def read_docker(self, entries: list[dict]) -> None:
        for e in entries:
            self.plan.add_image(self._docker_image(e))

    def _docker_image(self, e: dict) -> Loaded:
        label = self.src.label
        cfg_raw = self.src.read(e["config"], what="config")
        cfg_digest = Digest.of_bytes(cfg_raw)
        stated = _digest_in_name(e["config"])
        if stated is not None and stated != cfg_digest:
            raise ArchiveError(f"{label}: config {e['config']!r} does not match its name "
                               f"(it hashes to {cfg_digest}): the archive is corrupt")
        try:
            cfg = oci.parse_config(cfg_raw, cfg_digest)
        except ManifestError as e2:
            raise ArchiveError(f"{label}: {e2.message}") from None
        if len(cfg.diff_ids) != len(e["layers"]):
            raise ArchiveError(f"{label}: {e['config']!r} lists {len(cfg.diff_ids)} layers (diff_ids) "
                               f"but manifest.json names {len(e['layers'])}")
        layers = [self._docker_layer(path, diff_id) for path, diff_id in zip(e["layers"], cfg.diff_ids)]
        cfg_desc = Descriptor(mt.OCI_CONFIG, cfg_digest, len(cfg_raw))
        manifest = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": cfg_desc.to_dict(),
                    "layers": [la.to_dict() for la in layers]}
        raw = json.dumps(manifest, separators=(",", ":")).encode()
        mdesc = Descriptor(mt.OCI_MANIFEST, Digest.of_bytes(raw), len(raw))
        if not self.store.has(cfg_digest):
            self.plan.puts[cfg_digest] = cfg_raw
        if not self.store.has(mdesc.digest):
            self.plan.puts[mdesc.digest] = raw
        return Loaded(mdesc, tuple(e["names"]))

    def _docker_layer(self, path: str, diff_id: Digest) -> Descriptor:
        """A docker-archive layer: a plain tar (stored as is: digest = diff_id) or a gzip/zstd tar
        (stored as is, its diff_id checked by decompressing)."""
        label = self.src.label
        m = self.src.resolve(path, what="layer")
        head = next(self.src.chunks(m, compression.MAGIC_LEN), b"") if m.size else b""
        other = compression.unsupported(head)
        if other:
            raise ArchiveError(f"{label}: layer {path!r} is {other}-compressed, which imagetool does not read")
        kind = compression.sniff(head)
        media = mt.layer_media_type(kind)
        if kind is None:  # stored as is: its digest is its diff_id, checked with the other blobs
            desc = Descriptor(media, diff_id, m.size)
            if not self._present(diff_id):
                self.plan.copies[diff_id] = m
                self.pending.append((desc, m, f"layer {path!r} (diff_id)"))
            return desc
        if m.name in self._checked:
            digest, got = self._checked[m.name]
        else:
            digest, got = self._hash_layer(m, kind)
            self._checked[m.name] = (digest, got)
        if got != diff_id:
            raise ArchiveError(f"{label}: layer {path!r} does not match the config's diff_id "
                               f"{diff_id} (its content hashes to {got}): the archive is corrupt")
        if not self._present(digest):
            self.plan.copies[digest] = m
        return Descriptor(media, digest, m.size)

    def _hash_layer(self, m: Member, kind: str | None) -> tuple[Digest, Digest]:
        """(digest, diff_id) of a member, decompressing when it is compressed."""
        raw_hash = Digest("sha256", "0" * 64).hasher()
        if kind is None:
            for chunk in self.src.chunks(m):
                raw_hash.update(chunk)
            d = Digest("sha256", raw_hash.hexdigest())
            return d, d
        diff_hash = raw_hash.copy()
        feed = _HashingReader(self.src.chunks(m), raw_hash)
        stream = compression.decompressing(feed, kind, f"{self.src.label}: layer {m.name!r}")
        try:
            while True:
                data = stream.read(1 << 20)
                if not data:
                    break
                diff_hash.update(data)
        except compression.Corrupt as e:
            raise ArchiveError(str(e)) from None
        for rest in feed.chunks:  # hash to the end even past trailing padding
            raw_hash.update(rest)
        return Digest("sha256", raw_hash.hexdigest()), Digest("sha256", diff_hash.hexdigest())


class _HashingReader:
    """`.read(n)` over an iterator of chunks (any size returned), hashing what passes."""

    def __init__(self, chunks, h):
        self.chunks = chunks
        self.h = h

    def read(self, n: int = -1) -> bytes:
        data = next(self.chunks, b"")
        self.h.update(data)
        return data
