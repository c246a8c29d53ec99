"""The fast path (fastcli.py) and the typer app (cli.py) read one option table and cannot disagree:
every option of every command, docker's short forms of `run`, and the argv both refuse (with the
same exit code: 125 under run, 2 otherwise), parsed in-process by both and compared."""

from __future__ import annotations

import dataclasses
import re

import pytest

from imagetool import cli, fastcli, options
from imagetool.containers import RunOptions

try:  # typer >= 0.2x vendors click as typer._click
    from typer._click.exceptions import ClickException
except ImportError:
    from click.exceptions import ClickException

SAMPLE = {str: "v1", int: "5", float: "1.5"}


def via_typer(argv: list[str]):
    """(store, debug, command, values) as the typer app parses argv, or the usage error's exit code."""
    seen = []
    app = cli.build_app(call=lambda command, values: seen.append((command.name, values)))
    cli.G.store, cli.G.debug = None, False
    try:
        app(args=argv, standalone_mode=False, prog_name="imagetool")
    except ClickException:
        return 125 if fastcli.command_of(argv) == "run" else 2
    assert len(seen) == 1, seen
    return cli.G.store, cli.G.debug, seen[0][0], seen[0][1]


def via_fast(argv: list[str]):
    parsed = fastcli.parse(argv)
    return None if parsed is None else (parsed[0], parsed[1], parsed[2].name, parsed[3])


def positionals(command: options.Command) -> list[str]:
    """One value for each required argument of `command`."""
    return [f"{p.dest}-arg" for p in command.params if p.is_argument and p.required]


def every_option_argv():
    """For each option of each command, every spelling of it: long, `--long=V`, short, `-sV`, and
    twice for a repeatable one; the required arguments after the options."""
    for command in options.COMMANDS:
        for p in command.params:
            if p.is_argument:
                continue
            spellings = []
            for flag in p.flags:
                if p.type is bool:
                    spellings.append([flag])
                    continue
                value = SAMPLE[p.type]
                spellings.append([flag, value])
                spellings.append([f"{flag}={value}"] if flag.startswith("--") else [f"{flag}{value}"])
                if p.multiple:
                    spellings.append([flag, value, flag, "w2" if p.type is str else value])
            for spelling in spellings:
                yield pytest.param(command, p, [command.name, *spelling, *positionals(command)],
                                   id=" ".join([command.name, *spelling]))


@pytest.mark.parametrize("command, param, argv", list(every_option_argv()))
def test_every_option_parses_the_same_in_both_and_takes_effect(command, param, argv):
    fast, slow = via_fast(argv), via_typer(argv)
    assert fast is not None, f"the fast path passes {argv} on"
    assert fast == slow
    assert fast[3][param.dest] != options.defaults(command)[param.dest], "the option changed nothing"


@pytest.mark.parametrize("command", options.COMMANDS, ids=lambda c: c.name)
def test_every_command_with_only_its_required_arguments_gets_the_defaults(command):
    argv = [command.name, *positionals(command)]
    assert via_fast(argv) == via_typer(argv)
    assert via_fast(["--store", "/s", "--debug", *argv])[:2] == ("/s", True) == via_typer(
        ["--store=/s", "--debug", *argv])[:2]


DOCKER_FORMS = [  # argv after `run`, and the RunOptions fields it must set
    (["-it", "busybox"], {"interactive": True, "tty": True}),
    (["-ti", "--rm", "busybox", "sh"], {"interactive": True, "tty": True, "rm": True, "command": ["sh"]}),
    (["-e", "A=1", "-eB=2", "--env=C=3", "busybox"], {"env": ["A=1", "B=2", "C=3"]}),
    (["-m7m", "busybox"], {"memory": "7m"}),
    (["-m", "7m", "--memory-swap", "-1", "busybox"], {"memory": "7m", "memory_swap": "-1"}),
    (["-v", "/a:/b", "-v/c:/d:ro", "busybox"], {"volumes": ["/a:/b", "/c:/d:ro"]}),
    (["-w", "/tmp", "-u", "1000:1000", "-h", "box", "busybox"], {"workdir": "/tmp", "user": "1000:1000",
                                                                  "hostname": "box"}),
    (["-itw/x", "busybox"], {"interactive": True, "tty": True, "workdir": "/x"}),
    (["--pids-limit", "-1", "busybox"], {"pids_limit": -1}),
    (["--pids-limit=-1", "busybox"], {"pids_limit": -1}),
    (["--cpus", ".5", "busybox"], {"cpus": 0.5}),
    (["--name", "a", "--name", "b", "busybox"], {"name": "b"}),  # the last value wins
    (["-e", "--rm", "busybox"], {"env": ["--rm"]}),  # an option's value may start with a dash
    (["--", "busybox", "ls"], {"command": ["ls"]}),
    (["busybox", "ls", "-la", "--rm", "--", "-e"], {"command": ["ls", "-la", "--rm", "--", "-e"]}),
    (["busybox", "--help"], {"command": ["--help"]}),  # after IMAGE everything is the command's
    (["--cap-add", "NET_ADMIN", "--cap-drop=ALL", "--privileged", "--security-opt", "seccomp=unconfined",
      "--security-opt", "no-new-privileges", "busybox"],
     {"cap_add": ["NET_ADMIN"], "cap_drop": ["ALL"], "privileged": True,
      "security_opt": ["seccomp=unconfined", "no-new-privileges"]}),
    (["--device", "/dev/fuse", "--tmpfs", "/run:size=1m", "--shm-size", "64m", "--ulimit", "nofile=10:20",
      "--sysctl", "net.ipv4.ip_forward=1", "--group-add", "audio", "--explain", "--script", "busybox"],
     {"devices": ["/dev/fuse"], "tmpfs": ["/run:size=1m"], "shm_size": "64m", "ulimits": ["nofile=10:20"],
      "sysctls": ["net.ipv4.ip_forward=1"], "group_add": ["audio"], "explain": True, "script": True}),
]


@pytest.mark.parametrize("argv, expected", DOCKER_FORMS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_docker_short_forms_give_equal_run_options(argv, expected):
    fast, slow = via_fast(["run", *argv]), via_typer(["run", *argv])
    assert fast is not None and fast == slow
    got = RunOptions(**fast[3])
    assert got == RunOptions(**slow[3])
    want = dataclasses.replace(RunOptions(image="busybox"), **expected)
    assert got == want


REFUSED = [
    ["run"], ["run", "--bogus", "busybox"], ["run", "--cpus", "half", "busybox"],
    ["run", "--pids-limit", "1.5", "busybox"], ["run", "--rm=yes", "busybox"], ["run", "-x", "busybox"],
    ["run", "-itx", "busybox"], ["run", "--name"], ["run", "-e"],
    ["pull"], ["pull", "a", "b"], ["pull", "--max-concurrent-downloads", "0", "x"],
    ["pull", "--max-concurrent-downloads", "many", "x"], ["pull", "--help"],
    ["tag", "a"], ["inspect"], ["rmi"], ["rm"], ["unpack", "a"], ["unpack", "--bogus", "a", "b"],
    ["images", "extra"], ["ps", "--all=1"], ["save", "-o"], ["login", "a", "b"], ["prune", "--force"],
    ["nosuch"], ["--bogus", "images"], ["--store"], [], ["--version"], ["images", "--store", "/s"],
]


@pytest.mark.parametrize("argv", REFUSED, ids=" ".join)
def test_what_the_fast_path_refuses_the_typer_app_refuses_or_explains(argv):
    """The fast path passes these on; typer then gives its usage error (2, or 125 under run) or
    handles them itself (help, version, a bare `imagetool`)."""
    assert via_fast(argv) is None
    if argv in ([], ["--version"], ["pull", "--help"]):
        return
    assert via_typer(argv) == (125 if argv[:1] == ["run"] else 2)


@pytest.mark.parametrize("argv, code", [(["run", "--bogus", "busybox"], 125), (["run"], 125),
                                        (["tag", "a"], 2), (["nosuch"], 2)])
def test_usage_errors_through_the_whole_entry(argv, code, capsys):
    from imagetool.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == code
    err = capsys.readouterr().err
    assert "Usage: imagetool" in err and "Traceback" not in err


def test_the_run_table_is_exactly_run_options_fields():
    dests = {p.dest for p in options.BY_NAME["run"].params}
    assert dests == {f.name for f in dataclasses.fields(RunOptions)}


def test_every_command_has_a_body_and_every_parameter_a_help_line():
    from imagetool.commands import BODIES

    assert set(BODIES) == set(options.BY_NAME)
    missing = [f"{c.name} {p.dest}" for c in (options.GLOBAL, *options.COMMANDS) for p in c.params if not p.help]
    assert not missing


@pytest.mark.parametrize("argv", [["--help"], *([c.name, "--help"] for c in options.COMMANDS)], ids=" ".join)
def test_help_shows_every_option_without_stray_markup(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "\\[" not in out and not re.search(r"\[/?(bold|dim|red|green|yellow|cyan)\b", out), out
    command = options.BY_NAME.get(argv[0], options.GLOBAL)
    for p in command.params:
        if not p.hidden:
            assert (p.flags[-1] if p.flags else p.metavar) in out, p
    assert re.search(r"--help\s+Show this message and exit\.", out)
