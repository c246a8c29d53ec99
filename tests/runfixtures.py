"""pytest fixtures shared by the run test modules (runhelpers.py stays importable without pytest,
for the v2 VM guest): `store = store_fixture(...)`, then import `it` and `host_unchanged` into the
test module (pytest finds fixtures by the module's names)."""

from __future__ import annotations

import pytest

from tests.runhelpers import HostSnapshot, Imagetool, busybox_store


def store_fixture(name: str, extra=None):
    """A module-scoped `store` fixture: busybox_store() in a temp dir (`extra`: a callable
    returning busybox_store's `extra`, called when the fixture is first used)."""

    @pytest.fixture(scope="module")
    def store(tmp_path_factory):
        return busybox_store(tmp_path_factory.mktemp(name) / "store", extra() if extra else None)

    return store


@pytest.fixture
def it(store):
    return Imagetool(store)


@pytest.fixture(autouse=True)
def host_unchanged(store):
    """Every test leaves the host's mounts and imagetool cgroups as it found them."""
    before = HostSnapshot(store)
    yield
    before.assert_unchanged()
