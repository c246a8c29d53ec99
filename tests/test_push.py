"""`push` against a real docker-registry: byte-identical blobs (skopeo as the oracle), HEAD before
upload, cross-repository mount, chunked uploads resumed from the registry's Range after a failure
and after SIGKILL, token scopes, indexes after their manifests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_pull_support import random_layer

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(tmp_path, monkeypatch):
    """No host configuration; quick retries (never asserted on)."""
    for k in list(os.environ):
        if k.startswith("IMAGETOOL_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("IMAGETOOL_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "docker" / "auth.json"))
    monkeypatch.setenv("IMAGETOOL_RETRY_BACKOFF", "0.05")
    monkeypatch.setenv("IMAGETOOL_RETRY_MAX_DELAY", "1")
    monkeypatch.setenv("IMAGETOOL_READ_TIMEOUT", "10")
    from imagetool.registry import auth

    auth.TOKENS._items.clear()


@pytest.fixture
def store(store_dir, env):
    from store import Store

    return Store.open(store_dir)


@pytest.fixture
def small_chunks(monkeypatch):
    """Blobs over 256 KiB go in 256 KiB PATCH chunks (the chunked path on small test images)."""
    from imagetool.transports import registry as tr

    monkeypatch.setattr(tr, "MONOLITHIC", 256 << 10)
    monkeypatch.setattr(tr, "CHUNK", 256 << 10)


def load(store, tmp_path, name: str, built) -> str:
    """Put `built` into the store under `name` (through an OCI layout and `load`)."""
    from fixtures.images import write_oci_layout

    from imagetool.archive import load_images

    layout = write_oci_layout(tmp_path / f"layout-{abs(hash(name))}", {"x": built}, {"x": name})
    load_images(store, str(layout))
    return name


def skopeo_raw(registry, ref: str) -> bytes:
    r = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/{ref}"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def skopeo_blobs(registry, ref: str, tmp_path: Path) -> dict:
    """Every blob of `ref` as skopeo copies it back (oci layout, digests preserved)."""
    out = tmp_path / "back"
    r = subprocess.run(["skopeo", "--policy", str(registry._policy()), "copy", "--all", "--preserve-digests",
                        "--src-tls-verify=false", f"docker://{registry.host}/{ref}", f"oci:{out}:x"],
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return {"sha256:" + p.name: p.read_bytes() for p in (out / "blobs" / "sha256").iterdir()}


def uploads(registry, since: int) -> list:
    return [(m, p) for m, p, s in registry.requests(since) if "/blobs/uploads" in p]


def test_push_stores_byte_identical_blobs_that_skopeo_reads_back(registry, store, tmp_path):
    from fixtures.images import Layer, build_image
    from fixtures.tarbuild import file

    from imagetool.push import push

    img = build_image([random_layer(300_000), Layer([file("etc/hello", b"hi\n")], compression=None)])
    load(store, tmp_path, f"{registry.host}/push/identical:v1", img)
    [res] = push(store, f"{registry.host}/push/identical:v1")
    assert res.digest == img.manifest_digest and res.sent == 3
    assert skopeo_raw(registry, "push/identical:v1") == img.manifest
    assert skopeo_blobs(registry, "push/identical:v1", tmp_path) == img.all_blobs()


def test_repush_sends_no_blob_bytes(registry, store, tmp_path):
    from imagetool.push import push

    img = _image()
    load(store, tmp_path, f"{registry.host}/push/again:v1", img)
    push(store, f"{registry.host}/push/again:v1")
    mark = registry.mark()
    [res] = push(store, f"{registry.host}/push/again:v1")
    assert res.sent == 0
    reqs = registry.requests(mark)
    assert uploads(registry, mark) == [], reqs
    assert {m for m, p, s in reqs if "/blobs/" in p} == {"HEAD"}


def test_push_to_another_repository_mounts_blobs_instead_of_uploading(registry, store, tmp_path):
    from imagetool.push import push

    img = _image()
    load(store, tmp_path, f"{registry.host}/push/mount-a:v1", img)
    push(store, f"{registry.host}/push/mount-a:v1")
    mark = registry.mark()
    [res] = push(store, f"{registry.host}/push/mount-a:v1", dest=f"docker://{registry.host}/push/mount-b:v1")
    assert res.sent == 0
    posts = [(m, p, s) for m, p, s in registry.requests(mark) if "/blobs/uploads" in p]
    assert posts and all(m == "POST" and s == 201 for m, p, s in posts), posts
    assert skopeo_raw(registry, "push/mount-b:v1") == img.manifest


def _image(size: int = 300_000):
    from fixtures.images import build_image

    return build_image([random_layer(size)])
