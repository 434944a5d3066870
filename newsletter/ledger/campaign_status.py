"""What campaigns have done so far, from the ledger (shared by every worker)."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa

from newsletter.errors import NewsletterError
from newsletter.ledger.bounces import COMPLAINT, HARD, SOFT
from newsletter.ledger.delivery_rows import counts
from newsletter.ledger.store import Store
from newsletter.ledger.tables import (
    DEFERRED,
    FAILED,
    GIVEN_UP,
    PENDING,
    SENDING,
    SENT,
    SKIPPED,
    UNSENT,
    bounces,
    campaigns,
    deliveries,
    shows_an_error,
    status_in,
    subscribers,
    utcnow,
)


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
    in_doubt: int  # `sending` and held by nobody: the final dot went out, or a crash
    in_flight: int  # `sending` under a live lease: a worker is on it now
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
    `sending` under a live lease are in flight on a worker, the others are in doubt.
    On PostgreSQL each campaign costs the same at 1,000 rows and at 1,000,000: the
    counts are kept per status (delivery_rows.counts), and the recent errors and the
    rows held are read through partial indexes of those few rows (tables.errors_index,
    held_index). SQLite counts the campaign's rows, through an index.
    """
    query = sa.select(campaigns).order_by(campaigns.c.id.desc())
    if campaign_id is not None:
        query = query.where(campaigns.c.id == campaign_id)
    else:
        query = query.limit(limit)
    out: list[CampaignStatus] = []
    now = utcnow()
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
        if campaign_id is not None and not rows:
            raise NewsletterError(f"campaign {campaign_id}: no such campaign")
        for row in rows:
            c = counts(store, row.id, conn)
            reports = bounce_counts(conn, row.id)
            errors = conn.execute(recent_errors(row.id)).all()
            held = conn.execute(held_rows(row.id, now)).all()
            in_flight = sum(int(n) for _, n in held)
            out.append(
                CampaignStatus(
                    id=row.id,
                    issue=row.issue_slug,
                    subject=row.subject,
                    status=row.status,
                    total=row.total,
                    sent=c[SENT],
                    failed=c[FAILED],
                    deferred=c[DEFERRED],
                    pending=c[PENDING],
                    in_doubt=c[SENDING] - in_flight,
                    in_flight=in_flight,
                    skipped=c[SKIPPED],
                    given_up=c[GIVEN_UP],
                    bounced=reports[HARD] + reports[SOFT],
                    complaints=reports[COMPLAINT],
                    batches=row.batches,
                    batches_sending=len(held),
                    workers_sending=len({owner.rsplit(":", 1)[0] for owner, _ in held}),
                    created_at=_iso(row.created_at),
                    scheduled_at=_iso(row.scheduled_at),
                    started_at=_iso(row.started_at),
                    finished_at=_iso(row.finished_at),
                    retry_at=_iso(row.resume_after),
                    incomplete_since=_iso(row.incomplete_since),
                    last_error=row.last_error,
                    recent_errors=tuple(
                        RecentError(e.email, e.status, e.last_error) for e in errors
                    ),
                    segment=row.segment,
                    segment_size=row.segment_size,
                )
            )
    return out


def recent_errors(campaign_id: int, n: int = 5) -> sa.Select[Any]:
    """The campaign's last `n` rows with an error to show, newest first: read backwards
    through the partial index of those rows (tables.errors_index), never over the rows
    without one, so it costs the same however few errors a long list has."""
    return (
        sa.select(subscribers.c.email, deliveries.c.status, deliveries.c.last_error)
        .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
        .where(deliveries.c.campaign_id == campaign_id, shows_an_error)
        .order_by(deliveries.c.id.desc())
        .limit(n)
    )


def held_rows(campaign_id: int, now: dt.datetime) -> sa.Select[Any]:
    """Per lease owner (a batch), its unsent rows under a live lease and how many of them
    are in flight: read through the partial index of unsent leased rows
    (tables.held_index), a batch or so per worker, not the campaign's unsent rows."""
    return (
        sa.select(
            deliveries.c.lease_owner,
            sa.func.count().filter(deliveries.c.status == SENDING),
        )
        .where(
            deliveries.c.campaign_id == campaign_id,
            deliveries.c.lease_owner.is_not(None),
            status_in(UNSENT),
            deliveries.c.lease_until >= now,
        )
        .group_by(deliveries.c.lease_owner)
    )


def bounce_counts(conn: sa.Connection, campaign_id: int) -> dict[str, int]:
    """The campaign's bounce and complaint reports, by kind."""
    rows = conn.execute(
        sa.select(bounces.c.kind, sa.func.count())
        .where(bounces.c.campaign_id == campaign_id)
        .group_by(bounces.c.kind)
    ).all()
    out = {kind: 0 for kind in (HARD, SOFT, COMPLAINT)}
    out.update({kind: int(n) for kind, n in rows})
    return out


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None
