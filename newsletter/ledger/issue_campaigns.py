"""Whether and when each issue went out: the campaigns of an issue, as the console's
issue list shows them (`status` and `schedule list` show the same rows one at a time)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from newsletter.ledger.store import Store
from newsletter.ledger.tables import campaigns


@dataclass(frozen=True)
class IssueCampaign:
    id: int
    issue: str  # the issue's slug
    status: str  # tables: scheduled, sending, done, incomplete, closed, cancelled, missed...
    total: int  # deliveries made (0 until a scheduled campaign is claimed)
    scheduled_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None

    @property
    def when(self) -> dt.datetime | None:
        """The time that says most: when it finished, else started, else is due."""
        return self.finished_at or self.started_at or self.scheduled_at


def by_issue(store: Store) -> dict[str, list[IssueCampaign]]:
    """Every campaign, grouped by its issue's slug, oldest first."""
    out: dict[str, list[IssueCampaign]] = {}
    with store.engine.connect() as conn:
        for row in conn.execute(
            sa.select(
                campaigns.c.id,
                campaigns.c.issue_slug,
                campaigns.c.status,
                campaigns.c.total,
                campaigns.c.scheduled_at,
                campaigns.c.started_at,
                campaigns.c.finished_at,
            ).order_by(campaigns.c.id)
        ):
            out.setdefault(row.issue_slug, []).append(IssueCampaign(*row))
    return out
