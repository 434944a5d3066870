"""Signups in the ledger: an address waiting for its confirmation, throttled, and made
active when its link is confirmed (never brought back by a link asked for before it last
left).

The signup form is open to anyone, so asking never changes a subscriber that exists:
not its name, not its status. A new address is stored as pending with no name; an
unsubscribed, bounced or complained one stays so. Only the confirmation, which only the
mailbox's owner can give, makes an address active and sets the name that was typed
into the form (the link carries it; web/signup.py).
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from newsletter import addresses
from newsletter.ledger.store import Store
from newsletter.ledger.tables import ACTIVE, PENDING_CONFIRMATION, subscribers

# What a signup comes to (the web page says which, in its own words).
SEND = "send"  # new, or on record but not active: a confirmation goes out
THROTTLED = "throttled"  # a confirmation went to this address less than [signup] throttle ago
ALREADY_ACTIVE = "active"  # subscribed already: nothing is sent, nothing changes

# What a confirmation link comes to.
READY = "ready"  # it would confirm: opening it shows the button, pressing it confirms
CONFIRMED = "confirmed"
ALREADY_CONFIRMED = "already"
STALE = "stale"  # the address left after the link was asked for, or is gone


def claim(store: Store, email: str, now: dt.datetime, throttle: int) -> str:
    """One transaction: take the right to send a confirmation to `email` (a new address
    is stored as pending), unless it is active or was sent one less than `throttle`
    seconds ago. SEND, THROTTLED or ALREADY_ACTIVE."""
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
                            name="",  # the name typed in comes with the confirmation
                            attributes="{}",
                            status=PENDING_CONFIRMATION,
                            created_at=now,
                            confirm_sent_at=now,
                        )
                    )
                    return SEND
                if row.status == ACTIVE:
                    return ALREADY_ACTIVE
                if row.confirm_sent_at is not None and row.confirm_sent_at > cutoff:
                    return THROTTLED
                # Only the throttle's clock moves: the status and the name stay until the
                # link is confirmed.
                conn.execute(
                    subscribers.update()
                    .where(subscribers.c.id == row.id)
                    .values(confirm_sent_at=now)
                )
                return SEND
        except sa.exc.IntegrityError:
            if attempt:
                raise
            # Another process added the address between our read and insert: read it again.
    raise AssertionError("unreachable")  # pragma: no cover


def release(store: Store, email: str, sent_at: dt.datetime) -> None:
    """The confirmation was not sent: let the next signup of the address try again."""
    with store.begin() as conn:
        conn.execute(
            subscribers.update()
            .where(
                subscribers.c.email_key == addresses.key(email),
                subscribers.c.confirm_sent_at == sent_at,
            )
            .values(confirm_sent_at=None)
        )


def _outcome(row: sa.Row[tuple[int, str, dt.datetime | None]] | None, made: dt.datetime) -> str:
    """What confirming a link asked for at `made` does to the subscriber `row`."""
    if row is None:
        return STALE
    if row.status == ACTIVE:
        return ALREADY_CONFIRMED
    # A link asked for before the address last left (unsubscribed, bounced, complained,
    # erased) does not bring it back. (A link made before tokens kept microseconds has
    # whole seconds: one asked for in the second the address left counts as before.)
    left = row.unsubscribed_at
    if left is not None and left >= made:
        return STALE
    return READY


def _row_query(email: str) -> sa.Select[tuple[int, str, dt.datetime | None]]:
    return sa.select(subscribers.c.id, subscribers.c.status, subscribers.c.unsubscribed_at).where(
        subscribers.c.email_key == addresses.key(email)
    )


def check(store: Store, email: str, made: dt.datetime) -> str:
    """What confirming a link of `email` asked for at `made` would do, changing nothing
    (opening the link): READY, ALREADY_CONFIRMED or STALE."""
    with store.engine.connect() as conn:
        return _outcome(conn.execute(_row_query(email)).one_or_none(), made)


def activate(store: Store, email: str, made: dt.datetime, name: str) -> str:
    """A confirmation link (asked for at `made`, with the `name` typed into the form) is
    confirmed: the address becomes active, with that name if one was given.
    CONFIRMED, ALREADY_CONFIRMED (nothing changes), or STALE."""
    with store.begin() as conn:
        row = conn.execute(_row_query(email).with_for_update()).one_or_none()
        outcome = _outcome(row, made)
        if outcome != READY:
            return outcome
        assert row is not None
        values: dict[str, object] = {"status": ACTIVE, "unsubscribed_at": None}
        if name:
            values["name"] = name
        conn.execute(subscribers.update().where(subscribers.c.id == row.id).values(values))
    return CONFIRMED
