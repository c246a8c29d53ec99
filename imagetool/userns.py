"""Rootless: a command run by an ordinary user enters a user namespace (and a mount namespace) in-process.

How (podman's idea, in-process, without re-exec): `enter()` — for a single-threaded process, the
usual case — works in place: a helper is forked first and waits on a pipe; the process itself
`unshare(CLONE_NEWUSER|CLONE_NEWNS)`s and tells the helper, which (still outside) runs
newuidmap/newgidmap on it and exits; the process then becomes uid/gid 0 and simply goes on with the
command: the same pid, its own signals, terminal and exit status. unshare refuses a threaded process
(EINVAL), so then `enter_forked()` does it podman's way: fork; the child unshares, says so on a pipe
and waits; the parent writes the child's maps, lets it go, waits for it, forwards SIGINT/SIGTERM/
SIGHUP/SIGQUIT sent to it by kill(2) (a terminal's ^C already reaches both: one process group; told
apart by si_code) and exits as the child did.

The mapping (`mapping()`) is the same every time, so files on disk keep consistent owners:
- with a subordinate range in /etc/subuid and /etc/subgid: 0 → the user, 1..N → the ranges in file
  order, written by the setuid helpers `newuidmap`/`newgidmap` (Debian `uidmap`);
- without one (or without the helpers): the single-id mapping 0 → the user, written directly to
  /proc/PID/{setgroups=deny,uid_map,gid_map}, with a one-line notice (as podman does).

Inside, `inside()` is true: euid 0 without the initial namespace's full map. What it means for the
other modules: the store stays the user's ($XDG_DATA_HOME/imagetool, settings.store_root); chown works
for mapped ids only; device nodes cannot be made (CAP_MKNOD is not held in the initial namespace), but
overlay whiteouts (char 0/0) can (kernel >= 5.8); trusted.* xattrs cannot be set, so overlay opaque
directories use `user.overlay.opaque` and overlay is mounted with `userxattr` (unpack/whiteouts.py).
`IMAGETOOL_USERNS=UID:GID` (the user's ids outside) is exported to the environment of the process inside.

This module imports only the standard library: anything may import it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

ENV = "IMAGETOOL_USERNS"
FULL_MAP = (0, 0, 4294967295)
SUBUID, SUBGID = "/etc/subuid", "/etc/subgid"
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000

# commands that write the store or need root's powers (read-only ones: images, inspect, ps, logs, history,
# port, save, push, login, logout, tag, wait, info … run as the user, outside any namespace)
# exec, stop and kill stay outside: the user there owns the container's user namespace, so may setns(2)
# into it and signal every process in it; from a sibling namespace (a new one per command) it could not
NEEDS_USERNS = frozenset({"pull", "load", "import", "unpack", "run", "start", "restart",
                          "rm", "rmi", "prune", "commit", "export", "copy", "network"})

_FORWARD = (2, 15, 1, 3)   # SIGINT, SIGTERM, SIGHUP, SIGQUIT (signal is imported only when entering)


@dataclass(frozen=True, eq=False, repr=False, init=False)
class IdRange:
    """`count` ids from `inside` (in the namespace) are `outside` .. outside+count-1 on the host.
    (Never compared, like Mapping: no generated __eq__/__hash__; every `run` loads this module, so
    __init__ and __repr__ are written out as dataclass would generate them, not compiled at start.)"""
    inside: int
    outside: int
    count: int

    def __init__(self, inside: int, outside: int, count: int) -> None:
        _set = object.__setattr__   # frozen: as the generated __init__ does
        _set(self, "inside", inside)
        _set(self, "outside", outside)
        _set(self, "count", count)

    def __repr__(self) -> str:
        return f"IdRange(inside={self.inside!r}, outside={self.outside!r}, count={self.count!r})"


@dataclass(frozen=True, eq=False, repr=False, init=False)
class Mapping:
    """The uid and gid maps a user's namespace gets; `single` when there is no subordinate range.
    (Never compared; __init__ and __repr__ written out as dataclass would generate them, like IdRange's.)"""
    user: str
    uid: int
    gid: int
    uids: tuple = field(default_factory=tuple)
    gids: tuple = field(default_factory=tuple)

    def __init__(self, user: str, uid: int, gid: int, uids: tuple = (), gids: tuple = ()) -> None:
        _set = object.__setattr__   # frozen: as the generated __init__ does
        _set(self, "user", user)
        _set(self, "uid", uid)
        _set(self, "gid", gid)
        _set(self, "uids", uids)
        _set(self, "gids", gids)

    def __repr__(self) -> str:
        return (f"Mapping(user={self.user!r}, uid={self.uid!r}, gid={self.gid!r}, uids={self.uids!r}, "
                f"gids={self.gids!r})")

    @property
    def single(self) -> bool:
        return len(self.uids) == 1 or len(self.gids) == 1

    def host_uid(self, inside_uid: int) -> int | None:
        return _to_host(self.uids, inside_uid)

    def host_gid(self, inside_gid: int) -> int | None:
        return _to_host(self.gids, inside_gid)


def _to_host(ranges, i: int) -> int | None:
    for r in ranges:
        if r.inside <= i < r.inside + r.count:
            return r.outside + i - r.inside
    return None


_ID_LIMIT = 2**32 - 1   # (uid_t)-1 is no id


def subordinate_ranges(path: str, user: str, uid: int, own: int | None = None) -> list[tuple[int, int]]:
    """(start, count) of every line of /etc/subuid-style `path` for `user` (by name or number `uid`),
    file order, without the lines newuidmap would refuse or that overlap an earlier one or `own`
    (the id mapped to 0: `uid`, or the gid for /etc/subgid)."""
    own = uid if own is None else own
    found = []
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    inside = 1   # the ids inside: 0 is the user, the ranges follow
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] not in (user, str(uid)):
            continue
        # as newuidmap reads them: plain ASCII decimal (int() would take "+5", "1_000", "-1", "٣")
        if not all(p.isascii() and p.isdigit() and len(p) <= 10 for p in parts[1:]):
            continue
        start, count = int(parts[1]), int(parts[2])
        if count <= 0 or start + count > _ID_LIMIT or inside + count > _ID_LIMIT:
            continue
        if start <= own < start + count or any(start < s + c and s < start + count for s, c in found):
            continue   # the user's own id, or ids an earlier line maps already: newuidmap refuses overlaps
        found.append((start, count))
        inside += count
    return found


def _ranges(own: int, subs: list[tuple[int, int]]) -> tuple:
    out, nxt = [IdRange(0, own, 1)], 1
    for start, count in subs:
        out.append(IdRange(nxt, start, count))
        nxt += count
    return tuple(out)


def helpers_present() -> bool:
    return all(os.access(f"/usr/bin/{h}", os.X_OK) or _which(h) for h in ("newuidmap", "newgidmap"))


def _which(name: str) -> str | None:
    import shutil

    return shutil.which(name)


def mapping(uid: int | None = None, gid: int | None = None) -> Mapping:
    """The mapping for the user `uid` (default: this process's real ids, or the ids outside when inside)."""
    if uid is None:
        outside = host_ids()
        uid, gid = outside if outside else (os.getuid(), os.getgid())
    import pwd

    if gid is None:
        gid = pwd.getpwuid(uid).pw_gid
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    subu = subordinate_ranges(SUBUID, user, uid)
    subg = subordinate_ranges(SUBGID, user, uid, own=gid)
    if not (subu and subg and helpers_present()):
        subu = subg = []
    return Mapping(user, uid, gid, _ranges(uid, subu), _ranges(gid, subg))


# ---------------------------------------------------------------- where are we


def _uid_map(pid: str = "self") -> list[tuple[int, int, int]]:
    with open(f"/proc/{pid}/uid_map") as f:
        return [tuple(int(x) for x in line.split()) for line in f if line.strip()]


def inside() -> bool:
    """Is this process root of a user namespace that is not the initial one (so root without host
    powers)? Real root (euid 0, the full identity map) and ordinary users are not."""
    if os.geteuid() != 0:
        return False
    try:
        return _uid_map() != [FULL_MAP]
    except OSError:
        return False


def host_ids() -> tuple[int, int] | None:
    """(uid, gid) of the user outside, when this process runs inside imagetool's namespace."""
    v = os.environ.get(ENV, "")
    if not v or not inside():
        return None
    try:
        u, g = v.split(":")
        return int(u), int(g)
    except ValueError:
        return None


RANGE_HINT = ("give the user a subordinate range in /etc/subuid and /etc/subgid, e.g. "
              "`usermod --add-subuids 100000-165535 --add-subgids 100000-165535 USER`")


def _mapped(path: str, i: int) -> bool:
    try:
        with open(path) as f:
            rows = [[int(x) for x in line.split()] for line in f if line.strip()]
    except OSError:
        return True
    return any(first <= i < first + count for first, _, count in rows)


def unmapped(uid: int, gid: int) -> str | None:
    """Inside: what is wrong when the owner uid:gid has no id in this namespace, else None."""
    missing = [f"{kind} {i}" for kind, i, path in (("uid", uid, "/proc/self/uid_map"), ("gid", gid, "/proc/self/gid_map"))
               if not _mapped(path, i)]
    if not missing:
        return None
    return (f"owner {uid}:{gid} is not mapped in the user namespace ({' and '.join(missing)}: "
            "not enough subordinate ids)")


def needs(command: str) -> bool:
    """Does `command`, run by this process, have to enter a user namespace first?"""
    return command in NEEDS_USERNS and os.geteuid() != 0


def enter_if_needed(command: str) -> None:
    """The one decision (commands.serve calls it first): enter the namespace when `command` needs it."""
    if needs(command):
        enter()


# ---------------------------------------------------------------- entering


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _unshare(flags: int) -> None:
    import ctypes

    if _libc().unshare(flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def _notice(msg: str) -> None:
    sys.stderr.write(f"imagetool: notice: {msg}\n")


def enter(m: Mapping | None = None) -> None:
    """Move this process into a new user+mount namespace as its uid 0: in place when it is
    single-threaded (`enter_in_place`, the usual case: a command enters before starting any
    thread), else by forking (`enter_forked`: unshare(CLONE_NEWUSER) refuses a threaded caller)."""
    if _threads() == 1:
        enter_in_place(m)
    else:
        enter_forked(m)


def _threads() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def enter_in_place(m: Mapping | None = None) -> None:
    """This process unshares its user and mount namespaces itself; a forked helper, still outside,
    runs newuidmap/newgidmap on it (with no subordinate range the process writes its own single-id
    map). No process stays behind to wait: signals, the terminal and the exit status are the
    command's own, and no Python process runs on copy-on-write pages of another."""
    from imagetool.errors import ImagetoolError

    m = m or mapping()
    sys.stdout.flush()
    sys.stderr.flush()
    me = os.getpid()
    helper = None
    if not m.single:
        go_r, go_w = os.pipe()        # this process → helper: unshared ("1") or not
        err_r, err_w = os.pipe()      # helper → this process: what failed
        helper = os.fork()
        if helper == 0:   # the helper: wait, map, exit (no return)
            code = 125
            try:
                os.close(go_w)
                os.close(err_r)
                if os.read(go_r, 1) == b"1":
                    _write_maps(me, m)
                    code = 0
            except BaseException as e:   # noqa: BLE001 (a forked helper must never return)
                try:
                    os.write(err_w, str(e).encode()[:2000])
                except OSError:
                    pass
            finally:
                os._exit(code)
        os.close(go_r)
        os.close(err_w)
    try:
        _unshare(CLONE_NEWUSER | CLONE_NEWNS)
    except OSError as e:
        if helper:
            _finish_helper(helper, go_w, err_r, b"0")
        raise ImagetoolError(f"cannot create a user namespace: {e.strerror}",
                             hint="check kernel.unprivileged_userns_clone / user.max_user_namespaces") from None
    if helper:
        failed = _finish_helper(helper, go_w, err_r, b"1")
    else:
        try:
            _write_maps(me, m)
            failed = ""
        except OSError as e:
            failed = str(e)
    if failed:
        raise ImagetoolError(f"cannot map ids into the user namespace: {failed}",
                             hint=f"check {SUBUID} and {SUBGID} for {m.user}, and that newuidmap/newgidmap "
                                  "are installed setuid")
    _become_root(m)


def _finish_helper(pid: int, go_w: int, err_r: int, go: bytes) -> str:
    """Tell the helper to go on (or not), wait for it: "" when it mapped the ids, else why not."""
    try:
        os.write(go_w, go)
    except BrokenPipeError:
        pass
    os.close(go_w)
    msg = b""
    while chunk := os.read(err_r, 4096):
        msg += chunk
    os.close(err_r)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if go != b"1" or code == 0:
        return ""
    return msg.decode(errors="replace").strip() or f"the id mapper exited {code}"


def enter_forked(m: Mapping | None = None) -> None:
    """Fork; in the child (which returns from here as uid 0 of a new user+mount namespace) go on with
    the command; the parent never returns: it waits for the child and exits with its status."""
    import signal

    from imagetool.errors import ImagetoolError

    m = m or mapping()
    sys.stdout.flush()
    sys.stderr.flush()
    ready_r, ready_w = os.pipe()     # child → parent: unshared (or an errno)
    go_r, go_w = os.pipe()           # parent → child: maps written ("" = failed)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARD + (signal.SIGCHLD,))
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(go_w)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        try:
            _unshare(CLONE_NEWUSER | CLONE_NEWNS)
        except OSError as e:
            os.write(ready_w, str(e.errno).encode())
            os._exit(125)
        os.write(ready_w, b"0")
        os.close(ready_w)
        ok = os.read(go_r, 1)
        os.close(go_r)
        if ok != b"1":
            os._exit(125)
        _become_root(m)
        return
    os.close(ready_w)
    os.close(go_r)
    err = ""
    got = os.read(ready_r, 16)
    os.close(ready_r)
    if got != b"0":
        errno = int(got or b"0")
        err = f"cannot create a user namespace: {os.strerror(errno) if errno else 'the child died'}"
        hint = "check kernel.unprivileged_userns_clone / user.max_user_namespaces"
    else:
        try:
            _write_maps(pid, m)
        except (OSError, ImagetoolError) as e:
            err = f"cannot map ids into the user namespace: {e}"
            hint = f"check {SUBUID} and {SUBGID} for {m.user}, and that newuidmap/newgidmap are installed setuid"
    try:
        os.write(go_w, b"0" if err else b"1")
    except BrokenPipeError:   # the child is gone already (it failed to unshare)
        pass
    os.close(go_w)
    status = _wait_forwarding(pid)
    if err:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        raise ImagetoolError(err, hint=hint)
    _exit_like(status)


def _become_root(m: Mapping) -> None:
    os.setresgid(0, 0, 0)
    if not m.single:
        try:
            os.setgroups([])
        except OSError:
            pass
    os.setresuid(0, 0, 0)
    os.environ[ENV] = f"{m.uid}:{m.gid}"


def _write_maps(pid: int, m: Mapping) -> None:
    if m.single:
        _notice(f"no subordinate ids for {m.user} in {SUBUID}/{SUBGID} (or no newuidmap): using a single-id "
                "mapping (only uid 0 inside; images with other owners may fail)")
        with open(f"/proc/{pid}/setgroups", "w") as f:
            f.write("deny")
        for name, r in (("uid_map", m.uids[0]), ("gid_map", m.gids[0])):
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(f"{r.inside} {r.outside} {r.count}\n")
        return
    # both helpers at once (posix_spawn: no subprocess import, no Python in between); their stderr
    # is kept for the error message
    running = []
    try:
        for helper, ranges in (("newuidmap", m.uids), ("newgidmap", m.gids)):
            path = _helper_path(helper)
            args = [helper, str(pid)] + [str(x) for r in ranges for x in (r.inside, r.outside, r.count)]
            er, ew = os.pipe()
            try:
                child = os.posix_spawn(path, args, {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}, setsigmask=(),
                                       file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                                     (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                                                     (os.POSIX_SPAWN_DUP2, ew, 2)])
            except OSError:
                os.close(er)
                raise
            finally:
                os.close(ew)
            running.append((helper, child, er))
        failures = []
        for helper, child, er in running:
            out = b""
            while chunk := os.read(er, 4096):
                out += chunk
            code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
            if code:
                failures.append(f"{helper} failed: {out.decode(errors='replace').strip() or f'exit {code}'}")
    finally:
        for _, _, er in running:
            os.close(er)
    if failures:
        from imagetool.errors import ImagetoolError

        raise ImagetoolError("; ".join(failures))


def _helper_path(name: str) -> str:
    for d in ("/usr/bin", "/bin", "/usr/local/bin"):
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return _which(name) or name


def _wait_forwarding(pid: int) -> int:
    """Wait for `pid` (its wait status); signals sent to us with kill(2) go on to it."""
    import signal

    sigs = set(_FORWARD) | {signal.SIGCHLD}
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return 0
        if done:
            return status
        info = signal.sigwaitinfo(sigs)
        if info.si_signo != signal.SIGCHLD and info.si_code <= 0:   # SI_USER/SI_QUEUE…, not the tty (SI_KERNEL)
            try:
                os.kill(pid, info.si_signo)
            except ProcessLookupError:
                pass


def _exit_like(status: int) -> None:
    import signal

    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        sig = -code
        sys.stdout.flush()
        signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
        code = 128 + sig
    os._exit(code)
