"""A sending task's times and what its status reads as.

Owns: reading `--at` (an ISO 8601 time, UTC unless it names a zone — an offset or an IANA name
such as "2026-12-24T09:00 Europe/Paris" — or a duration from now) and `--every` (days, "7d",
or any duration of at least an hour), the due time of run N, and the status a person sees
(`paused (daily quota: resumes at …)`). Pure apart from the `now` it is given.
"""
from __future__ import annotations

import datetime
import zoneinfo

from smtprelay.catalog.records import TaskRecord
from smtprelay.config import parse_duration
from smtprelay.when import iso

STATUSES = ("scheduled", "running", "paused", "finished", "cancelled")
KINDS = {"now": "now", "at": "scheduled", "every": "recurring"}


def parse_at(text: str, now: float) -> float:
    """A moment: "2026-12-24T09:00:00Z", "2026-12-24 09:00 Europe/Paris", "2026-12-24" (UTC
    midnight), or a duration from now ("2h"). ValueError says which forms exist."""
    text = text.strip()
    try:
        return now + parse_duration(text)
    except ValueError:
        pass
    zone: datetime.tzinfo | None = None
    head, _, tail = text.rpartition(" ")
    if head and "/" in tail or tail.upper() == "UTC":
        try:
            zone = zoneinfo.ZoneInfo(tail) if tail.upper() != "UTC" else datetime.timezone.utc
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"\"{tail}\" is not a time zone name (like Europe/Paris)") from None
        text = head
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"\"{text}\" is neither a time like 2026-12-24T09:00:00Z (UTC unless it names a zone: "
                         "+01:00 or Europe/Paris) nor a duration from now like 2h") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone or datetime.timezone.utc)
    elif zone is not None:
        raise ValueError(f"\"{text}\" has an offset and a zone name: give one")
    return moment.timestamp()


def parse_every(text: str) -> float:
    """"1d", "7d", "12h": at least an hour (a run needs time to finish)."""
    try:
        seconds = parse_duration(text.strip())
    except ValueError:
        raise ValueError(f"\"{text}\" is not a period like 1d or 7d") from None
    if seconds < 3600:
        raise ValueError(f"\"{text}\" is shorter than an hour")
    return seconds


def due_at(first_at: float, every: float | None, run: int) -> float:
    """When run `run` (1, 2, ...) is due."""
    return first_at + (run - 1) * (every or 0.0)


def status(task: TaskRecord, now: float) -> tuple[str, str | None]:
    """(status, detail): the status is one of STATUSES."""
    if task.cancelled_at is not None or task.state == "cancelled":
        return "cancelled", None
    if task.state == "finished":
        return "finished", None
    if task.held:
        return "paused", "by an operator: `task resume` continues it"
    if task.wait_reason and task.state == "running":
        when = f": resumes at {iso(task.wait_until)}" if task.wait_until else ""
        return "paused", f"{task.wait_reason}{when}"
    if task.state == "running":
        return "running", None
    return "scheduled", f"next run at {iso(task.next_run_at)}" if task.next_run_at else None


def shown(task: TaskRecord, now: float) -> str:
    """"paused (daily quota: resumes at 2026-12-04T10:00:00Z)"."""
    name, detail = status(task, now)
    return f"{name} ({detail})" if detail else name
