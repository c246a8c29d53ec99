"""The benchmark framework (benchmarks/): measurement core, report, tmpfs work dir, image generator.

No timing assertions: these check that what the suite reports is what happened (order of runs,
failures and missing tools kept with their reason, a child's own peak RSS, cleanup of mounts).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks import common
from benchmarks.measure import Contender, Operation, RunFailed, error_line, run_once, run_operation
from benchmarks.report import markdown, table


def test_error_line_prefers_imagetool_error_and_go_msg():
    assert error_line("x\nimagetool: error: no such image\nhint: pull it\n") == "imagetool: error: no such image"
    go = 'time="2026-01-01T00:00:00Z" level=fatal msg="Invalid destination name oci:/x: lstat \\"/x\\": nope"'
    assert error_line(go) == 'Invalid destination name oci:/x: lstat "/x": nope'
    assert error_line("first\n\nlast line\n") == "last line"


def test_run_once_reports_failure_with_the_stderr_line(tmp_path):
    with pytest.raises(RunFailed, match=r"exit 3: imagetool: error: boom"):
        run_once(["sh", "-c", "echo 'imagetool: error: boom' >&2; echo hint >&2; exit 3"], 30,
                 errfile=tmp_path / "err")


@pytest.mark.skipif(not os.access("/usr/bin/time", os.X_OK), reason="GNU time (/usr/bin/time) not installed")
def test_peak_rss_is_the_childs_own_not_the_harness(tmp_path):
    ballast = bytearray(200 << 20)  # make this process big: a plain fork/exec child would be charged ~200 MB
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    small = run_once(["/bin/busybox", "true"], 30, errfile=tmp_path / "err")
    assert small.maxrss_kb < 20_000, small
    big = run_once(["python3", "-c", "b = bytearray(120 << 20); b[::4096] = b'x' * len(b[::4096])"], 60,
                   errfile=tmp_path / "err")
    assert 120_000 < big.maxrss_kb < 190_000, big
    del ballast


def _logger(log: Path, name: str, fail_at: int | None = None) -> Contender:
    def cmd(i: int):
        code = 1 if fail_at is not None and i >= fail_at else 0
        return ["sh", "-c", f"echo {name}{i} >> {log}; [ {code} = 0 ] || {{ echo 'it broke' >&2; exit {code}; }}"]

    return Contender(name, cmd)


def test_rounds_alternate_and_failed_or_missing_peers_keep_their_row(tmp_path):
    log = tmp_path / "order"
    op = Operation("demo", imagetool=_logger(log, "A"),
                   peers=[_logger(log, "B"), _logger(log, "C", fail_at=2),
                          Contender("D", lambda i: ["true"], missing="d not installed")])
    res = run_operation(op, warmups=1, runs=3, scratch=tmp_path)
    assert log.read_text().split() == ["A0", "B0", "C0", "A1", "B1", "C1", "A2", "B2", "C2", "A3", "B3"]
    a, b, c, d = res.results
    assert (a.status, len(a.samples)) == ("ok", 3)  # warm-up not counted
    assert (b.status, len(b.samples)) == ("ok", 3)
    assert c.status == "failed: exit 1: it broke"
    assert d.status == "missing: d not installed"
    assert len(res.ratios(b)) == 3 and res.ratios(c) == [] and res.ratios(d) == []
    text = table([res])
    assert "| **demo** (3 runs) |" in text and "failed: exit 1: it broke" in text and "missing: d not installed" in text
    assert text.count("\n") == 1 + 3  # header rule + one row per peer: nothing dropped
    page = markdown([res], {"host": "h", "cpu": "c"}, {"date": "d", "command": "benchmarks/run", "mode": "quick",
                                                        "warmups": 1, "runs": 3, "elapsed": 1.0}, ["img"])
    assert "## Machine" in page and "| cpu | c |" in page


def test_cheap_operations_get_more_counted_runs_within_the_budget(tmp_path):
    op = Operation("cheap", imagetool=Contender("a", lambda i: ["true"]), peers=[])
    res = run_operation(op, warmups=1, runs=3, scratch=tmp_path, budget=60.0, max_runs=12)
    assert len(res.imagetool.samples) == 12
    res = run_operation(op, warmups=1, runs=3, scratch=tmp_path, budget=0.0)
    assert len(res.imagetool.samples) == 3


def test_per_run_setup_and_teardown_run_around_each_sample(tmp_path):
    events = []
    c = Contender("x", lambda i: ["true"], setup=lambda i: events.append(f"s{i}"),
                  teardown=lambda i: events.append(f"t{i}"), prepare=lambda: events.append("p"))
    run_operation(Operation("o", imagetool=c, peers=[]), warmups=1, runs=1, scratch=tmp_path)
    assert events == ["p", "s0", "t0", "s1", "t1"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_tmpfs_workdir_is_unmounted_and_removed_even_on_error():
    seen = {}
    with pytest.raises(RuntimeError):
        with common.tmpfs_workdir(size="64m") as work:
            seen["work"] = work
            seen["fs"] = common.fs_type(work)
            inner = work / "inner"
            inner.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "x", str(inner)], check=True)  # as a tool might leave one
            raise RuntimeError("boom")
    assert seen["fs"] == "tmpfs"
    assert seen["work"].name.startswith("imagetool-bench-")
    assert not seen["work"].exists()
    assert common.mounts_under(seen["work"]) == []


def test_generated_debian_like_layers_are_deterministic_with_whiteouts():
    from benchmarks.imagegen import _debian_layers
    from fixtures.tarbuild import build_tar

    first = _debian_layers(0.02)
    again = _debian_layers(0.02)
    assert len(first) == 5
    assert [build_tar(x) for x in first] == [build_tar(x) for x in again]
    names = [e.path.rsplit("/", 1)[-1] for layer in first[1:] for e in layer]
    assert any(n.startswith(".wh.") and n != ".wh..wh..opq" for n in names)
    assert ".wh..wh..opq" in names
    assert any(e.path == "bin/busybox" for e in first[0])  # so the image can run `true`
    big = [e for layer in first for e in layer if e.type == "file" and len(e.data) > 500_000]
    assert big, "some large incompressible files"


def test_imagetool_command_is_not_the_pyenv_shim():
    cmd = common.imagetool_command()
    head = Path(cmd[0]).read_bytes()[:200] if Path(cmd[0]).is_file() else b""
    assert b"pyenv" not in head or not head.startswith(b"#!/usr/bin/env bash")
    if shutil.which("imagetool"):
        assert subprocess.run([*cmd, "--version"], capture_output=True).returncode == 0


def test_layer_series_is_deterministic_and_spreads_the_same_content_over_n_layers():
    from benchmarks.scaling import _layered
    from fixtures.tarbuild import build_tar

    one, sixteen = _layered(1, 0.01), _layered(16, 0.01)
    assert len(one) == 1 and len(sixteen) == 16
    assert [build_tar(x) for x in sixteen] == [build_tar(x) for x in _layered(16, 0.01)]
    size = lambda layers: sum(len(e.data) for la in layers for e in la if e.type == "file")  # noqa: E731
    assert abs(size(one) - size(sixteen)) < 0.05 * size(one)      # the same amount, only spread
    assert any(e.path == "bin/busybox" for e in sixteen[0])         # the image runs `true`


def _sample_op(name: str, group: str, image: str, times: dict, rss_mb: int = 40):
    """An OpResult whose contenders took `times` {name: seconds} in each of 3 rounds."""
    from benchmarks.measure import OpResult, Result, Sample

    op = Operation(name, imagetool=Contender(next(iter(times)), lambda i: ["true"]),
                   peers=[Contender(n, lambda i: ["true"]) for n in list(times)[1:]], group=group, image=image)
    results = [Result(n, [Sample(s, rss_mb * 1024 if k == 0 else 10_000) for _ in range(3)])
               for k, (n, s) in enumerate(times.items())]
    return OpResult(op, results)


def test_issue16_goals_compare_like_for_like_and_check_rss_on_every_row():
    from benchmarks.report import goals

    pull = _sample_op("pull debian", "pull", "debian", {"imagetool pull": 0.9, "imagetool pull --no-unpack": 0.3,
                                                        "skopeo copy docker:// oci:": 0.6, "podman pull": 3.0})
    images = _sample_op("startup: images", "startup", "busybox", {"imagetool images": 0.045, "podman images": 0.030},
                        rss_mb=61)
    text = "\n".join(goals([pull, images]))
    assert "✅ pull debian: pull --no-unpack/skopeo copy ≤ 1.0 — ratio 0.50" in text   # not pull-with-snapshots
    assert "✅ pull debian: pull (snapshots prepared)/podman pull ≤ 1.0 — ratio 0.30" in text
    assert "❌ startup: images: ≤ 1.0× podman's same command — ratio 1.50" in text
    assert "❌ startup: images: imagetool peak RSS < 60 MB — 61 MB" in text
    assert "✅ pull debian: imagetool peak RSS < 60 MB — 40 MB" in text


def test_scaling_section_has_a_row_per_image_with_time_rss_and_time_per_mb():
    from benchmarks.imagegen import BenchImage
    from benchmarks.scaling import section

    img = BenchImage("size-50mb", Path("/nonexistent"), 5, 100, 50_000_000, 30_000_000)
    pull = _sample_op("scaling pull size-50mb", "scaling pull", "size-50mb",
                      {"imagetool pull": 1.0, "imagetool pull --no-unpack": 0.5, "skopeo copy docker:// oci:": 0.8})
    unpack = _sample_op("scaling unpack size-50mb", "scaling unpack", "size-50mb",
                        {"imagetool unpack": 0.25, "umoci unpack": 1.0})
    lines = section([pull, unpack], {"size-50mb": img})
    row = next(ln for ln in lines if ln.startswith("| size-50mb |"))
    assert row == ("| size-50mb | 5 | 50 / 30 | 1.00 s / 40 MB | 500 ms / 10 MB | 800 ms / 10 MB | 20.00 | "
                   "250 ms / 40 MB | 1.00 s / 10 MB | 5.00 |")
    assert section([], {"size-50mb": img}) == []


def test_importtime_lines_parse_into_module_depth_and_times():
    from benchmarks.importtime import parse

    text = ("import time: self [us] | cumulative | imported package\n"
            "import time:       130 |        130 |   _io\n"
            "import time:       762 |       2593 | site\n"
            "import time:      1594 |       4095 |     enum\n")
    assert parse(text) == [("_io", 1, 130, 130), ("site", 0, 762, 2593), ("enum", 2, 1594, 4095)]
