"""Which upcoming issue carries which sponsor, and when it goes out: the rotation plan
the console's sponsors page shows (`sponsors list` shows the same choices per sponsor).

An issue goes out by a scheduled campaign (its sponsor was fixed when the campaign was
made), or by a recurring rule's tick, which takes the oldest unsent issue dated on or
before the tick's day (schedule/due.oldest_unsent_issue); the ticks ahead are played in
order over the unsent issues, without sending anything. An unsent issue no tick takes
is listed without a time. Its sponsor is the one `build` and `send` would choose
(issue/sponsor.choose: front matter, else the bookings' rotation, else the default).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from newsletter.config import Config, Sponsor
from newsletter.issue import sponsor
from newsletter.issue.content import Issue
from newsletter.ledger import schedules
from newsletter.ledger.store import Store
from newsletter.ledger.tables import SCHEDULED
from newsletter.schedule import plans

SCHEDULED_BY = "scheduled"  # a scheduled campaign
RECURRING_BY = "recurring"  # a recurring rule's tick, ahead
UNSCHEDULED = "unscheduled"  # nothing sends it yet

MAX_TICKS = 60  # ticks played ahead, all rules together (a rule every minute stays bounded)


@dataclass(frozen=True)
class Planned:
    issue: str  # the slug
    subject: str
    issue_date: dt.date | None  # None: a scheduled campaign whose file is gone
    sponsor_id: str | None
    sponsor_name: str  # "" without a sponsor
    when: dt.datetime | None  # UTC; None: unscheduled
    by: str  # SCHEDULED_BY, RECURRING_BY or UNSCHEDULED
    campaign: int | None = None  # the scheduled campaign
    rule: int | None = None  # the recurring rule whose tick takes it


def plan(store: Store, config: Config, until: dt.datetime) -> list[Planned]:
    """The issues to go out: scheduled campaigns and the recurring rules' ticks up to
    `until`, by time, then the unsent issues nothing takes yet, by date."""
    rows, rules = schedules.listed(store)
    out: list[Planned] = []
    for row in rows:
        if row.status != SCHEDULED:
            continue
        made_with = config.sponsors.get(row.sponsor_id) if row.sponsor_id else None
        out.append(
            Planned(
                row.issue_slug,
                row.subject,
                None,
                row.sponsor_id,
                made_with.name if made_with else (row.sponsor_id or ""),
                row.scheduled_at,
                SCHEDULED_BY,
                campaign=row.id,
            )
        )
    dated = {p.issue: p for p in out}
    taken = schedules.taken_issues(store)
    unsent = sorted(
        (issue for issue in plans.readable_issues(config) if issue.slug not in taken),
        key=lambda i: (i.date, i.path.name),
    )
    for issue in list(unsent):
        if issue.slug in dated:  # a scheduled campaign: its file gives its date
            planned = dated[issue.slug]
            out[out.index(planned)] = dataclasses.replace(planned, issue_date=issue.date)
    chosen = sponsor.choices(config, unsent)  # the rotation worked out once, for all
    by_path = {issue.path: issue for issue in unsent}
    # The ticks ahead, each with the issue run-due would pick (schedule/plans, as the
    # calendar shows them).
    for tick in plans.upcoming_ticks(store, config, until, limit=MAX_TICKS):
        taken_now = by_path.pop(tick.issue.path, None) if tick.issue is not None else None
        if taken_now is not None:
            unsent.remove(taken_now)
            out.append(_planned(chosen, taken_now, tick.at, RECURRING_BY, rule=tick.rule_id))
    out.sort(key=lambda p: p.when or until)
    out += [_planned(chosen, issue, None, UNSCHEDULED) for issue in unsent]
    return out


def _planned(
    chosen: dict[Path, Sponsor | None],
    issue: Issue,
    when: dt.datetime | None,
    by: str,
    rule: int | None = None,
) -> Planned:
    # Left out of `chosen`: an unknown sponsor in front matter, which `check` reports.
    carried = chosen.get(issue.path)
    return Planned(
        issue.slug,
        issue.subject,
        issue.date,
        carried.id if carried else None,
        carried.name if carried else "",
        when,
        by,
        rule=rule,
    )
