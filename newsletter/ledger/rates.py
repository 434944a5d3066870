"""[smtp] rate shared by workers on several machines, kept in the ledger's database
when the broker has no Redis (see mail.ratelimit.SharedRateLimiter)."""

from __future__ import annotations

import time

import sqlalchemy as sa

from newsletter.ledger.store import Store
from newsletter.ledger.tables import (
    rate_buckets,
)


class DatabaseReserve:
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
