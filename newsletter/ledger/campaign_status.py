"""What campaigns have done so far, from the ledger (shared by every worker).

The reads are SQL written once, run through the database's driver (ledger/direct.py):
on a Store's connection (`status`, for the console and the tests), or straight from the
URL without SQLAlchemy (`status_at`, for `newsletter status`: watched in a loop during a
send, it would spend most of its time importing SQLAlchemy and opening a Store).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from newsletter.errors import NewsletterError
from newsletter.ledger.direct import Driver, read
from newsletter.ledger.statuses import (
    COMPLAINT,
    DEFERRED,
    FAILED,
    GIVEN_UP,
    HARD,
    PENDING,
    RUNNING,
    SENDING,
    SENT,
    SHOWN_ERRORS,
    SKIPPED,
    SOFT,
    UNSENT,
    WORKERS,
    owner_alive,
)

if TYPE_CHECKING:
    from newsletter.ledger.store import Store


def _listed(values: tuple[str, ...]) -> str:
    """Statuses written into the SQL, not bound: a partial index serves a query only when
    the planner finds the index's condition in the query's (tables.status_in)."""
    return ", ".join(f"'{v}'" for v in values)


_CAMPAIGNS = """
SELECT id, issue_slug, subject, status, total, batches, created_at, scheduled_at,
       started_at, finished_at, resume_after, incomplete_since, last_error, segment,
       segment_size, owner, heartbeat_at
FROM campaigns
"""
ONE_CAMPAIGN = _CAMPAIGNS + "WHERE id = :campaign"
NEWEST_CAMPAIGNS = _CAMPAIGNS + "ORDER BY id DESC LIMIT :limit"
# The deliveries per status. PostgreSQL: from delivery_counts (kept by triggers,
# tables.COUNT_TRIGGERS), a few rows whatever the list's length (COUNT over a million
# rows took 150-290 ms). SQLite: counted through the index (campaign_id, status, id):
# the triggers there cost every message more than the count costs `status`.
COUNTS_SQLITE = (
    "SELECT status, count(*) FROM deliveries WHERE campaign_id = :campaign GROUP BY status"
)
COUNTS_POSTGRES = (
    "SELECT status, sum(n) FROM delivery_counts WHERE campaign_id = :campaign GROUP BY status"
)
# The campaign's last rows with an error to show, newest first: read backwards through
# the partial index of those rows (tables.errors_index), never over the rows without one.
RECENT_ERRORS = f"""
SELECT subscribers.email, deliveries.status, deliveries.last_error
FROM deliveries JOIN subscribers ON subscribers.id = deliveries.subscriber_id
WHERE deliveries.campaign_id = :campaign AND deliveries.last_error IS NOT NULL
  AND deliveries.status IN ({_listed(SHOWN_ERRORS)})
ORDER BY deliveries.id DESC LIMIT :n
"""
# Per lease owner (a batch), its unsent rows under a live lease and how many of them are
# in flight: through the partial index of unsent leased rows (tables.held_index), a
# batch or so per worker, not the campaign's unsent rows.
HELD_ROWS = f"""
SELECT lease_owner, count(*) FILTER (WHERE status = '{SENDING}')
FROM deliveries
WHERE campaign_id = :campaign AND lease_owner IS NOT NULL
  AND status IN ({_listed(UNSENT)}) AND lease_until >= :now
GROUP BY lease_owner
"""
# The campaign's rows `sending` with an error: their final dot had no reply (in doubt),
# where the others of a live in-process send are in flight. Read through the index
# (campaign_id, status): the rows `sending` are few, those in flight and those in doubt.
SENDING_WITH_AN_ERROR = f"""
SELECT count(*) FROM deliveries
WHERE campaign_id = :campaign AND status = '{SENDING}' AND last_error IS NOT NULL
"""
BOUNCE_COUNTS = "SELECT kind, count(*) FROM bounces WHERE campaign_id = :campaign GROUP BY kind"


@dataclass(frozen=True)
class RecentError:
    email: str
    status: str  # failed, deferred, or sending (in doubt)
    error: str


@dataclass(frozen=True)
class CampaignStatus:
    """One campaign's progress as `status` shows it (and `--json` prints it)."""

    id: int
    issue: str
    subject: str
    status: str
    total: int
    sent: int
    failed: int
    deferred: int
    pending: int
    in_doubt: int  # `sending` and held by nobody: the final dot had no reply, or a crash
    # `sending` under a live lease (a worker is on it now), or in a campaign a live
    # process sends, without an error recorded (its message is going out now).
    in_flight: int
    skipped: int
    given_up: int
    bounced: int  # bounce reports about its messages (a 5xx at RCPT, a DSN, a webhook)
    complaints: int  # spam complaints about its messages
    # Sent by Celery workers: batches claimed so far, and what holds rows now.
    batches: int
    batches_sending: int
    workers_sending: int
    created_at: str | None
    scheduled_at: str | None
    started_at: str | None
    finished_at: str | None
    retry_at: str | None  # incomplete: when run-due tries again (None: it gave up)
    incomplete_since: str | None
    last_error: str | None
    recent_errors: tuple[RecentError, ...]
    # The segment it went to (None: its whole audience), and its active members when the
    # deliveries were made (None until then: a scheduled campaign's is made at send time).
    segment: str | None = None
    segment_size: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def status(store: Store, campaign_id: int | None = None, limit: int = 20) -> list[CampaignStatus]:
    """Counts per campaign (newest first), with the most recent errors.

    The ledger is shared, so this is the progress of every worker sending it; rows
    `sending` under a live lease are in flight on a worker, and so are those of a
    campaign a live process sends but for the ones recorded with no reply to their final
    dot; the others are in doubt.
    On PostgreSQL each campaign costs the same at 1,000 rows and at 1,000,000: the
    counts are kept per status, and the recent errors and the rows held are read
    through partial indexes of those few rows. SQLite counts the campaign's rows,
    through an index.
    """
    with store.engine.connect() as conn:
        return statuses(Driver.on(conn), campaign_id, limit)


def status_at(
    url: str, campaign_id: int | None = None, limit: int = 20
) -> list[CampaignStatus] | None:
    """`status` read from the database at `url` without SQLAlchemy (direct.read); None
    when that is not certain (another driver, an older schema, an error), and the caller
    opens the Store, which upgrades the schema or says what is wrong."""
    return read(url, lambda driver: statuses(driver, campaign_id, limit))


def statuses(driver: Driver, campaign_id: int | None, limit: int) -> list[CampaignStatus]:
    """`status` on one connection."""
    if campaign_id is None:
        rows = driver.rows(NEWEST_CAMPAIGNS, limit=limit)
    else:
        rows = driver.rows(ONE_CAMPAIGN, campaign=campaign_id)
        if not rows:
            raise NewsletterError(f"campaign {campaign_id}: no such campaign")
    moment = dt.datetime.now(dt.UTC)
    now = driver.time(moment)
    out = []
    for row in rows:
        (cid, issue, subject, state, total, batches, created, scheduled) = row[:8]
        (started, finished, resume_after, incomplete_since, last_error) = row[8:13]
        (segment, segment_size, owner, heartbeat) = row[13:]
        c = counts(driver, cid)
        reports = bounce_counts(driver, cid)
        errors = driver.rows(RECENT_ERRORS, campaign=cid, n=5)
        held = driver.rows(HELD_ROWS, campaign=cid, now=now)
        in_flight = sum(int(n) for _, n in held)
        in_doubt = c[SENDING] - in_flight
        if (
            state == RUNNING
            and owner != WORKERS
            and c[SENDING]
            and owner_alive(owner, Driver.stored_time(heartbeat), moment)
        ):
            # A process sends it now: its rows `sending` are in flight, but those whose
            # final dot had no reply (recorded with an error): in doubt.
            in_doubt = int(driver.rows(SENDING_WITH_AN_ERROR, campaign=cid)[0][0])
            in_flight = c[SENDING] - in_doubt
        out.append(
            CampaignStatus(
                id=cid,
                issue=issue,
                subject=subject,
                status=state,
                total=total,
                sent=c[SENT],
                failed=c[FAILED],
                deferred=c[DEFERRED],
                pending=c[PENDING],
                in_doubt=in_doubt,
                in_flight=in_flight,
                skipped=c[SKIPPED],
                given_up=c[GIVEN_UP],
                bounced=reports[HARD] + reports[SOFT],
                complaints=reports[COMPLAINT],
                batches=batches,
                batches_sending=len(held),
                workers_sending=len({owner.rsplit(":", 1)[0] for owner, _ in held}),
                created_at=_iso(created),
                scheduled_at=_iso(scheduled),
                started_at=_iso(started),
                finished_at=_iso(finished),
                retry_at=_iso(resume_after),
                incomplete_since=_iso(incomplete_since),
                last_error=last_error,
                recent_errors=tuple(RecentError(*e) for e in errors),
                segment=segment,
                segment_size=segment_size,
            )
        )
    return out


def counts(driver: Driver, campaign_id: int) -> dict[str, int]:
    """The campaign's deliveries per status: what COUNT(*) ... GROUP BY status gives."""
    rows = driver.rows(COUNTS_SQLITE if driver.sqlite else COUNTS_POSTGRES, campaign=campaign_id)
    out = {s: 0 for s in (PENDING, SENDING, SENT, FAILED, DEFERRED, SKIPPED, GIVEN_UP)}
    out.update({status: int(n) for status, n in rows})
    return out


def bounce_counts(driver: Driver, campaign_id: int) -> dict[str, int]:
    """The campaign's bounce and complaint reports, by kind."""
    out = {kind: 0 for kind in (HARD, SOFT, COMPLAINT)}
    out.update({kind: int(n) for kind, n in driver.rows(BOUNCE_COUNTS, campaign=campaign_id)})
    return out


def _iso(value: Any) -> str | None:
    moment = Driver.stored_time(value)
    return moment.isoformat() if moment else None
