"""imagetool.users.lookup: docker's user/group semantics, read only through the image's own root.

The threats: an image's /etc/passwd (or /etc itself) that is a symlink to a host file must never
give a host uid or HOME (issue 14 item 6, the `--runtime runc` bug); a FIFO must not hang the
lookup; a huge or sparse file is read only up to the bound.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from imagetool.errors import ContainerError
from imagetool.safepath import Root
from imagetool.users import DB_LIMIT, User, lookup

PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
          "# a comment line\n"
          "app:x:1000:1001:App:/home/app:/bin/sh\n"
          "nohome:x:1002:1002\n"
          "daemon:x:2:2::/:/usr/sbin/nologin\n")
GROUP = ("root:x:0:\n"
         "wheel:x:10:app,root\n"
         "appgrp:x:1001:\n"
         "extra:x:2000:other,app\n"
         "badgid:x:notanumber:app\n")


def rootfs(tmp_path: Path, passwd: str | None = PASSWD, group: str | None = GROUP) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    if passwd is not None:
        (root / "etc" / "passwd").write_text(passwd)
    if group is not None:
        (root / "etc" / "group").write_text(group)
    return root


@pytest.mark.parametrize("text,expected", [
    (None, User(0, 0, (10,), "/root")),
    ("", User(0, 0, (10,), "/root")),
    ("root", User(0, 0, (10,), "/root")),
    ("app", User(1000, 1001, (10, 2000), "/home/app")),
    ("1000", User(1000, 1001, (10, 2000), "/home/app")),
    ("app:extra", User(1000, 2000, (), "/home/app")),
    ("app:55", User(1000, 55, (), "/home/app")),
    ("4242", User(4242, 0, (), None)),
    ("4242:4343", User(4242, 4343, (), None)),
    ("nohome", User(1002, 1002, (), None)),
    ("daemon:wheel", User(2, 10, (), "/")),
])
def test_lookup_follows_docker_semantics(tmp_path, text, expected):
    assert lookup(rootfs(tmp_path), text) == expected


@pytest.mark.parametrize("text,message", [
    ("ghost", "unable to find user ghost: no matching entries in passwd file"),
    ("app:ghosts", "unable to find group ghosts: no matching entries in group file"),
    ("app:badgid", "unable to find group badgid: no matching entries in group file"),
    ("4294967295", "user id 4294967295 is out of range"),
    ("1:99999999999", "group id 99999999999 is out of range"),
])
def test_unknown_names_and_bad_ids_fail_with_dockers_message(tmp_path, text, message):
    with pytest.raises(ContainerError) as e:
        lookup(rootfs(tmp_path), text)
    assert str(e.value).startswith(message)


@pytest.mark.parametrize("where", ["no-root", "no-etc", "no-files"])
def test_numeric_ids_need_no_user_database(tmp_path, where):
    root = {"no-root": None, "no-etc": tmp_path, "no-files": rootfs(tmp_path, None, None)}[where]
    assert lookup(root, "42:43") == User(42, 43, (), None)
    with pytest.raises(ContainerError, match="unable to find user app"):
        lookup(root, "app")


def test_an_open_root_is_used_as_is(tmp_path):
    with Root(rootfs(tmp_path)) as root:
        assert lookup(root, "app").uid == 1000
        assert root.fd >= 0, "lookup must not close the caller's Root"


# ---------------------------------------------------------------- escapes through symlinks

HOST_PASSWD = "app:x:4242:4242::/host-secret-home:/bin/sh\n"


@pytest.fixture
def host_file(tmp_path) -> Path:
    """A file outside the rootfs that plays the host's /etc/passwd."""
    p = tmp_path / "host" / "passwd"
    p.parent.mkdir()
    p.write_text(HOST_PASSWD)
    return p


@pytest.mark.parametrize("link", ["absolute", "dotdot"])
def test_symlinked_passwd_never_reads_a_host_file(tmp_path, host_file, link):
    root = rootfs(tmp_path, passwd=None)
    target = str(host_file) if link == "absolute" else "../../../../../../../../host/passwd"
    os.symlink(target, root / "etc" / "passwd")
    with pytest.raises(ContainerError, match="unable to find user app"):
        lookup(root, "app")
    assert lookup(root, "4242").home is None


@pytest.mark.parametrize("link", ["absolute", "dotdot"])
def test_symlinked_passwd_resolves_inside_the_root_as_in_a_chroot(tmp_path, host_file, link):
    root = rootfs(tmp_path, passwd=None)
    target = str(host_file) if link == "absolute" else "../../../../../../../../host/passwd"
    inside = root / "host" / "passwd" if link == "dotdot" else root / str(host_file).lstrip("/")
    inside.parent.mkdir(parents=True)
    inside.write_text("app:x:7:8::/image-home:/bin/sh\n")
    os.symlink(target, root / "etc" / "passwd")
    assert lookup(root, "app") == User(7, 8, (10, 2000), "/image-home")


def test_etc_symlinked_to_a_host_directory_is_not_followed_out(tmp_path, host_file):
    root = tmp_path / "rootfs"
    root.mkdir()
    os.symlink(str(host_file.parent), root / "etc")
    with pytest.raises(ContainerError, match="unable to find user app"):
        lookup(root, "app")


def test_a_symlink_loop_is_an_empty_database(tmp_path):
    root = rootfs(tmp_path, passwd=None)
    os.symlink("passwd", root / "etc" / "passwd")
    assert lookup(root, "5") == User(5, 0, (), None)


# ---------------------------------------------------------------- files that are not files


def _lookup_in_child(root: Path, text: str) -> str:
    """Run lookup in a forked child killed by SIGALRM after a generous bound, so a lookup that
    blocks fails this test instead of hanging the suite; returns what the child reported."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        signal.alarm(20)
        try:
            out = repr(lookup(root, text))
        except ContainerError as e:
            out = f"error: {e}"
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), f"lookup blocked (child ended by signal {os.WTERMSIG(status)})"
    return out


@pytest.mark.parametrize("which", ["passwd", "group"])
def test_a_fifo_as_user_database_does_not_block(tmp_path, which):
    root = rootfs(tmp_path)
    (root / "etc" / which).unlink()
    os.mkfifo(root / "etc" / which)
    out = _lookup_in_child(root, "app")
    if which == "passwd":
        assert out == "error: unable to find user app: no matching entries in passwd file"
    else:
        assert out == repr(User(1000, 1001, (), "/home/app"))


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a character device needs root")
def test_a_device_node_as_passwd_is_not_read(tmp_path):
    root = rootfs(tmp_path, passwd=None)
    os.mknod(root / "etc" / "passwd", 0o600 | 0o020000, os.makedev(1, 5))   # /dev/zero
    assert _lookup_in_child(root, "app") == "error: unable to find user app: no matching entries in passwd file"


def test_a_huge_sparse_passwd_is_read_only_up_to_the_bound(tmp_path):
    root = rootfs(tmp_path)
    with open(root / "etc" / "passwd", "r+b") as f:
        f.truncate(1 << 40)          # 1 TiB of holes after the real entries
        f.seek((1 << 40) - 100)
        f.write(b"\nlate:x:9:9::/late:/bin/sh\n")
    assert lookup(root, "app").uid == 1000
    with pytest.raises(ContainerError, match="unable to find user late"):
        lookup(root, "late")


def test_an_entry_cut_by_the_bound_is_not_half_read(tmp_path):
    pad = "x" * 100 + "\n"
    body = pad * (DB_LIMIT // len(pad))
    cut = DB_LIMIT - len(body)          # the next line starts here and is cut by the bound
    root = rootfs(tmp_path, passwd=body + "cut:x:1234567:1:" + "h" * cut + ":/bin/sh\n")
    with pytest.raises(ContainerError, match="unable to find user cut"):
        lookup(root, "cut")


# ---------------------------------------------------------------- end to end: `run -u` (issue 14 item 6)

HOST_USER = "app:x:4242:4242::/host-secret-home:/bin/sh\n"


@pytest.fixture(scope="module")
def run_store(tmp_path_factory):
    """A store with busybox whose /etc/passwd is (a) an absolute symlink to a host file holding
    an `app` entry, (b) a relative ../../ link to the same host file, (c) a FIFO."""
    from tests.runhelpers import kernel_skip_reason

    reason = kernel_skip_reason()
    if reason:
        pytest.skip(reason)
    import gzip
    import json

    from fixtures.images import Layer, build_image, busybox_image
    from fixtures.tarbuild import fifo, symlink
    from tests.runhelpers import add_image

    base = tmp_path_factory.mktemp("imagetool-users")
    host_file = base / "host-passwd"
    host_file.write_text(HOST_USER)
    bb = busybox_image()
    tars = [gzip.decompress(bb.blobs[la["digest"]]) for la in json.loads(bb.manifest)["layers"]]
    root = base / "store"
    climb = "../" * (len(host_file.parts) + 2) + str(host_file).lstrip("/")
    for name, entry in (("abs-link", symlink("etc/passwd", str(host_file))),
                        ("dotdot-link", symlink("etc/passwd", climb)),
                        ("fifo", fifo("etc/passwd"))):
        img = build_image([Layer(t, compression="gzip") for t in tars] + [Layer([entry])],
                          config={"Cmd": ["sh"]})
        add_image(root, img, f"docker.io/library/{name}:latest")
    return root, host_file


RUNTIMES = ["imagetool", "runc"]


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("image", ["abs-link", "dotdot-link", "fifo"])
def test_run_u_never_takes_a_user_from_a_host_file_nor_hangs(run_store, runtime, image):
    """`run -u app` with the image's /etc/passwd pointing at a host file that has `app`, or being
    a FIFO: docker's error (exit 125), not the host's uid, no hang; -u 4242 runs as 4242 and gets
    no HOME from the host file."""
    from tests.runhelpers import Imagetool, have_tool

    if runtime != "imagetool" and not have_tool(runtime):
        pytest.skip(f"{runtime} is not installed")
    store, host_file = run_store
    it = Imagetool(store)
    before = host_file.stat()
    r = it("run", "--rm", "--runtime", runtime, "-u", "app", image, "id", timeout=120)
    assert r.returncode == 125, (r.stdout, r.stderr)
    assert "unable to find user app: no matching entries in passwd file" in r.stderr
    assert "4242" not in r.stdout
    if runtime == "runc" and image == "fifo":
        return   # runc 1.1's own init reads the container's /etc/passwd for every user (GetExecUserPath)
                 # and blocks on a FIFO there, as under docker: that wait is runc's, not imagetool's lookup
    # (no `id` here: it would read the FIFO itself and block, as it would under docker)
    r = it("run", "--rm", "--runtime", runtime, "-u", "4242", image, "sh", "-c",
           "grep ^Uid: /proc/self/status; echo HOME=$HOME", timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[1:] == ["4242"] * 4
    assert lines[1] in ("HOME=/", "HOME="), "docker gives HOME=/ to a user without an entry"
    after = host_file.stat()
    assert (after.st_mode, after.st_uid, after.st_size) == (before.st_mode, before.st_uid, before.st_size)
