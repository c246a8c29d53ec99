"""The console entry point (`imagetool`, `python -m imagetool`): the fast path, else the full CLI."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    from imagetool import fastcli

    fastcli.main(argv)  # exits when it served the command
    from imagetool.cli import main as cli_main

    cli_main(argv)


if __name__ == "__main__":
    main()
