"""Times as docker shows and reads them: ps's "Up 3 seconds" / "Exited (143) 2 seconds ago", Go durations, --since."""

from __future__ import annotations

import re
import time

from imagetool.errors import ImagetoolError


def _epoch(stamp: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 UTC time (fraction ignored), or None."""
    if not stamp:
        return None
    s = stamp[:19]   # parsed by hand: time.strptime would import _strptime (locale, calendar…) for ps
    if len(s) != 19 or s[4] != "-" or s[7] != "-" or s[10] not in "Tt " or s[13] != ":" or s[16] != ":":
        return None
    try:
        y, mo, d, h, mi, sec = (int(s[a:b]) for a, b in ((0, 4), (5, 7), (8, 10), (11, 13), (14, 16), (17, 19)))
    except ValueError:
        return None
    if not (1 <= mo <= 12 and 1 <= d <= 31 and h < 24 and mi < 60 and sec < 62):
        return None
    y -= mo <= 2   # days since 1970-01-01 of the proleptic Gregorian date (H. Hinnant's days_from_civil)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (mo + (-3 if mo > 2 else 9)) + 2) // 5 + d - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    return days * 86400 + h * 3600 + mi * 60 + sec


def human_duration(seconds: float) -> str:
    """docker's units.HumanDuration: 'Less than a second', '3 seconds', 'About a minute', '5 hours'…"""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    m = s // 60
    if m == 1:
        return "About a minute"
    if m < 60:
        return f"{m} minutes"
    h = round(s / 3600)
    if h == 1:
        return "About an hour"
    if h < 48:
        return f"{h} hours"
    if h < 24 * 7 * 2:
        return f"{h // 24} days"
    if h < 24 * 30 * 2:
        return f"{h // 24 // 7} weeks"
    if h < 24 * 365 * 2:
        return f"{h // 24 // 30} months"
    return f"{h // 24 // 365} years"


def status_text(state: dict, now: float | None = None) -> str:
    """ps's STATUS as docker writes it: 'Up 3 seconds', 'Up 3 seconds (healthy)' (`health_status`),
    'Exited (143) 2 seconds ago', 'Created'."""
    now = time.time() if now is None else now
    status = state.get("status")
    if status == "running":
        started = _epoch(state.get("started_at")) or _epoch(state.get("created"))
        health = {"starting": " (health: starting)", "healthy": " (healthy)",
                  "unhealthy": " (unhealthy)"}.get(state.get("health_status"), "")
        return (f"Up {human_duration(now - started)}" if started else "Up") + health
    if status == "exited":
        code = state.get("exit_code")
        finished = _epoch(state.get("finished_at") or state.get("finished"))
        ago = f" {human_duration(now - finished)} ago" if finished else ""
        return f"Exited ({code if code is not None else 137}){ago}"
    return "Created" if status == "created" else str(status or "unknown").capitalize()


def ago(stamp: str | None, now: float | None = None) -> str:
    """ps's CREATED: '5 minutes ago' for an RFC 3339 UTC time ('' when unknown)."""
    then = _epoch(stamp)
    return "" if then is None else f"{human_duration((time.time() if now is None else now) - then)} ago"


_UNITS = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def parse_duration(text: str, what: str) -> int:
    """Go's time.ParseDuration ("1m30s", "500ms", "10s", "0") in nanoseconds, at least 0."""
    s = str(text).strip()
    if s == "0":
        return 0
    parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)", s)
    if not s or not parts or "".join(n + u for n, u in parts) != s:
        raise ImagetoolError(f"invalid {what} {text!r}", hint="use a duration such as 30s, 1m30s or 500ms")
    total = sum(float(n) * _UNITS[u] for n, u in parts)
    if not total < 2**63:   # Go's limit (~292 years); also inf
        raise ImagetoolError(f"invalid {what} {text[:40]!r}: out of range", hint="use a duration such as 30s, 1m30s or 500ms")
    return int(total)


def go_duration(ns: int) -> str:
    """A duration as Go prints it for whole units: 300ms, 2s, 1m30s (docker's timeout message)."""
    if ns % 10**9:
        return f"{ns / 10**6:g}ms"
    s = ns // 10**9
    h, m, s = s // 3600, s // 60 % 60, s % 60
    return (f"{h}h" if h else "") + (f"{m}m" if h or m else "") + f"{s}s"


def since_stamp(text: str, now_ns: int | None = None) -> str:
    """`logs --since T` as a json-file time to compare entries' `time` with (the same format, so
    the strings order as the times): T is an RFC 3339 time (2026-12-02T18:00:00Z, a fraction and
    an offset allowed, or a date alone), a Unix time (1700000000[.5]) or a Go duration before now (10s, 1m30s)."""
    import datetime

    s = str(text).strip()
    now_ns = time.time_ns() if now_ns is None else now_ns
    m = re.fullmatch(r"(\d{4}-\d\d-\d\d)(?:[T ](\d\d:\d\d(?::\d\d)?)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)?)?", s)
    if m:
        date, clock, frac, zone = m.groups()
        try:
            when = datetime.datetime.fromisoformat(f"{date}T{clock or '00:00'}{'' if zone in (None, 'Z') else zone}")
        except ValueError:
            raise ImagetoolError(f"invalid --since {text!r}: no such time") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        ns = int(when.timestamp()) * 10**9 + int((frac or "0").ljust(9, "0"))
    elif re.fullmatch(r"\d{1,30}(\.\d{1,9})?", s):
        whole, _, frac = s.partition(".")
        ns = int(whole) * 10**9 + int((frac or "0").ljust(9, "0"))
    else:
        try:
            ns = now_ns - parse_duration(s, "--since")
        except ImagetoolError:
            raise ImagetoolError(f"invalid --since {text!r}",
                                 hint="use an RFC 3339 time (2026-12-02T18:00:00Z), a Unix time or a duration (10s)") from None
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"
    except (OverflowError, OSError, ValueError):   # a time gmtime cannot hold
        raise ImagetoolError(f"invalid --since {text[:40]!r}: out of range") from None
