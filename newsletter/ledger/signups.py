"""Signups in the ledger: an address waiting for its confirmation, throttled, and
made active when its link is followed (never brought back by a link asked for before
it last left)."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from newsletter import addresses
from newsletter.ledger.store import Store
from newsletter.ledger.tables import ACTIVE, PENDING_CONFIRMATION, subscribers

# What a signup comes to (the web page says which, in its own words).
SEND = "send"  # new, pending or unsubscribed: a confirmation goes out
THROTTLED = "throttled"  # a confirmation went to this address less than [signup] throttle ago
ALREADY_ACTIVE = "active"  # subscribed already: nothing is sent, nothing changes

# What following a confirmation link comes to.
CONFIRMED = "confirmed"
ALREADY_CONFIRMED = "already"
STALE = "stale"  # the address is not pending (unsubscribed since, or gone)


def claim(store: Store, email: str, name: str, now: dt.datetime, throttle: int) -> str:
    """One transaction: store the address as pending and take the right to send, unless
    it is active or was sent a confirmation less than `throttle` seconds ago."""
    cutoff = now - dt.timedelta(seconds=throttle)
    for attempt in range(2):
        try:
            with store.begin() as conn:
                row = conn.execute(
                    sa.select(
                        subscribers.c.id, subscribers.c.status, subscribers.c.confirm_sent_at
                    )
                    .where(subscribers.c.email_key == addresses.key(email))
                    .with_for_update()
                ).one_or_none()
                if row is None:
                    conn.execute(
                        subscribers.insert().values(
                            email=email,
                            email_key=addresses.key(email),
                            name=name,
                            attributes="{}",
                            status=PENDING_CONFIRMATION,
                            created_at=now,
                            confirm_sent_at=now,
                        )
                    )
                    return SEND
                if row.status == ACTIVE:
                    # Nothing changes, not even the name: the form is open to anyone.
                    return ALREADY_ACTIVE
                if row.confirm_sent_at is not None and row.confirm_sent_at > cutoff:
                    return THROTTLED
                values: dict[str, object] = {
                    "status": PENDING_CONFIRMATION,
                    "confirm_sent_at": now,
                }
                if name:
                    values["name"] = name
                conn.execute(subscribers.update().where(subscribers.c.id == row.id).values(values))
                return SEND
        except sa.exc.IntegrityError:
            if attempt:
                raise
            # Another process added the address between our read and insert: read it again.
    raise AssertionError("unreachable")  # pragma: no cover


def release(store: Store, email: str, sent_at: dt.datetime) -> None:
    """The confirmation could not be sent: let the next signup of the address try again."""
    with store.begin() as conn:
        conn.execute(
            subscribers.update()
            .where(
                subscribers.c.email_key == addresses.key(email),
                subscribers.c.confirm_sent_at == sent_at,
            )
            .values(confirm_sent_at=None)
        )


def activate(store: Store, email: str, made: dt.datetime) -> str:
    """A confirmation link (asked for at `made`) is followed: a pending address becomes
    active. CONFIRMED, ALREADY_CONFIRMED, or STALE."""
    with store.begin() as conn:
        row = conn.execute(
            sa.select(subscribers.c.id, subscribers.c.status, subscribers.c.unsubscribed_at)
            .where(subscribers.c.email_key == addresses.key(email))
            .with_for_update()
        ).one_or_none()
        if row is None:
            return STALE
        if row.status == ACTIVE:
            return ALREADY_CONFIRMED
        # A link asked for before the address last unsubscribed does not bring it back.
        # (The token keeps whole seconds, the store more: allow for the cut.)
        left = row.unsubscribed_at
        if row.status != PENDING_CONFIRMATION or (
            left is not None and left >= made + dt.timedelta(seconds=1)
        ):
            return STALE
        conn.execute(
            subscribers.update()
            .where(subscribers.c.id == row.id)
            .values(status=ACTIVE, unsubscribed_at=None)
        )
    return CONFIRMED
