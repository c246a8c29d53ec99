"""The typer-free entry: parse argv with the table in options.py, run the command's body, exit.

Loading typer costs more than listing images, starting a container or unpacking a small image, so
`imagetool.__main__` first offers argv to `main()` here. It serves every command of options.py,
parsing as click does (options before and between positionals except under `run`, where options
end at IMAGE; `--x V`, `--x=V`, `-xV`, clustered short flags such as `-it`; `--` ends the options;
a repeated single-valued option keeps its last value) and converting with the same Python types.
Whatever it does not fully accept — `--help`, `--version`, an unknown option or command, a
missing or extra argument, a value that does not convert — it returns, and the typer app built
from the same table (cli.py) takes over and gives the usual usage error. tests/test_cli_parity.py
holds the two to the same result for every option.
"""

from __future__ import annotations

import sys

from imagetool.options import BY_NAME, GLOBAL, Command, Param, defaults


def main(argv: list[str]) -> None:
    """Serve argv and exit, or return when the full CLI must handle it."""
    parsed = parse(argv)
    if parsed is None:
        return
    store_arg, debug, command, values = parsed
    from imagetool.commands import flush_stdout, serve

    _exit(flush_stdout(serve(command.name, values, store_arg=store_arg, debug=debug)))


def parse(argv: list[str]) -> tuple[str | None, bool, Command, dict] | None:
    """(store, debug, command, the body's keyword arguments) for argv, or None for the full CLI."""
    parsed = _global_options(argv)
    if parsed is None:
        return None
    store, debug, name, rest = parsed
    command = BY_NAME.get(name)
    if command is None:
        return None
    values = parse_command(command, rest)
    if values is None:
        return None
    return store, debug, command, values


def _global_options(argv: list[str]):
    """(store, debug, command word, argv after it), or None when the global options do not parse."""
    scanned = _scan(GLOBAL, argv)
    if scanned is None:
        return None
    values, positional = scanned
    if not positional:
        return None
    return values["store"], values["debug"], positional[0], positional[1:]


def command_of(argv: list[str]) -> str | None:
    """The command word of argv (after the global options), when they parse."""
    parsed = _global_options(argv)
    return parsed[2] if parsed else None


def parse_command(command: Command, argv: list[str]) -> dict | None:
    """`command`'s keyword arguments from the argv after its name, or None when it does not parse."""
    scanned = _scan(command, argv)
    if scanned is None:
        return None
    values, positional = scanned
    for p in command.params:
        if not p.is_argument:
            continue
        if p.multiple:
            values[p.dest], positional = positional, []
            if p.required and not values[p.dest]:
                return None
        elif positional:
            values[p.dest], positional = positional[0], positional[1:]
        elif p.required:
            return None
    return None if positional else values


def _scan(command: Command, argv: list[str]) -> tuple[dict, list[str]] | None:
    """(option values with defaults filled in, the positionals in order), or None on anything that
    is not a well-formed, known option with a value of its type."""
    flags = {f: p for p in command.params for f in p.flags}
    values = defaults(command)
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            positional += argv[i + 1:]
            break
        if arg.startswith("--"):
            name, eq, inline = arg.partition("=")
            p = flags.get(name)
            if p is None or (p.type is bool and eq):
                return None
            i += 1
            if p.type is bool:
                values[p.dest] = True
                continue
            if not eq:
                if i >= len(argv):
                    return None
                inline, i = argv[i], i + 1
            if not _store(values, p, inline):
                return None
        elif arg.startswith("-") and arg != "-":
            i += 1
            for j in range(1, len(arg)):  # a cluster: flags, then at most one option taking a value
                p = flags.get("-" + arg[j])
                if p is None:
                    return None
                if p.type is bool:
                    values[p.dest] = True
                    continue
                if j + 1 < len(arg):
                    value = arg[j + 1:]
                elif i < len(argv):
                    value, i = argv[i], i + 1
                else:
                    return None
                if not _store(values, p, value):
                    return None
                break
        elif command.interspersed:
            positional.append(arg)
            i += 1
        else:
            positional += argv[i:]
            break
    return values, positional


def _store(values: dict, p: Param, text: str) -> bool:
    """Convert `text` to p's type into values; False when it does not convert or is out of range."""
    try:
        value = p.type(text)
    except ValueError:
        return False
    if p.minimum is not None and value < p.minimum:
        return False
    if p.multiple:
        values[p.dest].append(value)
    else:
        values[p.dest] = value
    return True


def _exit(rc: int) -> None:
    """Exit with `rc`, skipping the interpreter's module and object teardown (~12 ms after `run`)
    when no other thread is alive and no profiler or tracer is attached (cProfile writes its
    output at interpreter exit): the atexit callbacks still run, then stdout/stderr are flushed
    and the process ends with os._exit. Otherwise a normal sys.exit. (No `atexit` loaded: nothing
    was registered with it, nothing to run.)"""
    import os

    from imagetool.commands import flush_stdout

    threading = sys.modules.get("threading")   # not loaded: no thread was started through it
    alone = threading is None or threading.active_count() == 1
    if alone and sys.getprofile() is None and sys.gettrace() is None:
        atexit = sys.modules.get("atexit")
        if atexit is not None:
            atexit._run_exitfuncs()
        rc = flush_stdout(rc)
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


# ---------------------------------------------------------------- older entry point


def parse_pull(argv: list[str]) -> dict | None:
    """`pull`'s keyword arguments (ref, platform, quiet, max_concurrent, insecure), or None
    (tests/test_pull.py's check of the fast path predates parse())."""
    return parse_command(BY_NAME["pull"], argv)
