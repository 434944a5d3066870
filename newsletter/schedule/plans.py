"""Scheduling issues: a campaign for a local time, moved or cancelled; recurring rules.

The campaigns table is the schedule; the worker and cron are only triggers.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from newsletter.config import Config
from newsletter.errors import NewsletterError, UsageError
from newsletter.issue import publish
from newsletter.issue.content import Issue, issue_files, read_issue
from newsletter.ledger import lifecycle, once, schedules
from newsletter.ledger.store import Store
from newsletter.ledger.tables import SCHEDULED, utcnow
from newsletter.schedule.cron import next_tick
from newsletter.schedule.timing import parse_local, refuse_past, resolve_local, zone
from newsletter.segments import Segment


def schedule_issue(
    store: Store,
    config: Config,
    issue_path: Path,
    at: str,
    tz_name: str | None = None,
    fold: int | None = None,
    now: dt.datetime | None = None,
    repeat: once.Repeat = once.Repeat.REFUSE,
    segment: Segment | None = None,
) -> tuple[int, dt.datetime, str]:
    """Store a scheduled campaign; returns (id, UTC time, zone name).

    An issue an earlier campaign sent (or will send) is refused unless `repeat` says
    AGAIN or NEW_ONLY; NEW_ONLY picks its audience when the campaign is claimed. The
    `segment`'s expression is stored and evaluated then too (a marketer tags people
    until the send), its size recorded at that time.
    """
    tz_name = tz_name or config.publication.timezone
    when = resolve_local(parse_local(at), zone(tz_name), fold)
    refuse_past(when, tz_name, now or utcnow())
    built = publish.build_issue(config, read_issue(issue_path))
    publish.refuse_on_check_errors(config, built, "scheduling")
    cid = lifecycle.create(
        store,
        built,
        status=SCHEDULED,
        scheduled_at=when,
        timezone=tz_name,
        repeat=repeat,
        segment=segment,
    )
    return cid, when, tz_name


def move(
    store: Store,
    campaign_id: int,
    at: str,
    tz_name: str | None = None,
    fold: int | None = None,
    now: dt.datetime | None = None,
) -> tuple[dt.datetime, str]:
    """Move a scheduled campaign to another local time (in its zone, or `tz_name`)."""
    row = schedules.scheduled(store, campaign_id)
    tz_name = tz_name or row.timezone or "UTC"
    when = resolve_local(parse_local(at), zone(tz_name), fold)
    refuse_past(when, tz_name, now or utcnow())
    schedules.reschedule(store, campaign_id, when, tz_name)
    return when, tz_name


def cancel(store: Store, ref: str) -> str:
    """Cancel a scheduled campaign (ID) or a recurring rule (rID)."""
    if ref.lower().startswith("r") and ref[1:].isdigit():
        if not schedules.cancel_rule(store, int(ref[1:])):
            raise NewsletterError(f"recurring schedule {ref}: no such active schedule")
        return f"recurring schedule {ref} cancelled"
    if not ref.isdigit():
        raise UsageError(f"{ref!r}: expected a campaign id (12) or a recurring id (r3)")
    schedules.cancel_campaign(store, int(ref))
    return f"campaign {ref} cancelled"


def add_recurring(
    store: Store, config: Config, expression: str, tz_name: str | None, now: dt.datetime | None
) -> tuple[int, dt.datetime, str]:
    """A recurring send: at each tick of the cron `expression` in the zone, the oldest
    unsent issue goes out. Returns (rule id, first tick in UTC, zone name)."""
    tz_name = tz_name or config.publication.timezone
    first = next_tick(expression, tz_name, now or utcnow())
    return schedules.add_rule(store, expression, tz_name, first), first, tz_name


def listing(store: Store) -> list[dict[str, Any]]:
    """Scheduled (and recently scheduled) campaigns, then recurring rules."""
    out: list[dict[str, Any]] = []
    rows, rules = schedules.listed(store)
    for row in rows:
        tz_name = row.timezone or "UTC"
        out.append(
            {
                "id": str(row.id),
                "kind": "once",
                "issue": row.issue_slug,
                "subject": row.subject,
                "local_time": row.scheduled_at.astimezone(zone(tz_name)).isoformat(),
                "timezone": tz_name,
                "utc": row.scheduled_at.isoformat(),
                "status": row.status,
                "note": row.last_error or "",
                "segment": row.segment,
            }
        )
    for rule in rules:
        out.append(
            {
                "id": f"r{rule.id}",
                "kind": "recurring",
                "issue": "(oldest unsent issue)",
                "subject": f"every {rule.cron}",
                "local_time": rule.next_run_at.astimezone(zone(rule.timezone)).isoformat(),
                "timezone": rule.timezone,
                "utc": rule.next_run_at.isoformat(),
                "status": rule.status,
                "note": rule.last_note or "",
                "segment": None,
            }
        )
    return out


@dataclass(frozen=True)
class Tick:
    """A coming tick of a recurring rule, and the issue it would send as things stand
    (None: no unsent issue dated by then)."""

    rule_id: int
    cron: str
    timezone: str
    at: dt.datetime  # UTC
    issue: Issue | None


def upcoming_ticks(
    store: Store, config: Config, until: dt.datetime, limit: int = 100
) -> list[Tick]:
    """The ticks of the active recurring rules up to `until`, in time order, each with the
    issue run-due would pick (the oldest unsent one dated by the tick's day, as
    due.oldest_unsent_issue picks it), counting the issues earlier ticks take."""
    found: list[tuple[dt.datetime, Any]] = []
    for rule in schedules.active_rules(store):
        at = rule.next_run_at
        for _ in range(limit):
            if at > until:
                break
            found.append((at, rule))
            try:
                at = next_tick(rule.cron, rule.timezone, at)
            except NewsletterError:
                break  # a rule whose expression this release refuses: `schedule list` says
    found.sort(key=lambda pair: (pair[0], pair[1].id))
    taken = schedules.taken_issues(store)
    waiting = sorted(readable_issues(config), key=lambda i: (i.date, i.path.name))
    ticks = []
    for at, rule in found[:limit]:
        day = at.astimezone(zone(rule.timezone)).date()
        issue = next((i for i in waiting if i.date <= day and i.slug not in taken), None)
        if issue is not None:
            taken.add(issue.slug)
        ticks.append(Tick(rule.id, rule.cron, rule.timezone, at, issue))
    return ticks


def readable_issues(config: Config) -> list[Issue]:
    """The issue files of [paths] issues that read; one that does not is passed over
    (`check` names its problem; the calendar and the sponsors' plan show the others)."""
    out = []
    for path in issue_files(config.issues_dir):
        try:
            out.append(read_issue(path))
        except NewsletterError:
            continue
    return out
