"""import (a root filesystem → a one-layer image) and export (a flattened filesystem → a tar).

Directories are turned into tars by walking them with directory fds and O_NOFOLLOW (a
container's upper dir is written by the container: never follow a link in it), in sorted order,
keeping modes, owners, times, symlinks, hard links, devices and fifos (sockets are skipped).
Export merges overlay-format layers top-down without mounting: a char 0/0 device deletes the
path below it, `trusted.overlay.opaque=y` hides a directory's lower contents, and an upper
non-directory hides everything under its path.
"""

from __future__ import annotations

import datetime
import json
import os
import stat
import tarfile
import time

from store import Descriptor, Digest

from imagetool import mediatypes as mt
from imagetool import oci, reference
from imagetool import compression
from imagetool.archive.output import output_fd
from imagetool.archive.source import FdReader, spool_file
from imagetool.archive.tarwriter import TarWriter
from imagetool.errors import ArchiveError
from imagetool.safepath import Root
from imagetool.unpack import whiteouts

_CHUNK = 1 << 20


# ---------------------------------------------------------------- trees → tar


class _Node:
    __slots__ = ("layer", "st", "opaque")

    def __init__(self, layer: int, st: os.stat_result, opaque: bool = False):
        self.layer, self.st, self.opaque = layer, st, opaque


def _scan(root: str, layer: int, overlay: bool, out: dict, hidden: set, opaque_above: set) -> tuple[set, set]:
    """Add the entries of one layer dir not hidden by the layers above; return its (whiteouts, opaque dirs)."""
    deleted: set[str] = set()
    opaques: set[str] = set()
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    stack = [(root_fd, "")]
    try:
        while stack:
            dfd, rel = stack.pop()
            try:
                with os.scandir(dfd) as it:
                    entries = sorted(it, key=lambda e: e.name)
                for e in entries:
                    path = f"{rel}/{e.name}" if rel else e.name
                    if _blocked(path, out, hidden, opaque_above):
                        continue
                    st = e.stat(follow_symlinks=False)
                    if overlay and whiteouts.is_overlay_whiteout(st):
                        deleted.add(path)
                        continue
                    is_dir = stat.S_ISDIR(st.st_mode)
                    opaque = overlay and is_dir and _is_opaque(dfd, e.name)
                    if opaque:
                        opaques.add(path)
                    if path not in out:
                        out[path] = _Node(layer, st)
                    elif not stat.S_ISDIR(out[path].st.st_mode):
                        continue  # a file above replaces this directory and all below it
                    if is_dir:
                        cfd = os.open(e.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                      dir_fd=dfd)
                        stack.append((cfd, path))
            finally:
                os.close(dfd)
    except BaseException:
        for fd, _ in stack:
            os.close(fd)
        raise
    return deleted, opaques


def _is_opaque(dfd: int, name: str) -> bool:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    except OSError:
        return False
    try:
        return whiteouts.is_opaque(fd)
    finally:
        os.close(fd)


def _blocked(path: str, out: dict, hidden: set, opaque_above: set) -> bool:
    """Hidden by a whiteout above, inside an opaque dir above, or under a non-dir above."""
    if path in hidden:
        return True
    parts = path.split("/")
    for i in range(1, len(parts)):
        parent = "/".join(parts[:i])
        if parent in hidden or parent in opaque_above:
            return True
        node = out.get(parent)
        if node is not None and not stat.S_ISDIR(node.st.st_mode):
            return True
    return False


def merged_tree(layers: list[str], overlay: bool = True) -> dict[str, _Node]:
    """{relative path: node} of the union of `layers` (base first), overlay rules applied."""
    out: dict[str, _Node] = {}
    hidden: set[str] = set()
    opaque: set[str] = set()
    for idx in range(len(layers) - 1, -1, -1):
        wh, op = _scan(layers[idx], idx, overlay, out, hidden, opaque)
        hidden |= wh
        opaque |= op
    return out


def write_tree(w: TarWriter, layers: list[str], tree: dict[str, _Node]) -> None:
    """Write `tree` as tar entries (parents before children, hard links after their target).

    Each layer is read through a safepath.Root: a directory swapped for a symlink while the tree
    is written (a running container's upper dir) still resolves inside that layer."""
    roots: dict[int, Root] = {}
    try:
        _write_tree(w, layers, tree, roots)
    finally:
        for root in roots.values():
            root.close()


def _write_tree(w: TarWriter, layers: list[str], tree: dict[str, _Node], roots: dict[int, Root]) -> None:
    def entry(node: _Node, path: str) -> tuple[int, str]:
        root = roots.get(node.layer)
        if root is None:
            root = roots[node.layer] = Root(layers[node.layer])
        pfd, name, _ = root.lookup(tuple(path.split("/")))
        return pfd, name

    first_path: dict[tuple, str] = {}
    for path in sorted(tree, key=lambda p: p.split("/")):
        node = tree[path]
        st = node.st
        ti = tarfile.TarInfo(path)
        ti.mode = stat.S_IMODE(st.st_mode)
        ti.uid, ti.gid = st.st_uid, st.st_gid
        ti.uname = ti.gname = ""
        ti.mtime = int(st.st_mtime)
        fmt = stat.S_IFMT(st.st_mode)
        if fmt == stat.S_IFREG and st.st_nlink > 1:
            key = (node.layer, st.st_dev, st.st_ino)
            if key in first_path:
                ti.type, ti.linkname = tarfile.LNKTYPE, first_path[key]
                w.header(ti)
                continue
            first_path[key] = path
        if fmt == stat.S_IFREG:
            ti.size = st.st_size
            pfd, name = entry(node, path)
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=pfd)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise ArchiveError(f"{path!r} changed while it was being exported")
                w.add_fd(ti, fd)
            finally:
                os.close(fd)
            continue
        if fmt == stat.S_IFDIR:
            ti.type = tarfile.DIRTYPE
        elif fmt == stat.S_IFLNK:
            ti.type = tarfile.SYMTYPE
            pfd, name = entry(node, path)
            ti.linkname = os.readlink(name, dir_fd=pfd)
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            ti.type = tarfile.CHRTYPE if fmt == stat.S_IFCHR else tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif fmt == stat.S_IFIFO:
            ti.type = tarfile.FIFOTYPE
        else:
            continue  # sockets and the like do not go into archives
        w.header(ti)


# ---------------------------------------------------------------- export


def export(store, target: str, out: str, container_dir: str | os.PathLike | None = None) -> None:
    """Write a flattened filesystem to `out` (a path or "-"): with `container_dir` (the directory
    of the container named `target`, found by the caller: archive never imports containers), the
    container's (its image's layers + its upper dir, or its flat copy); else image `target`'s."""
    if container_dir is not None:
        layers, overlay = container_layers(container_dir, target)
    else:
        layers, overlay = _image_layers(store, target)
    tree = merged_tree(layers, overlay)
    with output_fd(out) as fd:
        w = TarWriter(fd)
        write_tree(w, layers, tree)
        w.close()


def container_layers(container_dir: str | os.PathLike, name: str) -> tuple[list[str], bool]:
    """(layer dirs base first, overlay format?) of a container directory as unpack.rootfs lays it
    out: `l/<n>` -> the image's snapshots with `upper/` on top, or a flat copy in `rootfs/`."""
    cdir = os.fspath(container_dir)
    upper = os.path.join(cdir, "upper")
    if os.path.isdir(upper):
        links = os.path.join(cdir, "l")
        names = sorted((n for n in os.listdir(links) if n.isdigit()), key=int) if os.path.isdir(links) else []
        snaps = [os.path.realpath(os.path.join(links, n)) for n in names]
        missing = [s for s in snaps if not os.path.isdir(s)]
        if missing:
            raise ArchiveError(f"container {name}: layer snapshot {missing[0]} is missing",
                               hint="the image was pruned; the container cannot be exported")
        return snaps + [upper], True
    rootfs = os.path.join(cdir, "rootfs")
    if os.path.isdir(rootfs):
        return [rootfs], False
    raise ArchiveError(f"container {name} has no filesystem to export")


def _image_layers(store, target: str) -> tuple[list[str], bool]:
    from imagetool import image as images
    from imagetool.unpack.snapshots import ensure_snapshots

    img = images.load(store, target)
    return [str(p) for p in ensure_snapshots(store, img)], True


# ---------------------------------------------------------------- import


def import_(store, source: str, name: str) -> str:
    """A one-layer image from a rootfs tarball (plain, gzip, zstd), a directory or "-" (stdin),
    tagged `name`; returns the new image's manifest digest (`sha256:…`)."""
    full = str(reference.parse(name))
    spool = spool_file(store.root)
    try:
        if source != "-" and os.path.isdir(source):
            digest, diff_id, size, media = _tar_directory(source, spool)
        else:
            digest, diff_id, size, media = _copy_tarball(source, spool)
        with store.lock_shared():
            return _commit_import(store, spool, digest, diff_id, size, media, full)
    finally:
        os.close(spool)


def _tar_directory(path: str, spool: int):
    tree = merged_tree([path], overlay=False)
    w = _HashingTar(spool)
    write_tree(w, [path], tree)
    w.close()
    d = Digest("sha256", w.hash.hexdigest())
    return d, d, w.written, mt.OCI_LAYER


class _HashingTar(TarWriter):
    """A TarWriter that hashes everything it writes (file data read back from the spool)."""

    def __init__(self, fd: int):
        super().__init__(fd)
        self.hash = Digest("sha256", "0" * 64).hasher()
        self._sendfile = False

    def _write(self, data) -> None:
        self.hash.update(data)
        super()._write(data)


def _copy_tarball(source: str, spool: int):
    """Spool the raw tarball while hashing it raw and decompressed; check it is a safe tar."""
    if source == "-":
        fd, owns = 0, False
    else:
        try:
            fd, owns = os.open(source, os.O_RDONLY | os.O_CLOEXEC), True
        except OSError as e:
            raise ArchiveError(f"{source}: {e.strerror}") from None
    label = "stdin" if source == "-" else source
    try:
        reader = FdReader(fd)
        head = reader.peek(compression.MAGIC_LEN)
        if not head:
            raise ArchiveError(f"{label}: empty file, not a tar archive")
        other = compression.unsupported(head)
        if other:
            raise ArchiveError(f"{label}: {other} compression is not supported (use gzip, zstd or none)")
        kind = compression.sniff(head)
        raw = _Tee(reader, spool)
        stream = compression.decompressing(raw, kind, label) if kind else raw
        diff = _HashOnly(stream) if kind else raw
        _check_tar(diff, label)
        while raw.read(_CHUNK):  # hash and spool to the end, trailing padding included
            pass
        digest = Digest("sha256", raw.hash.hexdigest())
        diff_id = Digest("sha256", diff.hash.hexdigest()) if kind else digest
        return digest, diff_id, raw.size, mt.layer_media_type(kind)
    except compression.Corrupt as e:
        raise ArchiveError(str(e)) from None
    finally:
        if owns:
            os.close(fd)


class _Tee:
    def __init__(self, reader, fd: int):
        self.reader, self.fd = reader, fd
        self.hash = Digest("sha256", "0" * 64).hasher()
        self.size = 0

    def read(self, n: int = _CHUNK) -> bytes:
        data = self.reader.read(n)
        if data:
            self.hash.update(data)
            self.size += len(data)
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
        return data


class _HashOnly:
    def __init__(self, stream):
        self.stream = stream
        self.hash = Digest("sha256", "0" * 64).hasher()

    def read(self, n: int = _CHUNK) -> bytes:
        data = self.stream.read(n)
        self.hash.update(data)
        return data


def _check_tar(stream, label: str) -> None:
    """Read the tar to its end (so the hash covers it) refusing entries that climb out with ".."."""
    try:
        tf = tarfile.open(fileobj=_ReadAll(stream), mode="r|", bufsize=_CHUNK)
        count = 0
        for ti in tf:
            count += 1
            if ".." in ti.name.split("/") or "\0" in ti.name:
                raise ArchiveError(f"{label}: unsafe entry {ti.name!r} in the tarball ('..' leaves the root)")
        tf.close()
    except tarfile.TarError as e:
        raise ArchiveError(f"{label}: not a tar archive ({e})") from None
    if count == 0:
        raise ArchiveError(f"{label}: the tarball holds no files")
    while stream.read(_CHUNK):
        pass


class _ReadAll:
    """tarfile's stream mode wants read(n) to return n bytes unless at the end."""

    def __init__(self, stream):
        self.stream = stream
        self.buf = b""

    def read(self, n: int) -> bytes:
        parts = [self.buf]
        have = len(self.buf)
        while have < n:
            data = self.stream.read(max(n - have, _CHUNK))
            if not data:
                break
            parts.append(data)
            have += len(data)
        joined = b"".join(parts)
        self.buf = joined[n:]
        return joined[:n]


def _commit_import(store, spool: int, digest: Digest, diff_id: Digest, size: int, media: str, name: str) -> str:
    created = _now()
    host = oci.Platform.host()
    config = {"architecture": host.architecture, "os": host.os, "created": created,
              "config": {}, "rootfs": {"type": "layers", "diff_ids": [str(diff_id)]},
              "history": [{"created": created, "created_by": "imagetool import"}]}
    if host.variant:
        config["variant"] = host.variant
    raw_config = json.dumps(config, separators=(",", ":")).encode()
    cfg_desc = Descriptor(mt.OCI_CONFIG, Digest.of_bytes(raw_config), len(raw_config))
    layer = Descriptor(media, digest, size)
    manifest = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": cfg_desc.to_dict(),
                "layers": [layer.to_dict()]}
    raw = json.dumps(manifest, separators=(",", ":")).encode()
    mdesc = Descriptor(mt.OCI_MANIFEST, Digest.of_bytes(raw), len(raw))
    with store.ingest(digest, size) as w:
        if not w.exists:
            if w.offset:
                w.reset()
            pos = 0
            while pos < size:
                data = os.pread(spool, min(_CHUNK, size - pos), pos)
                if not data:
                    raise ArchiveError("the spooled layer shrank")
                w.write(data)
                pos += len(data)
            w.commit()
    store.put(raw_config, cfg_desc.digest)
    store.put(raw, mdesc.digest)
    store.tag(name, mdesc)
    return str(mdesc.digest)


def _now() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    t = int(epoch) if epoch and epoch.isdigit() else int(time.time())
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
