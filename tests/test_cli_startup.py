"""What the everyday read commands load (issue 16): `images`, `ps -a` and `inspect` (of an image and
of a container) run without the runtime, without `inspect` (the console entry defers it: only
dataclasses imports it, for a class written without a docstring) and without OpenSSL's hash module.
These assert which modules are imported, never how long anything takes."""

import subprocess
import sys

import pytest

from tests.runhelpers import add_image, imports_of, kernel_skip_reason, loaded

#: loaded by none of the read commands (_hashlib: OpenSSL's hashes)
NEVER = ("inspect", "_hashlib", "typer", "click", "requests")
#: `run`'s path, loaded by neither `images`, `ps` nor `inspect IMAGE` (`inspect CONTAINER` still goes
#: through control.py, which imports containers.py)
RUNTIME = ("imagetool.containers", "imagetool.runtime", "imagetool.network.attach")
#: the store's write side (locks, ingest, GC) and what only it needs, loaded by neither `images` nor
#: `inspect IMAGE`: they read index.json, manifests and configs, take no lock and write nothing
#: (what the interpreter's start loaded already, e.g. contextlib for an editable install's finder, is
#: not imagetool's doing: see _loaded_by_imagetool)
WRITE_SIDE = ("store.locking", "store.ingest", "store.gc", "contextlib", "fcntl", "tempfile", "threading",
              "typing", "collections.abc")


@pytest.fixture
def with_container(cli, busybox):
    """The store holds busybox and one exited container named `exited`."""
    reason = kernel_skip_reason()
    if reason:
        pytest.skip(reason)
    add_image(cli.store_dir, busybox, "docker.io/library/busybox:latest")
    r = cli("run", "--name", "exited", "--network", "none", "busybox", "true")
    assert r.returncode == 0, r.stderr
    yield cli
    cli("rm", "-f", "exited")


@pytest.mark.parametrize("args, runtime", [(("images",), False), (("ps", "-a"), False),
                                           (("inspect", "busybox"), False), (("inspect", "exited"), True)])
def test_read_commands_load_no_runtime_no_inspect_no_openssl(with_container, args, runtime):
    r, imported = imports_of(with_container, *args)
    assert r.returncode == 0, r.stderr
    assert "imagetool.commands" in imported and "json" in imported   # it did serve the command here
    assert not loaded(imported, NEVER if runtime else NEVER + RUNTIME)


def test_inspect_of_an_image_loads_no_container_code_and_of_a_container_no_image_code(with_container):
    _, imported = imports_of(with_container, "inspect", "busybox")
    assert "imagetool.images" in imported and not loaded(imported, ("imagetool.control",))
    _, imported = imports_of(with_container, "inspect", "exited")
    assert "imagetool.control" in imported
    assert not loaded(imported, ("imagetool.images", "imagetool.oci", "imagetool.network.attach"))


def _loaded_by_imagetool(cli, *args) -> set[str]:
    """The modules `imagetool ARGS` imports beyond those of the interpreter's own start."""
    r, imported = imports_of(cli, *args)
    assert r.returncode == 0, r.stderr
    bare = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], env=cli.env, capture_output=True,
                          text=True, timeout=60)
    return imported - {line.split("|")[-1].strip() for line in bare.stderr.splitlines()}


@pytest.mark.parametrize("args", [("images",), ("inspect", "busybox")])
def test_image_read_commands_load_no_store_write_side(with_container, args):
    imported = _loaded_by_imagetool(with_container, *args)
    assert "store.refs" in imported and "imagetool.oci" in imported   # it did read the store here
    assert not loaded(imported, WRITE_SIDE)


def test_ps_output_is_the_same_through_the_read_side(with_container):
    """ps through containerstates (the fast path) and containers.list_containers agree."""
    from imagetool import containers, containerstates
    from store import Store

    st = Store.open(with_container.store_dir)
    fast = containerstates.list_containers(st, True, containers.reconcile)
    assert [r.to_dict() for r in fast] == [r.to_dict() for r in containers.list_containers(st, all_=True)]
    assert [r.name for r in fast] == ["exited"] and fast[0].status == "exited (0)"
    r = with_container("ps", "-a", "--format", "json")
    assert r.returncode == 0 and '"name": "exited"' in r.stdout


def test_the_deferred_inspect_module_loads_on_first_use():
    """After the console entry's stand-in: `import inspect`, `from inspect import …` and a dataclass
    without a docstring (its __doc__ is made with inspect.signature) all get the real module."""
    code = """if True:
        import sys
        from imagetool.__main__ import _defer_inspect
        _defer_inspect()
        import dataclasses
        assert "ast" not in sys.modules, "inspect was loaded by importing dataclasses"
        @dataclasses.dataclass
        class Plain:
            x: int
        assert Plain.__doc__ == "Plain(x: int)", Plain.__doc__
        import inspect
        from inspect import signature
        assert signature is inspect.signature and str(signature(lambda a, b=1: 0)) == "(a, b=1)"
        assert sys.modules["inspect"].isfunction(len) is False
        print("ok")
    """
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_small_blobs_hash_without_openssl_and_agree_with_hashlib():
    import hashlib

    from store.digest import SMALL, Digest, _small_hasher

    for algorithm in ("sha256", "sha512"):
        for data in (b"", b"abc", bytes(range(256)) * 7, b"x" * SMALL):
            h = _small_hasher(algorithm)
            assert h is not None
            h.update(data)
            assert h.hexdigest() == hashlib.new(algorithm, data).hexdigest()
    code = ("import sys; from store.digest import Digest; d = Digest.of_bytes(b'abc'); "
            "assert '_hashlib' not in sys.modules; d2 = Digest.of_bytes(b'a' * (1 + (1 << 20))); "
            "assert '_hashlib' in sys.modules; print(d)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(Digest.of_bytes(b"abc"))


def test_every_dataclass_has_a_docstring():
    """dataclasses makes a __doc__ with inspect.signature for a class written without one, and
    that loads `inspect` (~5 ms) on whatever command imports the class: give each one a docstring."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    missing = []
    for f in sorted([*(root / "imagetool").rglob("*.py"), *(root / "store").rglob("*.py")]):
        for node in ast.walk(ast.parse(f.read_text())):
            if (isinstance(node, ast.ClassDef) and ast.get_docstring(node) is None
                    and any("dataclass" in ast.unparse(d) for d in node.decorator_list)):
                missing.append(f"{f.relative_to(root)}:{node.lineno} {node.name}")
    assert not missing


def test_the_reference_grammar_without_regexes_matches_the_patterns():
    """reference.py and image.py check the grammar with str methods (compiling the regexes cost
    ~0.1 ms each at every start): they accept exactly what the grammar's patterns accept."""
    import itertools
    import random
    import re

    from imagetool import image, reference
    from store.digest import is_hex

    label = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    patterns = [(reference._is_component, r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"),
                (reference._is_tag, r"[\w][\w.-]{0,127}"),
                (reference._is_host, rf"(?:{label}(?:\.{label})*|\[[a-fA-F0-9:]+\])"),
                (reference.is_sha256, r"sha256:[0-9a-f]{64}"),
                (lambda t: is_hex(t, 64), r"[a-f0-9]{64}"),
                (image.is_id, r"(?:sha256:)?[0-9a-f]{12,64}")]
    rng = random.Random(16)
    texts = ["".join(t) for n in range(6) for t in itertools.product("a0Z._-:[", repeat=n)]
    texts += ["".join(rng.choice("ab09Zf._-:[]/ é\n") for _ in range(rng.randint(0, 14))) for _ in range(20000)]
    texts += [p + "".join(rng.choice("0123456789abcdef" if rng.random() > 0.02 else "Ag:\n")
                          for _ in range(rng.choice((11, 12, 63, 64, 65))))
              for _ in range(5000) for p in ("", "sha256:")]
    texts += ["a" * 128, "a" * 129, "_" + "-" * 127, ".a", "-a", "[::1]", "[]", "٣", "ａ"]
    for check, pattern in patterns:
        wrong = [t for t in texts if bool(check(t)) != (re.fullmatch(pattern, t, re.ASCII) is not None)]
        assert not wrong, (pattern, wrong[:5])
    assert image._id_hex("sha256:" + "ab" * 6) == "ab" * 6 and image._id_hex("ab" * 32) == "ab" * 32
