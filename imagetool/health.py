"""Healthchecks (docker's HEALTHCHECK), run by a detached container's monitor: settings, probes, State.Health.

    resolve(image_healthcheck, opts) -> dict | None   docker's Config.Healthcheck (durations in ns) of
                                      the image's HEALTHCHECK overridden field by field by --health-*;
                                      None when there is none or --no-healthcheck / Test ["NONE"]
    Checker(cdir, target, config, started, write_json).check()  one probe: runs the test through
                                      runtime/execin (output captured, the timeout enforced by killing
                                      the probe) and rewrites `health.json` in the container's
                                      directory: docker's State.Health {Status, FailingStreak, Log}.
                                      The lean monitor (conmon.py) spawns one each interval
                                      (monitor.probe, a process of its own)
    read(cdir) -> dict | None         that record (inspect's State.Health; ps's "(healthy)")

As docker: the status is `starting` until a probe succeeds (`healthy`, the streak back to 0);
a failing probe (non-zero exit, or the timeout: ExitCode -1) adds to FailingStreak, except while
the container is `starting` and within its start period; FailingStreak >= retries is `unhealthy`.
The log keeps the last 5 results, each output cut to 4096 bytes. Defaults: interval 30s, timeout
30s, retries 3, start period 0. The first probe runs one interval after the start; each (re)start
of the container begins again at `starting`. A foreground run records its healthcheck but runs no
probes (only a monitor runs them: no systemd timer needed).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from imagetool import ages, jsonlog
from imagetool.errors import ImagetoolError

FILE = "health.json"
DEFAULTS = {"Interval": 30 * 10**9, "Timeout": 30 * 10**9, "Retries": 3, "StartPeriod": 0}
LOG_ENTRIES = 5
OUTPUT_LIMIT = 4096
def _image_check(doc) -> dict:
    """The image config's Healthcheck, checked: Test a list of strings, the numbers integers >= 0."""
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ImagetoolError("the image's Healthcheck is not an object")
    test = doc.get("Test")
    if test is not None and not (isinstance(test, list) and all(isinstance(t, str) for t in test)):
        raise ImagetoolError("the image's Healthcheck.Test is not a list of strings")
    out = {"Test": list(test)} if test else {}
    for key in DEFAULTS:
        v = doc.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise ImagetoolError(f"the image's Healthcheck.{key} is not a number >= 0")
        if v:
            out[key] = v
    return out


def resolve(image_doc, opts) -> dict | None:
    """Config.Healthcheck for a run: the image's, each field replaced by its --health-* option when
    given (--health-cmd CMD is ["CMD-SHELL", CMD]); None without a test or with --no-healthcheck."""
    given = {"Interval": opts.health_interval, "Timeout": opts.health_timeout, "StartPeriod": opts.health_start_period}
    if opts.no_healthcheck:
        if opts.health_cmd or any(v is not None for v in given.values()) or opts.health_retries is not None:
            raise ImagetoolError("--no-healthcheck conflicts with the --health-* options")
        return None
    check = _image_check(image_doc)
    if opts.health_cmd is not None:
        if not opts.health_cmd.strip():
            raise ImagetoolError("--health-cmd is empty")
        check["Test"] = ["CMD-SHELL", opts.health_cmd]
    for key, text in given.items():
        if text is not None:
            flag = "--health-" + re.sub(r"(?<!^)([A-Z])", r"-\1", key).lower()
            check[key] = ages.parse_duration(text, flag)
            if key != "StartPeriod" and 0 < check[key] < 10**6:
                raise ImagetoolError(f"{flag} must be at least 1ms")
    if opts.health_retries is not None:
        if opts.health_retries < 0:
            raise ImagetoolError("--health-retries cannot be negative")
        check["Retries"] = opts.health_retries
    test = check.get("Test") or []
    if not test or test[0] == "NONE":
        return None
    if test[0] not in ("CMD", "CMD-SHELL") or len(test) < 2:
        raise ImagetoolError(f"invalid healthcheck test {test!r}", hint='use ["CMD", ARG...] or ["CMD-SHELL", "COMMAND"]')
    return {"Test": test, **{k: check.get(k) or v for k, v in DEFAULTS.items()}}


def argv(config: dict) -> list[str]:
    """The probe's command line: CMD's arguments, or CMD-SHELL's through /bin/sh -c."""
    test = config["Test"]
    return ["/bin/sh", "-c", test[1]] if test[0] == "CMD-SHELL" else list(test[1:])


def read(cdir) -> dict | None:
    """The container's State.Health as its monitor last wrote it (None: no healthcheck)."""
    try:
        with open(os.path.join(cdir, FILE)) as f:
            doc = json.load(f)
        return doc if isinstance(doc, dict) else None
    except (OSError, ValueError):
        return None


class Checker:
    """One probe of a running container, with the record it adds to (health.json, read back:
    each probe runs in a process of its own, spawned by the lean monitor, conmon.py)."""

    def __init__(self, cdir, target, config: dict, started: float, write_json):
        """`write_json(path, doc)`: the container record's atomic writer (the caller's: health
        never imports containers); `started`: time.time() of the container's start."""
        self.cdir, self.target, self.config, self.started = str(cdir), target, config, started
        self._write = write_json
        self.health = read(cdir) or {"Status": "starting", "FailingStreak": 0, "Log": []}

    def check(self) -> bool:
        """Run the probe and record its result; False (nothing recorded) when the container is gone."""
        from imagetool.runtime import execin

        result = self._probe(execin)
        if result is None:
            return False
        self._record(result)
        self._write(Path(self.cdir) / FILE, self.health)
        return True

    def _probe(self, execin) -> dict | None:
        out = bytearray()

        def sink(stream, data):
            out.extend(data[:max(0, OUTPUT_LIMIT - len(out))])

        start = jsonlog.now()
        timeout = self.config["Timeout"]
        try:
            code = execin.execute(self.target, argv(self.config), sink=sink, timeout=timeout / 1e9)
        except ImagetoolError as e:
            if "not running" in e.message:
                return None
            code, out = getattr(e, "exit_code", 125), bytearray(e.message.encode())
        if code is None:
            code, out = -1, bytearray(f"Health check exceeded timeout ({ages.go_duration(timeout)})".encode())
        return {"Start": start, "End": jsonlog.now(), "ExitCode": code, "Output": out.decode(errors="replace")}

    def _record(self, result: dict) -> None:
        h = self.health
        if result["ExitCode"] == 0:
            h["Status"], h["FailingStreak"] = "healthy", 0
        elif not (h["Status"] == "starting"
                  and time.time() - self.started < self.config["StartPeriod"] / 1e9):
            h["FailingStreak"] += 1
            if h["FailingStreak"] >= self.config["Retries"]:
                h["Status"] = "unhealthy"
        h["Log"] = (h["Log"] + [result])[-LOG_ENTRIES:]
