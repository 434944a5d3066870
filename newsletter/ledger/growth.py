"""The list's growth over time, as the subscribers table records it: who was added and
who left, week by week, in the publication's time zone.

What is stored decides what can be counted: `created_at` is when an address reached the
list (a signup, `subscribers add`, an import: an imported file's own dates are not
kept, so an import counts in the week it ran), and `unsubscribed_at` when it left (set
by an unsubscribe, cleared when the person comes back). A bounce or complaint changes
the status without a date on the subscriber, and a confirmation leaves no date: neither
is counted here, and the console says so.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass

import sqlalchemy as sa

from newsletter.ledger.store import Store
from newsletter.ledger.tables import PENDING_CONFIRMATION, subscribers

# What the weeks' counts leave out, for the page that shows them.
NOT_DATED = (
    "Bounced and complained addresses are not dated on the subscriber (only their status"
    " is stored), so they are not in these weeks; nor is a signup's confirmation. An import"
    " counts in the week it ran: the file's own signup dates are not kept."
)


@dataclass(frozen=True)
class Week:
    """One week (Monday to Sunday, in the publication's zone)."""

    start: dt.date
    subscribed: int  # addresses added that week (unconfirmed signups left out)
    unsubscribed: int  # addresses that left that week and have not come back

    @property
    def net(self) -> int:
        return self.subscribed - self.unsubscribed


def weekly(store: Store, timezone: str, today: dt.date, weeks: int = 12) -> list[Week]:
    """The last `weeks` weeks up to the one holding `today`, oldest first, every week
    named (0 for none). Only the two dates are read, streamed: memory stays flat."""
    tz = zoneinfo.ZoneInfo(timezone)
    last = today - dt.timedelta(days=today.weekday())
    first = last - dt.timedelta(weeks=weeks - 1)
    since = dt.datetime.combine(first, dt.time(), tz).astimezone(dt.UTC)
    added = dict.fromkeys((first + dt.timedelta(weeks=n) for n in range(weeks)), 0)
    left = dict(added)

    def week_of(when: dt.datetime) -> dt.date:
        day = when.astimezone(tz).date()
        return day - dt.timedelta(days=day.weekday())

    query = sa.select(
        subscribers.c.created_at, subscribers.c.unsubscribed_at, subscribers.c.status
    ).where((subscribers.c.created_at >= since) | (subscribers.c.unsubscribed_at >= since))
    with store.engine.connect() as conn:
        for created, unsubscribed, status in conn.execution_options(yield_per=1000).execute(query):
            week = week_of(created)
            if week in added and status != PENDING_CONFIRMATION:
                added[week] += 1
            if unsubscribed is not None:
                week = week_of(unsubscribed)
                if week in left:
                    left[week] += 1
    return [Week(start, added[start], left[start]) for start in added]
