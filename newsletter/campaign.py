"""Run a campaign against the ledger: claim, send, record, resume.

Exactly once, as far as SMTP allows:
- a campaign is claimed atomically by one process (owner + heartbeat); a second
  `send`/`resume` on it is refused while the owner lives;
- before a message goes out its delivery row is marked `sending` in the same
  transaction that records the previous message's reply, so each worker holds
  at most one row in doubt, and every reply is recorded before the next message
  on that connection;
- after a crash, rows still `sending` are the ones in doubt (at most one per
  connection): a resume reports them and sends them again, and sends nothing
  that is marked `sent`.

With `[workers] broker` set, the same per-message code runs in Celery workers on
any number of machines (`send_batch`): the campaign belongs to "the workers", and
each task claims a batch of rows with row locks that skip rows others hold, leased
to it for `[workers] lease` seconds and renewed while it sends. A worker that dies
stops renewing; its rows go to the next batch once the lease runs out, so nobody is
lost and only the rows it had in flight (one per connection) can get a second copy.
The task that finds nothing left to send marks the campaign finished.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import enum
import itertools
import logging
import math
import os
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from newsletter import tokens
from newsletter.config import Config
from newsletter.config import load as load_config
from newsletter.errors import NewsletterError
from newsletter.issue.publish import (
    BuiltIssue,
    Personalizer,
    build_issue,
    envelope_template,
    load_issue,
    message_template,
)
from newsletter.issue.render import html_slots, text_slots
from newsletter.ledger.store import Store
from newsletter.ledger.tables import (
    ACTIVE,
    DEFERRED,
    FAILED,
    GIVEN_UP,
    PENDING,
    SENDING,
    SENT,
    SKIPPED,
    UNSENT,
    campaigns,
    deliveries,
    rate_buckets,
    subscribers,
    utcnow,
)
from newsletter.mail import transport
from newsletter.mail.message import MessageTemplate
from newsletter.send import broker, tracking

log = logging.getLogger("newsletter.campaign")

# Campaign statuses
READY = "ready"  # created, not started
SCHEDULED = "scheduled"
RUNNING = "sending"
DONE = "done"  # every delivery is sent, failed or skipped
INCOMPLETE = "incomplete"  # stopped with deliveries left (deferred, interrupted): resume it
CANCELLED = "cancelled"
MISSED = "missed"
CLOSED = "closed"  # ended by `newsletter close` with deliveries left: they were given up

LEASE = dt.timedelta(seconds=120)  # a heartbeat older than this means the owner is gone
HEARTBEAT_EVERY = 10.0
BATCH = 500
WAKE_EVERY = 0.2  # seconds: how soon a waiting sender, or a nap, notices a stop
# Messages that fail in a row by an exception of ours (not a server's reply) before
# the run stops: one bad row fails alone, but a broken template or a bug would fail
# every row for good, so those rows go back to pending and the run stops instead.
FAULTS_IN_A_ROW = 10

# The owner of a campaign that Celery workers send. Not a host name, so only the
# heartbeat (renewed by every batch) says whether the workers still have it.
WORKERS = "[workers]"
FOLLOW_EVERY = 0.5  # seconds between looks at the ledger while the workers send


class CampaignBusy(NewsletterError):
    """Another live process is sending this campaign."""


class NothingToSend(NewsletterError):
    """The campaign is not in a state that sends (done and not resumable, cancelled...)."""


@dataclass
class RunResult:
    campaign_id: int
    status: str = RUNNING
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    skipped: int = 0
    pending: int = 0
    # Rows left `sending` at the end: the final dot went out, no reply came (or the run
    # was cut short). Never sent again in the run; `resume` sends them again.
    in_doubt: int = 0
    in_doubt_before: int = 0  # rows found `sending` at start (a crash): sent again now
    queued: int = 0  # handed to the workers, not finished when this returned
    error: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.failed or self.deferred or self.pending or self.in_doubt or self.error)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- creating ---------------------------------------------------------------------------

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


def _recipients(issue_slug: str, audience: str, but: int | None = None) -> sa.ColumnElement[bool]:
    """Which subscribers a campaign of the issue for `audience` goes to."""
    active = subscribers.c.status == ACTIVE
    if audience == NEWCOMERS:
        return sa.and_(active, subscribers.c.id.not_in(_had_issue(issue_slug, but)))
    return active


def _issue_history(conn: sa.Connection, issue_slug: str) -> IssueHistory:
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
            _recipients(issue_slug, EVERYONE),
            _recipients(issue_slug, NEWCOMERS),
        )
    )
    return IssueHistory(issue_slug, earlier, int(received), int(active), int(newcomers))


def issue_history(store: Store, issue_slug: str) -> IssueHistory:
    """Which campaigns sent the issue (or will), and whom a new one would reach."""
    with store.engine.connect() as conn:
        return _issue_history(conn, issue_slug)


def _audience(store: Store, issue_slug: str, repeat: Repeat | None) -> Iterator[Any]:
    """The subscribers a campaign of the issue made now would go to, streamed in id order
    a batch at a time (memory stays flat, as with Store.iter_subscribers)."""
    who = _recipients(issue_slug, NEWCOMERS if repeat is Repeat.NEW_ONLY else EVERYONE)
    last = 0
    while True:
        with store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(subscribers)
                .where(who, subscribers.c.id > last)
                .order_by(subscribers.c.id)
                .limit(BATCH)
            ).all()
        yield from rows
        if len(rows) < BATCH:
            return
        last = rows[-1].id


def create(
    store: Store,
    built: BuiltIssue,
    status: str = READY,
    scheduled_at: dt.datetime | None = None,
    timezone: str | None = None,
    repeat: Repeat | None = None,
) -> int:
    """A campaign for the issue, with one pending delivery per subscriber it goes to (if
    READY; a scheduled campaign gets them when it is claimed).

    `repeat` applies "one issue to one subscriber once", checked in the transaction that
    makes the campaign: REFUSE raises IssueAlreadySent when an earlier campaign sent the
    issue or will; AGAIN goes to every active subscriber anyway; NEW_ONLY to those who
    have not had it (NobodyLeft, and no campaign, when that is nobody). None checks
    nothing and goes to every active subscriber.
    """
    audience = NEWCOMERS if repeat is Repeat.NEW_ONLY else EVERYONE
    now = utcnow()
    with store.begin() as conn:
        if repeat is not None:
            history = _issue_history(conn, built.issue.slug)
            history.check(built.issue.path, repeat, at_once=status == READY)
        campaign_id = conn.execute(
            campaigns.insert()
            .values(
                issue_slug=built.issue.slug,
                issue_path=str(built.issue.path),
                subject=built.issue.subject,
                sponsor_id=built.sponsor.id if built.sponsor else None,
                html_template=built.html.source,
                text_template=built.text.source,
                status=status,
                created_at=now,
                scheduled_at=scheduled_at,
                timezone=timezone,
                audience=audience,
            )
            .returning(campaigns.c.id)
        ).scalar_one()
        if status == READY:
            _add_deliveries(conn, campaign_id)
    return int(campaign_id)


def _add_deliveries(conn: sa.Connection, campaign_id: int) -> int:
    issue_slug, audience = conn.execute(
        sa.select(campaigns.c.issue_slug, campaigns.c.audience).where(
            campaigns.c.id == campaign_id
        )
    ).one()
    # For a scheduled campaign this runs when it is claimed: the newcomers are those of
    # the send time, not of the day it was scheduled.
    conn.execute(
        deliveries.insert().from_select(
            ["campaign_id", "subscriber_id", "status", "attempts"],
            sa.select(
                sa.literal(campaign_id), subscribers.c.id, sa.literal(PENDING), sa.literal(0)
            ).where(_recipients(issue_slug, audience, but=campaign_id)),
        )
    )
    total = conn.execute(
        sa.select(sa.func.count())
        .select_from(deliveries)
        .where(deliveries.c.campaign_id == campaign_id)
    ).scalar_one()
    conn.execute(campaigns.update().where(campaigns.c.id == campaign_id).values(total=total))
    return int(total)


# --- claiming ---------------------------------------------------------------------------


def _owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owner_alive(owner: str | None, heartbeat: dt.datetime | None, now: dt.datetime) -> bool:
    if not owner:
        return False
    if heartbeat is None or now - heartbeat > LEASE:
        return False
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host == socket.gethostname() and pid_text.isdigit():
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True


def claim(
    store: Store, campaign_id: int, owner: str, allowed: Iterable[str], automatic: bool = False
) -> Any:
    """Take the campaign for this process, atomically; refuse while a live owner has it.

    A resume asked for by a person (not `automatic`, as run-due's are) starts the clock
    of the automatic retries afresh (see `_stopped_incomplete`)."""
    now = utcnow()
    allowed = tuple(allowed)
    with store.begin() as conn:
        row = conn.execute(
            sa.select(campaigns).where(campaigns.c.id == campaign_id).with_for_update()
        ).one_or_none()
        if row is None:
            raise NewsletterError(f"campaign {campaign_id}: no such campaign")
        if row.status == RUNNING and _owner_alive(row.owner, row.heartbeat_at, now):
            if row.owner == WORKERS:
                raise CampaignBusy(
                    f"campaign {campaign_id} is being sent by the workers ([workers] broker);"
                    f" follow it with `newsletter status {campaign_id}`; not sending it twice"
                )
            host, _, rest = (row.owner or "?").partition(":")
            raise CampaignBusy(
                f"campaign {campaign_id} is being sent by process {rest.partition(':')[0]}"
                f" on {host} (since {row.started_at:%Y-%m-%d %H:%M:%S} UTC); not sending it twice"
            )
        if row.status not in (*allowed, RUNNING):
            raise NothingToSend(f"campaign {campaign_id} is {row.status}; nothing to send")
        conn.execute(
            campaigns.update()
            .where(campaigns.c.id == campaign_id)
            .values(
                status=RUNNING,
                owner=owner,
                heartbeat_at=now,
                started_at=row.started_at or now,
                last_error=None,
                **({} if automatic else {"incomplete_since": None}),
            )
        )
        if row.status == SCHEDULED:
            _add_deliveries(conn, campaign_id)
    return row


def campaign_template(
    store: Store, config: Config, row: Any
) -> tuple[MessageTemplate, tracking.LinkSlots | None]:
    """The message template of a campaign's snapshot, its tracked links made into
    per-recipient slots (`[tracking] clicks`; the links are saved for the redirects)."""
    html, text = row.html_template, row.text_template
    links = None
    if config.tracking.clicks != "off" and config.publication.base_url:
        tracked = tracking.rewrite(html, text, config.tracking.clicks)
        if tracked.links:
            tracking.save_links(store, row.id, tracked.links)
            html, text = tracked.html, tracked.text
            signer = tracking.ClickSigner(tokens.load_secret(config))
            links = tracking.LinkSlots(config, signer, row.id, len(tracked.links))
    template = envelope_template(config, row.subject, html_slots(html), text_slots(text))
    return template, links


# --- sending: the per-message ledger discipline, in-process and in a worker's batch ------


@dataclass
class _Item:
    delivery_id: int
    email: str
    name: str
    subscriber_id: int = 0


# A message made for one row, or (b"", why it could not be made).
_Made = tuple[bytes, str | None]


def _item_query() -> sa.Select[Any]:
    """The columns of an _Item: a delivery row and its subscriber."""
    return sa.select(
        deliveries.c.id,
        subscribers.c.email,
        subscribers.c.name,
        subscribers.c.id.label("sid"),
    ).join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)


def _lease_free(now: dt.datetime) -> sa.ColumnElement[bool]:
    """No live worker holds the row (never leased, or its lease has run out)."""
    return sa.or_(deliveries.c.lease_until.is_(None), deliveries.c.lease_until < now)


class _Rows:
    """What a runner sends: every unsent row of the campaign, in id order (in-process).

    Rows of subscribers who left are not fetched; `skip_unsubscribed` marks them
    skipped once the pass is over (and before each round of retries).
    """

    # The ids one query looks at: the unsent rows in that span are sorted by id (the
    # index is by status first), so each fetch costs the same however long the list.
    WINDOW = 4 * BATCH

    def __init__(self, store: Store, campaign_id: int) -> None:
        self.store = store
        self.campaign_id = campaign_id
        self._span: tuple[int, int] | None = None  # the campaign's first and last row id

    def fetch(self, last_id: int) -> list[_Item]:
        """Up to BATCH unsent rows after `last_id` whose subscriber is active, by id."""
        items: list[_Item] = []
        with self.store.engine.connect() as conn:
            if self._span is None:
                first, last = conn.execute(
                    sa.select(sa.func.min(deliveries.c.id), sa.func.max(deliveries.c.id)).where(
                        deliveries.c.campaign_id == self.campaign_id
                    )
                ).one()
                self._span = (first or 0, last or 0)
            first, last = self._span
            start = max(last_id, first - 1)
            while len(items) < BATCH and start < last:
                end = min(start + self.WINDOW, last)
                query = (
                    _item_query()
                    .where(
                        deliveries.c.campaign_id == self.campaign_id,
                        deliveries.c.status.in_(UNSENT),
                        deliveries.c.id > start,
                        deliveries.c.id <= end,
                        subscribers.c.status == ACTIVE,
                        _lease_free(utcnow()),
                    )
                    .order_by(deliveries.c.id)
                    .limit(BATCH - len(items))
                )
                items += [_Item(r.id, r.email, r.name, r.sid) for r in conn.execute(query)]
                start = end
        return items

    # Marking a row `sending` runs once per message (see _Ledger); a row skipped since
    # it was fetched (its subscriber left) is not marked, so not sent.
    MARK = (
        "UPDATE deliveries SET status = 'sending'"
        " WHERE id = :did AND (lease_until IS NULL OR lease_until < :now)"
        " AND status IN ('pending', 'sending', 'deferred')"
    )

    def mark_params(self, time: Callable[[dt.datetime], Any], now: dt.datetime) -> dict[str, Any]:
        """MARK's parameters but the row's id: no worker has leased the row meanwhile."""
        return {"now": time(now)}

    def skip_unsubscribed(self, in_doubt: bool = False) -> None:
        """An unsubscribe during the campaign stops later messages to that address.

        `in_doubt` skips their rows left `sending` too (a crash, or no reply to the
        final dot); only before the senders start, when no row is in flight."""
        self._skip(deliveries.c.campaign_id == self.campaign_id, in_doubt)

    def _skip(self, which: sa.ColumnElement[bool], in_doubt: bool) -> None:
        gone = sa.select(subscribers.c.id).where(subscribers.c.status != ACTIVE)
        statuses = (PENDING, DEFERRED, SENDING) if in_doubt else (PENDING, DEFERRED)
        with self.store.begin() as conn:
            conn.execute(
                deliveries.update()
                .where(
                    which,
                    deliveries.c.status.in_(statuses),
                    deliveries.c.subscriber_id.in_(gone),
                )
                .values(status=SKIPPED)
            )


class _LeasedRows(_Rows):
    """What a worker's batch sends: the rows it claimed, leased to it (`owner`)."""

    def __init__(
        self, store: Store, campaign_id: int, owner: str, items: list[_Item], lease: float
    ) -> None:
        super().__init__(store, campaign_id)
        self.owner = owner
        self.items = items
        self.lease = dt.timedelta(seconds=lease)

    def fetch(self, last_id: int) -> list[_Item]:
        # The batch was claimed whoever has left since: mark theirs skipped first, and
        # MARK refuses them.
        self.skip_unsubscribed()
        return [i for i in self.items if i.delivery_id > last_id][:BATCH]

    # A lease that ran out (this worker stalled) may have passed the row to another;
    # the row in flight keeps a fresh lease even if a renewal skipped it (_renew).
    # A row skipped since the batch was claimed (its subscriber left) is not marked.
    MARK = (
        "UPDATE deliveries SET status = 'sending', lease_until = :until"
        " WHERE id = :did AND lease_owner = :owner"
        " AND status IN ('pending', 'sending', 'deferred')"
    )

    def mark_params(self, time: Callable[[dt.datetime], Any], now: dt.datetime) -> dict[str, Any]:
        return {"owner": self.owner, "until": time(now + self.lease)}

    def skip_unsubscribed(self, in_doubt: bool = False) -> None:
        self._skip(deliveries.c.lease_owner == self.owner, in_doubt)


@dataclass(frozen=True)
class _Lane:
    """One SMTP connection of a runner: its server and that server's rate limiter."""

    server: str
    settings: transport.SmtpSettings
    rate: transport.RateLimiter | transport.SharedRateLimiter


def _lanes(
    config: Config,
    limiters: dict[str, transport.RateLimiter | transport.SharedRateLimiter],
    only: str | None = None,
) -> list[_Lane]:
    """`concurrency` connections to each configured server (or to `only`)."""
    lanes = []
    for name, smtp in transport.servers(config):
        if only is None or name == only:
            settings = transport.SmtpSettings.from_config(config, name)
            lanes += [_Lane(name, settings, limiters[name])] * smtp.concurrency
    return lanes


class _Ledger:
    """The two writes every message makes, in one transaction, straight through the
    driver (sqlite3 or psycopg) of one sender's own connection.

    Through SQLAlchemy Core the pair cost ~330 µs a message, most of it building
    and executing statements; the driver does the same work in a few tens of µs.
    The SQL is plain and the same on both databases; times are stored as the
    store's UTCDateTime stores them (naive UTC; ISO text on SQLite). On SQLite the
    senders of one process take turns (`turns`) rather than meet at the database's
    write lock, whose busy handler sleeps a millisecond or more at every collision.
    """

    RECORD = (
        "UPDATE deliveries SET status = :new_status, attempts = attempts + 1,"
        " last_code = :code, last_error = :error, sent_at = :when_sent,"
        " next_attempt_at = :retry_at WHERE id = :did"
    )

    def __init__(self, db: sa.Connection, mark_sql: str, turns: threading.Lock) -> None:
        self.db = db
        self.dialect = db.dialect.name
        self.mark_sql = mark_sql
        self.record_sql = self.RECORD
        if self.dialect == "postgresql":
            self.record_sql, self.mark_sql = (
                re.sub(r":(\w+)", r"%(\1)s", q) for q in (self.RECORD, mark_sql)
            )
        self.turns: contextlib.AbstractContextManager[Any] = (
            turns if self.dialect == "sqlite" else contextlib.nullcontext()
        )

    def time(self, value: dt.datetime) -> Any:
        """A time as the driver takes it for a UTCDateTime column."""
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat(" ", "microseconds") if self.dialect == "sqlite" else value

    def commit(self, record: dict[str, Any] | None, mark: dict[str, Any] | None) -> bool:
        """Record a reply and/or mark the next row `sending`; True when the row was marked.

        Time values in the parameters are already converted (`time`)."""
        db = self.db
        if self.dialect not in ("sqlite", "postgresql"):
            with db.begin():
                if record is not None:
                    db.execute(sa.text(self.RECORD), record)
                if mark is None:
                    return False
                return db.execute(sa.text(self.mark_sql), mark).rowcount == 1
        raw = db.connection.dbapi_connection
        assert raw is not None
        cur = raw.cursor()
        try:
            with self.turns:
                if self.dialect == "sqlite":
                    cur.execute("BEGIN IMMEDIATE")
                try:
                    if record is not None:
                        cur.execute(self.record_sql, record)
                    marked = False
                    if mark is not None:
                        cur.execute(self.mark_sql, mark)
                        marked = cur.rowcount == 1
                    if self.dialect == "sqlite":
                        cur.execute("COMMIT")
                    else:
                        raw.commit()
                    return marked
                except BaseException:
                    if self.dialect == "sqlite":
                        with contextlib.suppress(Exception):
                            cur.execute("ROLLBACK")
                    else:
                        raw.rollback()
                    raise
        finally:
            cur.close()


class _Runner:
    """Sends a campaign's rows on one thread per lane, every reply recorded in the ledger.

    The senders pull their work (`_take`); there is no producer thread and no queue,
    so with one connection a single thread fetches, renders, records and sends.
    Whoever finds nothing left to take fetches the next batch of rows. After the
    first pass the deferred rows come back, with backoff and jitter, until they are
    sent or their tries run out.
    """

    def __init__(
        self,
        store: Store,
        config: Config,
        campaign_id: int,
        template: MessageTemplate,
        slug: str,
        progress: Callable[[RunResult], None] | None,
        stop: threading.Event,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        rows: _Rows,
        lanes: list[_Lane],
    ) -> None:
        self.store = store
        self.config = config
        self.campaign_id = campaign_id
        self.template = template
        self.slug = slug
        self.progress = progress
        self.stop = stop
        self.sleep = sleep
        self.clock = clock
        self.rows = rows
        self.lanes = lanes
        self._lane_numbers = itertools.count()
        self.personalizer = Personalizer(config, slug)
        self.links: tracking.LinkSlots | None = None  # set when the campaign tracks clicks
        self.sender = template.from_address
        # One lock for all the shared state below; the condition wakes senders that
        # wait for the others (the retry rounds) or for a nap to end.
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.turns = threading.Lock()  # the senders' turns at SQLite's write lock (_Ledger)
        self.result = RunResult(campaign_id)
        self.fatal: NewsletterError | None = None
        self.broken: Exception | None = None  # a sender thread died (the database failed it)
        self.retry: dict[int, tuple[_Item, int, float]] = {}  # deferred this run
        self.ready: collections.deque[_Item] = collections.deque()  # fetched, not yet taken
        self.last_id = 0  # the first pass has fetched every row up to this delivery id
        self.fetched_all = False  # the first pass is over
        self.busy = 0  # rows taken and not yet settled (recorded, or given back)
        self.napping = False  # a sender sleeps until the next retry is due
        self.faults: list[int] = []  # rows failed in a row by a fault of ours (see _account)
        self.tripped = False  # the run stopped on those (see undo_faults)

    # taking work --------------------------------------------------------------------------

    def _take(self, idle: bool) -> _Item | None:
        """The next row to send; None when there is nothing to send now.

        A sender still holding an unrecorded reply (`idle` False) gets None as soon
        as no row is at hand; it records its reply and asks again, idle. An idle
        sender waits for the retry rounds, and gets None only when the run is over:
        every row settled and no retry left, or a stop, or a fatal error.
        """
        with self.lock:
            while True:
                if self.fatal is not None or self.stop.is_set():
                    return None
                if self.ready:
                    self.busy += 1
                    return self.ready.popleft()
                if not self.fetched_all:
                    self._fetch()
                    continue
                if not idle:
                    return None
                if self.busy or self.napping:
                    # Retries go out in rounds, once every row taken is settled (a
                    # deferral adds one), and one sender at a time waits for them.
                    self.changed.wait(WAKE_EVERY)
                    continue
                due = [
                    (item, at)
                    for item, tries, at in self.retry.values()
                    if tries <= self.config.smtp.retries
                ]
                if not due:
                    self.changed.notify_all()
                    return None
                wait = min(at for _, at in due) - self.clock()
                if wait > 0:
                    self._nap(wait)
                    continue
                now = self.clock()
                self.rows.skip_unsubscribed()
                self.ready.extend(item for item, at in due if at <= now)
                self.changed.notify_all()

    def _fetch(self) -> None:
        """The next batch of the first pass (under the lock)."""
        batch = self.rows.fetch(self.last_id)
        self.ready.extend(batch)
        if len(batch) < BATCH:
            self.fetched_all = True
            self.rows.skip_unsubscribed()  # the rows not fetched because their owner left
        else:
            self.last_id = batch[-1].delivery_id

    def _nap(self, seconds: float) -> None:
        """Sleep until a retry is due (under the lock, which is let go meanwhile);
        short naps, so that a stop is noticed soon."""
        self.napping = True
        self.lock.release()
        try:
            self.sleep(min(seconds, WAKE_EVERY))
        finally:
            self.lock.acquire()
            self.napping = False
            self.changed.notify_all()

    def _settled(self) -> None:
        """A row taken is settled: its reply recorded, or given back (under the lock)."""
        self.busy -= 1
        if not self.busy:
            self.changed.notify_all()

    def _drop(self, item: _Item) -> None:
        """A row taken that this sender does not send (skipped since it was fetched,
        another worker holds it, or the run stops): settled, not retried this run."""
        with self.lock:
            self.retry.pop(item.delivery_id, None)
            self._settled()

    # sending ------------------------------------------------------------------------------

    def work(self) -> None:
        """One SMTP connection: take rows and send them, recording every reply."""
        try:
            self._work()
        except Exception as exc:
            # Nothing can be recorded (the database went away): stop rather than send
            # unrecorded messages, and wake the senders that wait for this one. One
            # line for the user; the traceback only with -v (debug).
            log.error("campaign %s: a sender stopped: %s", self.campaign_id, exc)
            log.debug("campaign %s: the sender's traceback", self.campaign_id, exc_info=True)
            with self.lock:
                self.broken = self.broken or exc
                self.fatal = self.fatal or NewsletterError(
                    f"campaign {self.campaign_id}: cannot record deliveries: {exc}"
                )
                self.changed.notify_all()

    def _work(self) -> None:
        with self.lock:
            lane = self.lanes[next(self._lane_numbers) % len(self.lanes)]
        smtp = transport.SmtpConnection(lane.settings)
        unrecorded: tuple[_Item, transport.SendResult] | None = None
        # The next row is taken before a message goes out: its envelope follows the
        # message in the same write, and its message is made while the server
        # answers (`prepare`). Its content goes out only once it is marked `sending`.
        following: _Item | None = None
        made: _Made | None = None
        ahead: tuple[_Item, _Made | None] | None = None
        trouble: list[Exception] = []

        def prepare() -> None:
            # Runs after a message is written, before the server's reply is read;
            # it must not raise (a fault of that message is kept in `made`).
            nonlocal made
            if following is not None:
                made = self._make(following)

        try:
            with self.store.writer() as db:
                ledger = _Ledger(db, self.rows.MARK, self.turns)
                while True:
                    prepared: _Made | None = None
                    if ahead is not None:
                        (item, prepared), ahead = ahead, None
                        if self.fatal is not None or self.stop.is_set():
                            smtp.abandon_ahead()
                            self._drop(item)
                            continue
                    else:
                        taken = self._take(idle=unrecorded is None)
                        if taken is None:
                            # Nothing to send next: record the last reply now, not later.
                            if unrecorded is None:
                                return
                            self._commit(ledger, unrecorded, None)
                            unrecorded = None
                            continue
                        item = taken
                    try:
                        smtp.connect()
                    except transport.SmtpError as exc:
                        self._stop_on(exc)
                        continue
                    data, fault = prepared or self._make(item)
                    if fault is None:
                        lane.rate.acquire()
                    marked = self._commit(ledger, unrecorded, item)
                    unrecorded = None
                    if not marked:
                        smtp.abandon_ahead()
                        self._drop(item)
                        continue
                    if fault is not None:
                        # This recipient's message cannot be made (a slot, an encoding):
                        # its row fails alone, and the run goes on. Its envelope may have
                        # gone ahead: no content follows it.
                        smtp.abandon_ahead()
                        unrecorded = (item, transport.SendResult(FAILED, None, fault, fault=True))
                        continue
                    try:
                        following, made = self._take(idle=False), None
                    except Exception as exc:  # raised once the reply is read and recorded
                        following = None
                        trouble.append(exc)
                    then = following.email if following is not None else None
                    try:
                        unrecorded = (
                            item,
                            smtp.send(self.sender, item.email, data, prepare, then),
                        )
                    except transport.SmtpError as exc:
                        # The server refused us, not this recipient: stop, blame nobody.
                        with db.begin():
                            db.execute(
                                deliveries.update()
                                .where(deliveries.c.id == item.delivery_id)
                                .values(status=PENDING)
                            )
                        self._stop_on(exc)
                    if following is not None:
                        ahead, following = (following, made), None
                    if trouble:
                        if unrecorded is not None:
                            self._commit(ledger, unrecorded, None)
                        raise trouble[0]
        finally:
            smtp.close()

    def _make(self, item: _Item) -> _Made:
        """The message for one row, or why it cannot be made (that row's fault alone)."""
        try:
            return self._message(item), None
        except Exception as exc:  # noqa: BLE001 - a slot, a token, an encoding: this row's
            return b"", f"cannot make the message: {type(exc).__name__}: {exc}"

    def _message(self, item: _Item) -> bytes:
        """The message for one row: its slot values filled into the campaign's template."""
        values, token = self.personalizer.values(item.email, item.name)
        if self.links is not None:
            values.update(self.links.values(item.subscriber_id))
        return self.template.render(item.email, item.name, values, token)

    def _stop_on(self, exc: transport.SmtpError) -> None:
        """The server refused the session: the run stops; the row taken goes back."""
        with self.lock:
            self.fatal = self.fatal or exc
            self._settled()
            self.changed.notify_all()

    def _commit(
        self,
        ledger: _Ledger,
        unrecorded: tuple[_Item, transport.SendResult] | None,
        next_item: _Item | None,
    ) -> bool:
        """One transaction: record the last reply and mark the next message `sending`.

        True when the next message is marked (it is still this runner's to send).
        """
        if unrecorded is None and next_item is None:
            return False
        now = utcnow()
        retry_at = 0.0
        record = None
        if unrecorded is not None:
            record, retry_at = self._record_params(ledger, now, *unrecorded)
        mark = None
        if next_item is not None:
            mark = self.rows.mark_params(ledger.time, now)
            mark["did"] = next_item.delivery_id
        marked = ledger.commit(record, mark)
        if unrecorded is not None:
            self._account(*unrecorded, retry_at)
        return marked

    def _record_params(
        self, ledger: _Ledger, now: dt.datetime, item: _Item, res: transport.SendResult
    ) -> tuple[dict[str, Any], float]:
        """The ledger's record of one reply (see _Ledger.RECORD), and when to retry it."""
        params: dict[str, Any] = {
            "did": item.delivery_id,
            "new_status": res.status,
            "code": res.code,
            "error": None,
            "when_sent": None,
            "retry_at": None,
        }
        retry_at = 0.0
        if res.status == transport.SENT:
            params["when_sent"] = ledger.time(now)
        else:
            params["error"] = res.error[:500]
        if res.status == transport.IN_DOUBT:
            # The server may have it: the row stays `sending` (in doubt), never retried
            # in this run; a resume treats it as a crash's in-doubt row.
            params["new_status"] = SENDING
        if res.status == transport.DEFERRED:
            tries = self.retry.get(item.delivery_id, (item, 0, 0.0))[1] + 1
            delay = self.config.smtp.retry_delay * (2 ** (tries - 1)) * random.uniform(0.8, 1.2)
            retry_at = self.clock() + delay
            params["retry_at"] = ledger.time(now + dt.timedelta(seconds=delay))
        return params, retry_at

    def _account(self, item: _Item, res: transport.SendResult, retry_at: float) -> None:
        """Count a recorded reply; the row is settled."""
        with self.lock:
            r = self.result
            if res.fault:
                self.faults.append(item.delivery_id)
                if len(self.faults) >= FAULTS_IN_A_ROW and self.fatal is None:
                    self.tripped = True
                    self.fatal = NewsletterError(
                        f"campaign {self.campaign_id}: {len(self.faults)} messages in a row"
                        f" could not be made or sent (last: {res.error}); stopping, since"
                        " that points at the issue or the tool rather than the addresses"
                    )
                    self.changed.notify_all()
            elif res.status != transport.FAILED:
                self.faults.clear()
            if res.status == transport.SENT:
                r.sent += 1
                self.retry.pop(item.delivery_id, None)
            elif res.status == transport.FAILED:
                r.failed += 1
                r.errors.append(f"{item.email}: {res.error}")
            elif res.status == transport.IN_DOUBT:
                r.in_doubt += 1
                self.retry.pop(item.delivery_id, None)
                r.errors.append(f"{item.email}: in doubt: {res.error}")
            else:
                tries = self.retry.get(item.delivery_id, (item, 0, 0.0))[1] + 1
                self.retry[item.delivery_id] = (item, tries, retry_at)
                r.errors.append(f"{item.email}: deferred: {res.error}")
            del r.errors[:-20]
            self._settled()
        if self.progress:
            self.progress(self.result)

    def undo_faults(self) -> None:
        """After a run stopped on faults in a row, those rows go back to pending: the
        fault was not theirs, and `failed` is never retried."""
        if not self.tripped:
            return
        with self.store.begin() as conn:
            conn.execute(
                deliveries.update()
                .where(deliveries.c.id.in_(self.faults), deliveries.c.status == FAILED)
                .values(status=PENDING, last_error=None, last_code=None)
            )

    def given_up(self) -> list[int]:
        """Deliveries deferred more often this run than [smtp] retries allows."""
        with self.lock:
            limit = self.config.smtp.retries
            return [i for i, (_, tries, _) in self.retry.items() if tries > limit]

    def drive(self) -> bool:
        """Run one sender thread per lane until done; True if interrupted (Ctrl-C)."""
        threads = [
            threading.Thread(target=self.work, name=f"smtp-{n}", daemon=True)
            for n in range(len(self.lanes))
        ]
        for t in threads:
            t.start()
        interrupted = False
        try:
            for t in threads:
                while t.is_alive():  # a join with a timeout lets Ctrl-C through
                    t.join(WAKE_EVERY)
        except KeyboardInterrupt:
            interrupted = True
            self.stop.set()
            with self.lock:
                self.changed.notify_all()
            for t in threads:
                t.join()
        return interrupted


def counts(store: Store, campaign_id: int, conn: sa.Connection | None = None) -> dict[str, int]:
    query = (
        sa.select(deliveries.c.status, sa.func.count())
        .where(deliveries.c.campaign_id == campaign_id)
        .group_by(deliveries.c.status)
    )
    if conn is None:
        with store.engine.connect() as own:
            rows = own.execute(query).all()
    else:
        rows = conn.execute(query).all()
    out = {s: 0 for s in (PENDING, SENDING, SENT, FAILED, DEFERRED, SKIPPED, GIVEN_UP)}
    out.update({status: int(n) for status, n in rows})
    return out


def run(
    store: Store,
    config: Config,
    campaign_id: int,
    *,
    allowed: Iterable[str] = (READY, INCOMPLETE, DONE),
    progress: Callable[[RunResult], None] | None = None,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    wait: bool = True,
    automatic: bool = False,
) -> RunResult:
    """Send every delivery of the campaign that is not yet sent; return what happened.

    With `[workers] broker` set, the campaign is handed to the Celery workers instead;
    then `wait` follows the ledger until it is finished (reporting progress as the
    workers send), and `wait=False` returns as soon as the batches are queued.
    `automatic`: run-due's retry of an incomplete campaign, not a person's resume.
    """
    stop = stop or threading.Event()
    if config.workers.broker:
        return _run_on_workers(
            store, config, campaign_id, allowed, progress, stop, sleep, wait, automatic
        )
    owner = _owner_id()
    row = claim(store, campaign_id, owner, allowed, automatic)
    rows = _Rows(store, campaign_id)
    rows.skip_unsubscribed(in_doubt=True)  # nothing is in flight yet
    before = counts(store, campaign_id)
    try:
        template, links = campaign_template(store, config, row)
        limiters: dict[str, transport.RateLimiter | transport.SharedRateLimiter] = {
            name: transport.RateLimiter(smtp.rate, clock=clock, sleep=sleep)
            for name, smtp in transport.servers(config)
        }
        runner = _Runner(
            store,
            config,
            campaign_id,
            template,
            row.issue_slug,
            progress,
            stop,
            clock,
            sleep,
            rows,
            _lanes(config, limiters),
        )
        runner.links = links
    except NewsletterError as exc:
        _release(store, campaign_id, owner, INCOMPLETE, str(exc))
        raise
    runner.result.in_doubt_before = before[SENDING]

    done_beating = threading.Event()
    beat = threading.Thread(
        target=_heartbeat, args=(store, campaign_id, owner, done_beating), daemon=True
    )
    beat.start()
    try:
        interrupted = runner.drive()
        runner.undo_faults()
    finally:
        done_beating.set()
        beat.join()

    after = counts(store, campaign_id)
    result = runner.result
    result.skipped = after[SKIPPED]
    result.deferred = after[DEFERRED]
    result.pending = after[PENDING]
    result.in_doubt = after[SENDING]
    result.failed = after[FAILED]
    if runner.fatal is not None:
        result.error = str(runner.fatal)
    unsent = after[PENDING] + after[SENDING] + after[DEFERRED]
    result.status = DONE if unsent == 0 else INCOMPLETE
    try:
        _release(store, campaign_id, owner, result.status, result.error or None)
    except NewsletterError as exc:
        raise NewsletterError(
            f"campaign {campaign_id} stopped ({result.sent} sent): {exc};"
            f" `newsletter resume {campaign_id}` sends the rest once it is free"
        ) from None
    if interrupted:
        raise KeyboardInterrupt
    return result


def _heartbeat(store: Store, campaign_id: int, owner: str, done: threading.Event) -> None:
    while not done.wait(HEARTBEAT_EVERY):
        try:
            with store.begin() as conn:
                conn.execute(
                    campaigns.update()
                    .where(campaigns.c.id == campaign_id, campaigns.c.owner == owner)
                    .values(heartbeat_at=utcnow())
                )
        except (NewsletterError, sa.exc.OperationalError) as exc:
            # A beat missed (the database is busy or away) is told, not fatal: the
            # senders find out for themselves when they next record a reply.
            log.warning("campaign %s: heartbeat not recorded: %s", campaign_id, exc)


AUTO_RESUME_AFTER = dt.timedelta(minutes=1)  # run-due's first retry of an incomplete one
AUTO_RESUME_AT_MOST = dt.timedelta(hours=1)  # and the longest wait between two


def _stopped_incomplete(since: dt.datetime | None, now: dt.datetime) -> dict[str, Any]:
    """The columns of a campaign that stops with deliveries left: since when it has, and
    when run-due tries it again. Soon at first, then less and less often (half the time
    since it first stopped, between a minute and an hour): a relay down for a minute
    costs a minute, one down for a day costs some thirty tries, not 1,440."""
    since = since or now
    wait = min(max((now - since) / 2, AUTO_RESUME_AFTER), AUTO_RESUME_AT_MOST)
    return {"status": INCOMPLETE, "incomplete_since": since, "resume_after": now + wait}


def _release(store: Store, campaign_id: int, owner: str, status: str, error: str | None) -> None:
    now = utcnow()
    with store.begin() as conn:
        since = conn.execute(
            sa.select(campaigns.c.incomplete_since).where(campaigns.c.id == campaign_id)
        ).scalar_one_or_none()
        values: dict[str, Any] = {
            "status": status,
            "owner": None,
            "heartbeat_at": None,
            "finished_at": now if status == DONE else None,
            "resume_after": None,
            "incomplete_since": None,
            "last_error": error,
            "sweep_at": None,
        }
        if status == INCOMPLETE:
            values.update(_stopped_incomplete(since, now))
        conn.execute(
            campaigns.update()
            .where(campaigns.c.id == campaign_id, campaigns.c.owner == owner)
            .values(values)
        )


def stop_retrying(store: Store, campaign_id: int, note: str) -> bool:
    """run-due gives up on an incomplete campaign (after [schedule] give_up_after): no more
    automatic retries; `resume` tries again, `close` ends it. False if it is not
    incomplete any more (another runner took it meanwhile)."""
    with store.begin() as conn:
        return bool(
            conn.execute(
                campaigns.update()
                .where(campaigns.c.id == campaign_id, campaigns.c.status == INCOMPLETE)
                .values(resume_after=None, last_error=note)
            ).rowcount
        )


@dataclass(frozen=True)
class Closed:
    """What `close` gave up on: the deliveries still unsent, by what they were."""

    campaign_id: int
    pending: int  # never tried (the run was stopped before their turn)
    deferred: int  # tried, a temporary failure each time
    in_doubt: int  # the final dot went out and no reply came: maybe delivered

    @property
    def given_up(self) -> int:
        return self.pending + self.deferred + self.in_doubt


def close(store: Store, campaign_id: int) -> Closed:
    """End a campaign that stopped with deliveries left: they are marked given up and
    nothing sends them afterwards (no resume, no run-due). Refused while it is sending."""
    now = utcnow()
    with store.begin() as conn:
        row = conn.execute(
            sa.select(campaigns).where(campaigns.c.id == campaign_id).with_for_update()
        ).one_or_none()
        if row is None:
            raise NewsletterError(f"campaign {campaign_id}: no such campaign")
        if row.status == RUNNING and _owner_alive(row.owner, row.heartbeat_at, now):
            raise CampaignBusy(
                f"campaign {campaign_id} is sending now; stop it first (Ctrl-C, or stop the"
                " worker), then close it"
            )
        if row.status == SCHEDULED:
            raise NewsletterError(
                f"campaign {campaign_id} is scheduled and has not started; cancel it with"
                f" `newsletter schedule cancel {campaign_id}`"
            )
        if row.status not in (READY, INCOMPLETE, RUNNING):
            raise NothingToSend(f"campaign {campaign_id} is {row.status}; nothing to close")
        c = counts(store, campaign_id, conn)
        closed = Closed(campaign_id, c[PENDING], c[DEFERRED], c[SENDING])
        conn.execute(
            deliveries.update()
            .where(deliveries.c.campaign_id == campaign_id, deliveries.c.status.in_(UNSENT))
            .values(status=GIVEN_UP, lease_owner=None, lease_until=None, next_attempt_at=None)
        )
        conn.execute(
            campaigns.update()
            .where(campaigns.c.id == campaign_id)
            .values(
                status=CLOSED,
                owner=None,
                heartbeat_at=None,
                finished_at=now,
                resume_after=None,
                incomplete_since=None,
                sweep_at=None,
                last_error=f"closed: {closed.given_up} delivery(ies) given up",
            )
        )
    return closed


# --- sending on Celery workers ----------------------------------------------------------


def _claimable(now: dt.datetime) -> sa.ColumnElement[bool]:
    """Unsent, held by nobody, and due: pending; in flight on a worker that stopped (its
    lease ran out: in doubt, sent again); or deferred and its retry time come.

    Parked until the campaign is dispatched again (resume, run-due), as in-process: a
    deferred row whose retries ran out in a batch (no next_attempt_at), and a row left
    in doubt by a batch (no reply to its final dot: `sending`, no lease)."""
    return sa.and_(
        deliveries.c.status.in_(UNSENT),
        _lease_free(now),
        sa.or_(
            deliveries.c.status == PENDING,
            sa.and_(deliveries.c.status == SENDING, deliveries.c.lease_until.is_not(None)),
            deliveries.c.next_attempt_at <= now,
        ),
    )


def _run_on_workers(
    store: Store,
    config: Config,
    campaign_id: int,
    allowed: Iterable[str],
    progress: Callable[[RunResult], None] | None,
    stop: threading.Event,
    sleep: Callable[[float], None],
    wait: bool,
    automatic: bool,
) -> RunResult:
    result = RunResult(campaign_id)
    result.in_doubt_before = _dispatch(store, config, campaign_id, tuple(allowed), automatic)
    base = counts(store, campaign_id)
    if not wait:
        result.failed = base[FAILED]
        result.skipped = base[SKIPPED]
        result.queued = base[PENDING] + base[SENDING] + base[DEFERRED]
        return result
    while True:
        with store.engine.connect() as conn:
            row = conn.execute(sa.select(campaigns).where(campaigns.c.id == campaign_id)).one()
            now = counts(store, campaign_id, conn)
        result.sent = now[SENT] - base[SENT]
        result.failed = now[FAILED] - base[FAILED]
        if progress:
            progress(result)
        if row.status != RUNNING or row.owner != WORKERS or stop.is_set():
            break
        if not _owner_alive(row.owner, row.heartbeat_at, utcnow()):
            # No batch has renewed the campaign for a while: its tasks are gone (the
            # broker lost them, or every worker died). Hand it out again.
            log.warning(
                "campaign %s: no worker has sent a batch for %s s; queueing it again"
                " (is `newsletter workers start` running?)",
                campaign_id,
                int(LEASE.total_seconds()),
            )
            try:
                _dispatch(store, config, campaign_id, tuple(allowed), automatic=True)
            except CampaignBusy:
                pass  # run-due or another follower got there first
        sleep(FOLLOW_EVERY)
    result.status = row.status
    result.failed = now[FAILED]
    result.skipped = now[SKIPPED]
    result.error = row.last_error or ""
    if row.status == RUNNING:  # stopped following: the workers go on
        result.queued = now[PENDING] + now[SENDING] + now[DEFERRED]
    else:
        result.deferred = now[DEFERRED]
        result.pending = now[PENDING]
        result.in_doubt = now[SENDING]
    return result


def _dispatch(
    store: Store,
    config: Config,
    campaign_id: int,
    allowed: tuple[str, ...],
    automatic: bool = False,
) -> int:
    """Give the campaign to the workers and queue a task per batch; the rows in doubt.

    A campaign the workers already have (heartbeat fresh) is left to them."""
    with store.engine.connect() as conn:
        row = conn.execute(
            sa.select(campaigns.c.status, campaigns.c.owner, campaigns.c.heartbeat_at).where(
                campaigns.c.id == campaign_id
            )
        ).one_or_none()
    if row is not None and row.status == RUNNING and row.owner == WORKERS:
        if _owner_alive(row.owner, row.heartbeat_at, utcnow()):
            return 0
    claim(store, campaign_id, WORKERS, allowed, automatic)
    now = utcnow()
    try:
        with store.begin() as conn:
            # A new round: what an earlier round gave up on (retries used up) is tried again,
            # and rows in doubt are sent again, as a resume does in-process.
            conn.execute(
                deliveries.update()
                .where(
                    deliveries.c.campaign_id == campaign_id,
                    deliveries.c.status == DEFERRED,
                    deliveries.c.next_attempt_at.is_(None),
                )
                .values(next_attempt_at=now)
            )
            conn.execute(
                deliveries.update()
                .where(
                    deliveries.c.campaign_id == campaign_id,
                    deliveries.c.status == SENDING,
                    deliveries.c.lease_until.is_(None),
                )
                .values(lease_until=now)
            )
            conn.execute(
                campaigns.update().where(campaigns.c.id == campaign_id).values(sweep_at=None)
            )
            in_doubt, claimable = conn.execute(
                sa.select(
                    sa.func.count().filter(deliveries.c.status == SENDING),
                    sa.func.count(),
                ).where(deliveries.c.campaign_id == campaign_id, _claimable(now))
            ).one()
        # At least one task: it finishes a campaign with nothing left, or waits for rows
        # a worker still holds.
        tasks = max(1, math.ceil(claimable / config.workers.batch_size))
        broker.enqueue(config, campaign_id, tasks)
    except NewsletterError as exc:
        _release(store, campaign_id, WORKERS, INCOMPLETE, str(exc))
        raise
    log.info(
        "campaign %s: %s deliveries in %s batch(es) queued for the workers",
        campaign_id,
        claimable,
        tasks,
    )
    return int(in_doubt)


def send_batch(
    store: Store,
    config: Config,
    campaign_id: int,
    enqueue: Callable[[float], None],
    *,
    sweep: bool = False,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> RunResult:
    """A worker's task: claim a batch of the campaign's deliveries and send it.

    Every message is marked `sending` before it goes out and recorded right after the
    reply, exactly as in-process. What the batch does not send (stopped, or retries
    used up) is released. Then the batch finishes the campaign if the ledger has
    nothing left, or makes sure a task comes back (`enqueue(countdown)`) for rows that
    are due later or held by a worker that may have died. `sweep` says this task is
    that one.
    """
    stop = stop or threading.Event()
    owner = _owner_id()
    result = RunResult(campaign_id)
    claimed = _claim_batch(store, config, campaign_id, owner, sweep)
    if claimed is None:
        result.status = "not ours"
        return result
    row, items, number = claimed
    if items:
        _send_claimed(store, config, row, items, number, owner, stop, clock, sleep, result)
    result.status = _settle(store, config, campaign_id, enqueue)
    return result


def _claim_batch(
    store: Store, config: Config, campaign_id: int, owner: str, sweep: bool
) -> tuple[Any, list[_Item], int] | None:
    """Lease up to batch_size claimable rows to `owner`: (campaign, items, batch number)."""
    now = utcnow()
    with store.begin() as conn:
        row = conn.execute(
            sa.select(campaigns).where(campaigns.c.id == campaign_id).with_for_update()
        ).one_or_none()
        if row is None or row.status != RUNNING or row.owner != WORKERS:
            return None  # finished, cancelled, or taken over in-process: not ours to send
        if sweep and row.sweep_at is not None and row.sweep_at <= now:
            conn.execute(
                campaigns.update().where(campaigns.c.id == campaign_id).values(sweep_at=None)
            )
        taken = conn.execute(
            sa.select(deliveries.c.id, deliveries.c.status)
            .where(deliveries.c.campaign_id == campaign_id, _claimable(now))
            .order_by(deliveries.c.id)
            .limit(config.workers.batch_size)
            .with_for_update(skip_locked=True)
        ).all()
        if not taken:
            return row, [], row.batches
        ids = [r.id for r in taken]
        conn.execute(
            deliveries.update()
            .where(deliveries.c.id.in_(ids))
            .values(
                lease_owner=owner,
                lease_until=now + dt.timedelta(seconds=config.workers.lease),
            )
        )
        conn.execute(
            campaigns.update()
            .where(campaigns.c.id == campaign_id)
            .values(batches=campaigns.c.batches + 1, heartbeat_at=now)
        )
        items = [
            _Item(r.id, r.email, r.name, r.sid)
            for r in conn.execute(
                _item_query().where(deliveries.c.id.in_(ids)).order_by(deliveries.c.id)
            )
        ]
    in_doubt = sum(r.status == SENDING for r in taken)
    if in_doubt:
        log.warning(
            "campaign %s: %s deliveries were in flight on a worker that stopped;"
            " sending them again (they may get a second copy)",
            campaign_id,
            in_doubt,
        )
    return row, items, row.batches


def _send_claimed(
    store: Store,
    config: Config,
    row: Any,
    items: list[_Item],
    number: int,
    owner: str,
    stop: threading.Event,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    result: RunResult,
) -> None:
    campaign_id = row.id
    # Batches take the servers in turn: [smtp], then each [smtp.<name>], round-robin.
    names = [name for name, _ in transport.servers(config)]
    server = names[number % len(names)]
    halt = threading.Event()
    runner: _Runner | None = None
    close_limiters = _nothing
    try:
        limiters, close_limiters = _shared_limiters(store, config, sleep)
        template, links = campaign_template(store, config, row)
        rows = _LeasedRows(store, campaign_id, owner, items, config.workers.lease)
        rows.skip_unsubscribed(in_doubt=True)  # nothing of the batch is in flight yet
        runner = _Runner(
            store,
            config,
            campaign_id,
            template,
            row.issue_slug,
            None,
            halt,
            clock,
            sleep,
            rows,
            _lanes(config, limiters, only=server),
        )
        runner.links = links
        done = threading.Event()
        renew = threading.Thread(
            target=_renew,
            args=(store, config, campaign_id, owner, stop, halt, done),
            daemon=True,
        )
        renew.start()
        try:
            runner.drive()
            runner.undo_faults()
        finally:
            done.set()
            renew.join()
    except NewsletterError as exc:
        # Settings no batch can send with (a password variable not set...), as in-process.
        _stop_campaign(store, campaign_id, str(exc))
        raise
    finally:
        close_limiters()
        _release_batch(store, campaign_id, owner, runner.given_up() if runner else [])
    assert runner is not None  # made in the try, or it raised
    if runner.broken is not None:
        raise runner.broken  # the task fails; the rows are free again for another batch
    result.sent = runner.result.sent
    result.failed = runner.result.failed
    result.errors = runner.result.errors
    if runner.fatal is not None:
        # The server refused us (login, TLS, connection): stop the campaign, as in-process.
        result.error = str(runner.fatal)
        _stop_campaign(store, campaign_id, result.error)
    log.info(
        "campaign %s: batch %s via [%s]: %s of %s sent, %s failed",
        campaign_id,
        number + 1,
        server,
        result.sent,
        len(items),
        result.failed,
    )


def _nothing() -> None:
    pass


def _renew(
    store: Store,
    config: Config,
    campaign_id: int,
    owner: str,
    stop: threading.Event,
    halt: threading.Event,
    done: threading.Event,
) -> None:
    """Keep the batch's lease and the campaign's heartbeat fresh; halt the batch when the
    worker stops or the campaign is no longer the workers' (finished, cancelled, failed)."""
    lease = dt.timedelta(seconds=config.workers.lease)
    every = min(config.workers.lease / 3, HEARTBEAT_EVERY)
    last = time.monotonic()
    while not done.wait(0.2):
        if stop.is_set():
            halt.set()
        if time.monotonic() - last < every:
            continue
        last = time.monotonic()
        now = utcnow()
        # Rows a sender has locked right now are skipped, not waited for: its transaction
        # marks or records them (marking renews the lease too), and waiting could deadlock.
        held = (
            sa.select(deliveries.c.id)
            .where(deliveries.c.lease_owner == owner, deliveries.c.status.in_(UNSENT))
            .with_for_update(skip_locked=True)
        )
        try:
            with store.begin() as conn:
                conn.execute(
                    deliveries.update()
                    .where(deliveries.c.id.in_(held.scalar_subquery()))
                    .values(lease_until=now + lease)
                )
            with store.begin() as conn:
                ours = conn.execute(
                    campaigns.update()
                    .where(
                        campaigns.c.id == campaign_id,
                        campaigns.c.status == RUNNING,
                        campaigns.c.owner == WORKERS,
                    )
                    .values(heartbeat_at=now)
                ).rowcount
        except sa.exc.OperationalError as exc:
            log.warning("campaign %s: cannot renew the batch's lease: %s", campaign_id, exc)
            continue
        if not ours:
            halt.set()


def _release_batch(store: Store, campaign_id: int, owner: str, given_up: list[int]) -> None:
    """Hand back what the batch did not send; park what used up its retries."""
    with store.begin() as conn:
        if given_up:
            conn.execute(
                deliveries.update()
                .where(
                    deliveries.c.id.in_(given_up),
                    deliveries.c.lease_owner == owner,
                    deliveries.c.status == DEFERRED,
                )
                .values(next_attempt_at=None)
            )
        conn.execute(
            deliveries.update()
            .where(deliveries.c.lease_owner == owner, deliveries.c.status.in_(UNSENT))
            .values(lease_until=None)
        )


def _stop_campaign(store: Store, campaign_id: int, error: str) -> None:
    _release(store, campaign_id, WORKERS, INCOMPLETE, error)


def _settle(
    store: Store, config: Config, campaign_id: int, enqueue: Callable[[float], None]
) -> str:
    """After a batch: the campaign is finished when the ledger says so; otherwise one
    task (the sweep) is queued for when the next rows become claimable."""
    now = utcnow()
    with store.begin() as conn:
        row = conn.execute(
            sa.select(campaigns).where(campaigns.c.id == campaign_id).with_for_update()
        ).one_or_none()
        if row is None or row.status != RUNNING or row.owner != WORKERS:
            return row.status if row is not None else "gone"
        unsent = deliveries.c.status.in_(UNSENT)
        left, claimable, held_until, retry_at = conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.count().filter(_claimable(now)),
                sa.func.min(deliveries.c.lease_until).filter(deliveries.c.lease_until >= now),
                sa.func.min(deliveries.c.next_attempt_at).filter(
                    _lease_free(now), deliveries.c.next_attempt_at > now
                ),
            ).where(deliveries.c.campaign_id == campaign_id, unsent)
        ).one()
        if not left:
            conn.execute(
                campaigns.update()
                .where(campaigns.c.id == campaign_id)
                .values(
                    status=DONE,
                    owner=None,
                    heartbeat_at=None,
                    finished_at=now,
                    resume_after=None,
                    incomplete_since=None,
                    sweep_at=None,
                )
            )
            log.info("campaign %s: done", campaign_id)
            return DONE
        if not claimable and held_until is None and retry_at is None:
            # Only deliveries whose retries ran out are left: incomplete, as in-process.
            conn.execute(
                campaigns.update()
                .where(campaigns.c.id == campaign_id)
                .values(
                    owner=None,
                    heartbeat_at=None,
                    sweep_at=None,
                    **_stopped_incomplete(row.incomplete_since, now),
                )
            )
            log.info("campaign %s: incomplete, %s deferred", campaign_id, left)
            return INCOMPLETE
        due = now if claimable else min(t for t in (held_until, retry_at) if t is not None)
        grace = dt.timedelta(seconds=config.workers.lease)
        pending = row.sweep_at
        if pending is not None and now - grace <= pending <= due + dt.timedelta(seconds=1):
            return RUNNING  # a sweep is already on its way in time
        conn.execute(
            campaigns.update()
            .where(campaigns.c.id == campaign_id)
            .values(sweep_at=due, heartbeat_at=now)
        )
    # A little after the lease ends, so that the sweep finds it ended.
    enqueue(0.0 if due <= now else (due - now).total_seconds() + 0.5)
    return RUNNING


def _shared_limiters(
    store: Store, config: Config, sleep: Callable[[float], None]
) -> tuple[dict[str, transport.RateLimiter | transport.SharedRateLimiter], Callable[[], None]]:
    """Each server's [smtp] rate as one budget for every worker: kept in the broker's
    Redis, or (RabbitMQ) in the database."""
    limiters: dict[str, transport.RateLimiter | transport.SharedRateLimiter] = {}
    closers: list[Callable[[], None]] = []
    redis = config.workers.broker.startswith(("redis://", "rediss://"))
    for name, smtp in transport.servers(config):
        if smtp.rate <= 0:
            limiters[name] = transport.RateLimiter(0)
            continue
        # The relay account is what the limit is about.
        key = f"newsletter:rate:{smtp.host}:{smtp.port}:{smtp.username}"
        reserve: Callable[[float], float]
        if redis:
            client = transport.RedisReserve(config.workers.broker, key)
            closers.append(client.close)
            reserve = client
        else:
            reserve = _DatabaseReserve(store, key)
        limiters[name] = transport.SharedRateLimiter(smtp.rate, reserve, sleep=sleep)

    def close() -> None:
        for c in closers:
            c()

    return limiters, close


class _DatabaseReserve:
    """`reserve` for SharedRateLimiter in the ledger's database: one row per relay account.

    One UPDATE takes the next slot; the row lock orders the workers. Clocks of the
    machines are assumed in step (NTP), as for every timestamp in the ledger."""

    def __init__(self, store: Store, key: str) -> None:
        self.store = store
        self.key = key
        with store.begin() as conn:
            exists = conn.execute(
                sa.select(rate_buckets.c.name).where(rate_buckets.c.name == key)
            ).first()
            if exists is None:
                try:
                    with conn.begin_nested():
                        conn.execute(rate_buckets.insert().values(name=key, next_at=0.0))
                except sa.exc.IntegrityError:
                    pass  # another worker made it first

    def __call__(self, interval: float, tolerance: float = 0.0) -> float:
        earliest = time.time() - tolerance
        slot = sa.case((rate_buckets.c.next_at > earliest, rate_buckets.c.next_at), else_=earliest)
        with self.store.begin() as conn:
            next_at = conn.execute(
                rate_buckets.update()
                .where(rate_buckets.c.name == self.key)
                .values(next_at=slot + interval)
                .returning(rate_buckets.c.next_at)
            ).scalar_one()
        # From now, not from before the transaction: its own time is part of the wait.
        return float(next_at) - interval - time.time()


# --- status -----------------------------------------------------------------------------


def status(store: Store, campaign_id: int | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """Counts per campaign (newest first), with the most recent errors.

    The ledger is shared, so this is the progress of every worker sending it; rows
    `sending` under a live lease are in flight on a worker, the others are in doubt.
    """
    query = sa.select(campaigns).order_by(campaigns.c.id.desc())
    if campaign_id is not None:
        query = query.where(campaigns.c.id == campaign_id)
    else:
        query = query.limit(limit)
    out = []
    now = utcnow()
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
        if campaign_id is not None and not rows:
            raise NewsletterError(f"campaign {campaign_id}: no such campaign")
        for row in rows:
            c = counts(store, row.id, conn)
            errors = conn.execute(
                sa.select(subscribers.c.email, deliveries.c.status, deliveries.c.last_error)
                .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
                .where(
                    deliveries.c.campaign_id == row.id,
                    deliveries.c.last_error.is_not(None),
                    deliveries.c.status.in_((FAILED, DEFERRED, SENDING)),
                )
                .order_by(deliveries.c.id.desc())
                .limit(5)
            ).all()
            held = conn.execute(
                sa.select(
                    deliveries.c.lease_owner,
                    sa.func.count().filter(deliveries.c.status == SENDING),
                )
                .where(
                    deliveries.c.campaign_id == row.id,
                    deliveries.c.status.in_(UNSENT),
                    deliveries.c.lease_until >= now,
                )
                .group_by(deliveries.c.lease_owner)
            ).all()
            in_flight = sum(int(n) for _, n in held)
            out.append(
                {
                    "id": row.id,
                    "issue": row.issue_slug,
                    "subject": row.subject,
                    "status": row.status,
                    "total": row.total,
                    "sent": c[SENT],
                    "failed": c[FAILED],
                    "deferred": c[DEFERRED],
                    "pending": c[PENDING],
                    "in_doubt": c[SENDING] - in_flight,
                    "in_flight": in_flight,
                    "skipped": c[SKIPPED],
                    "given_up": c[GIVEN_UP],
                    # Sent by Celery workers: batches claimed so far, and what holds rows now.
                    "batches": row.batches,
                    "batches_sending": len(held),
                    "workers_sending": len({owner.rsplit(":", 1)[0] for owner, _ in held}),
                    "created_at": _iso(row.created_at),
                    "scheduled_at": _iso(row.scheduled_at),
                    "started_at": _iso(row.started_at),
                    "finished_at": _iso(row.finished_at),
                    # Incomplete: when run-due tries again (None: it gave up), and since when.
                    "retry_at": _iso(row.resume_after),
                    "incomplete_since": _iso(row.incomplete_since),
                    "last_error": row.last_error,
                    "recent_errors": [
                        {"email": e.email, "status": e.status, "error": e.last_error}
                        for e in errors
                    ],
                }
            )
    return out


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


# --- test sends and dry runs ------------------------------------------------------------


def send_test(
    config: Config, built: BuiltIssue, addresses: Iterable[str]
) -> list[tuple[str, str]]:
    """Send the issue to a few addresses with "[TEST]" in the subject; nothing is recorded."""
    template = message_template(config, built, subject_prefix="[TEST] ")
    personalizer = Personalizer(config, built.issue.slug)
    conn = transport.SmtpConnection(transport.SmtpSettings.from_config(config))
    results = []
    try:
        for address in addresses:
            values, token = personalizer.values(address, config.sample.name)
            res = conn.send(
                template.from_address, address, template.render(address, "", values, token)
            )
            results.append(
                (address, "sent" if res.status == transport.SENT else f"{res.status}: {res.error}")
            )
    finally:
        conn.close()
    return results


_TEST_PREFIX = "[TEST] "  # the subject's start in send_test's messages


@dataclass(frozen=True)
class RenderedTest:
    """A test message rendered and not sent (`send --to ADDR --dry-run`)."""

    to: str
    subject: str
    bytes: int


def render_test(config: Config, built: BuiltIssue, addresses: Iterable[str]) -> list[RenderedTest]:
    """The messages send_test would send, rendered the same way; no connection is made."""
    template = message_template(config, built, subject_prefix=_TEST_PREFIX)
    personalizer = Personalizer(config, built.issue.slug)
    out = []
    for address in addresses:
        values, token = personalizer.values(address, config.sample.name)
        size = len(template.render(address, "", values, token))
        out.append(RenderedTest(address, _TEST_PREFIX + built.issue.subject, size))
    return out


def test_sender(config_path: Path, issue_path: Path) -> Callable[[], str] | None:
    """For the preview's "Send test" button: sends the issue as it is on disk now to
    [preview] test_recipients; None when that setting is empty (no button)."""
    if not load_config(config_path).preview.test_recipients:
        return None

    def send() -> str:
        config = load_config(config_path)
        built = build_issue(config, load_issue(issue_path))
        results = send_test(config, built, config.preview.test_recipients)
        return "; ".join(f"{address}: {outcome}" for address, outcome in results)

    return send


@dataclass
class DryRun:
    messages: int = 0
    bytes: int = 0


def dry_run(
    store: Store, config: Config, built: BuiltIssue, repeat: Repeat | None = None
) -> DryRun:
    """Render every message a campaign would send, and send nothing."""
    template = message_template(config, built)
    personalizer = Personalizer(config, built.issue.slug)
    report = DryRun()
    for sub in _audience(store, built.issue.slug, repeat):
        values, token = personalizer.values(sub.email, sub.name)
        report.messages += 1
        report.bytes += len(template.render(sub.email, sub.name, values, token))
    return report
