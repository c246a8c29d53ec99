"""Rootless (issue 13, part 1): an ordinary user's store commands run in a user namespace.

A real user made by the tests (tests/rootless.py) with a real /etc/subuid range runs imagetool
through runuser against the loopback registry: pull, load, save, images, unpack, rmi, prune.
On disk, owners are the mapped subordinate ids; inside the namespace, the image's ids.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import stat
import struct
import subprocess

import pytest

from fixtures.images import Layer, build_image
from fixtures.tarbuild import TarEntry, device, directory, fifo, file, opaque, symlink, whiteout
from tests.rootless import rootless_user, rootless_user_nosub  # noqa: F401 (fixtures)

SETUID_PROG = b"#!/bin/sh\necho hi\n"
# a file capability as images carry it (VFS_CAP_REVISION_2, effective, CAP_NET_BIND_SERVICE permitted)
CAP_V2 = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)


def _owners_image():
    """Files owned by 0, 33 and 1000, a setuid binary, a device node, a fifo, a user xattr."""
    base = [directory("etc"), directory("srv", uid=33, gid=33, mode=0o750),
            file("srv/www.txt", "www-data's\n", uid=33, gid=33, mode=0o640),
            file("home.txt", "thousand\n", uid=1000, gid=1000),
            file("bin/su", SETUID_PROG, mode=0o4755),
            file("bin/sg", SETUID_PROG, mode=0o2755, gid=42),
            symlink("bin/link", "su", uid=33, gid=33),
            device("dev/null", "char", 1, 3), device("dev/sda", "block", 8, 0),
            fifo("run/fifo", uid=33, gid=33),
            TarEntry("xattr.txt", data=b"x", xattrs={"user.note": b"kept"}),
            TarEntry("bin/ping", data=SETUID_PROG, mode=0o755, xattrs={"security.capability": CAP_V2}),
            directory("gone"), file("gone/old", "old"), directory("opq"), file("opq/lower", "lower")]
    top = [whiteout("gone"), opaque("opq"), file("opq/upper", "upper", uid=33, gid=33)]
    return build_image([Layer(base), Layer(top)], config={"config": {"Cmd": ["/bin/sh"]}})


@pytest.fixture(scope="module")
def owners_ref(registry):
    return registry.push(_owners_image(), "rootless/owners:latest")


def _lstat(path):
    return os.lstat(path)


def _no_world_writable(root) -> list[str]:
    """Paths of the store open to others for writing; image content in snapshots/<id>/ (a /tmp of
    mode 1777, as the image says) is behind the store's 0700 root and not counted."""
    bad = []
    for d, dirs, files in os.walk(root):
        if os.path.dirname(d) == os.path.join(root, "snapshots"):
            dirs[:] = []
            files = []
        for n in [""] + dirs + files:
            p = os.path.join(d, n) if n else d
            st = os.lstat(p)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o002:
                bad.append(p)
    return bad


# ---------------------------------------------------------------- the namespace itself


def test_enter_maps_root_to_the_user_and_the_range_after(rootless_user):
    u = rootless_user
    r = u.in_userns("import os\nprint(os.getuid(), os.getgid())\nprint(open('/proc/self/uid_map').read())\n"
                    "print(open('/proc/self/gid_map').read())\nprint(os.environ['IMAGETOOL_USERNS'])\n"
                    "from imagetool import settings\nprint(settings.store_root())", check=True)
    lines = [ln.split() for ln in r.stdout.splitlines() if ln.strip()]
    assert lines[0] == ["0", "0"]
    assert lines[1] == ["0", str(u.uid), "1"] and lines[2] == ["1", str(u.subuid_start), str(u.subuid_count)]
    assert lines[3] == ["0", str(u.gid), "1"] and lines[4] == ["1", str(u.subuid_start), str(u.subuid_count)]
    assert lines[5] == [f"{u.uid}:{u.gid}"]
    assert lines[6] == [str(u.store)]      # root of the namespace keeps the user's store
    assert r.stderr == ""


def test_enter_is_in_place_no_process_stays_behind(rootless_user):
    """A single-threaded command unshares itself: same pid, its parent is still runuser's."""
    u = rootless_user
    r = u.run([u.python, "-c", "import os\nprint(os.getpid(), os.getppid())\nns = os.readlink('/proc/self/ns/user')\n"
               "from imagetool import userns\nuserns.enter()\nprint(os.getpid(), os.getppid(), os.getuid())\n"
               "print(os.readlink('/proc/self/ns/user') != ns)"], check=True)
    before, after, other_ns = r.stdout.splitlines()
    assert after.split() == before.split() + ["0"] and other_ns == "True"
    assert u.in_userns("import os\nos._exit(7)").returncode == 7


def test_a_threaded_process_enters_by_forking_and_the_parent_exits_as_the_child(rootless_user):
    """unshare(CLONE_NEWUSER) refuses a threaded process: enter() forks then (enter_forked)."""
    u = rootless_user
    code = ("import os, threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
            "me = os.getpid()\nfrom imagetool import userns\nuserns.enter()\n"
            "print(os.getpid() != me, os.getppid() == me, os.getuid(), flush=True)\nos._exit(9)")
    r = u.run([u.python, "-c", code])
    assert r.returncode == 9, r.stderr
    assert r.stdout.split() == ["True", "True", "0"]


def test_the_forked_parent_forwards_kill(rootless_user):
    u = rootless_user
    # a SIGTERM sent to the waiting parent reaches the child in the namespace
    proc = subprocess.Popen(
        ["runuser", "-u", u.name, "--", "env", "-i", *(f"{k}={v}" for k, v in u.environment().items()), u.python,
         "-c", "from imagetool import userns\nuserns.enter_forked()\nimport os, signal, time\n"
               "signal.signal(signal.SIGTERM, lambda *a: os._exit(42))\nprint('ready', flush=True)\n"
               "time.sleep(120)\n"], stdout=subprocess.PIPE, text=True, cwd=u.home)
    try:
        assert proc.stdout.readline().strip() == "ready"
        parent = _imagetool_parent(proc.pid, u.uid)
        os.kill(parent, 15)
        assert proc.wait(timeout=60) == 42
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


_TTY_CHILD = """from imagetool import userns
userns.enter_forked()
import os, signal, time
count = 0
def on_int(*a):
    global count
    count += 1
    if count == 1:   # the parent has the tty's SIGINT pending too; SIGTERM comes after it (lower numbers first)
        os.kill(os.getppid(), signal.SIGTERM)
def on_term(*a):
    os.write(1, b"count=%d\\n" % count)   # os.write: a handler may run inside another write
    os._exit(40 + count)
signal.signal(signal.SIGINT, on_int)
signal.signal(signal.SIGTERM, on_term)
os.write(1, b"ready\\n")
while True:
    time.sleep(3600)
"""


def test_a_terminal_interrupt_reaches_the_command_once(rootless_user):
    """Forked entry (a threaded command): ^C on the terminal reaches the parent and the child (one
    process group); the parent does not forward it again (only signals sent with kill(2), as the
    SIGTERM here). In place, there is no second process to relay anything."""
    import fcntl
    import pty
    import termios

    u = rootless_user
    master, slave = pty.openpty()

    def controlling_tty():
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    argv = ["runuser", "-u", u.name, "--", "env", "-i", *(f"{k}={v}" for k, v in u.environment().items()),
            u.python, "-c", _TTY_CHILD]
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            preexec_fn=controlling_tty, cwd=u.home)
    os.close(slave)
    out = b""
    try:
        while b"ready" not in out:
            out += os.read(master, 1024)
        os.write(master, b"\x03")
        while True:
            try:
                chunk = os.read(master, 1024)
            except OSError:   # EIO: every holder of the terminal is gone
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=60) == 41, out
        assert b"count=1" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_a_refused_mapping_is_one_clear_error_and_the_command_does_not_go_on(rootless_user):
    """newuidmap refuses a range that is not the user's: the parent reports it, the child never continues."""
    u = rootless_user
    code = ("import dataclasses\nfrom imagetool import userns\nfrom imagetool.errors import ImagetoolError\n"
            "m = userns.mapping()\nbad = dataclasses.replace(m, uids=(m.uids[0], userns.IdRange(1, 1, 1000)))\n"
            "try:\n    userns.enter(bad)\nexcept ImagetoolError as e:\n    print('ERR', e, '|', e.hint)\n"
            "    raise SystemExit(3)\nprint('CHILD WENT ON')\n")
    r = u.run([u.python, "-c", code])
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "CHILD WENT ON" not in r.stdout
    assert "ERR cannot map ids into the user namespace: newuidmap failed: newuidmap:" in r.stdout
    assert "/etc/subuid" in r.stdout


def _imagetool_parent(runuser_pid: int, uid: int) -> int:
    """The python process runuser started (the namespace's parent: a direct child of runuser, `uid`)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if int(fields["PPid"]) == runuser_pid and int(fields["Uid"].split()[1]) == uid:
            return int(pid)
    raise AssertionError("no child of runuser as the user")


def test_no_subordinate_range_single_id_mapping_and_a_notice(rootless_user_nosub, registry, busybox):
    u = rootless_user_nosub
    r = u.in_userns("import os\nprint(os.getuid())\nprint(open('/proc/self/uid_map').read())", check=True)
    lines = [ln.split() for ln in r.stdout.splitlines() if ln.strip()]
    assert lines == [["0"], ["0", str(u.uid), "1"]]
    assert r.stderr.count("\n") == 1 and "single-id mapping" in r.stderr
    # an image owned by root only works; one with other owners fails with a clear error
    ref = registry.push(busybox, "rootless/nosub-busybox:latest")
    r = u.imagetool("pull", ref)
    assert r.returncode == 0, r.stderr
    assert "single-id mapping" in r.stderr
    out = u.home / "bb"
    r = u.imagetool("unpack", ref, out)
    assert r.returncode == 0, r.stderr
    assert _lstat(out / "bin" / "busybox").st_uid == u.uid


def test_single_id_mapping_refuses_other_owners_clearly(rootless_user_nosub, owners_ref):
    u = rootless_user_nosub
    snaps = u.store / "snapshots"
    before = sorted(os.listdir(snaps)) if snaps.exists() else []
    r = u.imagetool("pull", owners_ref)
    assert r.returncode != 0
    assert "cannot apply 'srv/': owner 33:33 is not mapped in the user namespace" in r.stderr, r.stderr
    assert "/etc/subuid" in r.stderr
    assert sorted(os.listdir(snaps)) == before          # nothing half-made left
    r = u.imagetool("pull", "--no-unpack", owners_ref)
    assert r.returncode == 0, r.stderr
    r = u.imagetool("unpack", owners_ref, u.home / "owners")
    assert r.returncode != 0 and "is not mapped in the user namespace" in r.stderr, r.stderr
    assert not (u.home / "owners").exists()


# ---------------------------------------------------------------- store commands as the user


def test_store_commands_as_the_user(rootless_user, registry, busybox):
    u = rootless_user
    ref = registry.push(busybox, "rootless/busybox:latest")
    r = u.imagetool("pull", ref)
    assert r.returncode == 0, r.stderr
    assert f"Digest: {busybox.manifest_digest}" in r.stdout
    r = u.imagetool("images", "--format", "json", check=True)
    assert ref in {f"{e['repository']}:{e['tag']}" for e in json.loads(r.stdout)}
    st = os.stat(u.store)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (u.uid, 0o700)
    assert _no_world_writable(u.store) == []
    archive = u.home / "bb.tar"
    u.imagetool("save", ref, "-o", archive, check=True)
    u.imagetool("rmi", ref, check=True)
    r = u.imagetool("images", "--format", "json", check=True)
    assert ref not in r.stdout
    r = u.imagetool("prune", check=True)
    assert "Deleted" in r.stdout
    assert not any((u.store / "snapshots").iterdir())
    r = u.imagetool("load", "-i", archive)
    assert r.returncode == 0, r.stderr
    assert ref in {f"{e['repository']}:{e['tag']}" for e in json.loads(u.imagetool("images", "--format", "json",
                                                                                   check=True).stdout)}
    u.imagetool("rmi", ref, check=True)
    u.imagetool("prune", check=True)


def test_a_rootless_pull_killed_with_sigkill_leaves_a_usable_store(rootless_user, registry, busybox):
    """kill -9 of the user's processes (the waiting parent and the child in the namespace) mid-pull:
    the next pull completes the image and it unpacks (where the kill lands varies; every outcome
    must leave the store consistent)."""
    from tests.rootless import _kill_processes

    u = rootless_user
    ref = registry.push(busybox, "rootless/killed:latest")
    p = u.popen(["pull", ref], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for line in p.stderr:
            if b"Downloading" in line:
                break
        _kill_processes(range(u.uid, u.uid + 1))
    finally:
        p.wait(timeout=60)
        p.stderr.close()
    r = u.imagetool("pull", ref)
    assert r.returncode == 0, r.stderr
    assert ref in {f"{e['repository']}:{e['tag']}" for e in json.loads(u.imagetool("images", "--format", "json",
                                                                                   check=True).stdout)}
    out = u.home / "after-kill"
    u.imagetool("unpack", ref, out, check=True)
    assert (out / "bin" / "busybox").is_file()
    u.imagetool("rmi", ref, check=True)
    u.imagetool("prune", check=True)


def test_pull_makes_snapshots_owned_through_the_mapping(rootless_user, owners_ref):
    u = rootless_user
    r = u.imagetool("pull", owners_ref)
    assert r.returncode == 0, r.stderr
    snaps = sorted((u.store / "snapshots").iterdir())
    assert len(snaps) == 2
    # which one is the base layer: the one holding srv/
    base = next(s for s in snaps if (s / "srv").exists())
    top = next(s for s in snaps if s != base)
    sub = u.subuid_start - 1           # inside id N (N >= 1) is subuid_start + N - 1 on disk
    assert (_lstat(base / "srv" / "www.txt").st_uid, _lstat(base / "srv" / "www.txt").st_gid) == (sub + 33, sub + 33)
    assert _lstat(base / "home.txt").st_uid == sub + 1000
    assert _lstat(base / "bin" / "su").st_uid == u.uid           # root in the image is the user
    assert stat.S_IMODE(_lstat(base / "bin" / "su").st_mode) == 0o4755
    assert stat.S_IMODE(_lstat(base / "bin" / "sg").st_mode) == 0o2755
    assert _lstat(base / "bin" / "sg").st_gid == sub + 42
    assert _lstat(base / "bin" / "link").st_uid == sub + 33
    assert not os.path.lexists(base / "dev" / "null") and not os.path.lexists(base / "dev" / "sda")
    assert "skipping device 'dev/null'" in r.stderr and "rootless" in r.stderr
    assert stat.S_ISFIFO(_lstat(base / "run" / "fifo").st_mode)
    assert os.getxattr(base / "xattr.txt", "user.note") == b"kept"
    # the file capability: stored by the kernel namespaced (v3, root id = the user), v2 again inside
    cap = os.getxattr(base / "bin" / "ping", "security.capability")
    assert len(cap) == 24 and struct.unpack("<IIIIII", cap)[0] >> 24 == 3
    assert struct.unpack("<IIIIII", cap)[1] == 1 << 10 and struct.unpack("<IIIIII", cap)[5] == u.uid
    r = u.in_userns(f"import os\nprint(os.getxattr({str(base / 'bin' / 'ping')!r}, 'security.capability').hex())",
                    check=True)
    assert bytes.fromhex(r.stdout.strip()) == CAP_V2
    # the upper layer: a whiteout is char 0/0, the opaque dir carries the user.* marker only
    wo = _lstat(top / "gone")
    assert stat.S_ISCHR(wo.st_mode) and wo.st_rdev == 0
    assert os.getxattr(top / "opq", "user.overlay.opaque") == b"y"
    with pytest.raises(OSError):
        os.getxattr(top / "opq", "trusted.overlay.opaque")
    assert _no_world_writable(u.store) == []
    # inside the namespace the image's own ids show
    r = u.in_userns(f"import os\nfor p in ('srv/www.txt', 'home.txt', 'bin/su', 'bin/sg'):\n"
                    f"    st = os.lstat(os.path.join({str(base)!r}, p)); print(p, st.st_uid, st.st_gid)", check=True)
    assert r.stdout.split("\n")[:4] == ["srv/www.txt 33 33", "home.txt 1000 1000", "bin/su 0 0", "bin/sg 0 42"]
    u.imagetool("rmi", owners_ref, check=True)
    u.imagetool("prune", check=True)
    assert not any((u.store / "snapshots").iterdir())


def test_rootless_snapshots_mount_as_overlay_with_userxattr(rootless_user, owners_ref):
    """In the namespace, overlay (userxattr) over the snapshots shows the flattened tree: the
    whiteout hides gone/, the user.* opaque marker hides opq/lower."""
    u = rootless_user
    u.imagetool("pull", owners_ref, check=True)
    flat = u.home / "flat-owners"
    u.imagetool("unpack", owners_ref, flat, check=True)
    code = f"""
import json, subprocess
from store import Store
from imagetool import image as images, settings
from imagetool.unpack.rootfs import overlay_mount
from fixtures.corpus import tree_manifest
st = Store.open(settings.store_root())
image = images.load(st, {owners_ref!r})
plan = overlay_mount(st, image, {str(u.home / 'ctr')!r})
subprocess.run(["mount", "-t", "overlay", "overlay", "-o", ",".join(list(plan.options) + ["userxattr"]),
                str(plan.target)], cwd=plan.cwd, check=True)
got = tree_manifest(plan.target)
subprocess.run(["umount", str(plan.target)], check=True)
print(repr([got, tree_manifest({str(flat)!r})]))
"""
    r = u.in_userns(code)
    assert r.returncode == 0, r.stderr
    got, flat_tree = ast.literal_eval(r.stdout)
    assert "gone" not in got and "opq/lower" not in got and "opq/upper" in got
    assert got == flat_tree
    u.imagetool("rmi", owners_ref, check=True)
    u.imagetool("prune", check=True)


def test_unpack_as_the_user(rootless_user, owners_ref):
    u = rootless_user
    u.imagetool("pull", "--no-unpack", owners_ref, check=True)
    out = u.home / "rootfs"
    r = u.imagetool("unpack", owners_ref, out)
    assert r.returncode == 0, r.stderr
    sub = u.subuid_start - 1
    assert _lstat(out / "srv" / "www.txt").st_uid == sub + 33
    assert stat.S_IMODE(_lstat(out / "bin" / "su").st_mode) == 0o4755 and _lstat(out / "bin" / "su").st_uid == u.uid
    assert not os.path.lexists(out / "dev" / "null")
    assert not os.path.lexists(out / "gone") and sorted(os.listdir(out / "opq")) == ["upper"]
    assert "skipping device" in r.stderr
    u.imagetool("rmi", owners_ref, check=True)


def test_export_and_import_as_the_user_keep_the_images_ids(rootless_user, owners_ref):
    """export reads the snapshots inside the namespace: the tar says 33, not the subordinate id;
    import of it makes an image whose unpack puts the same mapped owners on disk."""
    import tarfile

    u = rootless_user
    u.imagetool("pull", owners_ref, check=True)
    tar = u.home / "owners-export.tar"
    u.imagetool("export", owners_ref, "-o", tar, check=True)
    assert os.stat(tar).st_uid == u.uid
    with tarfile.open(tar) as t:
        got = {m.name: (m.uid, m.gid, m.mode & 0o7777) for m in t.getmembers()}
    assert got["srv/www.txt"] == (33, 33, 0o640) and got["bin/su"] == (0, 0, 0o4755)
    assert got["bin/sg"] == (0, 42, 0o2755) and got["home.txt"][:2] == (1000, 1000)
    assert "dev/null" not in got and "gone" not in got and "opq/lower" not in got
    u.imagetool("import", tar, "localhost/rootless/reimported:1", check=True)
    out = u.home / "reimported"
    u.imagetool("unpack", "localhost/rootless/reimported:1", out, check=True)
    assert _lstat(out / "srv" / "www.txt").st_uid == u.subuid_start + 32
    u.imagetool("rmi", owners_ref, "localhost/rootless/reimported:1", check=True)
    u.imagetool("prune", check=True)


def test_a_layer_carrying_user_overlay_xattrs_is_refused(rootless_user, registry):
    u = rootless_user
    bad = build_image([Layer([directory("d"), TarEntry("d/f", data=b"x", xattrs={"user.overlay.redirect": b"/etc"})])])
    ref = registry.push(bad, "rootless/overlay-xattr:latest")
    r = u.imagetool("pull", ref)            # its snapshot is refused
    assert r.returncode != 0 and "carries the overlayfs xattr 'user.overlay.redirect'" in r.stderr, r.stderr
    u.imagetool("pull", "--no-unpack", ref, check=True)
    r = u.imagetool("unpack", ref, u.home / "bad")
    assert r.returncode != 0 and "carries the overlayfs xattr 'user.overlay.redirect'" in r.stderr, r.stderr
    assert not (u.home / "bad").exists()
    u.imagetool("rmi", ref, check=True)


# ---------------------------------------------------------------- info


def test_info_tells_the_user_what_the_machine_gives(rootless_user):
    u = rootless_user
    tmp = u.home / "tmp-info"
    tmp.mkdir()
    os.chown(tmp, u.uid, u.gid)
    r = u.imagetool("info", "--format", "json", env={"TMPDIR": tmp})
    assert r.returncode == 0, r.stderr
    facts = json.loads(r.stdout)
    assert facts["user"] == u.name and facts["uid"] == u.uid and facts["rootless"] is True
    assert facts["store"] == str(u.store) and facts["store_mode"] == "0700"
    assert facts["userns"] == "subordinate ids"
    assert facts["uid_map"] == [[0, u.uid, 1], [1, u.subuid_start, u.subuid_count]]
    assert facts["gid_map"] == [[0, u.gid, 1], [1, u.subuid_start, u.subuid_count]]
    # overlay in a user namespace: the probe's answer agrees with the kernel's version (>= 5.11)
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    assert facts["rootfs"].startswith("overlay (in the user namespace") == ((major, minor) >= (5, 11)), facts["rootfs"]
    assert (facts["slirp4netns"] is not None) == (shutil.which("slirp4netns") is not None)
    tun_ok = u.run(["sh", "-c", "exec 3<>/dev/net/tun"]).returncode == 0
    assert (facts["tun"] == "usable") == tun_ok
    from imagetool.runtime import cgroups as cg

    assert facts["cgroup"] == cg.detect()
    if facts["cgroup"] != "v2":
        assert facts["cgroup_delegation"].startswith("none (") and facts["cgroup_controllers"] == []
    text = u.imagetool("info", check=True).stdout
    assert f"user: {u.name} (uid {u.uid})  rootless" in text and f"1→{u.subuid_start} ({u.subuid_count})" in text
    assert os.listdir(tmp) == []     # the overlay probe's directory is gone


def test_info_with_no_subordinate_range(rootless_user_nosub):
    u = rootless_user_nosub
    facts = json.loads(u.imagetool("info", "--format", "json", check=True).stdout)
    assert facts["userns"].startswith("single-id mapping") and facts["uid_map"] == [[0, u.uid, 1]]


def test_info_as_root(cli, store_dir):
    facts = json.loads(cli("info", "--format", "json", check=True).stdout)
    assert facts["uid"] == 0 and facts["rootless"] is False and facts["userns"] == "not used (root)"
    assert facts["store"] == str(store_dir) and facts["rootfs"] in ("overlay", "copy (the kernel has no overlayfs)")
    r = cli("info", "--format", "yaml")
    assert r.returncode != 0 and "unknown format 'yaml'" in r.stderr


INFO_V2_GUEST = r"""
set -u
echo "RESULT started 1"
mkdir -p /opt/it && cp -r /host/src /host/site /opt/it/ && chmod -R a+rX /opt/it
export PYTHONPATH=/opt/it/site:/opt/it/src PYTHONDONTWRITEBYTECODE=1
useradd --create-home --shell /bin/sh rl || exit 91
sed -i '/^rl:/d' /etc/subuid /etc/subgid
usermod --add-subuids 200000-265535 --add-subgids 200000-265535 rl || exit 92
G=/sys/fs/cgroup/rl.slice
mkdir $G
echo "+memory +pids" > /sys/fs/cgroup/cgroup.subtree_control
chown rl:rl $G $G/cgroup.procs $G/cgroup.subtree_control $G/cgroup.threads
info() { ( [ -n "$1" ] && echo $BASHPID > $1/cgroup.procs; exec runuser -u rl -- env -i HOME=/home/rl \
  PATH=/usr/bin:/bin:/usr/sbin:/sbin PYTHONPATH=$PYTHONPATH PYTHONDONTWRITEBYTECODE=1 \
  python3 -m imagetool info --format json ); }
echo "INFO_DELEGATED $(info $G | tr -d '\n')"
echo "INFO_ROOTCG $(info '' | tr -d '\n')"
"""


def test_info_on_cgroup_v2_tells_a_delegated_subtree_from_none(tmp_path):
    """In the cgroup-v2-only VM: the user's own writable cgroup is reported with its controllers;
    from the root cgroup (not the user's) there is none, and info says limits cannot apply."""
    from tests import v2vm

    out = v2vm.boot(tmp_path, INFO_V2_GUEST, started_marker="RESULT started")
    docs = {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1]) for line in out.splitlines()
            if line.startswith(("INFO_DELEGATED ", "INFO_ROOTCG "))}
    assert set(docs) == {"INFO_DELEGATED", "INFO_ROOTCG"}, out[-2000:]
    d, r = docs["INFO_DELEGATED"], docs["INFO_ROOTCG"]
    assert d["cgroup"] == "v2" and d["cgroup_delegation"] == "delegated: /sys/fs/cgroup/rl.slice"
    assert {"memory", "pids"} <= set(d["cgroup_controllers"])
    assert d["uid_map"][1] == [1, 200000, 65536] and d["rootfs"].startswith("overlay (in the user namespace")
    assert r["cgroup"] == "v2" and r["cgroup_delegation"].startswith("none (cgroup v2: your cgroup")
    assert r["cgroup_controllers"] == []
