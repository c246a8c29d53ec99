"""The console entry point (`imagetool`, `python -m imagetool`): the fast path, else the typer app.

fastcli serves every command whose argv parses against options.py without typer; help,
`--version` and usage errors go to the typer app (cli.py), built from the same table."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """Serve argv (default sys.argv[1:]) and exit the process with the command's exit code."""
    argv = sys.argv[1:] if argv is None else argv
    from imagetool import fastcli

    fastcli.main(argv)  # exits when it served the command
    from imagetool.cli import main as cli_main

    cli_main(argv)


if __name__ == "__main__":
    main()
