"""The follow-ups of issue 14's attack pass (R1): each attack performed for real against
`imagetool run`, with the built-in runtime and runc, and shown blocked."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.runfixtures import host_unchanged, it, store_fixture  # noqa: F401 (fixtures)
from tests.runhelpers import kernel_skip_reason

_reason = kernel_skip_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

VICTIM = Path("/tmp/imagetool-followups-victim")    # a host directory an image's symlink names
TERMINAL_ATTACK = "\x1b]0;PWN\x07\x1b[2J"
NUL_FIELDS = (("Entrypoint", ["tr\x00ue"]), ("Cmd", ["true", "a\x00b"]), ("Env", ["PATH=/bin", "A=b\x00c"]),
              ("WorkingDir", "/w\x00x"), ("User", "no\x00body"))
BACKENDS = ["imagetool", pytest.param("runc", marks=pytest.mark.skipif(shutil.which("runc") is None,
                                                                        reason="needs runc"))]


def _images():
    from fixtures.tarbuild import symlink

    return {
        # /dev, /proc or /sys a symlink to a host directory: runc 1.1 makes its /dev links there
        "devvictim": ([symlink("dev", str(VICTIM))], None),
        "procvictim": ([symlink("proc", str(VICTIM))], None),
        "sysvictim": ([symlink("sys", str(VICTIM))], None),
        # an image whose command would retitle and clear the terminal of whoever displays it
        "ctlcmd": ([], {"Entrypoint": ["echo"], "Cmd": [TERMINAL_ATTACK, "x"], "Env": ["PATH=/bin"]}),
        # a NUL byte in each string field of the config
        **{f"nul-{field.lower()}": ([], {"Cmd": ["true"], "Env": ["PATH=/bin"], field: value})
           for field, value in NUL_FIELDS},
    }


store = store_fixture("imagetool-followups", _images)


def _runtime(backend: str) -> list[str]:
    return [] if backend == "imagetool" else ["--runtime", backend]


@pytest.fixture
def victim():
    shutil.rmtree(VICTIM, ignore_errors=True)
    VICTIM.mkdir()
    yield VICTIM
    shutil.rmtree(VICTIM, ignore_errors=True)


def _one_error_line(r, text: str) -> None:
    assert r.returncode == 125, r.stderr
    assert r.stderr.startswith("imagetool: error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert text in r.stderr


# ---------------------------------------------------------------- 1: /dev, /proc, /sys symlinks under runc


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("image", ["devvictim", "procvictim", "sysvictim"])
def test_an_image_symlink_at_dev_proc_or_sys_writes_nothing_into_the_host_directory(it, victim, backend, image):
    r = it("run", "--rm", *_runtime(backend), image, "true")
    _one_error_line(r, "must be mounted on ordinary directory")
    assert os.listdir(victim) == []
    assert r.stdout == ""


# ---------------------------------------------------------------- 2: the container's stdin


@pytest.mark.parametrize("backend", BACKENDS)
def test_container_root_cannot_chmod_the_hosts_dev_null_through_its_stdin(it, backend):
    """Without -i fd 0 is an empty pipe: not the host's /dev/null node (which container root
    could chmod 000), and reading it gives EOF at once."""
    before = os.stat("/dev/null")
    attack = 'stat -L -c "%d %i" /proc/self/fd/0; chmod 600 /proc/self/fd/0; cat; echo read-eof'
    r = it("run", "--rm", *_runtime(backend), "busybox", "sh", "-c", attack)
    after = os.stat("/dev/null")
    assert r.returncode == 0, r.stderr
    dev, ino = r.stdout.splitlines()[0].split()
    assert (int(dev), int(ino)) != (before.st_dev, before.st_ino)
    assert r.stdout.splitlines()[-1] == "read-eof"
    assert (after.st_mode, after.st_ctime_ns) == (before.st_mode, before.st_ctime_ns)


def test_a_device_over_dev_null_is_refused_rather_than_masking_with_the_hosts_node(it):
    r = it("run", "--rm", "--device", "/dev/tty:/dev/null", "busybox", "true")
    _one_error_line(r, "the container's /dev/null is not the null device")


# ---------------------------------------------------------------- 3: read-only volumes all the way down


@pytest.fixture
def source_with_submount(tmp_path):
    """A volume source with a tmpfs mounted below it (unmounted after the test)."""
    import subprocess

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "followups-sub", str(src / "sub")], check=True)
    try:
        yield src
    finally:
        subprocess.run(["umount", "-l", str(src / "sub")], check=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_submount_of_a_read_only_volume_is_read_only_too(it, source_with_submount, backend):
    attack = "touch /vol/top; touch /vol/sub/planted; ls /vol/sub; echo done"
    r = it("run", "--rm", *_runtime(backend), "-v", f"{source_with_submount}:/vol:ro", "busybox", "sh", "-c", attack)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "done\n"
    assert r.stderr.count("Read-only file system") == 2, r.stderr
    assert not (source_with_submount / "top").exists()
    assert list((source_with_submount / "sub").iterdir()) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_read_write_volume_still_writes_through_to_its_submount(it, source_with_submount, backend):
    r = it("run", "--rm", *_runtime(backend), "-v", f"{source_with_submount}:/vol", "busybox", "sh", "-c",
           "echo v > /vol/sub/written")
    assert r.returncode == 0, r.stderr
    assert (source_with_submount / "sub" / "written").read_text() == "v\n"


# ---------------------------------------------------------------- 4: umask


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_container_does_not_inherit_imagetools_umask(it, backend):
    """imagetool run under umask 0: the container has the spec's 0022 (runc's default), so a file
    it creates is not world-writable."""
    r = it("run", "--rm", *_runtime(backend), "busybox", "sh", "-c", "umask; touch /tmp/f; stat -c %a /tmp/f",
           umask=0)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0022", "644"]


# ---------------------------------------------------------------- 5: image text on the terminal


def _inert(text: str) -> bool:
    return not any(c in text for c in "\x1b\x07\x9b")


def test_ps_shows_an_image_command_without_its_escape_sequences(it):
    r = it("run", "--name", "followups-ctl", "ctlcmd")
    try:
        assert r.returncode == 0, r.stderr
        ps = it("ps", "-a")
        assert ps.returncode == 0, ps.stderr
        row = next(line for line in ps.stdout.splitlines() if "followups-ctl" in line)
        assert _inert(ps.stdout) and "echo ?]0;PWN??[2J" in row
    finally:
        it("rm", "-f", "followups-ctl")


def test_explain_shows_an_image_command_without_its_escape_sequences(it):
    r = it("run", "--rm", "--explain", "ctlcmd")
    assert r.returncode == 0, r.stderr
    assert "exec" in r.stderr and _inert(r.stderr)


def test_the_script_writes_escape_sequences_as_printf_escapes(it, tmp_path):
    r = it("run", "--script", "ctlcmd")
    assert r.returncode == 0, r.stderr
    assert _inert(r.stdout)
    assert "\"$(printf '\\033')\"']0;PWN'\"$(printf '\\007\\033')\"'[2J'" in r.stdout


@pytest.mark.parametrize("value", [TERMINAL_ATTACK, "a\x1bb", "plain", "two words", "new\nline", "\x9b31m",
                                   "é\x7f", "it's", ""])
def test_a_quoted_word_is_inert_and_sh_reads_back_the_exact_value(value):
    import subprocess

    from imagetool.runtime import shell

    word = shell.q(value)
    assert _inert(word) and "\x7f" not in word
    out = subprocess.run(["sh", "-c", f"printf %s {word}"], capture_output=True, text=True, check=True).stdout
    assert out == value


# ---------------------------------------------------------------- 6: NUL bytes in the image config


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("field", [f for f, _ in NUL_FIELDS])
def test_a_nul_byte_in_the_image_config_is_one_clear_error_and_no_container(it, backend, field):
    before = _container_ids(it)
    r = it("run", *_runtime(backend), f"nul-{field.lower()}")
    assert r.returncode == 125, r.stderr
    first = r.stderr.splitlines()[0]
    assert first.startswith("imagetool: error: ") and f"the image config's {field} holds a NUL byte" in first
    assert "Traceback" not in r.stderr and "ValueError" not in r.stderr
    assert _container_ids(it) == before


def _container_ids(it) -> set[str]:
    import json

    return {c["id"] for c in json.loads(it("ps", "-a", "--format", "json").stdout)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("command,code", [(["/nonexistent"], 127), (["nosuchcommand"], 127), (["/etc"], 126),
                                          (["sh", "-c", "exit 1"], 1)], ids=["no-path", "not-in-path", "a-directory",
                                                                             "the-command-exits-1"])
def test_a_command_that_cannot_be_executed_exits_127_or_126_in_both_backends(it, backend, command, code):
    r = it("run", "--rm", *_runtime(backend), "busybox", *command)
    assert r.returncode == code, r.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_mount_points_the_runtime_creates_are_0755_under_a_strict_umask(it, tmp_path, backend):
    """Under umask 077 the directories made for a volume's destination are still 0755 (else a
    non-root user in the container could not reach the volume)."""
    r = it("run", "--rm", *_runtime(backend), "-v", f"{tmp_path}:/a/b/c", "busybox", "stat", "-c", "%a", "/a", "/a/b",
           umask=0o077)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["755", "755"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_non_root_user_can_start_under_a_strict_umask(it, backend):
    """Under umask 077 the container's `/` (the overlay's upper dir) is still 0755: a --user 65534
    container starts and sees `/` as 755 (it was 0700: every non-root container failed)."""
    r = it("run", "--rm", *_runtime(backend), "--user", "65534", "busybox", "stat", "-c", "%a", "/", umask=0o077)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["755"]


# ---------------------------------------------------------------- the same attacks on a cgroup-v2 host

V2_GUEST = r"""
set -u
export PYTHONPATH=/host/site:/host/src IMAGETOOL_FIXTURE_CACHE=/var/tmp/fx
cd /host/src
python3 -c "
from pathlib import Path
from tests.runhelpers import busybox_store
from fixtures.tarbuild import symlink
busybox_store(Path('/var/tmp/st'), {'devvictim': ([symlink('dev', '/tmp/victim')], None)})" || exit 90
echo STARTED
it() { python3 -m imagetool --store /var/tmp/st "$@"; }
host=$(stat -L -c %d:%i /dev/null)
for rt in imagetool runc; do
  args=""; [ $rt = runc ] && args="--runtime runc"
  mkdir -p /tmp/victim
  it run --rm $args devvictim true 2>/tmp/dv.err; echo "RESULT devlink_$rt $?_$(ls -A /tmp/victim | wc -l)"
  grep -q "must be mounted on ordinary directory" /tmp/dv.err; echo "RESULT devlink_msg_$rt $?"
  ino=$(it run --rm $args busybox sh -c 'stat -L -c %d:%i /proc/self/fd/0')
  [ -n "$ino" ] && [ "$ino" != "$host" ]; echo "RESULT stdin_$rt $?"
  mkdir -p /tmp/src_$rt/sub; mount -t tmpfs t /tmp/src_$rt/sub
  it run --rm $args -v /tmp/src_$rt:/vol:ro busybox sh -c 'touch /vol/sub/x' 2>/dev/null; echo "RESULT rro_$rt $?"
  umount /tmp/src_$rt/sub
  echo "RESULT umask_$rt $(umask 0; it run --rm $args busybox sh -c umask)"
  it run --rm $args busybox /nonexistent 2>/dev/null; echo "RESULT enoent_$rt $?"
done
"""


def test_the_followups_hold_on_a_cgroup_v2_host(tmp_path):
    """One boot of the cgroup-v2-only VM (kernel 6.1): the /dev symlink, stdin, read-only
    submount, umask and exec-failure checks above, with the built-in runtime and runc."""
    from tests import v2vm

    out = v2vm.boot(tmp_path, V2_GUEST, started_marker="STARTED")
    results = dict(line.split()[1:3] for line in out.splitlines() if line.startswith("RESULT ") and len(line.split()) > 2)
    for rt in ("imagetool", "runc"):
        assert results.get(f"devlink_{rt}") == "125_0", out
        assert results.get(f"devlink_msg_{rt}") == "0", out
        assert results.get(f"stdin_{rt}") == "0", out
        assert results.get(f"rro_{rt}") not in (None, "0"), out
        assert results.get(f"umask_{rt}") == "0022", out
        assert results.get(f"enoent_{rt}") == "127", out
