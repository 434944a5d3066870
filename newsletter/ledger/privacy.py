"""What the list holds about its people: the counts per status."""

from __future__ import annotations

import sqlalchemy as sa

from newsletter.ledger.store import Store
from newsletter.ledger.tables import SUBSCRIBER_STATUSES, subscribers


def status_counts(store: Store) -> dict[str, int]:
    """The number of subscribers with each status, every status named (0 for none)."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(subscribers.c.status, sa.func.count()).group_by(subscribers.c.status)
        ).all()
    counts = dict.fromkeys(SUBSCRIBER_STATUSES, 0)
    counts.update({status: int(n) for status, n in rows})
    return counts
