"""Packaging (issue 10 item 10): the wheel holds exactly the `imagetool` and `store` packages and
their data files (no top-level `fixtures` to replace PyPI's), and works installed on its own; the
README's offline recipe (a directory holding bin/busybox, imported) runs without the checkout's
fixtures."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "imagetool", "store", "fixtures", "tests", "benchmarks", "docs")


def _can_build_offline() -> str | None:
    try:
        import setuptools
    except ImportError:
        return "needs setuptools in the test environment"
    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    if (major, minor) < (70, 1):
        try:
            import wheel  # noqa: F401 - bdist_wheel lives in `wheel` before setuptools 70.1
        except ImportError:
            return "needs the `wheel` package (the test extra) to build without network"
    return None


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory) -> Path:
    """`pip wheel --no-deps .` of a copy of the checkout (the build writes build/ and *.egg-info
    into its source tree: not into the shared checkout), offline."""
    reason = _can_build_offline()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache")
    for name in SOURCES:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=ignore)
        elif p.is_file():
            shutil.copy2(p, src / name)
    out = tmp / "out"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "--disable-pip-version-check", "-q", "-w", str(out), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = out.glob("imagetool-*.whl")
    return whl


def test_wheel_installs_only_imagetool_and_store(built_wheel):
    with zipfile.ZipFile(built_wheel) as z:
        names = z.namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"imagetool", "store"}


def test_wheel_holds_every_module_and_data_file_of_both_packages(built_wheel):
    with zipfile.ZipFile(built_wheel) as z:
        names = set(z.namelist())
    wanted = {p.relative_to(REPO).as_posix()
              for pkg in ("imagetool", "store") for p in (REPO / pkg).rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert wanted - names == set()  # e.g. the seccomp profile JSON next to the runtime's modules
    assert any(n.endswith(".json") for n in wanted), "no package data to check: the test lost its point"


def test_installed_wheel_runs_without_the_checkout(built_wheel, tmp_path):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                        "--disable-pip-version-check", "--target", str(target), str(built_wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert not (target / "fixtures").exists()
    # the installed copy comes first; the test environment provides the dependencies
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGETOOL_", "PYTHON"))}
    env["PYTHONPATH"] = str(target)
    code = ("import imagetool, store, imagetool.runtime.sealed, sys\n"
            "from importlib import resources\n"
            "print(imagetool.__file__)\n"
            "print(sorted(p.name for p in resources.files('imagetool.runtime').iterdir() if p.name.endswith('.json')))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith(str(target))
    source_json = sorted(p.name for p in (REPO / "imagetool" / "runtime").glob("*.json"))
    assert r.stdout.splitlines()[1] == repr(source_json)
    r = subprocess.run([sys.executable, "-m", "imagetool", "--store", str(tmp_path / "store"), "images"],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_readme_offline_recipe_imports_a_directory_holding_busybox(tmp_path):
    """The README's offline variant: mkdir -p rootfs/bin && cp /bin/busybox rootfs/bin/ &&
    imagetool import rootfs busybox && imagetool run --rm busybox busybox echo hello."""
    sys.path.insert(0, str(REPO / "tests"))
    from runhelpers import Imagetool, kernel_skip_reason

    if not Path("/bin/busybox").is_file():
        pytest.skip("needs /bin/busybox (busybox-static)")
    (tmp_path / "rootfs" / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", tmp_path / "rootfs" / "bin" / "busybox")
    it = Imagetool(tmp_path / "store")
    r = it("import", tmp_path / "rootfs", "busybox")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("sha256:")
    r = it("images")
    assert r.stdout.split("\n")[1].split()[:2] == ["busybox", "latest"]
    reason = kernel_skip_reason()
    if reason:
        pytest.skip(f"imported; running it {reason}")
    r = it("run", "--rm", "busybox", "busybox", "echo", "hello")
    assert (r.returncode, r.stdout) == (0, "hello\n"), r.stderr
