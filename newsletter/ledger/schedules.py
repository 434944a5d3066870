"""The schedule in the ledger: scheduled campaigns (rescheduled, cancelled, missed)
and recurring rules, and what is due. The times are computed by schedule/; this
module reads and writes them, each change in one transaction."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from newsletter.errors import NewsletterError
from newsletter.ledger.store import Store
from newsletter.ledger.tables import (
    CANCELLED,
    INCOMPLETE,
    MISSED,
    RUNNING,
    SCHEDULED,
    campaigns,
    recurring,
    utcnow,
)

ACTIVE_RULE = "active"
CANCELLED_RULE = "cancelled"


def _scheduled_row(conn: sa.Connection, campaign_id: int) -> Any:
    row = conn.execute(
        sa.select(campaigns).where(campaigns.c.id == campaign_id).with_for_update()
    ).one_or_none()
    if row is None:
        raise NewsletterError(f"campaign {campaign_id}: no such campaign")
    if row.status != SCHEDULED:
        raise NewsletterError(f"campaign {campaign_id} is {row.status}, not scheduled")
    return row


def scheduled(store: Store, campaign_id: int) -> Any:
    """The campaign's row; an error unless it is scheduled (not started, not cancelled)."""
    with store.engine.connect() as conn:
        return _scheduled_row(conn, campaign_id)


def reschedule(store: Store, campaign_id: int, when: dt.datetime, timezone: str) -> None:
    """A scheduled campaign goes out at `when` (UTC) instead, shown in `timezone`."""
    with store.begin() as conn:
        _scheduled_row(conn, campaign_id)
        conn.execute(
            campaigns.update()
            .where(campaigns.c.id == campaign_id, campaigns.c.status == SCHEDULED)
            .values(scheduled_at=when, timezone=timezone)
        )


def cancel_campaign(store: Store, campaign_id: int) -> None:
    """A scheduled campaign is cancelled: never sent."""
    with store.begin() as conn:
        _scheduled_row(conn, campaign_id)
        conn.execute(
            campaigns.update()
            .where(campaigns.c.id == campaign_id, campaigns.c.status == SCHEDULED)
            .values(status=CANCELLED)
        )


def cancel_rule(store: Store, rule_id: int) -> bool:
    """A recurring rule stops; False if there is no such active rule."""
    with store.begin() as conn:
        return bool(
            conn.execute(
                recurring.update()
                .where(recurring.c.id == rule_id, recurring.c.status == ACTIVE_RULE)
                .values(status=CANCELLED_RULE)
            ).rowcount
        )


def mark_missed(store: Store, campaign_id: int, note: str) -> bool:
    """A scheduled campaign found too late is marked missed (never sent); False if it
    is not scheduled any more (another runner took it)."""
    with store.begin() as conn:
        return bool(
            conn.execute(
                campaigns.update()
                .where(campaigns.c.id == campaign_id, campaigns.c.status == SCHEDULED)
                .values(status=MISSED, last_error=note)
            ).rowcount
        )


def add_rule(store: Store, cron: str, timezone: str, first: dt.datetime) -> int:
    """A recurring rule (cron expression in `timezone`), first due at `first`."""
    with store.begin() as conn:
        rid = conn.execute(
            recurring.insert()
            .values(
                cron=cron,
                timezone=timezone,
                status=ACTIVE_RULE,
                created_at=utcnow(),
                next_run_at=first,
            )
            .returning(recurring.c.id)
        ).scalar_one()
    return int(rid)


def listed(store: Store) -> tuple[list[Any], list[Any]]:
    """Every campaign that was scheduled (by time), and every recurring rule."""
    with store.engine.connect() as conn:
        scheduled_rows = conn.execute(
            sa.select(campaigns)
            .where(campaigns.c.scheduled_at.is_not(None))
            .order_by(campaigns.c.scheduled_at)
        ).all()
        rules = conn.execute(sa.select(recurring).order_by(recurring.c.id)).all()
    return list(scheduled_rows), list(rules)


def due(store: Store, now: dt.datetime) -> tuple[list[Any], list[Any]]:
    """What run-due looks at: scheduled campaigns whose time has come (oldest first),
    and campaigns to resume: sending (its owner may have died) or incomplete with its
    next automatic retry come (none once run-due gave up on it)."""
    with store.engine.connect() as conn:
        ready = conn.execute(
            sa.select(campaigns.c.id, campaigns.c.scheduled_at, campaigns.c.timezone)
            .where(campaigns.c.status == SCHEDULED, campaigns.c.scheduled_at <= now)
            .order_by(campaigns.c.scheduled_at)
        ).all()
        stopped = conn.execute(
            sa.select(
                campaigns.c.id,
                campaigns.c.status,
                campaigns.c.owner,
                campaigns.c.heartbeat_at,
                campaigns.c.incomplete_since,
            )
            .where(
                (campaigns.c.status == RUNNING)
                | ((campaigns.c.status == INCOMPLETE) & (campaigns.c.resume_after <= now))
            )
            .order_by(campaigns.c.id)
        ).all()
    return list(ready), list(stopped)


def due_rules(store: Store, now: dt.datetime) -> list[Any]:
    """Active recurring rules whose next tick has come."""
    with store.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(recurring).where(
                    recurring.c.status == ACTIVE_RULE, recurring.c.next_run_at <= now
                )
            ).all()
        )


def claim_tick(store: Store, rule: Any, following: dt.datetime, now: dt.datetime) -> bool:
    """Take the rule's current tick: only the runner that moves next_run_at on to
    `following` sends for it."""
    with store.begin() as conn:
        return bool(
            conn.execute(
                recurring.update()
                .where(recurring.c.id == rule.id, recurring.c.next_run_at == rule.next_run_at)
                .values(next_run_at=following, last_run_at=now)
            ).rowcount
        )


def note_rule(store: Store, rule_id: int, note: str) -> None:
    """What the rule's last tick did (shown by `schedule list`)."""
    with store.begin() as conn:
        conn.execute(recurring.update().where(recurring.c.id == rule_id).values(last_note=note))


def taken_issues(store: Store) -> set[str]:
    """The issues a campaign has taken (sent, sending, scheduled: not cancelled or missed)."""
    with store.engine.connect() as conn:
        return {
            slug
            for (slug,) in conn.execute(
                sa.select(campaigns.c.issue_slug).where(
                    campaigns.c.status.not_in((CANCELLED, MISSED))
                )
            )
        }


def on_calendar(store: Store, start: dt.datetime, end: dt.datetime) -> list[Any]:
    """The campaigns a calendar shows from `start` to `end` (UTC): each at its scheduled
    time, or when it started (sent at once), or when it was made; oldest first."""
    when = sa.func.coalesce(
        campaigns.c.scheduled_at, campaigns.c.started_at, campaigns.c.created_at
    )
    with store.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(
                    campaigns.c.id,
                    campaigns.c.issue_slug,
                    campaigns.c.issue_path,
                    campaigns.c.subject,
                    campaigns.c.sponsor_id,
                    campaigns.c.status,
                    campaigns.c.scheduled_at,
                    campaigns.c.started_at,
                    campaigns.c.created_at,
                    campaigns.c.timezone,
                    campaigns.c.total,
                    campaigns.c.audience,
                    campaigns.c.segment,
                    campaigns.c.last_error,
                )
                .where(
                    sa.or_(
                        campaigns.c.scheduled_at.between(start, end),
                        campaigns.c.scheduled_at.is_(None)
                        & sa.func.coalesce(campaigns.c.started_at, campaigns.c.created_at).between(
                            start, end
                        ),
                    )
                )
                .order_by(when, campaigns.c.id)
            ).all()
        )


def active_rules(store: Store) -> list[Any]:
    """The recurring rules still running, by id."""
    with store.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(recurring)
                .where(recurring.c.status == ACTIVE_RULE)
                .order_by(recurring.c.id)
            ).all()
        )
