"""`commit` (a container's changes become a new layer on its image) and `history` (an image's layers).

Contract of `commit(store, container, image=None, changes=(), message=None, author=None)`:
1. The container (id, name or prefix) must not be running: its upper dir is hostile content that
   a running process could swap under the reader (docker pauses it; imagetool asks to stop it).
2. Its overlay upper dir becomes one gzip layer: entries sorted, owners and modes and mtimes kept,
   a character device 0/0 becomes the OCI whiteout `.wh.<name>`, a directory marked opaque gets
   `.wh..wh..opq`; every file is opened with O_NOFOLLOW and must be the inode that was listed, so
   nothing outside the upper dir is ever read.
3. The new config is the image's config with the layer's diff_id appended, a history entry
   (`created_by` "imagetool commit", `comment` = message, `author`), `created` now, and the
   `--change` instructions applied (CMD, ENTRYPOINT, ENV, WORKDIR, EXPOSE, LABEL, USER). The new
   manifest is the image's manifest with the layer appended (Docker media types stay Docker).
4. Blobs are stored (verified), then `image` is tagged (untagged: the `<none>@` dangling name).
Returns CommitResult(name, digest). `history(store, image)` returns the config's history, newest
first, each with the size of its layer (0 for empty_layer entries). Never prints.
"""

from __future__ import annotations

import json
import os
import stat
import tarfile
import tempfile
import time
from dataclasses import dataclass

from store import Descriptor, Digest

from imagetool import mediatypes as mt
from imagetool.errors import ImagetoolError
from imagetool.unpack import whiteouts

CHANGES = ("CMD", "ENTRYPOINT", "ENV", "WORKDIR", "EXPOSE", "LABEL", "USER")


@dataclass(frozen=True, slots=True)
class CommitResult:
    """The image a commit made: its name (or none) and manifest digest."""

    name: str
    digest: str


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One line of `history`: an entry of the image config's history and its layer."""

    created: str
    created_by: str
    size: int
    comment: str
    layer: str | None     # the layer's digest ("" for an empty_layer entry)


def commit(store, container: str, image: str | None = None, changes=(), message: str | None = None,
           author: str | None = None) -> CommitResult:
    """Commit the container's changes (see the module docstring)."""
    from imagetool import containers, reference
    from imagetool import image as images
    from imagetool.archive.loader import DANGLING

    cdir, state = containers.find(store, container)
    if state.get("status") == "running":
        raise ImagetoolError(f"container {state.get('name') or container} is running",
                             hint="stop it first (imagetool stop), then commit")
    upper = cdir / "upper"
    if not upper.is_dir():
        raise ImagetoolError(f"container {container} has no upper directory (it never started?)")
    name = str(reference.parse(image)) if image else None
    base = images.load(store, state.get("image_digest") or state["image"])
    cfg = json.loads(base.config.raw)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    docker = mt.is_docker(base.descriptor.media_type or base.manifest.media_type)
    with store.lock_shared():
        layer, diff_id = _layer(store, upper, docker)
        cfg.setdefault("rootfs", {"type": "layers", "diff_ids": []})["diff_ids"].append(str(diff_id))
        entry = {"created": now, "created_by": "imagetool commit"}
        if message:
            entry["comment"] = message
        if author:
            entry["author"] = author
            cfg["author"] = author
        cfg.setdefault("history", []).append(entry)
        cfg["created"] = now
        for change in changes:
            apply_change(cfg.setdefault("config", {}), change)
        raw_cfg = json.dumps(cfg, separators=(",", ":")).encode()
        cfg_digest = store.put(raw_cfg)
        manifest = json.loads(base.manifest.raw)
        manifest["config"] = Descriptor(base.manifest.config.media_type or mt.OCI_CONFIG, cfg_digest,
                                        len(raw_cfg)).to_dict()
        manifest["layers"] = list(manifest.get("layers") or []) + [layer.to_dict()]
        raw = json.dumps(manifest, separators=(",", ":")).encode()
        digest = store.put(raw)
        desc = Descriptor(base.manifest.media_type, digest, len(raw), platform=base.descriptor.platform)
        store.tag(name or DANGLING + str(digest), desc)
    return CommitResult(name or "", str(digest))


def _layer(store, upper, docker: bool) -> tuple[Descriptor, Digest]:
    """The upper dir as a stored gzip layer: (descriptor, diff_id)."""
    from imagetool.compression import compressor

    fd, tmp = tempfile.mkstemp(prefix="imagetool-commit-", dir=store.ingest_dir)
    try:
        with os.fdopen(fd, "w+b") as out:
            sink = _HashingGzip(out, compressor("gzip"))
            with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tf:
                _add_tree(tf, str(upper), "")
            sink.close()
            digest = Digest("sha256", sink.compressed.hexdigest())
            diff_id = Digest("sha256", sink.plain.hexdigest())
            out.seek(0)
            with store.ingest(digest, sink.size) as w:
                if not w.exists:
                    if w.offset:
                        w.reset()
                    for chunk in iter(lambda: out.read(1 << 20), b""):
                        w.write(chunk)
                    w.commit()
    finally:
        os.unlink(tmp)
    media = mt.DOCKER_LAYER if docker else mt.OCI_LAYER_GZIP
    return Descriptor(media, digest, sink.size), diff_id


class _HashingGzip:
    """A write-only file: hashes the tar (diff_id), gzips it, hashes and writes the result."""

    def __init__(self, out, comp):
        import hashlib

        self.out, self.comp = out, comp
        self.plain, self.compressed = hashlib.sha256(), hashlib.sha256()
        self.size = 0

    def _emit(self, data: bytes) -> None:
        if data:
            self.compressed.update(data)
            self.out.write(data)
            self.size += len(data)

    def write(self, data) -> int:
        self.plain.update(data)
        self._emit(self.comp.compress(bytes(data)))
        return len(data)

    def close(self) -> None:
        self._emit(self.comp.flush())
        self.out.flush()


def _add_tree(tf: tarfile.TarFile, root: str, rel: str) -> None:
    """Add the entries below root/rel, sorted, turning overlay whiteouts into OCI ones."""
    path = os.path.join(root, rel) if rel else root
    for name in sorted(os.listdir(path)):
        arc = f"{rel}/{name}" if rel else name
        full = os.path.join(root, arc)
        st = os.lstat(full)
        if whiteouts.is_overlay_whiteout(st):
            ti = tarfile.TarInfo(f"{rel}/{whiteouts.oci_name(name)}" if rel else whiteouts.oci_name(name))
            ti.mtime = int(st.st_mtime)
            tf.addfile(ti)
            continue
        ti = tf.gettarinfo(full, arc)
        ti.uname = ti.gname = ""
        if stat.S_ISREG(st.st_mode) and ti.type == tarfile.REGTYPE:
            f = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                now = os.fstat(f)
                if (now.st_ino, now.st_dev, now.st_size) != (st.st_ino, st.st_dev, st.st_size):
                    raise ImagetoolError(f"{arc} changed while the container was committed")
                with os.fdopen(os.dup(f), "rb") as fo:
                    tf.addfile(ti, fo)
            finally:
                os.close(f)
            continue
        tf.addfile(ti)
        if stat.S_ISDIR(st.st_mode):
            if whiteouts.is_opaque(full):
                tf.addfile(tarfile.TarInfo(f"{arc}/{whiteouts.OPAQUE}"))
            _add_tree(tf, root, arc)


def apply_change(config: dict, change: str) -> None:
    """One Dockerfile-like instruction (`CMD ["sh"]`, `ENV A=1`, `EXPOSE 80/tcp`, …) applied to a
    config's `config` object; ImagetoolError for anything else."""
    word, _, rest = change.strip().partition(" ")
    word, rest = word.upper(), rest.strip()
    if word not in CHANGES or not rest:
        raise ImagetoolError(f"invalid --change {change!r}: expected one of {', '.join(CHANGES)} with a value")
    if word in ("CMD", "ENTRYPOINT"):
        if rest.startswith("["):
            try:
                value = json.loads(rest)
            except ValueError:
                value = None
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ImagetoolError(f"invalid --change {change!r}: not a JSON list of strings")
        else:
            value = ["/bin/sh", "-c", rest]
        config["Cmd" if word == "CMD" else "Entrypoint"] = value
    elif word == "ENV":
        key, sep, val = rest.partition("=")
        if not sep:
            key, _, val = rest.partition(" ")
        env = [e for e in config.get("Env") or [] if e.split("=", 1)[0] != key]
        config["Env"] = env + [f"{key}={val.strip()}"]
    elif word == "WORKDIR":
        config["WorkingDir"] = rest
    elif word == "USER":
        config["User"] = rest
    elif word == "EXPOSE":
        for port in rest.split():
            config.setdefault("ExposedPorts", {})[port if "/" in port else port + "/tcp"] = {}
    elif word == "LABEL":
        key, sep, val = rest.partition("=")
        if not sep:
            raise ImagetoolError(f"invalid --change {change!r}: LABEL needs key=value")
        config.setdefault("Labels", {})[key.strip()] = val.strip().strip('"')


def history(store, image_ref: str) -> list[HistoryEntry]:
    """The image's history, newest first (see the module docstring)."""
    from imagetool import image as images

    img = images.load(store, image_ref)
    cfg = json.loads(img.config.raw)
    layers = list(img.manifest.layers)
    rows = []
    for h in cfg.get("history") or []:
        empty = bool(h.get("empty_layer"))
        layer = None if empty or not layers else layers.pop(0)
        rows.append(HistoryEntry(str(h.get("created") or ""), str(h.get("created_by") or ""),
                                 layer.size if layer else 0, str(h.get("comment") or ""),
                                 str(layer.digest) if layer else ""))
    rows += [HistoryEntry("", "", la.size, "", str(la.digest)) for la in layers]  # layers without history
    return rows[::-1]
