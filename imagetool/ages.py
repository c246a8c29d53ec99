"""Times as docker shows them: ps's "Up 3 seconds" / "Exited (143) 2 seconds ago", "5 minutes ago"."""

from __future__ import annotations

import calendar
import time


def _epoch(stamp: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 UTC time (fraction ignored), or None."""
    if not stamp:
        return None
    try:
        return calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


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
