"""The typer-free entry for the hot commands: the common forms of `run`, `pull` and `unpack`.

Loading typer costs more than starting a container (or finding an image up to date, or
unpacking a small image), so `imagetool.__main__` first offers argv to `main()` here. It handles
`[--store DIR] [--debug] run [OPTIONS] IMAGE [COMMAND…]`,
`[--store DIR] [--debug] pull [--platform P] [-q] [--max-concurrent-downloads N] [--insecure] REF`
and `[--store DIR] [--debug] unpack [--bundle] REF DIR`
exactly as the typer commands in cli.py do (same output, error lines and exit codes) and exits the
process; for anything else (help, another command, an option it does not know, a malformed value)
it returns and the full CLI takes over, giving the usual messages.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    """Serve argv and exit, or return when the full CLI must handle it."""
    parsed = _global_options(argv)
    if parsed is None:
        return
    store_arg, debug, command, rest = parsed
    if command == "run":
        opts = parse_run(rest)
        if opts is None:
            return
        action = lambda st: _run(st, opts)  # noqa: E731
    elif command == "pull":
        args = parse_pull(rest)
        if args is None:
            return
        action = lambda st: _pull(st, args)  # noqa: E731
    elif command == "unpack":
        unpack_args = parse_unpack(rest)
        if unpack_args is None:
            return
        action = lambda st: _unpack(st, **unpack_args)  # noqa: E731
    else:
        return
    try:
        from store import Store

        from imagetool import settings

        rc = action(Store.open(settings.store_root(store_arg)))
    except KeyboardInterrupt:
        rc = 130
    except Exception as e:
        if debug:
            raise
        from imagetool.errors import report

        rc = report(e, in_run=command == "run")
    sys.stdout.flush()
    _exit(rc)


def _exit(rc: int) -> None:
    """Exit with `rc`, skipping the interpreter's module and object teardown (~12 ms after `run`)
    when no other thread is alive and no profiler or tracer is attached (cProfile writes its
    output at interpreter exit): the atexit callbacks still run, then stdout/stderr are flushed
    and the process ends with os._exit. Otherwise a normal sys.exit."""
    import atexit
    import os
    import threading

    if threading.active_count() == 1 and sys.getprofile() is None and sys.gettrace() is None:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


def _global_options(argv: list[str]):
    """(store, debug, command, argv after the command), or None for unknown global options."""
    store, debug, i = None, False, 0
    while i < len(argv) and argv[i].startswith("-"):
        arg = argv[i]
        if arg == "--debug":
            debug, i = True, i + 1
        elif arg == "--store" or arg.startswith("--store="):
            store, i = _value(argv, i, "--store")
            if not store:
                return None
        else:
            return None
    if i >= len(argv):
        return None
    return store, debug, argv[i], argv[i + 1:]


def command_of(argv: list[str]) -> str | None:
    """The command word of argv (after the global options), when they parse."""
    parsed = _global_options(argv)
    return parsed[2] if parsed else None


def _value(argv: list[str], i: int, name: str) -> tuple[str | None, int]:
    """The value of option `name` at argv[i] ("--x V" or "--x=V") and the next index."""
    arg = argv[i]
    if arg.startswith(name + "="):
        return arg[len(name) + 1:], i + 1
    if i + 1 < len(argv):
        return argv[i + 1], i + 2
    return None, i + 1


# ---------------------------------------------------------------- run

_FLAGS = {"--rm": "rm", "--read-only": "read_only", "-i": "interactive", "--interactive": "interactive",
          "-t": "tty", "--tty": "tty"}
_VALUES = {"--name": "name", "-e": "env", "--env": "env", "--env-file": "env_files", "-w": "workdir",
           "--workdir": "workdir", "-u": "user", "--user": "user", "--entrypoint": "entrypoint",
           "-h": "hostname", "--hostname": "hostname", "-v": "volume", "--volume": "volumes",
           "-m": "memory", "--memory": "memory", "--memory-swap": "memory_swap", "--cpus": "cpus",
           "--pids-limit": "pids_limit", "--network": "network", "--runtime": "runtime",
           "--platform": "platform", "--rootfs": "rootfs_mode"}
_LISTS = {"env", "env_files", "volume", "volumes"}




def parse_run(argv: list[str]):
    """RunOptions for `run`'s arguments (after the word `run`), or None for the full CLI."""
    from imagetool.containers import RunOptions

    i = 0
    kw: dict = {"env": [], "env_files": [], "volumes": []}
    while i < len(argv):
        a = argv[i]
        if a == "--":
            i += 1
            break
        if not a.startswith("-") or a == "-":
            break
        name, eq, inline = a.partition("=") if a.startswith("--") else (a, "", "")
        if name in _FLAGS and not eq:
            kw[_FLAGS[name]] = True
            i += 1
            continue
        if not name.startswith("--") and len(name) > 2:  # -it, -m7m, -eA=1
            if all(f"-{c}" in _FLAGS for c in name[1:]):
                for c in name[1:]:
                    kw[_FLAGS[f"-{c}"]] = True
                i += 1
                continue
            if name[:2] in _VALUES:
                name, eq, inline = name[:2], "=", name[2:]
            else:
                return None
        if name not in _VALUES:
            return None
        if eq:
            value, i = inline, i + 1
        elif i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        else:
            return None
        key = _VALUES[name]
        key = "volumes" if key == "volume" else key
        if key in _LISTS:
            kw[key].append(value)
        else:
            kw[key] = value
    if i >= len(argv):
        return None
    image, command = argv[i], argv[i + 1:]
    try:
        if "cpus" in kw:
            kw["cpus"] = float(kw["cpus"])
        if "pids_limit" in kw:
            kw["pids_limit"] = int(kw["pids_limit"])
    except ValueError:
        return None
    return RunOptions(image=image, command=list(command), **kw)




def _run(st, opts) -> int:
    from imagetool.containers import run

    return run(st, opts)


# ---------------------------------------------------------------- unpack


def parse_unpack(argv: list[str]) -> dict | None:
    """Keyword arguments for `_unpack` from `unpack [--bundle] REF DIR`, or None for the full CLI."""
    bundle = "--bundle" in argv
    positional = [a for a in argv if a != "--bundle"]
    if len(positional) != 2 or any(a.startswith("-") for a in positional):
        return None
    return {"ref": positional[0], "dest": positional[1], "bundle": bundle}


def _unpack(st, ref: str, dest: str, bundle: bool) -> int:
    from imagetool.unpack import unpack_image

    unpack_image(st, ref, dest, bundle=bundle)
    return 0


# ---------------------------------------------------------------- pull


def parse_pull(argv: list[str]) -> dict | None:
    """Keyword arguments for pull.pull from `pull`'s arguments, or None for the full CLI."""
    opts: dict = {"platform": None, "quiet": False, "max_concurrent": 3, "insecure": False}
    refs: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-q", "--quiet"):
            opts["quiet"], i = True, i + 1
        elif arg == "--insecure":
            opts["insecure"], i = True, i + 1
        elif arg == "--platform" or arg.startswith("--platform="):
            opts["platform"], i = _value(argv, i, "--platform")
            if opts["platform"] is None:
                return None
        elif arg == "--max-concurrent-downloads" or arg.startswith("--max-concurrent-downloads="):
            value, i = _value(argv, i, "--max-concurrent-downloads")
            if value is None or not value.isdigit() or int(value) < 1:
                return None
            opts["max_concurrent"] = int(value)
        elif arg.startswith("-"):
            return None
        else:
            refs.append(arg)
            i += 1
    if len(refs) != 1:
        return None
    opts["ref"] = refs[0]
    return opts


def _pull(st, args: dict) -> int:
    from imagetool.progress import make_reporter
    from imagetool.pull import pull

    quiet = args.pop("quiet")
    with make_reporter(quiet=quiet) as progress:
        result = pull(st, args.pop("ref"), progress=progress, **args)
    for line in pull_lines(result, quiet):
        print(line)
    return 0


def pull_lines(result, quiet: bool) -> list[str]:
    """What `pull` prints on stdout (like docker pull): the digest only with -q."""
    if quiet:
        return [result.digest]
    return [f"Digest: {result.digest}", f"Status: {result.status} for {result.name}", result.name]
