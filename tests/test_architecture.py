"""The import graph stays one-directional (cli → services → registry | unpack | runtime → store) and
the CLI starts without loading the heavy dependencies. Checked on the AST of every module."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SERVICES = ("imagetool.cli", "imagetool.__main__", "imagetool.fastcli", "imagetool.pull", "imagetool.archive", "imagetool.containers", "imagetool.images")
HEAVY = ("requests", "zstandard", "tqdm")


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(package: str) -> list[Path]:
    root = REPO / package
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts) if root.is_dir() else []


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports(path: Path, module_level_only: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `path`; relative imports resolved.

    `from pkg import name` yields "pkg.name" when that is a module in this repo, else "pkg".
    Imports under `if TYPE_CHECKING:` are ignored (they never run). With module_level_only,
    imports inside functions (lazy imports) are ignored too.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit_one(sub)
                continue
            if module_level_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            visit_one(child)

    def visit_one(child: ast.AST) -> None:
        if isinstance(child, ast.Import):
            found.extend((child.lineno, a.name) for a in child.names)
        elif isinstance(child, ast.ImportFrom):
            if child.level:
                base = package.split(".")
                base = base[: len(base) - (child.level - 1)]
                mod = ".".join(base + ([child.module] if child.module else []))
            else:
                mod = child.module or ""
            if mod == "__future__":
                return
            for a in child.names:
                sub = f"{mod}.{a.name}"
                as_path = REPO.joinpath(*sub.split("."))
                is_module = as_path.with_suffix(".py").is_file() or (as_path / "__init__.py").is_file()
                found.append((child.lineno, sub if is_module else mod))
        visit(child)

    visit(tree)
    return found


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _violations(package: str, forbidden, allowed=None, module_level_only: bool = False) -> list[str]:
    bad = []
    for path in _modules(package):
        for line, name in imports(path, module_level_only):
            if _within(name, forbidden) or (allowed is not None and not allowed(name)):
                bad.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    return bad


def _stdlib(name: str) -> bool:
    return name.split(".")[0] in sys.stdlib_module_names


# ---------------------------------------------------------------- the import direction


def test_store_imports_only_the_standard_library():
    assert _modules("store"), "store/ has no modules yet"
    bad = _violations("store", (), allowed=lambda n: _stdlib(n) or _within(n, ("store",)))
    assert not bad, "store/ must import only the standard library:\n" + "\n".join(bad)


@pytest.mark.parametrize("package,forbidden", [
    ("imagetool/registry", SERVICES + ("imagetool.unpack", "imagetool.runtime")),
    ("imagetool/unpack", SERVICES + ("imagetool.registry", "imagetool.runtime")),
    ("imagetool/runtime", SERVICES + ("imagetool.registry", "imagetool.unpack", "imagetool.image",
                                      "imagetool.oci")),
])
def test_lower_layers_never_import_upper_or_sibling_layers(package, forbidden):
    if not _modules(package):
        pytest.skip(f"{package} has no modules yet")
    bad = _violations(package, forbidden)
    assert not bad, f"{package} crosses the import direction:\n" + "\n".join(bad)


def test_cli_imports_only_typer_and_stdlib_at_module_level():
    path = REPO / "imagetool" / "cli.py"
    bad = [f"cli.py:{line} imports {name} at module level"
           for line, name in imports(path, module_level_only=True)
           if not (_stdlib(name) or _within(name, ("typer",)) or name == "imagetool")]
    assert not bad, "move these imports into the commands that need them:\n" + "\n".join(bad)


def test_import_checker_sees_relative_lazy_and_guarded_imports(tmp_path, monkeypatch):
    """The checker itself: a test that cannot see violations would always pass."""
    pkg = tmp_path / "store"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\nimport json\nfrom . import b\nfrom .b import x\n"
        "if TYPE_CHECKING:\n    import requests\n"
        "def f():\n    import zstandard\n"
    )
    (pkg / "b.py").write_text("x = 1\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    names = [n for _, n in imports(pkg / "a.py")]
    assert names == ["typing", "json", "store.b", "store.b", "zstandard"]
    assert [n for _, n in imports(pkg / "a.py", module_level_only=True)] == ["typing", "json", "store.b", "store.b"]
    assert _violations("store", (), allowed=lambda n: _stdlib(n) or _within(n, ("store",))) == [
        "store/a.py:8 imports zstandard"]


# ---------------------------------------------------------------- startup cost

_PROBE = """
import sys
sys.argv = ["imagetool"] + sys.argv[1:]
from imagetool import cli
try:
    cli.main()
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in %r if m in sys.modules)
sys.stderr.write("\\nHEAVY=" + ",".join(heavy) + "\\n")
sys.exit(code or 0)
""" % (HEAVY,)


@pytest.mark.parametrize("args", [["--help"], ["images"], ["images", "--format", "json"]])
def test_cli_starts_without_heavy_dependencies(tmp_path, args):
    """`imagetool --help` and `imagetool images` on an empty store load neither requests, zstandard nor tqdm."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGETOOL_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    r = subprocess.run([sys.executable, "-c", _PROBE, "--store", str(tmp_path / "store"), *args],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    heavy = r.stderr.rsplit("HEAVY=", 1)[1].strip()
    assert heavy == "", f"imagetool {' '.join(args)} imported {heavy}"


def test_startup_probe_reports_a_heavy_import(tmp_path):
    """Positive control for the probe above: a heavy module that is loaded is reported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGETOOL_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    r = subprocess.run([sys.executable, "-c", "import tqdm\n" + _PROBE, "--help"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr.rsplit("HEAVY=", 1)[1].strip() == "tqdm"
