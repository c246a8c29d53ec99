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
HEAVY = ("requests", "urllib3", "zstandard", "tqdm")


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


# ---------------------------------------------------------------- the whole graph: cycles, reach

PACKAGES = ("imagetool", "store")


def import_graph(module_level_only: bool = False) -> dict[str, set[str]]:
    """module -> the repo modules it imports (lazy imports too, unless module_level_only).

    Importing `a.b.c` runs the bodies of `a/__init__` and `a/b/__init__` first: from outside
    package `a.b` that is an edge to the node `a.b.__init__` (the package's module-level imports
    only), while importing the package itself (`from a import b`, then using `b.x`) is an edge
    to `a.b` (its lazy imports too): a lazy import of a package is how today's cycle was made
    (archive → archive.rootfs → containers → archive).
    """
    modules = {_module_name(path): path for package in PACKAGES for path in _modules(package)}
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    graph.update({p + ".__init__": set() for p in packages})

    def add(node: str, path: Path, module_level: bool) -> None:
        me = _module_name(path)
        own = me if path.name == "__init__.py" else me.rpartition(".")[0]
        for _, name in imports(path, module_level):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                target = ".".join(parts[:i])
                if target not in modules or target == me or _within(own, (target,)):
                    continue
                if i == len(parts):
                    graph[node].add(target)
                elif target in packages:
                    graph[node].add(target + ".__init__")

    for name, path in modules.items():
        add(name, path, module_level_only)
        if name in packages:
            add(name + ".__init__", path, True)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.append(m)
                    if m == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def reach(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Every module `start` imports directly or transitively -> the module that imports it.

    A FACADE (a package whose __init__ only re-exports its value types) is reached but not
    expanded: `from store import Digest` uses a value type, not the store's storage modules."""
    via: dict[str, str] = {}
    todo = [start]
    while todo:
        node = todo.pop()
        for child in sorted(graph.get(node, ())):
            if child not in via and child != start:
                via[child] = node
                if child not in FACADES:
                    todo.append(child)
    return via


def _chain(via: dict[str, str], start: str, end: str) -> str:
    path = [end]
    while path[-1] != start:
        path.append(via[path[-1]])
    return " → ".join(reversed(path))


def test_no_import_cycles_anywhere():
    found = cycles(import_graph())
    assert not found, "import cycles (lazy imports included):\n" + "\n".join(" ↔ ".join(c) for c in found)


FACADES = ("store", "store.__init__")
# the store's storage (not its value types Digest, Descriptor and its errors)
STORAGE = ("store.store", "store.blobs", "store.ingest", "store.refs", "store.gc", "store.snapshots",
           "store.layout", "store.locking", "store.atomic")
# package -> what no module in it may reach, directly or through other modules
FORBIDDEN = [
    ("imagetool.unpack", SERVICES + ("imagetool.runtime", "imagetool.registry", "imagetool.specgen",
                                     "imagetool.bundle")),
    ("imagetool.runtime", SERVICES + STORAGE + ("imagetool.unpack", "imagetool.registry", "imagetool.image",
                                                "imagetool.oci")),
    ("imagetool.registry", SERVICES + STORAGE + ("imagetool.unpack", "imagetool.runtime", "imagetool.fetch")),
    ("imagetool.archive", ("imagetool.containers", "imagetool.cli", "imagetool.fastcli", "imagetool.runtime",
                           "imagetool.registry", "imagetool.pull")),
    ("imagetool.safepath", ("imagetool.unpack", "imagetool.runtime") + SERVICES + STORAGE),
    ("imagetool.users", ("imagetool.unpack", "imagetool.runtime") + SERVICES + STORAGE),
    ("imagetool.mount", ("imagetool", "store")),
    ("imagetool.errors", ("imagetool",)),     # it maps store's errors too, so it may reach store
    ("store", ("imagetool",)),
]


@pytest.mark.parametrize("package,forbidden", FORBIDDEN, ids=[p for p, _ in FORBIDDEN])
def test_no_transitive_import_crosses_the_layers(package, forbidden):
    graph = import_graph()
    bad = []
    for module in sorted(m for m in graph if _within(m, (package,))):
        via = reach(graph, module)
        for target in sorted(via):
            if _within(target, forbidden) and not _within(target, (package, "imagetool.errors")) \
                    and target != "imagetool":
                bad.append(_chain(via, module, target))
    assert not bad, f"{package} reaches what it must not:\n" + "\n".join(bad)


def _fake_tree(tmp_path: Path, monkeypatch, files: dict[str, str]) -> Path:
    """A miniature imagetool/ package (name -> source) that the checkers read instead of the repo."""
    pkg = tmp_path / "imagetool"
    for name, text in {"__init__.py": "", **files}.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    return pkg


def test_cycle_and_reach_checkers_see_a_lazy_package_cycle(tmp_path, monkeypatch):
    """The checkers themselves, on today's shape in miniature: a package whose __init__ imports a
    module that lazily imports a service that lazily imports the package again."""
    _fake_tree(tmp_path, monkeypatch, {
        "archive/__init__.py": "from imagetool.archive.rootfs import export\n",
        "archive/rootfs.py": "def export():\n    from imagetool import containers\n",
        "archive/saver.py": "from imagetool.archive import rootfs\n",
        "containers.py": "def run():\n    from imagetool import archive\n"})
    graph = import_graph()
    assert cycles(graph) == [["imagetool.archive", "imagetool.archive.rootfs", "imagetool.containers"]]
    assert "imagetool.archive" not in graph["imagetool.archive.saver"], "a package's own modules do not re-enter it"
    via = reach(graph, "imagetool.archive.saver")
    assert _chain(via, "imagetool.archive.saver", "imagetool.containers") == \
        "imagetool.archive.saver → imagetool.archive.rootfs → imagetool.containers"
    assert cycles(import_graph(module_level_only=True)) == []


def test_cycle_checker_runs_only_the_module_level_of_a_parent_package(tmp_path, monkeypatch):
    """Importing `pkg.helpers` runs pkg/__init__'s module level, not its lazy imports: a module
    that the package's lazy service imports may use pkg.helpers without making a cycle; using
    the package itself (`from imagetool import archive`) does make one."""
    pkg = _fake_tree(tmp_path, monkeypatch, {
        "archive/__init__.py": "def __getattr__(name):\n    from imagetool.archive import saver\n",
        "archive/helpers.py": "",
        "archive/saver.py": "from imagetool import transport\n",
        "transport.py": "def f():\n    from imagetool.archive.helpers import x\n"})
    assert cycles(import_graph()) == []
    (pkg / "transport.py").write_text("def f():\n    from imagetool import archive\n")
    assert cycles(import_graph()) == [["imagetool.archive", "imagetool.archive.saver", "imagetool.transport"]]


def test_the_archive_detector_is_cheap_to_import():
    """`run` asks archive.loader.is_archive_arg about every image argument: importing it loads no
    other imagetool module than its package's (empty) __init__, and nothing outside the stdlib."""
    graph = import_graph(module_level_only=True)
    runs = {"imagetool.__init__", "imagetool.archive.__init__", "imagetool.archive.loader"}
    loaded = set(runs).union(*(reach(graph, m) for m in runs))
    assert loaded == runs, f"importing the detector also loads {sorted(loaded - runs)}"
    for module in ("imagetool/archive/__init__.py", "imagetool/archive/loader.py"):
        outside = [n for _, n in imports(REPO / module, module_level_only=True)
                   if not (_stdlib(n) or _within(n, ("imagetool",)))]
        assert not outside, f"{module} imports {outside} at module level"


# ---------------------------------------------------------------- one of each


def _strings(path: Path) -> set[str]:
    """The string constants of a module, docstrings left out (prose may name anything)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return {n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings}


# what only one module may do: (what, does this module do it?, the modules allowed to)
ONE_OF_EACH = [
    ("reads or writes zstd", lambda path, names, strings: "zstandard" in names, {"imagetool.compression"}),
    ("reads or writes gzip", lambda path, names, strings: bool({"gzip", "zlib"} & names),
     {"imagetool.compression", "imagetool.unpack.tarstream"}),   # tarstream: zlib.adler32 only
    ("spells a whiteout", lambda path, names, strings: any(".wh." in s or "trusted.overlay.opaque" in s
                                                           for s in strings), {"imagetool.unpack.whiteouts"}),
    ("reads /etc/passwd", lambda path, names, strings: any(s in ("passwd", "/etc/passwd", "etc/passwd")
                                                           for s in strings),
     {"imagetool.users", "imagetool.runtime.script"}),   # script: only picks the layer users.lookup reads
]


@pytest.mark.parametrize("what,does,allowed", ONE_OF_EACH, ids=[w for w, _, _ in ONE_OF_EACH])
def test_one_module_for_each_job(what, does, allowed):
    doers = set()
    for path in _modules("imagetool"):
        names = {n.split(".")[0] for _, n in imports(path)}
        if does(path, names, _strings(path)):
            doers.add(_module_name(path))
    assert doers - allowed == set(), f"only {sorted(allowed)} may do this ({what}); also: {sorted(doers - allowed)}"
