"""`imagetool pull` against a real docker-registry: tags, digests, indexes, many layers, errors,
re-pulls, concurrent pulls and a pull killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from test_pull_support import assert_consistent, pull_env, random_layer, refs, store_state


@pytest.fixture(scope="module")
def multi(registry):
    """A two-platform OCI index (amd64, arm64/v8) pushed with skopeo --all."""
    from fixtures.images import Layer, build_image, build_index
    from fixtures.tarbuild import file

    amd = build_image([Layer([file("arch", b"amd64\n")])], platform="linux/amd64")
    arm = build_image([Layer([file("arch", b"arm64\n")])], platform="linux/arm64/v8")
    index = build_index([amd, arm])
    registry.push(index, "pull/multi:v1")
    return {"index": index, "linux/amd64": amd, "linux/arm64/v8": arm}


def _blob_gets(registry, since: int) -> list[str]:
    return [p for m, p, s in registry.requests(since) if m == "GET" and "/blobs/" in p]


def test_pull_by_tag_stores_verified_image_and_tags_it(registry, busybox, cli, store_dir):
    registry.push(busybox, "pull/busybox:latest")
    r = cli("pull", f"{registry.host}/pull/busybox")
    assert r.returncode == 0, r.stderr
    name = f"{registry.host}/pull/busybox:latest"
    assert f"Digest: {busybox.manifest_digest}" in r.stdout
    assert f"Status: Downloaded newer image for {name}" in r.stdout
    entry = refs(store_dir)[name]
    assert entry["digest"] == busybox.manifest_digest
    for digest in busybox.blobs:
        assert (store_dir / "blobs" / "sha256" / digest.split(":")[1]).is_file()
    assert assert_consistent(store_dir) == len(busybox.blobs) + 1
    # plain progress lines when stderr is not a terminal
    short = busybox.layers[0].digest.split(":")[1][:12]
    assert f"{short}: Downloading" in r.stderr and f"{short}: Pull complete" in r.stderr
    # skopeo reads the store as an OCI layout (the oracle agrees on what was stored)
    out = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{store_dir}:{name}"],
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == busybox.manifest


def test_repull_is_up_to_date_and_transfers_no_blob(registry, busybox, cli, store_dir):
    registry.push(busybox, "pull/again:latest")
    cli("pull", f"{registry.host}/pull/again", check=True)
    mark = registry.mark()
    r = cli("pull", f"{registry.host}/pull/again", check=True)
    assert "Status: Image is up to date" in r.stdout
    reqs = registry.requests(mark)
    assert _blob_gets(registry, mark) == []
    assert [m for m, p, s in reqs if "/manifests/" in p] == ["HEAD"], reqs  # HEAD only, no GET


def test_pull_by_digest_and_quiet_prints_only_the_digest(registry, busybox, cli, store_dir):
    registry.push(busybox, "pull/bydigest:v1")
    ref = f"{registry.host}/pull/bydigest@{busybox.manifest_digest}"
    r = cli("pull", "-q", ref, check=True)
    assert r.stdout.strip() == busybox.manifest_digest
    assert r.stderr == ""
    assert refs(store_dir)[ref]["digest"] == busybox.manifest_digest


def test_pull_selects_host_platform_from_index(registry, multi, cli, store_dir):
    from fixtures.images import host_platform

    want = host_platform()
    if want not in multi:
        pytest.skip(f"the test index has no image for this host ({want})")
    r = cli("pull", f"{registry.host}/pull/multi:v1", check=True)
    assert f"Digest: {multi['index'].manifest_digest}" in r.stdout  # the digest the tag resolves to
    entry = refs(store_dir)[f"{registry.host}/pull/multi:v1"]
    assert entry["digest"] == multi[want].manifest_digest        # the name → the platform's manifest
    assert (store_dir / "blobs/sha256" / multi["index"].manifest_digest.split(":")[1]).is_file()


@pytest.mark.parametrize("platform", ["linux/arm64", "linux/arm64/v8", "linux/amd64"])
def test_pull_platform_choice(registry, multi, cli, store_dir, platform):
    r = cli("pull", "--platform", platform, f"{registry.host}/pull/multi:v1", check=True)
    key = "linux/arm64/v8" if platform.startswith("linux/arm64") else platform
    entry = refs(store_dir)[f"{registry.host}/pull/multi:v1"]
    assert entry["digest"] == multi[key].manifest_digest
    layer = multi[key].layers[0].digest
    assert (store_dir / "blobs/sha256" / layer.split(":")[1]).is_file()
    other = multi["linux/amd64" if key != "linux/amd64" else "linux/arm64/v8"].layers[0].digest
    assert not (store_dir / "blobs/sha256" / other.split(":")[1]).exists()
    assert r.stdout.strip().endswith(f"{registry.host}/pull/multi:v1")


def test_pull_platform_without_match_lists_available(registry, multi, cli, store_dir):
    from store import Store

    Store.open(store_dir)
    before = store_state(store_dir)
    r = cli("pull", "--platform", "linux/s390x", f"{registry.host}/pull/multi:v1")
    assert r.returncode == 1
    err = [line for line in r.stderr.splitlines() if line.startswith("imagetool: error:")]
    assert len(err) == 1 and "linux/s390x" in err[0]
    assert "linux/amd64" in err[0] and "linux/arm64/v8" in err[0]
    assert store_state(store_dir) == before


def test_pull_docker_manifest_list_and_schema2(registry, cli, store_dir):
    """Docker media types: a manifest list over v2 schema 2 manifests (gzip layers)."""
    from fixtures.images import Layer, build_image, build_index, host_platform
    from fixtures.tarbuild import file

    img = build_image([Layer([file("docker", b"v2s2\n")])], platform=host_platform(), docker=True)
    other = build_image([Layer([file("docker", b"other\n")])], platform="linux/riscv64", docker=True)
    lst = build_index([other, img], docker=True)
    assert b"manifest.list.v2+json" in lst.manifest
    registry.push(lst, "pull/dockerlist:v1")
    r = cli("pull", f"{registry.host}/pull/dockerlist:v1")
    assert r.returncode == 0, r.stderr
    entry = refs(store_dir)[f"{registry.host}/pull/dockerlist:v1"]
    assert entry["digest"] == img.manifest_digest
    assert entry["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert assert_consistent(store_dir) == 4  # list + manifest + config + layer


def test_pull_nested_index(registry, cli, store_dir):
    """A top index whose entry is itself an index (BuildKit style) is followed down."""
    from fixtures.images import Layer, build_image, build_index, host_platform
    from fixtures.tarbuild import file

    img = build_image([Layer([file("nested", b"yes\n")])], platform=host_platform())
    inner = build_index([img])
    registry.push(inner, "pull/nested:inner")
    outer = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
                                       "digest": inner.manifest_digest, "size": len(inner.manifest)}]}).encode()
    status, _, body = registry.get("/v2/pull/nested/manifests/v1", method="PUT", body=outer,
                                   headers={"Content-Type": "application/vnd.oci.image.index.v1+json"})
    assert status == 201, body
    r = cli("pull", f"{registry.host}/pull/nested:v1")
    assert r.returncode == 0, r.stderr
    assert refs(store_dir)[f"{registry.host}/pull/nested:v1"]["digest"] == img.manifest_digest


def test_pull_many_layers_in_parallel(registry, cli, store_dir):
    from fixtures.images import build_image

    layers = [random_layer(50_000 + i * 1000, name=f"l{i}") for i in range(6)]
    img = build_image(layers)
    registry.push(img, "pull/layers:v1")
    mark = registry.mark()
    r = cli("pull", "--max-concurrent-downloads", "4", f"{registry.host}/pull/layers:v1")
    assert r.returncode == 0, r.stderr
    gets = _blob_gets(registry, mark)
    assert sorted(gets) == sorted(f"/v2/pull/layers/blobs/{d}" for d in img.blobs)  # each once
    assert assert_consistent(store_dir) == 8  # 6 layers + config + manifest


@pytest.mark.parametrize("ref, needle", [
    ("{host}/pull/does-not-exist:v1", "repository {host}/pull/does-not-exist not found"),
    ("{host}/pull/busybox:no-such-tag", "manifest for {host}/pull/busybox:no-such-tag not found"),
    ("127.0.0.1:1/pull/x:v1", "cannot connect to 127.0.0.1:1"),
    ("Not A Reference!", "invalid reference"),
    ("{host}/pull/busybox@sha256:" + "0" * 64, "not found"),
])
def test_pull_errors_are_one_line_and_leave_store_unchanged(registry, busybox, cli, store_dir, ref, needle):
    registry.push(busybox, "pull/busybox:latest")
    from store import Store

    Store.open(store_dir)
    before = store_state(store_dir)
    r = cli("pull", ref.format(host=registry.host), env=pull_env(IMAGETOOL_RETRIES=2))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("imagetool: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr
    assert needle.format(host=registry.host) in errors[0]
    assert "Traceback" not in r.stderr
    assert store_state(store_dir) == before


def test_concurrent_pulls_download_each_blob_once(registry, cli, store_dir):
    """Two processes pull the same image at once through a throttling proxy: both succeed, and
    the store's per-digest ingest lock makes the second wait instead of downloading again."""
    from fixtures.images import build_image
    from fixtures.proxy import Fault, FaultProxy

    img = build_image([random_layer(300_000, name=f"c{i}") for i in range(3)])
    registry.push(img, "pull/concurrent:v1")
    with FaultProxy(registry.url) as proxy:
        proxy.add(Fault("throttle", r"/blobs/", times=None, rate=1_000_000))
        ref = f"{proxy.host}/pull/concurrent:v1"
        procs = [subprocess.Popen(cli.argv("pull", ref), env=cli.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, err
        for digest in img.blobs:
            gets = proxy.records(f"/blobs/{digest}", "GET")
            assert len(gets) == 1, (digest, [(g.path, g.status) for g in gets])
    assert assert_consistent(store_dir) == 5


def test_sigkill_mid_layer_then_pull_resumes(registry, cli, store_dir):
    """A throttled pull killed with SIGKILL leaves a partial; the next pull resumes it with
    Range (transferring less than the layer) and the store ends consistent."""
    from fixtures.images import build_image
    from fixtures.proxy import Fault, FaultProxy

    layer = random_layer(2_000_000, name="big")
    img = build_image([layer])
    registry.push(img, "pull/killed:v1")
    hexd = layer.digest.split(":")[1]
    partial = store_dir / "ingest" / f"{hexd}.partial"
    with FaultProxy(registry.url) as proxy:
        proxy.add(Fault("throttle", r"/blobs/", times=None, rate=400_000))
        ref = f"{proxy.host}/pull/killed:v1"
        p = subprocess.Popen(cli.argv("pull", ref), env=cli.env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not (partial.exists() and partial.stat().st_size > 300_000):
                assert p.poll() is None, "the pull ended before it could be killed"
                assert time.monotonic() < deadline, "no partial download appeared"
                time.sleep(0.05)
        finally:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
        kept = partial.stat().st_size
        assert 0 < kept < layer.size
        assert f"{registry.host}" not in json.dumps(refs(store_dir))  # no ref from the killed pull
        proxy.clear()
        mark = len(proxy.records())
        r = cli("pull", ref)
        assert r.returncode == 0, r.stderr
        second = [rec for rec in proxy.records()[mark:] if f"/blobs/{layer.digest}" in rec.path]
        assert second and all(rec.headers.get("Range") for rec in second), second
        assert sum(rec.sent for rec in second) <= layer.size - kept
    assert (store_dir / "blobs/sha256" / hexd).is_file() and not partial.exists()
    assert assert_consistent(store_dir) == 3


def test_progress_bars_on_a_terminal(registry, busybox, cli, store_dir):
    """With stderr on a pseudo-terminal the tqdm rendering is used (a bar per blob and a total)."""
    import pty

    registry.push(busybox, "pull/tty:latest")
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen(cli.argv("pull", f"{registry.host}/pull/tty"), env=cli.env,
                             stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
        os.close(slave)
        slave = None
        out = b""
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            out += data
        p.wait(timeout=60)
        assert p.returncode == 0, out
    finally:
        os.close(master)
        if slave is not None:
            os.close(slave)
    text = out.decode(errors="replace")
    assert "Total" in text and "Pull complete" in text
    assert busybox.layers[0].digest.split(":")[1][:12] in text


@pytest.mark.parametrize("argv, expected", [
    (["pull", "busybox"], ("busybox", None, False, 3, False, None)),
    (["--store", "/s", "--debug", "pull", "-q", "--platform=linux/arm64", "--max-concurrent-downloads", "4",
      "--insecure", "r"], ("r", "linux/arm64", True, 4, True, "/s")),
    (["--store=/s", "pull", "--quiet", "--platform", "linux/amd64", "x"], ("x", "linux/amd64", True, 3, False, "/s")),
    (["pull", "--help"], None), (["pull"], None), (["pull", "a", "b"], None), (["tag", "pull", "x"], None),
    (["pull", "--max-concurrent-downloads", "0", "x"], None), (["pull", "--bogus", "x"], None),
    (["--version", "pull", "x"], None),
])
def test_pull_fast_path_parses_only_what_it_fully_understands(argv, expected):
    from imagetool.fastcli import _global_options, parse_pull

    parsed = _global_options(argv)
    got = None
    if parsed is not None and parsed[2] == "pull":
        got = parse_pull(parsed[3])
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert (got["ref"], got["platform"], got["quiet"], got["max_concurrent"], got["insecure"],
                parsed[0]) == expected


def test_pull_skips_typer_and_help_still_works(registry, busybox, cli, store_dir):
    registry.push(busybox, "pull/fast:latest")
    r = subprocess.run([cli.argv("pull")[0], "-X", "importtime", *cli.argv("pull", "-q", f"{registry.host}/pull/fast")[1:]],
                       env=cli.env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == busybox.manifest_digest
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "imagetool.pull" in imported
    assert not {m for m in imported if m.split(".")[0] in ("typer", "pydantic")}
    r = cli("pull", "--help")
    assert r.returncode == 0 and "--platform" in r.stdout


def test_the_fast_exit_flushes_output_and_runs_atexit_callbacks(registry, busybox, cli, store_dir):
    """The typer-free path ends with os._exit (no interpreter teardown): output block-buffered on a
    pipe (no PYTHONUNBUFFERED) still arrives whole, on both pull outcomes, and atexit callbacks run."""
    registry.push(busybox, "pull/flush:latest")
    env = {k: v for k, v in cli.env.items() if k != "PYTHONUNBUFFERED"}
    name = f"{registry.host}/pull/flush:latest"
    for status in ("Downloaded newer image", "Image is up to date"):
        r = subprocess.run(cli.argv("pull", f"{registry.host}/pull/flush"), env=env, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == [f"Digest: {busybox.manifest_digest}", f"Status: {status} for {name}", name]
    code = ("import atexit, sys; atexit.register(lambda: print('atexit ran')); from imagetool.__main__ import main; "
            f"main(['--store', {str(store_dir)!r}, 'pull', '-q', {name!r}])")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [busybox.manifest_digest, "atexit ran"]


def test_prune_during_a_pull_does_not_sweep_its_blobs(registry, cli, store_dir):
    """`prune` while a (throttled) pull is between its first committed blob and its tag: the
    pull holds the store's GC lock, so prune waits and the pulled image is complete."""
    from fixtures.images import build_image
    from fixtures.proxy import Fault, FaultProxy

    small, big = random_layer(10_000, name="small"), random_layer(1_500_000, name="big")
    img = build_image([small, big])
    registry.push(img, "pull/prune:v1")
    with FaultProxy(registry.url) as proxy:
        proxy.add(Fault("throttle", f"/blobs/{big.digest}", times=None, rate=500_000))
        ref = f"{proxy.host}/pull/prune:v1"
        p = subprocess.Popen(cli.argv("pull", "--max-concurrent-downloads", "1", ref), env=cli.env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            partial = store_dir / "ingest" / f"{big.digest.split(':')[1]}.partial"
            deadline = time.monotonic() + 60
            while not (partial.exists() and partial.stat().st_size > 0):
                assert p.poll() is None, p.stderr.read()
                assert time.monotonic() < deadline
                time.sleep(0.02)
            r = cli("prune")
            assert r.returncode == 0, r.stderr
        finally:
            _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    for digest in img.blobs:
        assert (store_dir / "blobs/sha256" / digest.split(":")[1]).is_file(), digest
    assert refs(store_dir)[ref]["digest"] == img.manifest_digest
