"""Bounces and complaints in the ledger, and the suppression they bring.

Every report is recorded once (its `event_key` is unique), whichever way it came:
a 5xx at RCPT during a send, a delivery status notification (RFC 3464) or a
complaint (RFC 5965 ARF) read from the bounce mailbox, a relay's webhook. Then:

- a hard bounce (5.x.x) suppresses the address at once: `bounced`;
- soft bounces (4.x.x) suppress it after [bounces] soft_limit of them within
  soft_days;
- a complaint suppresses it at once: `complained` (stronger than bounced).

A suppressed address is never sent to, and nothing but a new confirmation brings it
back (see SUPPRESSED in tables.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from newsletter import addresses
from newsletter.ledger import privacy
from newsletter.ledger.statuses import COMPLAINT, HARD, KINDS, SOFT  # noqa: F401 (re-exported)
from newsletter.ledger.store import Store
from newsletter.ledger.tables import (
    BOUNCED,
    COMPLAINED,
    bounces,
    deliveries,
    subscribers,
    utcnow,
)


@dataclass(frozen=True)
class Bounce:
    """One report about one address."""

    kind: str  # HARD, SOFT or COMPLAINT
    email: str  # the address it is about
    source: str  # smtp, dsn, arf, ses, postmark, mailgun, sendgrid
    event_key: str  # what makes it this report and no other (a Message-ID, an event id)
    status_code: str = ""  # the enhanced status code (RFC 3463), e.g. 5.1.1
    diagnostic: str = ""  # what the server said
    campaign_id: int | None = None  # from the VERP address, when it came back to one
    subscriber_id: int | None = None


@dataclass(frozen=True)
class Recorded:
    """What recording a report did."""

    new: bool  # False: the same report was recorded before; nothing changed
    subscriber_id: int | None  # the subscriber it is about, if on the list
    suppressed: str | None  # the status the subscriber got now (bounced, complained)


def record(
    store: Store,
    bounce: Bounce,
    soft_limit: int,
    soft_days: int,
    now: dt.datetime | None = None,
) -> Recorded:
    """Record the report once and suppress its address when the rules say so, in one
    transaction (two runs of `bounces fetch` at once count it once)."""
    if bounce.kind not in KINDS:
        raise ValueError(f"bounce kind {bounce.kind!r}: expected one of {', '.join(KINDS)}")
    now = now or utcnow()
    with store.begin() as conn:
        subscriber = _subscriber(conn, bounce)
        sid = subscriber.id if subscriber is not None else None
        if subscriber is not None and subscriber.email == privacy.placeholder(subscriber.id):
            # A late bounce about someone whose data was erased: it names the person
            # again; keep the row's placeholder instead (and not what the server said).
            bounce = dataclasses.replace(bounce, email=subscriber.email, diagnostic="")
        try:
            with conn.begin_nested():
                conn.execute(
                    bounces.insert().values(
                        received_at=now,
                        kind=bounce.kind,
                        source=bounce.source[:32],
                        email=bounce.email[:320],
                        subscriber_id=sid,
                        campaign_id=bounce.campaign_id,
                        status_code=bounce.status_code[:16] or None,
                        diagnostic=bounce.diagnostic[:2000] or None,
                        event_key=bounce.event_key[:255],
                    )
                )
        except sa.exc.IntegrityError:
            return Recorded(False, sid, None)
        if subscriber is None:
            return Recorded(True, None, None)
        status = _suppression(conn, bounce, subscriber, soft_limit, soft_days, now)
        if status is not None:
            conn.execute(
                subscribers.update()
                .where(subscribers.c.id == subscriber.id)
                .values(status=status, unsubscribed_at=now)
            )
        return Recorded(True, sid, status)


def _subscriber(conn: sa.Connection, bounce: Bounce) -> Any:
    query = sa.select(subscribers.c.id, subscribers.c.status, subscribers.c.email)
    if bounce.subscriber_id is not None:
        query = query.where(subscribers.c.id == bounce.subscriber_id)
    else:
        query = query.where(subscribers.c.email_key == addresses.key(bounce.email))
    return conn.execute(query.with_for_update()).one_or_none()


def _suppression(
    conn: sa.Connection,
    bounce: Bounce,
    subscriber: Any,
    soft_limit: int,
    soft_days: int,
    now: dt.datetime,
) -> str | None:
    """The status the report brings, or None: it changes nothing (a complaint stays one)."""
    if subscriber.status == COMPLAINED:
        return None
    if bounce.kind == COMPLAINT:
        return COMPLAINED
    if subscriber.status == BOUNCED:
        return None
    if bounce.kind == HARD:
        return BOUNCED
    recent = conn.execute(
        sa.select(sa.func.count())
        .select_from(bounces)
        .where(
            bounces.c.subscriber_id == subscriber.id,
            bounces.c.kind == SOFT,
            bounces.c.received_at >= now - dt.timedelta(days=soft_days),
        )
    ).scalar_one()
    return BOUNCED if recent >= soft_limit else None


def delivery_of(store: Store, campaign_id: int, subscriber_id: int) -> bool:
    """Whether the campaign had a delivery for the subscriber (a VERP token that names a
    pair the ledger never sent to is not believed)."""
    with store.engine.connect() as conn:
        return (
            conn.execute(
                sa.select(deliveries.c.id).where(
                    deliveries.c.campaign_id == campaign_id,
                    deliveries.c.subscriber_id == subscriber_id,
                )
            ).first()
            is not None
        )
