"""The value types whose __init__/__eq__/__hash__/__repr__ are written out (so that the dataclass
decorator compiles fewer functions at every start) must give exactly what @dataclass generates:
each is compared here with a generated twin (dataclasses.make_dataclass over the same fields), so a
field added to the class but not to a written method fails here."""

from __future__ import annotations

import dataclasses
import inspect
import itertools

import pytest

from store.descriptor import Descriptor
from store.digest import Digest

from imagetool.mount import Mount
from imagetool.oci import Platform
from imagetool.reference import Reference
from imagetool.runtime import IO
from imagetool.runtime.cgroups import Hierarchy
from imagetool.runtime.explain import Step
from imagetool.runtime.sealed import Arch
from imagetool.runtime.spec import Volume
from imagetool.runtime.stdio import Pipes
from imagetool.monitor import RestartPolicy
from imagetool.userns import IdRange, Mapping
from imagetool.users import User

A, B = "a" * 64, "b" * 64

# class -> two or three field-value dicts that differ in every field
SAMPLES = {
    Digest: [{"algorithm": "sha256", "hex": A}, {"algorithm": "sha256", "hex": B}],
    Descriptor: [{"media_type": "m1", "digest": Digest("sha256", A), "size": 1, "annotations": {"k": "v"},
                  "platform": {"os": "linux"}, "urls": ("u",)},
                 {"media_type": "m2", "digest": Digest("sha256", B), "size": 2, "annotations": None,
                  "platform": None, "urls": ()}],
    Platform: [{"os": "linux", "architecture": "amd64", "variant": None},
               {"os": "windows", "architecture": "arm64", "variant": "v8"}],
    Reference: [{"domain": "docker.io", "path": "library/busybox", "tag": "latest", "digest": None},
                {"domain": "localhost:5000", "path": "app", "tag": None, "digest": "sha256:" + A}],
    Mount: [{"type": "overlay", "source": "overlay", "target": "/r", "options": ("ro",), "cwd": "/c"},
            {"type": "bind", "source": "/s", "target": "/t", "options": (), "cwd": None}],
    User: [{"uid": 0, "gid": 0, "additional_gids": (1,), "home": "/root"},
           {"uid": 1, "gid": 2, "additional_gids": (), "home": None}],
    Hierarchy: [{"fstype": "cgroup", "mountpoint": "/sys/fs/cgroup/cpu", "controllers": ("cpu",)},
                {"fstype": "cgroup2", "mountpoint": "/sys/fs/cgroup", "controllers": ()}],
    Step: [{"where": "init", "name": "a", "command": "x", "ms": 1.0, "at_ms": 2.0},
           {"where": "imagetool", "name": "b", "command": "y", "ms": 3.0, "at_ms": 4.0}],
    Volume: [{"source": "/a", "destination": "/b", "readonly": True},
             {"source": "/c", "destination": "/d", "readonly": False}],
    Pipes: [{"stdin_r": 3, "stdin_w": 4, "stdout_r": 5, "stdout_w": 6, "stderr_r": 7, "stderr_w": 8},
            {"stdin_r": None, "stdin_w": None, "stdout_r": 9, "stdout_w": 10, "stderr_r": 11, "stderr_w": 12}],
    Arch: [{"name": "x86_64", "e_machine": 62, "code": b"\x90", "align": 16},
           {"name": "aarch64", "e_machine": 183, "code": b"\x00", "align": 8}],
    IO: [{"interactive": True, "tty": True}, {"interactive": False, "tty": False}],
    IdRange: [{"inside": 0, "outside": 1000, "count": 1}, {"inside": 1, "outside": 100000, "count": 65536}],
    Mapping: [{"user": "u", "uid": 1000, "gid": 1000, "uids": (1,), "gids": (2,)},
              {"user": "v", "uid": 1001, "gid": 1002, "uids": (), "gids": ()}],
    RestartPolicy: [{"name": "always", "limit": 0}, {"name": "on-failure", "limit": 3}],
}
#: what compares by value (the others compare by identity: eq=False, nothing compares them)
BY_VALUE = (Digest, Descriptor, Platform, Reference, Mount, User, Hierarchy)
#: reprs written short on purpose (not the generated one)
SHORT_REPR = (Arch, Pipes)


def _twin(cls):
    """What @dataclass would have made of `cls`'s fields with every method generated."""
    spec = []
    for f in dataclasses.fields(cls):
        kw = {}
        if f.default is not dataclasses.MISSING:
            kw["default"] = f.default
        if f.default_factory is not dataclasses.MISSING:
            kw["default_factory"] = f.default_factory
        spec.append((f.name, object, dataclasses.field(**kw)))
    return dataclasses.make_dataclass(cls.__name__, spec, frozen=True, eq=cls in BY_VALUE)


def _variants(cls):
    """Every mix of the samples' field values (field by field), as keyword dicts."""
    samples = SAMPLES[cls]
    names = [f.name for f in dataclasses.fields(cls)]
    for choice in itertools.product(range(len(samples)), repeat=len(names)):
        yield {n: samples[i][n] for n, i in zip(names, choice)}


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_written_methods_are_what_dataclass_generates(cls):
    twin = _twin(cls)
    assert [p.name for p in inspect.signature(cls).parameters.values()] == \
           [p.name for p in inspect.signature(twin).parameters.values()]
    factories = {f.name: f.default_factory for f in dataclasses.fields(cls)}
    for (name, p), q in zip(inspect.signature(cls).parameters.items(), inspect.signature(twin).parameters.values()):
        default = q.default if factories[name] is dataclasses.MISSING else factories[name]()
        assert p.kind == q.kind and p.default == default, name   # (a factory of an immutable () may be written ())
    objs = []
    for v in _variants(cls):
        obj = cls(**v)   # (what __post_init__ normalises, e.g. Platform's arm64 variant, stays normalised)
        objs.append((obj, twin(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(cls)})))
    for obj, ref in objs:
        if cls not in SHORT_REPR:
            assert repr(obj) == repr(ref)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, dataclasses.fields(cls)[0].name, None)
    for (x, rx), (y, ry) in itertools.product(objs[:16], objs[:16]):
        if cls in BY_VALUE:
            assert (x == y) == (rx == ry)
            if x == y:
                assert hash(x) == hash(y)
        else:
            assert (x == y) == (x is y)
