"""Every config.json imagetool writes validates against the OCI runtime-spec JSON schema.

The schema is Debian's copy (golang-github-opencontainers-specs-dev); `jsonschema` is a test
dependency. Three writers are covered: specgen for a table of run option sets, the config.json the
`--runtime runc` path hands to runc (captured by a runc wrapper first on PATH), and
`imagetool unpack --bundle`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from imagetool.specgen import spec_from_image
from tests.runhelpers import Imagetool, add_image, kernel_skip_reason

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is a test dependency (pip install .[test])")


def _schema_dir() -> Path | None:
    try:
        out = subprocess.run(["dpkg", "-L", "golang-github-opencontainers-specs-dev"], capture_output=True,
                             text=True, check=False).stdout
    except FileNotFoundError:
        out = ""
    for line in out.splitlines():
        if line.endswith("/schema/config-schema.json"):
            return Path(line).parent
    return None


SCHEMA_DIR = _schema_dir()
pytestmark = pytest.mark.skipif(SCHEMA_DIR is None, reason="the OCI runtime-spec schema is not installed "
                                "(apt-get install golang-github-opencontainers-specs-dev)")


@pytest.fixture(scope="module")
def validator():
    from referencing import Registry
    from referencing.jsonschema import DRAFT4

    base = SCHEMA_DIR.as_uri() + "/"
    registry = Registry().with_resources(
        (base + p.name, DRAFT4.create_resource(json.loads(p.read_text()))) for p in SCHEMA_DIR.glob("*.json"))
    schema = dict(json.loads((SCHEMA_DIR / "config-schema.json").read_text()), id=base + "config-schema.json")
    return jsonschema.Draft4Validator(schema, registry=registry, format_checker=jsonschema.FormatChecker())


def check(validator, spec: dict) -> None:
    errors = sorted(validator.iter_errors(json.loads(json.dumps(spec))), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in errors)


def test_the_validator_refuses_a_broken_spec(validator):
    """(the check can fail: a wrong type and an unknown seccomp action are caught)"""
    spec = spec_from_image(SimpleNamespace(cmd=["sh"], entrypoint=None, env=[], working_dir=None, user=None), None)
    spec["process"]["user"]["uid"] = "root"
    spec["linux"]["seccomp"]["defaultAction"] = "SCMP_ACT_MAYBE"
    assert len(list(validator.iter_errors(spec))) == 2


OPTION_SETS = [
    ("defaults", {}),
    ("tty_user_workdir_env", {"tty": True, "user": "1000:1000", "workdir": "/srv", "env": ["A=1"]}),
    ("user_by_name", {"user": "nobody"}),
    ("limits", {"memory": "64m", "memory_swap": "-1", "cpus": 0.5, "pids_limit": 10}),
    ("no_pids_limit", {"pids_limit": -1}),
    ("network_host_read_only", {"network": "host", "read_only": True}),
    ("network_none", {"network": "none"}),
    ("privileged", {"privileged": True}),
    ("caps", {"cap_add": ["NET_ADMIN", "sys_ptrace"], "cap_drop": ["CHOWN"]}),
    ("cap_drop_all", {"cap_drop": ["ALL"]}),
    ("seccomp_unconfined_nnp_off", {"security_opt": ["seccomp=unconfined", "no-new-privileges=false"]}),
    ("podman_profile", {"security_opt": ["seccomp=/usr/share/containers/seccomp.json"]}),
    ("device_tmpfs_shm", {"devices": ["/dev/null:/dev/n:rw"], "tmpfs": ["/scratch:size=1m"], "shm_size": "8m"}),
    ("ulimits_sysctls_groups", {"ulimits": ["nofile=100:200", "core=-1"],
                                "sysctls": ["net.ipv4.ip_forward=1", "kernel.shmmax=65536"],
                                "group_add": ["10", "29"]}),
]


@pytest.mark.parametrize("name,kw", OPTION_SETS, ids=[o[0] for o in OPTION_SETS])
def test_specgen_output_validates(validator, tmp_path, name, kw):
    from imagetool.containers import RunOptions

    if "podman" in name and not os.path.exists("/usr/share/containers/seccomp.json"):
        pytest.skip("podman's profile is not installed")
    volume = tmp_path / "vol"
    volume.mkdir()
    opts = RunOptions(image="busybox", volumes=[f"{volume}:/data:ro"], **kw)
    config = SimpleNamespace(cmd=["sh"], entrypoint=["/bin/env"], env=["PATH=/bin"], working_dir="/", user=None)
    check(validator, spec_from_image(config, opts, hostname="h"))


# ---------------------------------------------------------------- the files imagetool writes

_reason = kernel_skip_reason()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from fixtures.images import busybox_image

    root = tmp_path_factory.mktemp("imagetool-schema") / "store"
    add_image(root, busybox_image(), "docker.io/library/busybox:latest")
    return root


RUNC_OPTION_SETS = [
    ("defaults", []),
    ("privileged", ["--privileged"]),
    ("options", ["--cap-add", "NET_ADMIN", "--device", "/dev/null:/dev/n", "--tmpfs", "/scratch",
                 "--ulimit", "nofile=64", "--sysctl", "kernel.msgmax=4096", "--group-add", "5", "-u", "nobody"]),
]


@pytest.mark.skipif(_reason is not None, reason=_reason or "")
@pytest.mark.parametrize("name,args", RUNC_OPTION_SETS, ids=[o[0] for o in RUNC_OPTION_SETS])
def test_the_config_json_handed_to_runc_validates(validator, store, tmp_path, name, args):
    runc = shutil.which("runc")
    if runc is None:
        pytest.skip("runc is not installed")
    wrapper_dir = tmp_path / "bin"
    wrapper_dir.mkdir()
    captured = tmp_path / "captured"
    captured.mkdir()
    wrapper = wrapper_dir / "runc"
    # copies every config.json runc is pointed at (--bundle DIR, else the current directory)
    wrapper.write_text(f"""#!/bin/sh
bundle=.
prev=
for a in "$@"; do [ "$prev" = --bundle ] || [ "$prev" = -b ] && bundle="$a"; prev="$a"; done
[ -f "$bundle/config.json" ] && cp "$bundle/config.json" {captured}/config-$$.json
exec {runc} "$@"
""")
    wrapper.chmod(0o755)
    it = Imagetool(store)
    it.env["PATH"] = f"{wrapper_dir}:{it.env.get('PATH', '/usr/bin:/bin')}"
    r = it("run", "--rm", "--runtime", "runc", *args, "busybox", "true")
    assert r.returncode == 0, r.stderr
    files = list(captured.glob("config-*.json"))
    assert files, "runc was never given a bundle"
    for f in files:
        check(validator, json.loads(f.read_text()))


def test_the_bundle_config_json_validates(validator, store, tmp_path):
    it = Imagetool(store)
    r = it("unpack", "--bundle", "busybox", tmp_path / "bundle")
    assert r.returncode == 0, r.stderr
    check(validator, json.loads((tmp_path / "bundle" / "config.json").read_text()))
