"""The console entry point (`imagetool`, `python -m imagetool`): the fast path, else the typer app.

fastcli serves every command whose argv parses against options.py without typer; help,
`--version` and usage errors go to the typer app (cli.py), built from the same table."""

from __future__ import annotations

import _thread
import gc
import sys


def main(argv: list[str] | None = None) -> None:
    """Serve argv (default sys.argv[1:]) and exit the process with the command's exit code."""
    argv = sys.argv[1:] if argv is None else argv
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
    _defer_inspect()
    for name in DEFERRED:
        _defer(name)
    _defer_url_parse()
    from imagetool import fastcli

    fastcli.main(argv)  # exits when it served the command
    from imagetool.cli import main as cli_main

    cli_main(argv)


# The collector's youngest generation is collected after this many allocations (Python's default: 700).
# Loading the modules of a command allocates ~40000 objects that all live to the end: with the default,
# `run` paid ~20 young and 2 middle-generation collections on the way (~4-5 ms, each scanning the
# modules just loaded, finding no garbage); with this, none. Cycles are still collected (their memory
# held a little longer); the forked init and monitor inherit the setting.
GC_YOUNG = 50_000


def _defer_inspect() -> None:
    """Put a stand-in for `inspect` in sys.modules that loads the real module on first use of one of
    its names. The dataclasses module imports `inspect` at its top (~5 ms here: ast, dis, tokenize,
    linecache...) and uses it in one place only, the __doc__ of a dataclass written without one, so
    the commands that never touch it (images, ps, inspect, run...) do not pay for it. Nothing to do
    when it is loaded already (python -m pytest, an embedding program)."""
    _defer("inspect")


# Other modules the standard library imports at its top for a path imagetool rarely or never takes
# (urllib.parse itself: _defer_url_parse):
# ipaddress (urllib.parse, which pathlib imports: used for a URL with a bracketed host; ~1 ms; the
# bridge network code loads it on first use of one of its names), ntpath (pathlib: for
# PureWindowsPath; ~0.3 ms, most of it looking for Windows-only modules), bz2 and lzma (shutil:
# imported only to know whether make_archive may offer them; ~1.5 ms of `run --rm`'s cleanup).
DEFERRED = ("ipaddress", "ntpath", "bz2", "lzma")


def _defer(name: str) -> None:
    """A stand-in for module `name` (_Deferred), unless it is loaded already. (A module missing from
    this Python raises its ImportError at first use of one of its names instead of at import.)"""
    if name not in sys.modules:
        sys.modules[name] = _Deferred(name)


class _Deferred(type(sys)):
    """A module not loaded yet. Its own attributes (__name__, __spec__ None) answer `import`; any
    other name loads the real module (once, under a lock), copies its names here for the modules
    that hold this object, and is looked up there."""

    def __getattr__(self, name: str):
        with _LOADING:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
                try:
                    __import__(self.__name__)
                    real = sys.modules[self.__name__]   # (__import__ of "a.b" returns the package a)
                except BaseException:
                    sys.modules[self.__name__] = self
                    raise
                self.__dict__.update(real.__dict__)
        return getattr(sys.modules[self.__name__], name)


def _defer_url_parse() -> None:
    """A stand-in for urllib.parse (~1 ms: named tuples, regexes), which pathlib imports at its top
    for `as_uri()` only, by `from urllib.parse import quote_from_bytes`: so the stand-in's
    quote_from_bytes is a function that loads the real module when called. Set as the package's
    attribute too, as the import system would; the real module replaces it on first use."""
    if "urllib.parse" in sys.modules:
        return
    import urllib

    stand = _DeferredParse("urllib.parse")
    stand.quote_from_bytes = lambda *args, **kwargs: stand.__getattr__("quote_from_bytes")(*args, **kwargs)
    sys.modules["urllib.parse"] = urllib.parse = stand


class _DeferredParse(_Deferred):
    """urllib.parse's stand-in: a from-import asks `hasattr(module, "__path__")` first (is it a
    package?), which must not load the module (any other name, `__all__` too, loads it)."""

    def __getattr__(self, name: str):
        if name == "__path__":
            raise AttributeError(name)
        return super().__getattr__(name)


_LOADING = _thread.RLock()   # reentrant: a use of the stand-in while the real module loads cannot deadlock


if __name__ == "__main__":
    main()
