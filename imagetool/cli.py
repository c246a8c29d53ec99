"""The typer app, built from the option table in options.py: help, usage errors, and every argv the fast path passes on.

Each command's function is made from its `options.Command`: a `__signature__` whose parameters
carry typer.Option/typer.Argument defaults, so typer sees an ordinary command function and no
option is written twice. The function hands its keyword arguments to `commands.serve`, the same
body the fast path (fastcli.py) calls. `imagetool` (the console script) enters through
`imagetool.__main__`, which tries the fast path first; `main()` here is the typer app alone.

rich_markup_mode=None: help is click's plain formatting. typer would still import rich when it
is installed (~120 ms of a ~200 ms import) and escape every `[` in help for it (`\\[required]`),
so rich is marked absent before typer is imported unless something already loaded it; the
`typer-slim` distribution (typer without rich) does the same at install time.
"""

from __future__ import annotations

import inspect as _inspect
import sys
from typing import TYPE_CHECKING, List, Optional

if "rich" not in sys.modules:
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` raises ImportError: typer uses click's help
    try:
        import typer
    finally:
        del sys.modules["rich"]
else:
    import typer

if TYPE_CHECKING:
    from imagetool import options


class _Globals:
    store: Optional[str] = None
    debug: bool = False
    command: Optional[str] = None


G = _Globals()


def _version(value: bool) -> None:
    if value:
        from imagetool import __version__

        typer.echo(f"imagetool {__version__}")
        raise typer.Exit()


def _annotation(p: options.Param):
    if p.type is bool:
        return bool
    if p.multiple:
        return List[p.type] if p.required else Optional[List[p.type]]
    return p.type if (p.required or p.default is not None) else Optional[p.type]


def _typer_param(p: options.Param):
    """The typer.Option / typer.Argument for one table entry."""
    if p.is_argument:
        default = ... if p.required else (None if p.multiple else p.default)
        return typer.Argument(default, metavar=p.metavar, help=p.help, show_default=False)
    extra = {"min": p.minimum} if p.minimum is not None else {}
    return typer.Option(False if p.type is bool else p.default, *p.flags, help=p.help, metavar=p.metavar,
                        hidden=p.hidden, show_default=p.default not in (None, False), **extra)


def _signature(params, extra: tuple[_inspect.Parameter, ...] = ()) -> tuple[_inspect.Signature, dict]:
    sig = [_inspect.Parameter(p.dest, _inspect.Parameter.KEYWORD_ONLY, default=_typer_param(p),
                              annotation=_annotation(p)) for p in params]
    sig += extra
    return _inspect.Signature(sig), {s.name: s.annotation for s in sig}


def typer_values(command: options.Command, kwargs: dict) -> dict:
    """typer's keyword arguments as the body takes them: lists for `multiple` (typer gives a tuple,
    or None when absent)."""
    values = dict(kwargs)
    for p in command.params:
        if p.multiple:
            values[p.dest] = list(values[p.dest] or [])
    return values


def _command_function(command: options.Command, call):
    def function(**kwargs):
        return call(command, typer_values(command, kwargs))

    function.__name__ = command.name
    function.__doc__ = command.help
    function.__signature__, function.__annotations__ = _signature(command.params)
    return function


def _serve(command: options.Command, values: dict) -> None:
    from imagetool.commands import serve

    raise typer.Exit(serve(command.name, values, store_arg=G.store, debug=G.debug))


def build_app(call=_serve) -> typer.Typer:
    """The typer app for the table; each command calls `call(command, values)` (tests record it)."""
    from imagetool import options

    app = typer.Typer(add_completion=False, no_args_is_help=True, help=options.GLOBAL.help,
                      context_settings={"help_option_names": ["--help"]}, pretty_exceptions_enable=False,
                      rich_markup_mode=None)

    def callback(**kwargs):
        kwargs.pop("version", None)
        G.store, G.debug = kwargs["store"], kwargs["debug"]

    version = _inspect.Parameter("version", _inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."))
    callback.__signature__, callback.__annotations__ = _signature(options.GLOBAL.params, (version,))
    callback.__doc__ = options.GLOBAL.help
    app.callback()(callback)
    for command in options.COMMANDS:
        context = None if command.interspersed else {"allow_interspersed_args": False}
        app.command(command.name, context_settings=context, help=command.help)(_command_function(command, call))
    return app


def main(argv: Optional[List[str]] = None) -> None:
    """Run the typer app and map exceptions to exit codes (errors.report); exits the process.
    Usage errors exit 2, or 125 under `run` like docker's."""
    try:  # typer >= 0.2x vendors click as typer._click (the `click` package may be absent)
        from typer._click.exceptions import ClickException
    except ImportError:
        from click.exceptions import ClickException

    from imagetool.errors import report
    from imagetool.fastcli import command_of

    argv = sys.argv[1:] if argv is None else argv
    G.command = command_of(argv)
    try:
        rc = build_app()(args=argv, standalone_mode=False, prog_name="imagetool")
    except typer.Exit as e:
        rc = e.exit_code
    except typer.Abort:
        sys.stderr.write("imagetool: aborted\n")
        rc = 130
    except ClickException as e:
        e.show()
        rc = 125 if G.command == "run" else 2
    except KeyboardInterrupt:
        rc = 130
    except Exception as e:
        if G.debug:
            raise
        rc = report(e, in_run=G.command == "run")
    from imagetool.commands import flush_stdout

    sys.exit(flush_stdout(rc if isinstance(rc, int) else 0))


if __name__ == "__main__":  # the full CLI only; `python -m imagetool` adds the fast path
    main()
