"""The OCI runtime spec imagetool generates: docker's rules for args/env/user, sizes, and runc as
the oracle (the same config.json must run unchanged under `runc run`)."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field

import pytest

from imagetool.containers import RunOptions
from imagetool.errors import ImagetoolError
from imagetool.runtime.spec import parse_memory
from imagetool.specgen import spec_from_image


@dataclass
class Cfg:
    entrypoint: list | None = None
    cmd: list | None = None
    env: list = field(default_factory=list)
    working_dir: str | None = None
    user: str | None = None


def Opts(**fields) -> RunOptions:
    """The run options as the CLI builds them, for an image the tests never look up."""
    return RunOptions(image="test", **fields)


@pytest.mark.parametrize("text, value", [("7m", 7 << 20), ("1g", 1 << 30), ("512k", 512 << 10), ("1048576", 1 << 20),
                                         ("7MB", 7 << 20), ("1.5g", 3 << 29), ("100b", 100)])
def test_memory_strings(text, value):
    assert parse_memory(text) == value


@pytest.mark.parametrize("text", ["", "m", "7x", "-1m", "0", "1 g g"])
def test_bad_memory_strings(text):
    with pytest.raises(ImagetoolError):
        parse_memory(text)


@pytest.mark.parametrize("cfg, opts, args", [
    (Cfg(cmd=["sh"]), Opts(), ["sh"]),
    (Cfg(entrypoint=["/init"], cmd=["--flag"]), Opts(), ["/init", "--flag"]),
    (Cfg(entrypoint=["/init"], cmd=["--flag"]), Opts(command=["x"]), ["/init", "x"]),
    (Cfg(entrypoint=["/init"], cmd=["--flag"]), Opts(entrypoint="/bin/sh"), ["/bin/sh"]),
    (Cfg(entrypoint=["/init"], cmd=["--flag"]), Opts(entrypoint="", command=["ls"]), ["ls"]),
])
def test_entrypoint_and_cmd_follow_docker(cfg, opts, args):
    assert spec_from_image(cfg, opts)["process"]["args"] == args


def test_no_command_is_an_error():
    with pytest.raises(ImagetoolError, match="no command"):
        spec_from_image(Cfg(), Opts())


@pytest.mark.parametrize("dst", ["/", "/..", "//."])
def test_a_volume_cannot_replace_the_root(tmp_path, dst):
    from imagetool.runtime.spec import parse_volume

    with pytest.raises(ImagetoolError, match="destination can't be '/'"):
        parse_volume(f"{tmp_path}:{dst}")


def test_defaults_match_docker():
    spec = spec_from_image(Cfg(cmd=["sh"], env=["A=1"]), None, hostname="abc")
    p = spec["process"]
    assert spec["ociVersion"] == "1.0.2"
    assert len(p["capabilities"]["bounding"]) == 14 and p["capabilities"]["effective"] == p["capabilities"]["bounding"]
    assert p["noNewPrivileges"] is True
    assert p["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    assert p["env"][0].startswith("PATH=/usr/local/sbin:") and "A=1" in p["env"] and "HOSTNAME=abc" in p["env"]
    assert p["cwd"] == "/" and p["user"] == {"uid": 0, "gid": 0, "umask": 0o022}
    assert spec["hostname"] == "abc"
    assert {n["type"] for n in spec["linux"]["namespaces"]} == {"pid", "network", "ipc", "uts", "mount", "cgroup"}
    assert "/proc/kcore" in spec["linux"]["maskedPaths"] and "/proc/sys" in spec["linux"]["readonlyPaths"]
    assert [m["destination"] for m in spec["mounts"]] == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys",
                                                         "/sys/fs/cgroup"]


def test_options_reach_the_spec(tmp_path):
    src = tmp_path / "v"
    src.mkdir()
    spec = spec_from_image(Cfg(cmd=["sh"], env=["A=1", "B=2"], working_dir="/app", user="5"),
                           Opts(env=["B=3", "C=4"], workdir="/w", user="7:8", hostname="h", volumes=[f"{src}:/data:ro"],
                                read_only=True, memory="7m", memory_swap="-1", cpus=0.5, pids_limit=20,
                                network="host", tty=True))
    p = spec["process"]
    assert [e for e in p["env"] if e[0] in "ABC"] == ["A=1", "B=3", "C=4"] and "TERM=xterm" in p["env"]
    assert p["cwd"] == "/w" and p["user"] == {"uid": 7, "gid": 8, "umask": 0o022} and p["terminal"] is True
    assert spec["root"]["readonly"] is True and spec["hostname"] == "h"
    assert spec["mounts"][-1] == {"destination": "/data", "type": "bind", "source": str(src), "options": ["rbind", "ro", "rro"]}
    assert spec["linux"]["resources"]["memory"] == {"limit": 7 << 20, "swap": -1}
    assert spec["linux"]["resources"]["cpu"] == {"quota": 50000, "period": 100000}
    assert spec["linux"]["resources"]["pids"] == {"limit": 20}
    assert "network" not in {n["type"] for n in spec["linux"]["namespaces"]}


def test_user_names_resolve_from_the_rootfs_files(tmp_path):
    """The spec carries what imagetool.users.lookup finds (its own cases: tests/test_users.py)."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:App:/home/app:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\napp:x:1001:\nextra:x:2000:app,other\n")
    spec = spec_from_image(Cfg(cmd=["sh"]), Opts(user="app"), rootfs_dir=tmp_path)
    assert spec["process"]["user"] == {"uid": 1000, "gid": 1001, "umask": 0o022, "additionalGids": [2000]}
    assert "HOME=/home/app" in spec["process"]["env"]


# ---------------------------------------------------------------- runc as the oracle


def _bundle(tmp_path, spec) -> str:
    from fixtures.images import busybox_image

    bb = busybox_image()
    rootfs = tmp_path / "bundle" / "rootfs"
    rootfs.mkdir(parents=True)
    for layer in json.loads(bb.manifest)["layers"]:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(bb.blobs[layer["digest"]]))) as tf:
            tf.extractall(rootfs, filter="fully_trusted")
    (tmp_path / "bundle" / "config.json").write_text(json.dumps(spec))
    return str(tmp_path / "bundle")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runc") is None, reason="needs root and runc")
def test_spec_runs_unchanged_under_runc(tmp_path):
    script = "echo $$; grep CapEff /proc/self/status; hostname; id -u; pwd; ulimit -n"
    spec = spec_from_image(Cfg(cmd=["sh", "-c", script], working_dir="/tmp", user="65534"),
                           Opts(memory="64m", pids_limit=50, cpus=1.0), hostname="runc-box")
    bundle = _bundle(tmp_path, spec)
    cid = "imagetool-spec-" + os.urandom(4).hex()
    try:
        r = subprocess.run(["runc", "run", "--bundle", bundle, cid], capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
    finally:
        subprocess.run(["runc", "delete", "-f", cid], capture_output=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:6] == ["1", "CapEff:\t0000000000000000", "runc-box", "65534", "/tmp", "1024"]
