"""One issue to one subscriber once, across campaigns: which campaigns sent an issue
(or will), and whom a new campaign of it goes to (`Repeat`: refuse, again, new only).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from newsletter.errors import NewsletterError
from newsletter.ledger import tags
from newsletter.ledger.delivery_rows import BATCH
from newsletter.ledger.store import Store
from newsletter.ledger.tables import (
    ACTIVE,
    INCOMPLETE,
    READY,
    RUNNING,
    SCHEDULED,
    SENT,
    UNSENT,
    campaigns,
    deliveries,
    subscribers,
)
from newsletter.segments import Segment

# Who a campaign goes to (campaigns.audience)
EVERYONE = "all"  # every active subscriber


NEWCOMERS = "new"  # active subscribers who have not had its issue from another campaign


# A campaign in one of these will still send: its deliveries wait, or are not made yet.
_GOING = (SCHEDULED, READY, RUNNING, INCOMPLETE)


class Repeat(enum.Enum):
    """What a new campaign does about an issue that an earlier campaign sent, or will send."""

    REFUSE = "refuse"  # one issue goes to one subscriber once: IssueAlreadySent
    AGAIN = "again"  # to every active subscriber anyway
    NEW_ONLY = "new-only"  # only to active subscribers who have not had it


class IssueAlreadySent(NewsletterError):
    """An earlier campaign sent the issue (or will), and the user did not say what to do."""


class NobodyLeft(NewsletterError):
    """--new-only when every active subscriber has had the issue: no campaign is made."""


@dataclass(frozen=True)
class EarlierCampaign:
    """A campaign of the same issue that counts: it sent the issue, or is going to."""

    id: int
    status: str
    audience: str
    sent: int  # subscribers it sent the issue to
    unsent: int  # deliveries still to send (none yet while it is scheduled)
    started_at: dt.datetime | None
    scheduled_at: dt.datetime | None

    def describe(self) -> str:
        """ "sent as campaign 3 on 2026-11-20 to 1,204 subscribers", or what it will do."""
        if self.sent:
            on = f" on {self.started_at:%Y-%m-%d}" if self.started_at else ""
            so_far = f" so far ({self.status})" if self.status in _GOING else ""
            return f"sent as campaign {self.id}{on} to {_subscribers(self.sent)}{so_far}"
        if self.status == SCHEDULED and self.scheduled_at is not None:
            return f"scheduled as campaign {self.id} for {self.scheduled_at:%Y-%m-%d %H:%M} UTC"
        return f"on its way as campaign {self.id} ({self.status}, {self.unsent:,} to send)"


@dataclass(frozen=True)
class IssueHistory:
    """What campaigns did with one issue, and whom a new campaign of it would reach."""

    issue_slug: str
    earlier: tuple[EarlierCampaign, ...]  # the ones that count, oldest first
    received: int  # distinct subscribers a campaign sent the issue to
    active: int  # active subscribers: whom --again reaches
    newcomers: int  # active subscribers who have not had it nor have it coming: --new-only

    def audience(self, repeat: Repeat) -> int:
        """How many a campaign made now would go to."""
        return self.newcomers if repeat is Repeat.NEW_ONLY else self.active

    def summary(self) -> str:
        """ "This issue was already sent as campaign 3 on 2026-11-20 to 1,204 subscribers"."""
        if not self.earlier:
            return "No campaign has sent this issue yet"
        more = ""
        if len(self.earlier) > 1:
            more = (
                f" (and {len(self.earlier) - 1} later campaign(s);"
                f" {_subscribers(self.received)} have it)"
            )
        return f"This issue was already {self.earlier[0].describe()}{more}"

    def check(self, issue_path: Path | str, repeat: Repeat, at_once: bool) -> None:
        """Raise when `repeat` forbids a new campaign of the issue, or it would reach nobody
        (--new-only, with `at_once`: its deliveries are made now, not when it is claimed)."""
        # An unclaimed campaign for everyone has no deliveries yet: nobody counts as having
        # the issue from it, so a --new-only campaign now would reach them all twice.
        ahead = [c for c in self.earlier if c.status == SCHEDULED and c.audience == EVERYONE]
        if repeat is Repeat.REFUSE and self.earlier:
            if ahead:
                way_out = (
                    f"`newsletter schedule cancel {ahead[0].id}` cancels campaign {ahead[0].id},"
                    " --again sends it anyway"
                )
            else:
                way_out = "--new-only sends it to those who have not had it, --again to everyone"
            first = self.earlier[0]
            later = len(self.earlier) - 1
            more = f" (and in {later} later campaign(s))" if later else ""
            raise IssueAlreadySent(f"{issue_path}: already {first.describe()}{more}; {way_out}")
        if repeat is Repeat.NEW_ONLY:
            if ahead:
                when = ahead[0].scheduled_at
                raise IssueAlreadySent(
                    f"{issue_path}: campaign {ahead[0].id} will send it to every active"
                    f" subscriber at {when:%Y-%m-%d %H:%M} UTC; --new-only would reach them"
                    f" twice: cancel it first (`newsletter schedule cancel {ahead[0].id}`),"
                    " or use --again"
                )
            # An empty list is not "nobody left": the caller says there is no one at all.
            if at_once and self.active and not self.newcomers:
                raise NobodyLeft(
                    f"{issue_path}: nobody left to send it to: all {self.active:,} active"
                    " subscriber(s) have had it, or have it on its way; no campaign made"
                )


def _subscribers(n: int) -> str:
    return f"{n:,} subscriber" + ("" if n == 1 else "s")


def _had_issue(issue_slug: str, but: int | None = None) -> sa.Select[Any]:
    """Subscribers another campaign sent the issue to, or still will (its row is unsent:
    pending, in doubt or deferred). Failed and skipped rows do not count."""
    query = (
        sa.select(deliveries.c.subscriber_id)
        .join(campaigns, campaigns.c.id == deliveries.c.campaign_id)
        .where(campaigns.c.issue_slug == issue_slug, deliveries.c.status.in_((SENT, *UNSENT)))
    )
    return query if but is None else query.where(campaigns.c.id != but)


def recipients(issue_slug: str, audience: str, but: int | None = None) -> sa.ColumnElement[bool]:
    """Which subscribers a campaign of the issue for `audience` goes to."""
    active = subscribers.c.status == ACTIVE
    if audience == NEWCOMERS:
        return sa.and_(active, subscribers.c.id.not_in(_had_issue(issue_slug, but)))
    return active


def history_in(conn: sa.Connection, issue_slug: str) -> IssueHistory:
    sent = sa.func.count(deliveries.c.id).filter(deliveries.c.status == SENT)
    unsent = sa.func.count(deliveries.c.id).filter(deliveries.c.status.in_(UNSENT))
    rows = conn.execute(
        sa.select(
            campaigns.c.id,
            campaigns.c.status,
            campaigns.c.audience,
            campaigns.c.started_at,
            campaigns.c.scheduled_at,
            sent.label("sent"),
            unsent.label("unsent"),
        )
        .select_from(campaigns.outerjoin(deliveries, deliveries.c.campaign_id == campaigns.c.id))
        .where(campaigns.c.issue_slug == issue_slug)
        .group_by(campaigns.c.id)
        .order_by(campaigns.c.id)
    ).all()
    earlier = tuple(
        EarlierCampaign(
            r.id, r.status, r.audience, int(r.sent), int(r.unsent), r.started_at, r.scheduled_at
        )
        for r in rows
        if r.sent or r.status in _GOING
    )
    received = conn.execute(
        sa.select(sa.func.count(sa.distinct(deliveries.c.subscriber_id)))
        .select_from(deliveries.join(campaigns, campaigns.c.id == deliveries.c.campaign_id))
        .where(campaigns.c.issue_slug == issue_slug, deliveries.c.status == SENT)
    ).scalar_one()
    active, newcomers = (
        conn.execute(sa.select(sa.func.count()).select_from(subscribers).where(who)).scalar_one()
        for who in (
            recipients(issue_slug, EVERYONE),
            recipients(issue_slug, NEWCOMERS),
        )
    )
    return IssueHistory(issue_slug, earlier, int(received), int(active), int(newcomers))


def issue_history(store: Store, issue_slug: str) -> IssueHistory:
    """Which campaigns sent the issue (or will), and whom a new one would reach."""
    with store.engine.connect() as conn:
        return history_in(conn, issue_slug)


def audience_size(
    store: Store, issue_slug: str, repeat: Repeat | None, segment: Segment | None
) -> int:
    """How many a campaign of the issue made now would go to, within `segment`."""
    who = recipients(issue_slug, NEWCOMERS if repeat is Repeat.NEW_ONLY else EVERYONE)
    with store.engine.connect() as conn:
        query = sa.select(sa.func.count()).select_from(subscribers)
        return int(conn.execute(query.where(who, tags.matching(conn, segment))).scalar_one())


def audience(
    store: Store, issue_slug: str, repeat: Repeat | None, segment: Segment | None = None
) -> Iterator[Any]:
    """The subscribers a campaign of the issue made now would go to (within `segment`),
    streamed in id order a batch at a time (memory stays flat, as with
    Store.iter_subscribers)."""
    who = recipients(issue_slug, NEWCOMERS if repeat is Repeat.NEW_ONLY else EVERYONE)
    last = 0
    while True:
        with store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(subscribers)
                .where(who, tags.matching(conn, segment), subscribers.c.id > last)
                .order_by(subscribers.c.id)
                .limit(BATCH)
            ).all()
        yield from rows
        if len(rows) < BATCH:
            return
        last = rows[-1].id
