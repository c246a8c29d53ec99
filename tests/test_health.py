"""Healthchecks run by a detached container's monitor: starting -> healthy/unhealthy as docker, the
timeout enforced, the image's HEALTHCHECK used unless --no-healthcheck, the start period, the
results in inspect's State.Health and ps's STATUS; bad options refused before anything runs.

Every test removes its containers and checks that their monitors are gone by PID (Detached).
"""

from __future__ import annotations

import json
import re

import pytest

from imagetool import ages, health
from imagetool.errors import ImagetoolError
from tests.runfixtures import host_unchanged, it, store_fixture  # noqa: F401  (pytest fixtures)
from tests.runhelpers import kernel_skip_reason
from tests.test_detached import Detached, _eventually

_reason = kernel_skip_reason()
needs_kernel = pytest.mark.skipif(_reason is not None, reason=_reason or "")

MS = 10**6


def _images():
    check = {"Test": ["CMD-SHELL", "echo from-image"], "Interval": 100 * MS, "Retries": 1}
    return {"withhealth": ([], {"Cmd": ["sleep", "1000"], "Env": ["PATH=/bin"], "Healthcheck": check})}


store = store_fixture("imagetool-health", _images)


@pytest.fixture
def dt(it, store):
    d = Detached(it, store)
    yield d
    d.cleanup()


def _health(it, cid: str) -> dict:
    r = it("inspect", cid)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    return (doc[0] if isinstance(doc, list) else doc)


def _eventually_health(it, cid: str, status: str, what: str) -> dict:
    return _eventually(lambda: (lambda h: h if h.get("Status") == status else None)(
        _health(it, cid)["State"].get("Health") or {}), what)


@needs_kernel
def test_a_passing_check_turns_healthy_and_ps_says_so(dt, it):
    cid = dt.run("--health-cmd", "echo ok", "--health-interval", "100ms", "busybox", "sleep", "1000")
    h = _eventually_health(it, cid, "healthy", "the container turns healthy")
    assert h["FailingStreak"] == 0
    assert h["Log"] and h["Log"][-1]["ExitCode"] == 0 and h["Log"][-1]["Output"] == "ok\n"
    assert all(e["Start"] <= e["End"] for e in h["Log"])
    assert re.search(r"Up .*\(healthy\)", it("ps").stdout)


@needs_kernel
def test_a_failing_check_turns_unhealthy_after_retries_failures_in_a_row(dt, it):
    cid = dt.run("--health-cmd", "echo bad >&2; exit 3", "--health-interval", "100ms", "--health-retries", "2",
                 "busybox", "sleep", "1000")
    h = _eventually_health(it, cid, "unhealthy", "the container turns unhealthy")
    assert h["FailingStreak"] >= 2
    assert [e["ExitCode"] for e in h["Log"]][:2] == [3, 3] and h["Log"][0]["Output"] == "bad\n"
    assert len(h["Log"]) <= health.LOG_ENTRIES
    assert "(unhealthy)" in it("ps").stdout


@needs_kernel
def test_a_check_past_its_timeout_is_killed_and_fails_with_exit_code_minus_1(dt, it):
    cid = dt.run("--health-cmd", "exec sleep 1000", "--health-timeout", "200ms", "--health-interval", "100ms",
                 "--health-retries", "1", "busybox", "sleep", "1000")
    h = _eventually(lambda: (lambda h: h if len(h.get("Log", [])) >= 2 else None)(
        _health(it, cid)["State"].get("Health") or {}), "two timed-out checks")
    assert h["Status"] == "unhealthy" and h["FailingStreak"] >= 2
    assert [(e["ExitCode"], e["Output"]) for e in h["Log"][:2]] == [(-1, "Health check exceeded timeout (200ms)")] * 2
    # each probe was killed at its timeout: at most the one under way is alive besides PID 1
    # (the killed ones are zombies, [sleep]: a bare `sleep` as PID 1 reaps nothing)
    ps = it("exec", cid, "ps", "-o", "pid,args").stdout
    probes = [line for line in ps.splitlines() if line.endswith(" sleep 1000") and line.split()[0] != "1"]
    assert len(probes) <= 1, ps


@needs_kernel
def test_the_images_healthcheck_is_used(dt, it):
    cid = dt.run("withhealth")
    h = _eventually_health(it, cid, "healthy", "the image's check turns it healthy")
    assert h["Log"][-1]["Output"] == "from-image\n"
    cfg = _health(it, cid)["Config"]["Healthcheck"]
    assert cfg["Test"] == ["CMD-SHELL", "echo from-image"] and cfg["Interval"] == 100 * MS and cfg["Retries"] == 1


@needs_kernel
def test_health_options_override_the_images_field_by_field(dt, it):
    cid = dt.run("--health-cmd", "exit 1", "--health-start-period", "1h", "withhealth")
    cfg = _health(it, cid)["Config"]["Healthcheck"]
    assert cfg == {"Test": ["CMD-SHELL", "exit 1"], "Interval": 100 * MS, "Timeout": 30 * 10**9, "Retries": 1,
                   "StartPeriod": 3600 * 10**9}
    # failures within the start period do not count: it stays starting
    h = _eventually(lambda: (lambda h: h if len(h.get("Log", [])) >= 3 else None)(
        _health(it, cid)["State"].get("Health") or {}), "three failed checks")
    assert h["Status"] == "starting" and h["FailingStreak"] == 0
    assert "(health: starting)" in it("ps").stdout


@needs_kernel
def test_no_healthcheck_disables_the_images(dt, it, store):
    cid = dt.run("--no-healthcheck", "withhealth")
    doc = _health(it, cid)
    assert "Health" not in doc["State"] and "Healthcheck" not in doc["Config"]
    assert dt.state(cid)["healthcheck"] is None
    assert not (store / "containers" / cid / health.FILE).exists()
    assert "(" not in it("ps").stdout.splitlines()[1]


@needs_kernel
@pytest.mark.parametrize("argv, text", [
    (["--health-interval", "soon"], "invalid --health-interval 'soon'"),
    (["--health-timeout", "10"], "invalid --health-timeout '10'"),
    (["--health-interval", "1us"], "--health-interval must be at least 1ms"),
    (["--no-healthcheck", "--health-cmd", "true"], "--no-healthcheck conflicts"),
    (["--health-cmd", " "], "--health-cmd is empty"),
])
def test_bad_health_options_are_one_clear_line_and_leave_nothing(it, store, argv, text):
    r = it("run", "-d", *argv, "busybox", "sleep", "1000")
    assert r.returncode == 125 and r.stderr.startswith("imagetool: error: ") and text in r.stderr, r.stderr
    cdir = store / "containers"
    assert not cdir.exists() or not [p for p in cdir.iterdir() if not p.name.startswith(".")]


@pytest.mark.parametrize("text, ns", [
    ("0", 0), ("30s", 30 * 10**9), ("1m30s", 90 * 10**9), ("500ms", 500 * MS), ("1.5h", 5400 * 10**9),
    ("250us", 250_000), ("2h3m4s", (2 * 3600 + 3 * 60 + 4) * 10**9),
])
def test_durations_parse_as_gos(text, ns):
    assert ages.parse_duration(text, "x") == ns


@pytest.mark.parametrize("text", ["", "10", "s", "-1s", "1d", "1s2", "1 s"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ImagetoolError):
        ages.parse_duration(text, "x")


@pytest.mark.parametrize("image_doc, bad", [
    ({"Test": "true"}, "Test is not a list"),
    ({"Test": ["CMD-SHELL", "true"], "Interval": -1}, "Interval is not a number"),
    ({"Test": ["CMD-SHELL", "true"], "Retries": "3"}, "Retries is not a number"),
    ({"Test": ["SHELL", "true"]}, "invalid healthcheck test"),
    ({"Test": ["CMD"]}, "invalid healthcheck test"),
    ([], "is not an object"),
])
def test_a_bad_image_healthcheck_is_refused(image_doc, bad):
    from imagetool.containers import RunOptions

    with pytest.raises(ImagetoolError, match=bad):
        health.resolve(image_doc, RunOptions(image="x"))


@pytest.mark.parametrize("image_doc", [None, {"Test": ["NONE"]}, {}])
def test_no_test_means_no_healthcheck(image_doc):
    from imagetool.containers import RunOptions

    assert health.resolve(image_doc, RunOptions(image="x")) is None


def test_go_durations_print_as_docker_writes_the_timeout():
    assert [ages.go_duration(n) for n in (200 * MS, 30 * 10**9, 90 * 10**9, 3600 * 10**9)] == \
        ["200ms", "30s", "1m30s", "1h0m0s"]


@pytest.mark.parametrize("text, stamp", [
    ("2026-12-02T18:00:00Z", "2026-12-02T18:00:00.000000000Z"),
    ("2026-12-02T18:00:00.5+01:00", "2026-12-02T17:00:00.500000000Z"),
    ("2026-12-02", "2026-12-02T00:00:00.000000000Z"),
    ("1700000000.25", "2023-11-14T22:13:20.250000000Z"),
    ("10s", "2023-11-14T22:13:10.000000000Z"),
])
def test_logs_since_reads_rfc3339_unix_times_and_durations(text, stamp):
    assert ages.since_stamp(text, now_ns=1700000000 * 10**9) == stamp


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "-5s", ""])
def test_a_bad_since_is_refused(text):
    with pytest.raises(ImagetoolError, match="invalid --since"):
        ages.since_stamp(text)
