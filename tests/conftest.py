"""Shared pytest fixtures: images built in code, a fresh store, the imagetool CLI as a subprocess
and (in step 2) real docker-registry servers on loopback."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def busybox():
    """busybox:latest built from the host's /bin/busybox (BuiltImage, one gzip layer, Cmd ["sh"])."""
    from fixtures.images import BUSYBOX, busybox_image

    if not BUSYBOX.is_file():
        pytest.skip(f"{BUSYBOX} missing (install busybox-static)")
    return busybox_image()
