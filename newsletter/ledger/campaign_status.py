"""What campaigns have done so far, from the ledger (shared by every worker)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from newsletter.errors import NewsletterError
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
    campaigns,
    deliveries,
    subscribers,
    utcnow,
)


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
