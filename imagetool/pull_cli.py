"""`imagetool pull` without the CLI framework: typer (and the pydantic it imports) cost more than
resolving an up-to-date image, so the common forms of `pull` are parsed here.

`fast_main(argv)` handles `[--store DIR] [--debug] pull [--platform P] [-q|--quiet]
[--max-concurrent-downloads N] [--insecure] REF` exactly as the typer command does (same output,
same error lines and exit codes) and exits; for anything else (help, unknown options, missing or
extra arguments) it returns None and the full CLI takes over.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PullArgs:
    store: str | None
    debug: bool
    ref: str
    platform: str | None = None
    quiet: bool = False
    max_concurrent: int = 3
    insecure: bool = False


def _value(argv: list[str], i: int, name: str) -> tuple[str | None, int]:
    """The value of option `name` at argv[i] ("--x V" or "--x=V") and the next index."""
    arg = argv[i]
    if arg.startswith(name + "="):
        return arg[len(name) + 1:], i + 1
    if i + 1 < len(argv):
        return argv[i + 1], i + 2
    return None, i + 1


def parse(argv: list[str]) -> PullArgs | None:
    """PullArgs for the forms handled here, None for anything the full CLI must see."""
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
    if i >= len(argv) or argv[i] != "pull":
        return None
    i += 1
    opts: dict = {}
    refs: list[str] = []
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
    return PullArgs(store, debug, refs[0], **opts)


def fast_main(argv: list[str]) -> None:
    """Run the pull and exit the process, or return when the full CLI must handle `argv`."""
    args = parse(argv)
    if args is None:
        return
    from imagetool.errors import ImagetoolError

    try:
        from store import Store

        from imagetool import settings
        from imagetool.progress import make_reporter
        from imagetool.pull import pull

        st = Store.open(settings.store_root(args.store))
        with make_reporter(quiet=args.quiet) as progress:
            result = pull(st, args.ref, platform=args.platform, max_concurrent=args.max_concurrent,
                          progress=progress, insecure=args.insecure)
        if args.quiet:
            print(result.digest)
        else:
            print(f"Digest: {result.digest}")
            print(f"Status: {result.status} for {result.name}")
            print(result.name)
        rc = 0
    except ImagetoolError as e:
        if args.debug:
            raise
        rc = _fail(e.message, e.hint, e.exit_code)
    except KeyboardInterrupt:
        rc = 130
    except Exception as e:  # store and OS errors: one line, as the full CLI does
        if args.debug:
            raise
        from store.errors import StoreError

        if isinstance(e, (StoreError, OSError)):
            rc = _fail(str(e), getattr(e, "hint", None), 1)
        else:
            rc = _fail(f"internal error: {type(e).__name__}: {e}",
                       "run with --debug for a traceback and report it", 1)
    sys.stdout.flush()
    sys.exit(rc)


def _fail(message: str, hint: str | None, code: int) -> int:
    sys.stderr.write(f"imagetool: error: {' '.join(str(message).split())}\n")
    if hint:
        sys.stderr.write(f"hint: {hint}\n")
    return code
