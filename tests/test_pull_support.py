"""Helpers (no tests) shared by test_pull*.py and test_registry*.py: store snapshots, checks, images."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def store_state(store_dir: Path) -> dict:
    """Every file under the store (except lock files) with its size, plus index.json's content."""
    state = {}
    for root, _dirs, files in os.walk(store_dir):
        for name in files:
            if name.endswith(".lock"):
                continue
            p = Path(root) / name
            state[str(p.relative_to(store_dir))] = p.stat().st_size
    index = store_dir / "index.json"
    state["index.json:content"] = index.read_text() if index.exists() else None
    return state


def assert_consistent(store_dir: Path) -> int:
    """Every blob hashes to its name; returns the number of blobs."""
    n = 0
    for p in (store_dir / "blobs" / "sha256").iterdir():
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        assert h.hexdigest() == p.name, f"blob {p.name} is corrupt"
        n += 1
    return n


def refs(store_dir: Path) -> dict:
    index = json.loads((store_dir / "index.json").read_text())
    return {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in index.get("manifests", [])}


def random_layer(size: int, name: str = "data.bin"):
    """A gzip layer holding `size` random bytes (incompressible: the blob is about `size` bytes)."""
    from fixtures.images import Layer
    from fixtures.tarbuild import file

    return Layer([file(name, os.urandom(size))])


def pull_env(**extra) -> dict:
    """Small timeouts and backoff so fault tests finish quickly (never asserted on)."""
    env = {"IMAGETOOL_RETRY_BACKOFF": "0.05", "IMAGETOOL_RETRY_MAX_DELAY": "2",
           "IMAGETOOL_CONNECT_TIMEOUT": "2", "IMAGETOOL_READ_TIMEOUT": "5"}
    env.update({k: str(v) for k, v in extra.items()})
    return env
