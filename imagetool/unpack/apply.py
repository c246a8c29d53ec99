"""Apply one layer tar onto a directory: plain (flattened rootfs) or overlay (a per-layer snapshot).

Contract:
- The tar is read as a stream (`tarstream.TarReader`, members in order, data copied in chunks); nothing
  is extracted with `extractall`, and every name goes through `safepath` (see its docstring).
- Changeset rules (OCI image-spec layer.md): an entry replaces what is at its path (unlink and
  recreate) unless both are directories, in which case only the attributes change.
  `.wh.<name>` deletes <name> from lower layers; `.wh..wh..opq` hides everything below its
  directory from lower layers (both forms of a whiteout are defined in unpack/whiteouts.py) and applies *before* the rest of the layer whatever its position:
  entries this layer created (tracked in `created`/`touched`) survive both.
- mode="plain": whiteouts delete from the directory (flattened rootfs, `imagetool unpack`).
  mode="overlay": the directory is a fresh snapshot of this layer alone; whiteouts become char
  devices 0/0 and opaque dirs get `trusted.overlay.opaque=y` (needs root; rootless, in a user
  namespace: `user.overlay.opaque=y`, see whiteouts.py). A hardlink to a file
  of a lower layer copies the file up from `lowers` (top first) into this snapshot first, as
  overlayfs itself would; such a snapshot depends on its lower layers (documented limitation).
  `lowers_ready` (overlay): called before the lower layers are first looked at, it waits until
  they are all complete (layers unpacked concurrently, see snapshots.build_snapshots).
  Parent directories missing from the tar are created 0755 root-owned (in overlay mode their
  attributes then win over the lower layer's in the merged view).
- Metadata: uid/gid (root only, lchown), then mode including setuid/setgid/sticky, xattrs from
  PAX headers (user.*, security.capability, system.posix_acl_*; other security.* and trusted.*
  are dropped, trusted.overlay.* and user.overlay.* are refused as UnsafeLayer; rootless, one the
  kernel refuses with EPERM/EINVAL is dropped with a warning), mtime (nanoseconds, not following
  symlinks). Directories get their mode and mtime last (`Applier.finish`). Hardlinks take the
  target's inode as is. Devices and fifos need root: otherwise skipped with a warning (devices
  rootless too: uid 0 of a user namespace may not mknod them; as podman rootless does).
  GNU sparse files: each segment written at its offset, the holes left as holes.
- Speed, with the same result: a new file or directory is created with its own mode and owner
  when that is exact (`_creates_exact`: not when the umask would clear a bit, for setuid/setgid/
  sticky, with xattrs, nor once a setgid directory or a default ACL is in the tree), which saves
  the fchmod and, for entries owned by us, the fchown. New small files are then finished (data,
  mtime, close) in batches by `_Writer` (on its thread with >= 3 CPUs), and created there too when the tree started empty and the
  name is one this applier never made (`_known`); whatever looks at names first waits for it
  (`_barrier`), and `apply()` returns only when all files are complete.
- Refused (UnsafeLayer): ".." in names or hardlink targets, hardlinks to directories, an entry
  that would make the root a non-directory, whiteouts of "." or "..", trusted/user.overlay.* xattrs.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import threading
from dataclasses import dataclass, field

from imagetool.errors import UnpackError, UnsafeLayer
from imagetool.unpack import whiteouts
from imagetool.unpack.layers import CHUNK, LayerStream, Limits
from imagetool.unpack.lowerview import LowerView
from imagetool.safepath import MissingPath, Root, clean_name, join
from imagetool.unpack.tarstream import BLK, CHR, DIR, FIFO, LNK, REG, SYM, Entry, TarReader

TYPE_CHECKING = False  # typing (~2 ms) and shutil (~3 ms: bz2, lzma) are not loaded on `unpack`'s path
if TYPE_CHECKING:
    from typing import BinaryIO, Callable


_O_NEWFILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_O_DIRRD = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_KEEP_XATTR_PREFIXES = ("user.", "security.capability", "system.posix_acl_access", "system.posix_acl_default")


def _rootless() -> bool:
    from imagetool import userns

    return userns.inside()


def _unmapped_owner(layer: str, e: Entry) -> None:
    """Rootless: raise the clear error when `e`'s owner has no id in this user namespace's map."""
    from imagetool import userns

    problem = userns.unmapped(e.uid, e.gid)
    if problem:
        raise UnpackError(f"{layer}: cannot apply {e.name!r}: {problem}", hint=userns.RANGE_HINT) from None


def _umask() -> int | None:
    """This process's umask, read without changing it (other threads may be creating files)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _passes_on_attrs(path: str) -> bool:
    """Does the directory pass attributes on to what is created in it (setgid: its group; a
    default ACL: permissions)? Then new entries always get an explicit fchown and fchmod."""
    if os.stat(path).st_mode & stat.S_ISGID:
        return True
    try:
        os.getxattr(path, "system.posix_acl_default")
    except OSError:
        return False
    return True


class _Writer:
    """Finishes new regular files on a helper thread: write the data, set the mtime, close.

    The applier creates each file itself (name resolution, O_EXCL, owner: everything that decides
    *what* is made and *where* stays on its thread, in archive order) and hands over only the
    open fd, the data (a view of immutable bytes) and the mtime. The syscalls then overlap the
    parsing of the next entries. Files go in batches of at most BATCH files and BATCH_BYTES of
    data (few thread switches); at most IN_FLIGHT batches wait, so the fds held open and the
    reader buffers kept alive stay bounded (~100 fds, a few MiB); when that many wait, the
    applier finishes the next batch itself instead of waiting (file creation is the bottleneck
    of a small-file layer: so both cores make files). `drain()` waits until every
    handed file is closed (the applier calls it before apply() returns, on every path) and
    returns the first (entry name, error) or None.
    Nothing the thread does depends on a path: a later entry that replaces or deletes the file's
    name only unlinks a name, the thread still finishes (and closes) the inode it was given."""

    BATCH = 32
    BATCH_BYTES = 1 << 20
    IN_FLIGHT = 2
    #: Finish batches on the thread only when the process has a core for it (>= 3: the layer's decoder
    #: thread takes one, the tar loop another); otherwise the applier finishes each batch itself, in
    #: archive order. On 2 cores the thread's GIL hand-offs cost more than the overlap gains (A/B, same
    #: rounds: the 316 MB zstd unpack 1.26x tar --zstd inline vs 1.37x threaded, less CPU; gzip 0.94
    #: vs 1.02 s). None: decided at the first batch (tests set it).
    THREADED: bool | None = None

    def __init__(self):
        self._batch: list = []
        self._bytes = 0
        self._thread = None
        self._error = None
        self.creating = False     # a handed file may not exist yet (create() since the last drain)

    def add(self, fd: int, view, mtime_ns: int, name: str) -> None:
        batch = self._batch
        batch.append((fd, view, mtime_ns, name, -1, "", 0))
        self._bytes += len(view)
        if len(batch) >= self.BATCH or self._bytes >= self.BATCH_BYTES:
            self._send()

    def create(self, dir_fd: int, base: str, mode: int, view, mtime_ns: int, name: str) -> None:
        """Like add(), the thread also creating the file: `base` in `dir_fd` (O_EXCL|O_NOFOLLOW).
        The caller guarantees that nothing is there (Applier._known), keeps `dir_fd` open until
        drain() (Applier._barrier before Root.release) and drains before anything looks at
        or changes the directory entries (creating is True until then)."""
        if view.__class__ is not bytes and view.obj.__class__ is not bytes:
            view = bytes(view)      # only immutable bytes may wait for the thread
        self.creating = True
        batch = self._batch
        batch.append((-1, view, mtime_ns, name, dir_fd, base, mode))
        self._bytes += len(view)
        if len(batch) >= self.BATCH or self._bytes >= self.BATCH_BYTES:
            self._send()

    def _send(self) -> None:
        if self._thread is None and not self._threaded():
            batch, self._batch, self._bytes = self._batch, [], 0
            self._finish(batch)
            return
        if self._thread is None:
            import queue

            self._q = queue.SimpleQueue()
            self._slots = threading.Semaphore(self.IN_FLIGHT)
            self._thread = threading.Thread(target=self._run, name="imagetool-file-writer", daemon=True)
            self._thread.start()
        batch, self._batch, self._bytes = self._batch, [], 0
        if not self._slots.acquire(blocking=False):
            # the thread is behind (IN_FLIGHT batches wait): finish this batch here instead of
            # waiting, so both cores create files (the files of a batch are independent)
            self._finish(batch)
            return
        try:
            self._q.put(batch)
        except BaseException:              # (an interrupt) the thread never gets the batch
            self._slots.release()
            for fd, *_ in batch:
                if fd >= 0:
                    os.close(fd)
            raise

    @classmethod
    def _threaded(cls) -> bool:
        if cls.THREADED is None:
            try:
                cpus = len(os.sched_getaffinity(0))
            except (AttributeError, OSError):
                cpus = os.cpu_count() or 1
            cls.THREADED = cpus >= 3
        return cls.THREADED

    def _run(self) -> None:
        while True:
            batch = self._q.get()
            if batch is None:
                return
            try:
                self._finish(batch)
            finally:
                self._slots.release()

    def _finish(self, batch: list) -> None:
        write, utime, close, open_ = os.write, os.utime, os.close, os.open
        for fd, view, m, name, dir_fd, base, mode in batch:
            try:
                if self._error is None:
                    if fd < 0:
                        fd = open_(base, _O_NEWFILE, mode, dir_fd=dir_fd)
                    while view:
                        view = view[write(fd, view):]
                    utime(fd, ns=(m, m))
            except Exception as e:     # anything: drain() reports it, the fd is closed
                self._error = (name, e)
            finally:
                if fd >= 0:
                    close(fd)

    def drain(self):
        """Wait for every file handed over; (entry name, error) of the first failure, else None."""
        if self._batch:
            if self._thread is None and len(self._batch) < 4:
                self._finish_here()
            else:
                self._send()
        if self._thread is not None:
            got = 0
            try:
                for _ in range(self.IN_FLIGHT):     # every slot free: nothing in flight
                    self._slots.acquire()
                    got += 1
            finally:
                for _ in range(got):
                    self._slots.release()
        err, self._error = self._error, None
        self.creating = False
        return err

    def _finish_here(self) -> None:
        """A few files and no thread yet (a small layer): not worth starting one."""
        batch, self._batch, self._bytes = self._batch, [], 0
        self._finish(batch)

    def close(self) -> None:
        self.drain()
        if self._thread is not None:
            self._q.put(None)
            self._thread.join()
            self._thread = None


def _warn(msg: str) -> None:
    sys.stderr.write(f"imagetool: warning: {msg}\n")


def _copy_xattrs(src: int, dst: int) -> bool:
    """Copy up the xattrs a layer may carry (the same set `_set_xattrs` restores) between fds;
    True when a default ACL was among them."""
    acl = False
    for k in os.listxattr(src):
        if k.startswith(_KEEP_XATTR_PREFIXES):
            os.setxattr(dst, k, os.getxattr(src, k))
            acl = acl or k == "system.posix_acl_default"
    return acl


@dataclass
class ApplyStats:
    """What apply() did: entries read, regular files and bytes written, entries skipped."""

    entries: int = 0
    files: int = 0
    bytes: int = 0
    skipped: list = field(default_factory=list)


class Applier:
    """Applies layers onto `root_dir` (one Applier per snapshot, or one for all layers of a flatten)."""

    def __init__(self, root_dir, mode: str = "plain", lowers: tuple = (), limits: Limits | None = None,
                 privileged: bool | None = None, warn: Callable[[str], None] = _warn,
                 lowers_ready: Callable[[], None] | None = None):
        if mode not in ("plain", "overlay"):
            raise ValueError(mode)
        self.mode = mode
        self.overlay = mode == "overlay"
        self.privileged = os.geteuid() == 0 if privileged is None else privileged
        # rootless (root of a user namespace, userns.inside()): chown through the mapping, overlay
        # whiteouts (char 0/0) and user.overlay.opaque work; other device nodes cannot be made
        # (no CAP_MKNOD in the initial namespace): skipped, as podman rootless does
        self.rootless = self.privileged and privileged is None and _rootless()
        self.devices = self.privileged and not self.rootless
        if self.overlay and not self.privileged:
            raise UnpackError("overlay snapshots need root (whiteouts are device nodes)",
                              hint="use `imagetool unpack` for a flattened copy")
        self.root = Root(root_dir)
        self.lowers = tuple(lowers)
        self.lowerview = LowerView(self.lowers, lowers_ready) if self.overlay else None
        self.limits = limits or Limits()
        self.warn = warn
        self.stats = ApplyStats()
        self._dir_meta: dict[str, tuple[int, int]] = {}   # canon -> (mode, mtime_ns), set by finish()
        # Fewer syscalls per new entry (see _creates_exact): a file created with its own mode
        # needs no fchmod when the umask clears none of its bits, and no fchown when it is ours.
        self._ids = (os.geteuid(), os.getegid())
        umask = _umask()
        # the mode bits creating cannot give (all of them when the umask takes the owner's own)
        self._chmod_bits = 0o7777 if umask is None or umask & 0o700 else 0o7000 | umask
        self._inherits = _passes_on_attrs(self.root.path)   # a setgid dir or a default ACL in the tree
        self._writer = _Writer()
        # Names that may exist under the root: everything this applier ever created (never
        # shrinks). In a tree that started empty (_fresh), a name not in it does not exist, so
        # its file can be created on the writer thread (see _Writer.create).
        self._known: set[str] = set()
        self._fresh = not os.listdir(self.root.path)
        self._reset_layer()

    def _reset_layer(self) -> None:
        self.created: set[str] = set()     # entries placed by the current layer
        self.touched: set[str] = set()     # their ancestors
        self.whiteouts: set[str] = set()   # overlay whiteout nodes made by the current layer
        self._lower_links: set[str] = set()   # lower-layer symlinks the resolver followed (overlay)
        self._layer_entries = 0

    def close(self) -> None:
        self._writer.close()
        self.root.close()
        if self.lowerview is not None:
            self.lowerview.close()

    # ------------------------------------------------------------------ driver

    def _barrier(self) -> None:
        """Wait until the files handed to the writer exist (before anything looks at names)."""
        if self._writer.creating:
            failed = self._writer.drain()
            if failed is not None:
                entry_name, err = failed
                raise UnpackError(f"{self._layer_name}: cannot apply {entry_name!r}: "
                                  f"{getattr(err, 'strerror', None) or err}")

    def apply(self, stream: BinaryIO, name: str = "layer") -> ApplyStats:
        """Apply one uncompressed tar stream (the caller drains and verifies it afterwards)."""
        self._reset_layer()
        self._layer_name = name
        tf = TarReader(stream, name)
        root, stats, entry, max_entries = self.root, self.stats, self._entry, self.limits.max_entries
        try:
            for e in tf:
                self._layer_entries += 1
                stats.entries += 1
                if self._layer_entries > max_entries:
                    raise UnpackError(f"{name}: more than {max_entries} entries",
                                      hint="raise IMAGETOOL_MAX_LAYER_ENTRIES if the image is trusted")
                if root._stale:
                    self._barrier()       # the writer may still need a retired dir fd
                    root.release()
                try:
                    entry(e, tf)
                except (OSError, OverflowError) as err:   # OverflowError: an owner or mtime out of range
                    if self.rootless and getattr(err, "errno", None) == errno.EINVAL:
                        _unmapped_owner(name, e)
                    raise UnpackError(f"{name}: cannot apply {e.name!r}: {getattr(err, 'strerror', None) or err}") from None
        finally:
            failed = self._writer.drain()   # every file of the layer is complete when apply returns
        if failed is not None:
            entry_name, err = failed
            raise UnpackError(f"{name}: cannot apply {entry_name!r}: {getattr(err, 'strerror', None) or err}")
        return self.stats

    def apply_blob(self, store, desc, diff_id, name: str) -> None:
        """Apply the layer blob `desc` from `store`, checking the diff_id of what streamed through."""
        with store.open(desc.digest) as raw:
            stream = LayerStream(raw, desc.media_type, diff_id, self.limits, name=name)
            try:
                self.apply_stream(stream, name)
            finally:
                stream.close()

    def apply_stream(self, stream: LayerStream, name: str) -> None:
        """Apply an open LayerStream, then drain it and check its diff_id (the caller closes it)."""
        self.apply(stream, name)
        stream.finish()

    def finish(self) -> None:
        """Set directory modes and mtimes (deferred so that later entries do not disturb them)."""
        for canon, (mode, mtime) in sorted(self._dir_meta.items(), key=lambda kv: -kv[0].count("/")):
            self.root.release()
            try:
                if canon:
                    pfd, name, _ = self.root.lookup(tuple(canon.split("/")))
                    if not self._is_dir(pfd, name):
                        continue
                    os.chmod(name, mode, dir_fd=pfd)   # a directory (checked just above), not a link
                    if mode & stat.S_ISGID:
                        self._inherits = True
                    os.utime(name, ns=(mtime, mtime), dir_fd=pfd, follow_symlinks=False)
                else:
                    os.chmod(self.root.path, mode)
                    os.utime(self.root.path, ns=(mtime, mtime))
            except (UnpackError, FileNotFoundError, NotADirectoryError):
                continue   # removed or replaced by a later entry or layer (MissingPath is an UnpackError)
        self._dir_meta.clear()

    @staticmethod
    def _is_dir(pfd: int, name: str) -> bool:
        try:
            return stat.S_ISDIR(os.stat(name, dir_fd=pfd, follow_symlinks=False).st_mode)
        except FileNotFoundError:
            return False

    # ------------------------------------------------------------------ entries

    def _mark(self, canon: str) -> None:
        self._known.add(canon)
        self.created.add(canon)
        parent = canon.rpartition("/")[0]
        while parent and parent not in self.touched:
            self.touched.add(parent)
            parent = parent.rpartition("/")[0]

    def _implicit_mkdir(self, pfd: int, name: str, canon: str, st, copy_up_only: bool = False):
        """A parent directory missing from this layer (or an overlay whiteout of this layer in the way).

        Overlay mode looks at the lower layers first: a lower symlink is followed (its target is
        returned to the resolver), a lower directory is copied up with its attributes; only a
        path absent everywhere becomes a new 0755 root-owned directory (never with copy_up_only)."""
        if st is None and canon in self._known and self._writer.creating:
            self._barrier()                      # a file of this layer may be on its way there
            st = self.root.lstat(pfd, name)
        self._known.add(canon)
        if st is not None:
            if self.overlay and canon in self.whiteouts and stat.S_ISCHR(st.st_mode):
                os.unlink(name, dir_fd=pfd)
                self.whiteouts.discard(canon)
                os.mkdir(name, 0o755, dir_fd=pfd)
                self._set_opaque(pfd, name)
                return None
            raise UnpackError(f"{canon!r} is in the way of a directory (not a directory)")
        if self.overlay:
            hit = self.lowerview.lookup(canon)
            if hit is not None:
                _, lfd, lname, lst = hit
                if stat.S_ISLNK(lst.st_mode):
                    self._lower_links.add(canon)
                    return os.readlink(lname, dir_fd=lfd)
                if not stat.S_ISDIR(lst.st_mode):
                    raise UnpackError(f"{canon!r} is not a directory in a lower layer")
                os.mkdir(name, 0o700, dir_fd=pfd)
                fd = os.open(name, _O_DIRRD, dir_fd=pfd)
                try:
                    os.fchown(fd, lst.st_uid, lst.st_gid)
                    os.fchmod(fd, stat.S_IMODE(lst.st_mode) | 0o700)
                    if lst.st_mode & stat.S_ISGID:
                        self._inherits = True
                    src = os.open(lname, _O_DIRRD, dir_fd=lfd)
                    try:
                        if _copy_xattrs(src, fd):
                            self._inherits = True
                    finally:
                        os.close(src)
                finally:
                    os.close(fd)
                self._dir_meta.setdefault(canon, (stat.S_IMODE(lst.st_mode), lst.st_mtime_ns))
                return None
            if copy_up_only:
                raise MissingPath(f"{canon!r} does not exist in this or a lower layer")
        os.mkdir(name, 0o755, dir_fd=pfd)
        return None

    def _copy_up_only(self, pfd: int, name: str, canon: str, st):
        return self._implicit_mkdir(pfd, name, canon, st, copy_up_only=True)

    def _entry(self, ti: Entry, tf: TarReader) -> None:
        comps = clean_name(ti.name)
        if not comps:
            if ti.isdir():
                self._root_dir_meta(ti)
                return
            raise UnsafeLayer(f"layer entry {ti.name!r} would replace the root directory with a non-directory")
        if comps[-1].startswith(whiteouts.PREFIX):     # (every whiteout name has it; classify decides)
            kind, target = whiteouts.classify(comps[-1])
            if kind != whiteouts.ENTRY:
                self._barrier()
                if kind == whiteouts.OPAQUE_MARKER:
                    self._opaque(comps[:-1])
                elif kind == whiteouts.WHITEOUT:
                    self._whiteout(comps[:-1] + (target,))
                elif kind == whiteouts.INVALID:
                    raise UnsafeLayer(f"invalid whiteout {ti.name!r}")
                return   # META: AUFS metadata (.wh..wh.plnk etc.), ignored as Docker does
        xattrs = ti.xattrs
        if xattrs:
            for k in xattrs:
                if k.startswith(whiteouts.OVERLAY_XATTR_PREFIXES):
                    raise UnsafeLayer(f"layer entry {ti.name!r} carries the overlayfs xattr {k!r}")
        pfd, name, pcanon = self.root.lookup(comps, self._implicit_mkdir)
        canon = f"{pcanon}/{name}" if pcanon else name
        if self._lower_links and canon in self._lower_links:
            self._shadow_lower_link(canon)
        kind = ti.type
        if self._writer.creating and ((kind != REG and kind != DIR) or canon in self._known):
            self._barrier()              # anything but a new name waits for the writer's files
        if kind == REG and self._fresh and canon not in self._known and ti.sparse is None and \
                (not self.privileged or (ti.uid, ti.gid) == self._ids) and self._creates_exact(ti, xattrs):
            view = tf.buffered_data(ti) if ti.size else b""
            if view is not None:
                # a new file (nothing is at a name this applier never made), its data all in
                # the buffer: created and finished on the writer thread
                self._writer.create(pfd, name, ti.mode, view, ti.mtime_ns, ti.name)
                if self.whiteouts and canon in self.whiteouts:
                    self.whiteouts.discard(canon)
                self.stats.bytes += ti.size
                self.stats.files += 1
                self._mark(canon)
                return
        if kind == LNK:
            self._hardlink(ti, pfd, name, canon)
            self._mark(canon)
            return
        if kind == SYM:
            try:                  # the common case first, as below: an existing entry fails with EEXIST
                self._symlink(ti, pfd, name)
            except FileExistsError:
                pass
            else:
                if self.whiteouts and canon in self.whiteouts:
                    self.whiteouts.discard(canon)
                self._mark(canon)
                return
        elif kind == REG or kind == DIR:
            # the common case first: nothing at `name` yet (O_EXCL|O_NOFOLLOW, mkdir: an existing
            # entry, a symlink included, fails with EEXIST and takes the general path below)
            exact = self._creates_exact(ti, xattrs)
            try:
                if kind == REG:
                    fd = os.open(name, _O_NEWFILE, ti.mode if exact else 0o600, dir_fd=pfd)
                else:
                    os.mkdir(name, ti.mode | 0o700 if exact else 0o700, dir_fd=pfd)
            except FileExistsError:
                pass
            else:
                if self.whiteouts and canon in self.whiteouts:
                    self.whiteouts.discard(canon)
                    if kind == DIR:
                        self._set_opaque(pfd, name)
                if kind == REG:
                    self._file(ti, tf, pfd, name, xattrs, fd, exact)
                else:
                    self._new_dir_attrs(ti, pfd, name, canon, xattrs, exact)
                self._mark(canon)
                return
        st = self.root.lstat(pfd, name)
        if st is not None:
            if kind == DIR and stat.S_ISDIR(st.st_mode):
                self._dir_attrs(ti, pfd, name, canon, xattrs)
                self._mark(canon)
                return
            self._remove(pfd, name, st, canon)
        was_whiteout = canon in self.whiteouts
        if was_whiteout:
            self.whiteouts.discard(canon)
        if kind == REG:
            self._file(ti, tf, pfd, name, xattrs)
        elif kind == DIR:
            os.mkdir(name, 0o700, dir_fd=pfd)
            self._dir_attrs(ti, pfd, name, canon, xattrs)
            if was_whiteout:
                self._set_opaque(pfd, name)
        elif kind == SYM:
            self._symlink(ti, pfd, name)
        elif ti.type in (CHR, BLK, FIFO):
            if not self._special(ti, pfd, name, xattrs):
                return
        else:
            raise UnpackError(f"unsupported tar entry type {ti.type!r} for {ti.name!r}")
        self._mark(canon)

    def _shadow_lower_link(self, canon: str) -> None:
        """An entry or whiteout is about to hide a lower symlink that paths were resolved through:
        later entries below `canon` must not keep going through the cached (followed) link."""
        if canon in self._lower_links:
            self._lower_links.discard(canon)
            self.root.invalidate()

    def _root_dir_meta(self, ti: Entry) -> None:
        if self.privileged:
            os.chown(self.root.path, ti.uid, ti.gid, follow_symlinks=False)
        self._dir_meta[""] = (ti.mode, ti.mtime_ns)

    def _remove(self, pfd: int, name: str, st: os.stat_result, canon: str) -> None:
        if stat.S_ISDIR(st.st_mode):
            import shutil

            shutil.rmtree(name, dir_fd=pfd)
            self._forget_dirs(canon)
            self.root.invalidate()
        else:
            os.unlink(name, dir_fd=pfd)
            if stat.S_ISLNK(st.st_mode):
                self.root.invalidate()

    def _forget_dirs(self, canon: str) -> None:
        """A directory tree was removed: its deferred modes/mtimes must not land on a successor."""
        prefix = canon + "/"
        for k in [k for k in self._dir_meta if k == canon or k.startswith(prefix)]:
            del self._dir_meta[k]

    def _creates_exact(self, ti: Entry, xattrs: dict) -> bool:
        """Does creating the entry with its own mode (mkdir: | 0o700) give exactly that mode and our
        owner, so no fchmod follows, and no fchown when the entry's owner is ours? Not when the
        umask clears a bit of it, for setuid/setgid/sticky (an fchown clears them, so they are set
        after it), with xattrs (an ACL changes the mode), nor once a directory of the tree passes
        its group or a default ACL on (_inherits)."""
        return not (ti.mode & self._chmod_bits or xattrs or self._inherits)

    def _file(self, ti, tf, pfd: int, name: str, xattrs: dict, fd: int | None = None,
              exact: bool = False) -> None:
        """Write a regular file; `fd` is already open when the caller created it (exact: with its
        mode, see _creates_exact)."""
        if fd is None:
            fd = os.open(name, _O_NEWFILE, 0o600, dir_fd=pfd)
            exact = False
        # a small file's data is usually all in the reader's buffer already
        view = tf.buffered_data(ti) if ti.size and ti.sparse is None else None
        if exact and ti.sparse is None and (view.obj.__class__ is bytes if view is not None else not ti.size):
            # the common case goes to the writer thread: a new file with its own mode whose data is
            # a view of immutable bytes (valid however far the reader goes on)
            try:
                if self.privileged and (ti.uid, ti.gid) != self._ids:
                    os.fchown(fd, ti.uid, ti.gid)     # here, so that apply() explains a rootless EINVAL
            except BaseException:
                os.close(fd)
                raise
            self._writer.add(fd, view if view is not None else b"", ti.mtime_ns, ti.name)
            self.stats.bytes += ti.size
            self.stats.files += 1
            return
        try:
            if ti.sparse is not None:
                self._write_sparse(fd, ti, tf)
            elif view is not None:
                while view:
                    view = view[os.write(fd, view):]
                self.stats.bytes += ti.size
            elif ti.size:
                for view in tf.read_data(ti):
                    while view:
                        view = view[os.write(fd, view):]
                self.stats.bytes += ti.size
            if exact:
                if self.privileged and (ti.uid, ti.gid) != self._ids:
                    os.fchown(fd, ti.uid, ti.gid)     # no setuid/setgid bit for it to clear
            else:
                if self.privileged:
                    os.fchown(fd, ti.uid, ti.gid)
                os.fchmod(fd, ti.mode)
                self._set_xattrs(fd, xattrs, ti.name)
            m = ti.mtime_ns
            os.utime(fd, ns=(m, m))
        finally:
            os.close(fd)
        self.stats.files += 1

    def _symlink(self, ti: Entry, pfd: int, name: str) -> None:
        """A new symlink (FileExistsError when something is at `name`), its owner and mtime."""
        os.symlink(ti.linkname, name, dir_fd=pfd)
        if self.privileged and (self._inherits or (ti.uid, ti.gid) != self._ids):
            os.chown(name, ti.uid, ti.gid, dir_fd=pfd, follow_symlinks=False)
        m = ti.mtime_ns
        os.utime(name, ns=(m, m), dir_fd=pfd, follow_symlinks=False)

    def _write_sparse(self, fd: int, ti: Entry, tf: TarReader) -> None:
        """A GNU sparse file: each segment's bytes at its offset (pwrite), then the real size; the
        holes are never written, so they stay holes on disk (as GNU tar leaves them)."""
        segments = iter(ti.sparse)
        off = left = 0
        for view in tf.read_data(ti):
            while view:
                while not left:
                    off, left = next(segments)   # the lengths add up to the data (tarstream checks)
                w = os.pwrite(fd, view[:left], off)
                off += w
                left -= w
                view = view[w:]
        os.ftruncate(fd, ti.size)
        self.stats.bytes += ti.size

    def _dir_attrs(self, ti, pfd: int, name: str, canon: str, xattrs: dict) -> None:
        fd = os.open(name, _O_DIRRD, dir_fd=pfd)
        try:
            if self.privileged:
                os.fchown(fd, ti.uid, ti.gid)
            os.fchmod(fd, (ti.mode) | 0o700)   # writable for us until finish()
            self._set_xattrs(fd, xattrs, ti.name)
        finally:
            os.close(fd)
        if ti.mode & stat.S_ISGID:
            self._inherits = True              # what is made in it from now on takes its group
        self._dir_meta[canon] = (ti.mode, ti.mtime_ns)

    def _new_dir_attrs(self, ti, pfd: int, name: str, canon: str, xattrs: dict, exact: bool) -> None:
        """A directory just made by mkdir (exact: with its mode | 0o700, see _creates_exact)."""
        if not exact or (self.privileged and (ti.uid, ti.gid) != self._ids):
            self._dir_attrs(ti, pfd, name, canon, xattrs)
        else:
            self._dir_meta[canon] = (ti.mode, ti.mtime_ns)

    def _special(self, ti, pfd: int, name: str, xattrs: dict) -> bool:
        if ti.type == FIFO:
            os.mkfifo(name, 0o600, dir_fd=pfd)
        elif not self.devices:
            self.warn(f"skipping device {ti.name!r}: creating device nodes needs "
                      f"{'root outside a user namespace (rootless)' if self.rootless else 'root'}")
            self.stats.skipped.append(ti.name)
            return False
        else:
            kind = stat.S_IFCHR if ti.type == CHR else stat.S_IFBLK
            os.mknod(name, kind | 0o600, os.makedev(ti.devmajor, ti.devminor), dir_fd=pfd)
        if self.privileged:
            os.chown(name, ti.uid, ti.gid, dir_fd=pfd, follow_symlinks=False)
        # chmod on a fifo/device path only touches the inode (no open), after lchown
        os.chmod(name, ti.mode, dir_fd=pfd, follow_symlinks=True)
        m = ti.mtime_ns
        os.utime(name, ns=(m, m), dir_fd=pfd, follow_symlinks=False)
        if xattrs:
            self.warn(f"{ti.name!r}: xattrs on device nodes and fifos are not restored")
        return True

    def _set_xattrs(self, fd: int, xattrs: dict, entry: str) -> None:
        for k, v in xattrs.items():
            if not k.startswith(_KEEP_XATTR_PREFIXES):
                continue
            if k.startswith("security.") and not self.privileged:
                continue
            if k == "system.posix_acl_default":
                self._inherits = True              # new entries below get permissions from it
            try:
                os.setxattr(fd, k, v)
            except OSError as e:
                if self.rootless and e.errno in (errno.EPERM, errno.EINVAL):   # e.g. an ACL naming an unmapped id
                    self.warn(f"{entry!r}: xattr {k!r} dropped: {e.strerror} in a user namespace (rootless)")
                    continue
                raise UnpackError(f"{entry!r}: cannot set xattr {k!r}: {e.strerror}") from None

    def _set_opaque(self, pfd: int, name: str) -> None:
        fd = os.open(name, _O_DIRRD, dir_fd=pfd)
        try:
            whiteouts.set_opaque(fd)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ links

    def _hardlink(self, ti, pfd: int, name: str, canon: str) -> None:
        tcomps = clean_name(ti.linkname)
        if not tcomps:
            raise UnsafeLayer(f"hardlink {ti.name!r} points at the root directory")
        hook = self._copy_up_only if self.overlay else None
        try:
            tpfd, tname, tpcanon = self.root.lookup(tcomps, hook)
            tst = self.root.lstat(tpfd, tname)
        except MissingPath:
            raise UnpackError(f"hardlink {ti.name!r} points at {ti.linkname!r}, which does not exist") from None
        if tst is None or join(tpcanon, tname) in self.whiteouts:
            if tst is None and self.overlay and self._copy_up(tpfd, tname, join(tpcanon, tname)):
                tst = self.root.lstat(tpfd, tname)
            else:
                raise UnpackError(f"hardlink {ti.name!r} points at {ti.linkname!r}, which does not exist")
        if stat.S_ISDIR(tst.st_mode):
            raise UnsafeLayer(f"hardlink {ti.name!r} points at a directory ({ti.linkname!r})")
        # resolve the link's own path again: the lookups above may have invalidated fds
        pfd, name, pcanon = self.root.lookup(clean_name(ti.name), self._implicit_mkdir)
        st = self.root.lstat(pfd, name)
        if st is not None:
            if (st.st_dev, st.st_ino) == (tst.st_dev, tst.st_ino):
                return
            self._remove(pfd, name, st, join(pcanon, name))
            tpfd, tname, _ = self.root.lookup(tcomps)
            pfd, name, _ = self.root.lookup(clean_name(ti.name), self._implicit_mkdir)
        self.whiteouts.discard(canon)
        os.link(tname, name, src_dir_fd=tpfd, dst_dir_fd=pfd, follow_symlinks=False)

    def _copy_up(self, pfd: int, name: str, canon: str) -> bool:
        """Copy the lower layers' regular file at `canon` into this snapshot; False if none is visible."""
        hit = self.lowerview.lookup(canon)
        if hit is None or not stat.S_ISREG(hit[3].st_mode):
            return False
        _, lpfd, lname, lst = hit
        src = os.open(lname, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=lpfd)
        try:
            dst = os.open(name, _O_NEWFILE, 0o600, dir_fd=pfd)
            self._known.add(canon)
            try:
                while True:
                    buf = os.read(src, CHUNK)
                    if not buf:
                        break
                    view = memoryview(buf)
                    while view:
                        view = view[os.write(dst, view):]
                os.fchown(dst, lst.st_uid, lst.st_gid)
                os.fchmod(dst, stat.S_IMODE(lst.st_mode))
                _copy_xattrs(src, dst)
                os.utime(dst, ns=(lst.st_atime_ns, lst.st_mtime_ns))
            finally:
                os.close(dst)
        finally:
            os.close(src)
        return True

    # ------------------------------------------------------------------ whiteouts

    def _whiteout(self, comps: tuple[str, ...]) -> None:
        try:
            pfd, name, pcanon = self.root.lookup(comps, self._copy_up_only if self.overlay else None)
        except MissingPath:
            return   # nothing there to delete
        canon = f"{pcanon}/{name}" if pcanon else name
        if canon in self._lower_links:
            self._shadow_lower_link(canon)
        st = self.root.lstat(pfd, name)
        if canon in self.created or canon in self.touched:
            # made by this very layer: only lower content goes (a whiteout never hides its own layer)
            if st is not None and stat.S_ISDIR(st.st_mode):
                self._opaque_at(pfd, name, canon)
            return
        if st is not None:
            self._remove(pfd, name, st, canon)
        if self.overlay and self.lowerview.lookup(canon) is not None:
            whiteouts.make_overlay_whiteout(name, pfd)
            self._known.add(canon)
            self.whiteouts.add(canon)

    def _opaque(self, dcomps: tuple[str, ...]) -> None:
        if not dcomps:
            if self.overlay:
                whiteouts.set_opaque(self.root.path)
            else:
                self._purge(self.root.fd, "")
            return
        try:
            pfd, name, pcanon = self.root.lookup(dcomps, self._copy_up_only if self.overlay else None)
        except MissingPath:
            return
        canon = join(pcanon, name)
        st = self.root.lstat(pfd, name)
        if self.overlay:
            if st is None:
                if self.lowerview.lookup(canon) is None:
                    return   # nothing below to hide; this layer's own entries need no marker
                try:
                    if self._copy_up_only(pfd, name, canon, None) is not None:
                        return   # a lower symlink: nothing to make opaque
                except UnpackError:
                    return
                self.touched.add(canon)
            elif canon in self.whiteouts and stat.S_ISCHR(st.st_mode):
                self._implicit_mkdir(pfd, name, canon, st)   # dir + opaque over this layer's whiteout
                self.touched.add(canon)
            elif not stat.S_ISDIR(st.st_mode):
                return
            self._set_opaque(pfd, name)
            return
        if st is not None and stat.S_ISDIR(st.st_mode):
            self._opaque_at(pfd, name, canon)

    def _opaque_at(self, pfd: int, name: str, canon: str) -> None:
        if self.overlay:
            self._set_opaque(pfd, name)
            return
        fd = os.open(name, _O_DIRRD, dir_fd=pfd)
        try:
            self._purge(fd, canon)
        finally:
            os.close(fd)

    def _purge(self, dfd: int, canon: str) -> None:
        """Plain mode: delete everything under a directory that this layer did not create."""
        if dfd == self.root.fd:
            dfd = os.open(".", _O_DIRRD, dir_fd=self.root.fd)
            own = True
        else:
            own = False
        try:
            removed = False
            for child in os.listdir(dfd):
                c = join(canon, child)
                st = os.stat(child, dir_fd=dfd, follow_symlinks=False)
                if c in self.touched or (c in self.created and stat.S_ISDIR(st.st_mode)):
                    if stat.S_ISDIR(st.st_mode):
                        sub = os.open(child, _O_DIRRD, dir_fd=dfd)
                        try:
                            self._purge(sub, c)
                        finally:
                            os.close(sub)
                    continue
                if c in self.created:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    import shutil

                    shutil.rmtree(child, dir_fd=dfd)
                    self._forget_dirs(c)
                else:
                    os.unlink(child, dir_fd=dfd)
                removed = True
            if removed:
                self.root.invalidate()
        finally:
            if own:
                os.close(dfd)
