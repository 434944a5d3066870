"""A campaign's life in the ledger, each transition in one function: created, claimed
by one owner (a process, or the workers), kept alive by its heartbeat, released done
or incomplete (retried by run-due less and less often), closed, or given up on.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from newsletter.config import Config
from newsletter.errors import NewsletterError
from newsletter.ledger import tags
from newsletter.ledger.delivery_rows import (
    Item,
    advance_claim_cursor,
    claimable,
    counts,
    first_claimable,
    item_query,
    lease_free,
    lower_claim_cursor,
)
from newsletter.ledger.once import EVERYONE, NEWCOMERS, Repeat, history_in, recipients

# WORKERS (the workers' owner tag) and owner_alive (LEASE, the heartbeat's limit) are in
# statuses.py, where `status` reads them too.
from newsletter.ledger.statuses import WORKERS, owner_alive
from newsletter.ledger.store import Store
from newsletter.ledger.tables import (
    CLOSED,
    DEFERRED,
    DONE,
    GIVEN_UP,
    INCOMPLETE,
    PENDING,
    READY,
    RUNNING,
    SCHEDULED,
    SENDING,
    UNSENT,
    campaigns,
    deliveries,
    subscribers,
    utcnow,
)
from newsletter.segments import Segment

if TYPE_CHECKING:
    # A type only: run-due with nothing due must not load premailer and jinja2.
    from newsletter.issue.publish import BuiltIssue

log = logging.getLogger("newsletter.campaign")


HEARTBEAT_EVERY = 10.0


class CampaignBusy(NewsletterError):
    """Another live process is sending this campaign."""


class NothingToSend(NewsletterError):
    """The campaign is not in a state that sends (done and not resumable, cancelled...)."""


def create(
    store: Store,
    built: BuiltIssue,
    status: str = READY,
    scheduled_at: dt.datetime | None = None,
    timezone: str | None = None,
    repeat: Repeat | None = None,
    segment: Segment | None = None,
) -> int:
    """A campaign for the issue, with one pending delivery per subscriber it goes to (if
    READY; a scheduled campaign gets them when it is claimed).

    `segment` narrows whom it goes to; its expression is kept with the campaign and
    evaluated when the deliveries are made (so a scheduled campaign's segment is the
    list as it is at the send time), its size recorded then.

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
            history = history_in(conn, built.issue.slug)
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
                segment=segment.expression if segment else None,
            )
            .returning(campaigns.c.id)
        ).scalar_one()
        if status == READY:
            add_deliveries(conn, campaign_id)
    return int(campaign_id)


def add_deliveries(conn: sa.Connection, campaign_id: int) -> int:
    issue_slug, audience, segment = conn.execute(
        sa.select(campaigns.c.issue_slug, campaigns.c.audience, campaigns.c.segment).where(
            campaigns.c.id == campaign_id
        )
    ).one()
    # For a scheduled campaign this runs when it is claimed: the newcomers, and the
    # segment's members, are those of the send time, not of the day it was scheduled.
    # The segment only narrows the audience: "one issue once" (once.recipients) holds.
    in_segment = tags.matching(conn, segment)
    conn.execute(
        deliveries.insert().from_select(
            ["campaign_id", "subscriber_id", "status", "attempts"],
            sa.select(
                sa.literal(campaign_id), subscribers.c.id, sa.literal(PENDING), sa.literal(0)
            ).where(recipients(issue_slug, audience, but=campaign_id), in_segment),
        )
    )
    if conn.dialect.name == "postgresql":
        # The planner's figures for the rows just made (ANALYZE counts this transaction's
        # own): without them PostgreSQL took a new campaign for a few rows and joined each
        # delivery to every active subscriber, 0.2-0.7 s a fetch of 500 on a list of 3,000.
        conn.exec_driver_sql("ANALYZE deliveries, subscribers")
    total = conn.execute(
        sa.select(sa.func.count())
        .select_from(deliveries)
        .where(deliveries.c.campaign_id == campaign_id)
    ).scalar_one()
    size = None
    if segment is not None:
        # The segment's size: its active members, whether or not they had the issue.
        size = conn.execute(
            sa.select(sa.func.count())
            .select_from(subscribers)
            .where(recipients(issue_slug, EVERYONE), in_segment)
        ).scalar_one()
    conn.execute(
        campaigns.update()
        .where(campaigns.c.id == campaign_id)
        .values(total=total, segment_size=size)
    )
    return int(total)


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def claim(
    store: Store, campaign_id: int, owner: str, allowed: Iterable[str], automatic: bool = False
) -> Any:
    """Take the campaign for this process, atomically; refuse while a live owner has it.

    A resume asked for by a person (not `automatic`, as run-due's are) starts the clock
    of the automatic retries afresh (see `stopped_incomplete`)."""
    now = utcnow()
    allowed = tuple(allowed)
    with store.begin() as conn:
        row = conn.execute(
            sa.select(campaigns).where(campaigns.c.id == campaign_id).with_for_update()
        ).one_or_none()
        if row is None:
            raise NewsletterError(f"campaign {campaign_id}: no such campaign")
        if row.status == RUNNING and owner_alive(row.owner, row.heartbeat_at, now):
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
            add_deliveries(conn, campaign_id)
    return row


def heartbeat(store: Store, campaign_id: int, owner: str, done: threading.Event) -> None:
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


def stopped_incomplete(since: dt.datetime | None, now: dt.datetime) -> dict[str, Any]:
    """The columns of a campaign that stops with deliveries left: since when it has, and
    when run-due tries it again. Soon at first, then less and less often (half the time
    since it first stopped, between a minute and an hour): a relay down for a minute
    costs a minute, one down for a day costs some thirty tries, not 1,440."""
    since = since or now
    wait = min(max((now - since) / 2, AUTO_RESUME_AFTER), AUTO_RESUME_AT_MOST)
    return {"status": INCOMPLETE, "incomplete_since": since, "resume_after": now + wait}


def _leave_running(
    conn: sa.Connection,
    campaign_id: int,
    status: str,
    error: str | None,
    since: dt.datetime | None,
    owner: str | None = None,
) -> None:
    """The one way out of `sending`: DONE (finished now), or INCOMPLETE (run-due tries it
    again from resume_after, see stopped_incomplete). Its owner lets go either way; with
    `owner` given, only if that owner still has it."""
    now = utcnow()
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
        values.update(stopped_incomplete(since, now))
    ours = [campaigns.c.owner == owner] if owner is not None else []
    conn.execute(campaigns.update().where(campaigns.c.id == campaign_id, *ours).values(values))


def release(store: Store, campaign_id: int, owner: str, status: str, error: str | None) -> None:
    """The owner's run ends: DONE, or INCOMPLETE with `error` (see _leave_running)."""
    with store.begin() as conn:
        since = conn.execute(
            sa.select(campaigns.c.incomplete_since).where(campaigns.c.id == campaign_id)
        ).scalar_one_or_none()
        _leave_running(conn, campaign_id, status, error, since, owner)


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
        if row.status == RUNNING and owner_alive(row.owner, row.heartbeat_at, now):
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


def workers_beat(store: Store, campaign_id: int) -> bool:
    """A batch's heartbeat for the campaign; False when it is no longer the workers' to
    send (finished, cancelled, taken over). A database busy or away: NewsletterError."""
    try:
        with store.begin() as conn:
            return bool(
                conn.execute(
                    campaigns.update()
                    .where(
                        campaigns.c.id == campaign_id,
                        campaigns.c.status == RUNNING,
                        campaigns.c.owner == WORKERS,
                    )
                    .values(heartbeat_at=utcnow())
                ).rowcount
            )
    except sa.exc.OperationalError as exc:
        raise NewsletterError(str(exc.orig)) from None


def with_counts(store: Store, campaign_id: int) -> tuple[Any, dict[str, int]]:
    """The campaign's row and its deliveries' counts per status, read together."""
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(campaigns).where(campaigns.c.id == campaign_id)).one()
        return row, counts(store, campaign_id, conn)


def workers_have(store: Store, campaign_id: int) -> bool:
    """The Celery workers are sending the campaign now (their heartbeat is fresh)."""
    with store.engine.connect() as conn:
        row = conn.execute(
            sa.select(campaigns.c.status, campaigns.c.owner, campaigns.c.heartbeat_at).where(
                campaigns.c.id == campaign_id
            )
        ).one_or_none()
    return (
        row is not None
        and row.status == RUNNING
        and row.owner == WORKERS
        and owner_alive(row.owner, row.heartbeat_at, utcnow())
    )


def new_round(store: Store, campaign_id: int) -> tuple[int, int]:
    """The workers' new round of a campaign they claimed: what an earlier round gave up
    on (retries used up) is tried again, and rows in doubt are sent again, as a resume
    does in-process. Returns (rows in doubt, rows claimable now)."""
    now = utcnow()
    with store.begin() as conn:
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
            campaigns.update()
            .where(campaigns.c.id == campaign_id)
            .values(sweep_at=None, claim_from=None)  # rows in doubt are anywhere
        )
        in_doubt, due = conn.execute(
            sa.select(
                sa.func.count().filter(deliveries.c.status == SENDING),
                sa.func.count(),
            ).where(deliveries.c.campaign_id == campaign_id, claimable(now))
        ).one()
    return int(in_doubt), int(due)


def claim_batch(
    store: Store, config: Config, campaign_id: int, owner: str, sweep: bool
) -> tuple[Any, list[Item], int] | None:
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
            .where(
                deliveries.c.id.in_(
                    first_claimable(campaign_id, now, config.workers.batch_size, row.claim_from)
                ),
                claimable(now),
            )
            .order_by(deliveries.c.id)
            .with_for_update(skip_locked=True)
        ).all()
        if not taken:
            return row, [], row.batches
        ids = [r.id for r in taken]
        conn.execute(
            campaigns.update()
            .where(campaigns.c.id == campaign_id)
            .values(batches=campaigns.c.batches + 1, heartbeat_at=now)
        )
        lease = (
            deliveries.update()
            .where(deliveries.c.id.in_(ids))
            .values(
                lease_owner=owner,
                lease_until=now + dt.timedelta(seconds=config.workers.lease),
            )
        )
        if conn.dialect.name == "postgresql":
            # The lease and the batch's addresses in one statement: 8-14 ms of a batch of
            # 500 rows was the second look-up of the rows just leased.
            leased = lease.returning(deliveries.c.id, deliveries.c.subscriber_id).cte("leased")
            found = conn.execute(
                sa.select(
                    leased.c.id,
                    subscribers.c.email,
                    subscribers.c.name,
                    subscribers.c.id,
                    subscribers.c.attributes,
                )
                .join(subscribers, subscribers.c.id == leased.c.subscriber_id)
                .order_by(leased.c.id)
            )
        else:
            conn.execute(lease)
            found = conn.execute(
                item_query().where(deliveries.c.id.in_(ids)).order_by(deliveries.c.id)
            )
        items = [Item(*r) for r in found]
        advance_claim_cursor(conn, campaign_id, row.claim_from)
    in_doubt = sum(r.status == SENDING for r in taken)
    if in_doubt:
        log.warning(
            "campaign %s: %s deliveries were in flight on a worker that stopped;"
            " sending them again (they may get a second copy)",
            campaign_id,
            in_doubt,
        )
    return row, items, row.batches


def settle(
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
        # While rows are claimable this is all it reads, at the same cost at any row of
        # the list; the unsent rows are scanned only when none is (the list's end), and
        # any claimable below the claim cursor brings it back (delivery_rows).
        due_now = (
            conn.execute(first_claimable(campaign_id, now, 1, row.claim_from)).first() is not None
        )
        left, held_until, retry_at, lowest = (
            (1, None, None, None)
            if due_now
            else conn.execute(
                sa.select(
                    sa.func.count(),
                    sa.func.min(deliveries.c.lease_until).filter(deliveries.c.lease_until >= now),
                    sa.func.min(deliveries.c.next_attempt_at).filter(
                        lease_free(now), deliveries.c.next_attempt_at > now
                    ),
                    sa.func.min(deliveries.c.id).filter(claimable(now)),
                ).where(deliveries.c.campaign_id == campaign_id, deliveries.c.status.in_(UNSENT))
            ).one()
        )
        if lowest is not None:
            lower_claim_cursor(conn, campaign_id, lowest)
            due_now = True
        if not left:
            _leave_running(conn, campaign_id, DONE, None, None)
            log.info("campaign %s: done", campaign_id)
            return DONE
        if not due_now and held_until is None and retry_at is None:
            # Only deliveries whose retries ran out are left: incomplete, as in-process.
            _leave_running(conn, campaign_id, INCOMPLETE, None, row.incomplete_since)
            log.info("campaign %s: incomplete, %s deferred", campaign_id, left)
            return INCOMPLETE
        due = now if due_now else min(t for t in (held_until, retry_at) if t is not None)
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
