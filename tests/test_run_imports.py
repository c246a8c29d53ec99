"""What `run` loads (issues 11 and 16): a root `run --rm` / `run -d` of an image in the store, with
`--network none`, imports none of the modules only other commands or options need (ps/inspect's read
side, the network setup, the registry, the CLI library, rootless-only code) nor the standard-library
modules the console entry defers (inspect, ipaddress, bz2, lzma). These assert which modules are
imported (by name, from `python -X importtime`), never how long anything takes.

The interpreter runs with -S: the test venv's site (an editable install's path finder) imports
pathlib, urllib.parse and ipaddress before imagetool starts, which the installed tool never does."""

import subprocess
import sys

import pytest

from tests.runhelpers import add_image, imports_of, kernel_skip_reason, loaded

#: never on a root `run` of a present image with --network none (in the CLI, nor its forked init)
NOT_ON_RUN = (
    "imagetool.containerstates",   # ps / inspect / lookups by name
    "imagetool.network.attach", "imagetool.network.cni", "imagetool.network.networks",
    "imagetool.network.slirp", "imagetool.network.ports",
    "imagetool.pull", "imagetool.registry", "imagetool.fetch", "imagetool.progress",
    "imagetool.transports.base", "imagetool.transports.store", "imagetool.transports.registry",
    "imagetool.cli", "typer", "click", "requests", "urllib3", "tqdm",
    "inspect", "ipaddress", "ntpath", "bz2", "lzma", "_hashlib", "hashlib", "typing",
)


def _imported(cli, *args) -> tuple[subprocess.CompletedProcess, set[str]]:
    return imports_of(cli, *args, python_flags=("-S",))   # -S: the editable venv's finder loads pathlib &c.


@pytest.fixture
def with_busybox(cli, busybox):
    """busybox in the store, run once already (its snapshot made: what follows is the steady path)."""
    reason = kernel_skip_reason()
    if reason:
        pytest.skip(reason)
    add_image(cli.store_dir, busybox, "docker.io/library/busybox:latest")
    r = cli("run", "--rm", "--network", "none", "busybox", "true")
    assert r.returncode == 0, r.stderr
    return cli


def test_run_rm_loads_only_what_it_uses(with_busybox):
    r, imported = _imported(with_busybox, "run", "--rm", "--network", "none", "busybox", "true")
    assert r.returncode == 0, r.stderr
    # it did run a container here, through the built-in runtime
    assert {"imagetool.containers", "imagetool.runtime.process", "imagetool.runtime.init"} <= imported
    assert not loaded(imported, NOT_ON_RUN)


def test_run_d_cli_side_loads_only_what_it_uses(with_busybox):
    cli = with_busybox
    r, imported = _imported(cli, "run", "-d", "--network", "none", "busybox", "sleep", "30")
    try:
        assert r.returncode == 0, r.stderr
        assert "imagetool.monitor" in imported and "imagetool.image" in imported
        assert not loaded(imported, NOT_ON_RUN)
    finally:
        if r.stdout.strip():
            cli("rm", "-f", r.stdout.strip())


def test_deferred_standard_modules_load_on_first_use():
    """After the console entry's stand-ins: pathlib (urllib.parse, which imports ipaddress) and shutil
    (bz2, lzma) import without loading them, and each loads on first use of one of its names,
    through `import x`, `from x import y` and a module that imported the stand-in before."""
    code = """if True:
        import sys
        from imagetool.__main__ import DEFERRED, _defer, _defer_url_parse
        for name in DEFERRED:
            _defer(name)
        _defer_url_parse()
        import pathlib, shutil, urllib.parse
        assert not any(type(sys.modules[n]).__name__ == "module" for n in (*DEFERRED, "urllib.parse"))
        assert pathlib.Path("/a b").as_uri() == "file:///a%20b"   # urllib.parse loads, through pathlib
        assert type(sys.modules["urllib.parse"]).__name__ == "module"
        assert type(sys.modules["ipaddress"]).__name__ != "module"
        assert urllib.parse.urlsplit("http://[::1]:8080/x").hostname == "::1"   # ipaddress loads
        assert type(sys.modules["ipaddress"]).__name__ == "module"
        import ipaddress
        from ipaddress import IPv4Network
        assert isinstance(ipaddress.ip_network("10.88.0.0/14"), IPv4Network)
        assert shutil._BZ2_SUPPORTED and shutil._LZMA_SUPPORTED
        import bz2, lzma
        assert lzma.decompress(lzma.compress(b"x")) == b"x" and bz2.decompress(bz2.compress(b"y")) == b"y"
        assert "bztar" in dict(shutil.get_archive_formats())
        print("ok")
    """
    r = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
