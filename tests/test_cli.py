"""The command line's own promises: every command listed, version, usage errors and their exit
codes (2, or 125 under `run` like docker), one error line without a traceback unless --debug."""

import re

import pytest

COMMANDS = ("images", "inspect", "tag", "rmi", "prune", "pull", "push", "copy", "login", "logout", "unpack", "run",
            "ps", "rm", "commit", "history", "load", "save", "import", "export")


def test_help_lists_every_command(cli):
    r = cli("--help")
    assert r.returncode == 0, r.stderr
    listed = set(re.findall(r"^\s{2}(\w+)\s", r.stdout, re.M))
    assert set(COMMANDS) <= listed, set(COMMANDS) - listed


def test_version(cli):
    from imagetool import __version__

    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"imagetool {__version__}"


@pytest.mark.parametrize("args, missing", [(("tag",), "SRC"), (("tag", "a"), "DST"), (("inspect",), "REF"),
                                           (("unpack", "busybox"), "DIR")])
def test_missing_argument_is_a_usage_error(cli, args, missing):
    r = cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert f"Missing argument '{missing}'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args", [("run", "--bogus", "busybox"), ("run",), ("run", "--cpus", "half", "busybox")])
def test_run_usage_errors_exit_125_like_docker(cli, args):
    r = cli(*args)
    assert r.returncode == 125, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr


def test_errors_are_one_line_and_debug_shows_the_traceback(cli):
    r = cli("inspect", "Not/Valid")
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert lines[0].startswith("imagetool: error: invalid reference") and "Traceback" not in r.stderr
    r = cli("--debug", "inspect", "Not/Valid")
    assert r.returncode != 0 and "Traceback" in r.stderr and "InvalidReference" in r.stderr


def test_error_lines_carry_no_terminal_escapes(cli):
    r = cli("inspect", "bad\x1b[31mname")
    assert r.returncode == 1
    assert "\x1b" not in r.stderr and r.stderr.startswith("imagetool: error: ")


def test_fast_path_exit_lets_a_profiler_write_its_output(cli, tmp_path):
    """The fast path ends the process with os._exit, except under a profiler (benchmarks/run
    profiles imagetool with `python -m cProfile -o FILE -m imagetool …`)."""
    import subprocess
    import sys

    out = tmp_path / "profile.out"
    argv = cli.argv("pull", "Not/Valid")
    assert argv[1:3] == ["-m", "imagetool"]
    r = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out), *argv[1:]],
                       env=cli.env, capture_output=True, text=True, timeout=60)
    assert "invalid reference" in r.stderr
    assert out.is_file() and out.stat().st_size > 0


def test_unpack_takes_the_fast_path_and_its_odd_forms_the_full_cli(cli, busybox, tmp_path):
    """`unpack REF DIR` runs without typer (its import is half of a small unpack) and unpacks;
    forms the fast parser does not take still get typer's usage error."""
    import subprocess

    from fixtures.images import busybox_archive

    archive = tmp_path / "bb.tar"
    archive.write_bytes(busybox_archive())
    assert cli("load", "-i", str(archive)).returncode == 0
    dest = tmp_path / "rootfs"
    argv = cli.argv("unpack", "busybox", str(dest))
    r = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], env=cli.env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "imagetool.unpack" in imported and not {m for m in imported if m.split(".")[0] in ("typer", "click")}
    assert (dest / "bin" / "busybox").is_file()
    r = cli("unpack", "--bogus", "busybox", str(tmp_path / "x"))
    assert r.returncode == 2 and "No such option" in r.stderr


@pytest.mark.parametrize("args, rc", [(("images",), 0), (("images", "--format", "json"), 0), (("ps", "-a"), 0),
                                      (("inspect", "busybox"), 1), (("rm", "nosuch"), 1)])
def test_everyday_commands_start_without_typer(cli, args, rc, capsys):
    """`images`, `ps -a` and the other commands are served by the fast path: typer and click (and
    rich) are never imported; their output and errors are the same as through the typer app."""
    import subprocess

    argv = cli.argv(*args)
    r = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], env=cli.env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == rc, r.stderr
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "imagetool.commands" in imported
    assert not {m for m in imported if m.split(".")[0] in ("typer", "click", "rich", "requests", "urllib3")}
    from imagetool import cli as full

    with pytest.raises(SystemExit) as e:
        full.main(["--store", str(cli.store_dir), *args])
    out = capsys.readouterr()
    assert e.value.code == rc
    assert out.out == r.stdout
    assert out.err.splitlines() == [ln for ln in r.stderr.splitlines() if not ln.startswith("import time:")]


def test_run_of_a_present_image_never_loads_the_http_stack(cli, busybox):
    """`run --rm` of an image already in the store touches no network: requests and urllib3 (~130 ms
    of imports) are never loaded; a pull of the same name would load them (test_registry_requests)."""
    import subprocess

    from tests.runhelpers import add_image, kernel_skip_reason

    reason = kernel_skip_reason()
    if reason:
        pytest.skip(reason)
    add_image(cli.store_dir, busybox, "docker.io/library/busybox:latest")
    argv = cli.argv("run", "--rm", "busybox", "true")
    r = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], env=cli.env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert any(m.startswith("imagetool.runtime") for m in imported)  # it did run a container
    assert not {m for m in imported if m.split(".")[0] in ("requests", "urllib3")}


@pytest.mark.parametrize("args", [("images",), ("images", "--format", "json"), ("ps", "-a")])
def test_a_reader_that_leaves_early_ends_the_command_quietly(cli, args):
    """`imagetool images | head -1`: stdout's reader has gone when imagetool writes; the command ends
    like one killed by SIGPIPE (141), with no error line or traceback."""
    import subprocess

    p = subprocess.Popen(cli.argv(*args), env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # long before the interpreter has started
    _, err = p.communicate(timeout=60)
    assert p.returncode == 141, err
    assert err == b""


def test_the_store_comes_from_the_option_else_the_environment(cli, tmp_path):
    """--store wins over $IMAGETOOL_STORE, which wins over the default; `--help` says so."""
    import subprocess

    env_store, opt_store = tmp_path / "from-env", tmp_path / "from-option"
    argv = cli.argv("images")[:3]  # python -m imagetool, without the fixture's --store
    env = {**cli.env, "IMAGETOOL_STORE": str(env_store)}
    assert subprocess.run([*argv, "images"], env=env, capture_output=True, timeout=60).returncode == 0
    assert env_store.is_dir() and not opt_store.exists()
    assert subprocess.run([*argv, "--store", str(opt_store), "images"], env=env, capture_output=True,
                          timeout=60).returncode == 0
    assert opt_store.is_dir()
    assert "$IMAGETOOL_STORE" in cli("--help").stdout


@pytest.mark.parametrize("command", ["save", "export"])
def test_an_archive_to_a_reader_that_left_ends_quietly_too(cli, tmp_path, command):
    """`imagetool save busybox | false`: the write to the closed pipe fails inside the service, which
    is told apart from a broken connection elsewhere by polling stdout (POLLERR: no reader)."""
    import subprocess

    from fixtures.images import busybox_archive

    archive = tmp_path / "bb.tar"
    archive.write_bytes(busybox_archive())
    cli("load", "-i", str(archive), check=True)
    p = subprocess.Popen(cli.argv(command, "busybox"), env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    _, err = p.communicate(timeout=120)
    assert (p.returncode, err) == (141, b"")
