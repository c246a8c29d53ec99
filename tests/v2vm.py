"""One boot of the cgroup-v2-only VM (/work/shared/v2host) running a bash script over a copy of the tree.

`boot(tmp_path, script) -> str` copies imagetool/, store/, fixtures/, tests/ to SHARE/src and
typer's site to SHARE/site, runs `bash /host/guest.sh` in the VM and returns its stdout; it skips
the calling test (pytest.skip, with the reason) when the VM is not built, IMAGETOOL_SKIP_VM is set,
the guest's packages cannot be prepared, or the VM did not start (`started_marker` never printed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

V2HOST = Path("/work/shared/v2host")
V2DATA = Path(os.environ.get("V2HOST_DATA", "/var/tmp/v2host-data"))
REPO = Path(__file__).resolve().parent.parent
SITE_CACHE = Path("/var/tmp/imagetool-v2site")


def boot(tmp_path: Path, script: str, started_marker: str, timeout: int = 500) -> str:
    if not (V2HOST / "run.sh").is_file() or not (V2DATA / "root.img").is_file():
        pytest.skip("the v2host VM image is not built (run /work/shared/v2host/build.sh)")
    if os.environ.get("IMAGETOOL_SKIP_VM"):
        pytest.skip("IMAGETOOL_SKIP_VM is set")
    site = _ensure_site()
    if site is None:
        pytest.skip("could not prepare typer for the guest (wheels.sh needs PyPI)")
    share = tmp_path / "share"
    for part in ("imagetool", "store", "fixtures", "tests"):
        shutil.copytree(REPO / part, share / "src" / part, ignore=shutil.ignore_patterns("__pycache__", ".cache"))
    shutil.copytree(site, share / "site")
    (share / "guest.sh").write_text(script)
    r = subprocess.run([str(V2HOST / "run.sh"), "--share", str(share), "--timeout", str(timeout), "--",
                        "bash /host/guest.sh"], capture_output=True, text=True, timeout=timeout + 100)
    sys.stdout.write(r.stdout)  # shown with -s or on failure: what the VM saw
    if r.returncode == 125 and started_marker not in r.stdout:
        pytest.skip(f"the VM did not start: {r.stderr[-300:]}")
    return r.stdout


def results(out: str) -> dict[str, str]:
    """The guest's `RESULT NAME VALUE` lines as {NAME: VALUE} (the first word of the value; "" when
    there is none)."""
    return dict(line.split()[1:3] if len(line.split()) > 2 else (line.split()[1], "")
                for line in out.splitlines() if line.startswith("RESULT "))


def _ensure_site() -> Path | None:
    """typer and click for the network-less guest (built once with v2host's wheels.sh)."""
    if (SITE_CACHE / "typer").is_dir():
        return SITE_CACHE
    SITE_CACHE.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([str(V2HOST / "wheels.sh"), "--site", str(SITE_CACHE), "typer"],
                       capture_output=True, text=True, timeout=300)
    site = SITE_CACHE / ".v2site"
    if r.returncode != 0 or not site.is_dir():
        return None
    for p in site.iterdir():
        shutil.move(str(p), SITE_CACHE / p.name)
    site.rmdir()
    return SITE_CACHE
