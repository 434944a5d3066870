"""The sponsor side of the ledger: bookings and where each sponsor appeared."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from newsletter import sponsor
from newsletter.config import Config
from newsletter.content import read_issue
from newsletter.errors import ContentError
from newsletter.store import Store, campaigns


@dataclass
class Booking:
    id: str
    name: str
    start: str
    end: str
    weight: int
    default: bool
    sent_in: list[dict[str, Any]] = field(default_factory=list)  # campaigns that carried it
    planned: list[str] = field(default_factory=list)  # unsent issues it is chosen for

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def bookings(config: Config, store: Store) -> list[Booking]:
    """Every configured sponsor with its booking, the campaigns that carried it and the
    unsent issues that will carry it."""
    out = {
        s.id: Booking(
            id=s.id,
            name=s.name,
            start=s.start.isoformat() if s.start else "",
            end=s.end.isoformat() if s.end else "",
            weight=s.weight,
            default=s.id == config.default_sponsor,
        )
        for s in config.sponsors.values()
    }
    sent_slugs: set[str] = set()
    with store.engine.connect() as conn:
        for row in conn.execute(
            sa.select(
                campaigns.c.id, campaigns.c.issue_slug, campaigns.c.sponsor_id, campaigns.c.status
            ).order_by(campaigns.c.id)
        ):
            sent_slugs.add(row.issue_slug)
            if row.sponsor_id in out:
                out[row.sponsor_id].sent_in.append(
                    {"campaign": row.id, "issue": row.issue_slug, "status": row.status}
                )
    for path in sorted(config.issues_dir.glob("*.md")):
        try:
            issue = read_issue(path)
            chosen = sponsor.choose(config, issue)
        except ContentError:
            continue
        if chosen is not None and issue.slug not in sent_slugs:
            out[chosen.id].planned.append(issue.slug)
    return list(out.values())
