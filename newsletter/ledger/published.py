"""What went out, as the public archive shows it: the issues a done campaign sent,
with the snapshot of the latest one and its tracked links."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from newsletter.ledger.store import Store
from newsletter.ledger.tables import DONE, campaign_links, campaigns


def sent_issues(store: Store) -> list[Any]:
    """One row per issue that a done campaign sent: issue_slug, subject, latest (the
    campaign shown), published (when it first went out), updated (its latest send)."""
    first = sa.func.min(sa.func.coalesce(campaigns.c.started_at, campaigns.c.finished_at))
    grouped = (
        sa.select(
            campaigns.c.issue_slug,
            sa.func.max(campaigns.c.id).label("latest"),
            first.label("published"),
            sa.func.max(campaigns.c.finished_at).label("updated"),
        )
        .where(campaigns.c.status == DONE)
        .group_by(campaigns.c.issue_slug)
        .subquery()
    )
    query = sa.select(
        grouped.c.issue_slug,
        grouped.c.latest,
        grouped.c.published,
        grouped.c.updated,
        campaigns.c.subject,
    ).join(campaigns, campaigns.c.id == grouped.c.latest)
    with store.engine.connect() as conn:
        return list(conn.execute(query).all())


def latest_snapshot(store: Store, slug: str) -> Any:
    """The id and HTML template of the issue's latest done campaign, or None."""
    query = (
        sa.select(campaigns.c.id, campaigns.c.html_template)
        .where(campaigns.c.issue_slug == slug, campaigns.c.status == DONE)
        .order_by(campaigns.c.id.desc())
        .limit(1)
    )
    with store.engine.connect() as conn:
        return conn.execute(query).one_or_none()


def snapshots(store: Store, campaign_ids: list[int]) -> list[Any]:
    """id, issue_slug and html_template of each of these campaigns."""
    query = sa.select(campaigns.c.id, campaigns.c.issue_slug, campaigns.c.html_template).where(
        campaigns.c.id.in_(campaign_ids)
    )
    with store.engine.connect() as conn:
        return list(conn.execute(query).all())


def tracked_links(store: Store, campaign_id: int) -> dict[int, str]:
    """The campaign's tracked links: index -> URL."""
    query = sa.select(campaign_links.c.idx, campaign_links.c.url).where(
        campaign_links.c.campaign_id == campaign_id
    )
    with store.engine.connect() as conn:
        return {int(idx): str(url) for idx, url in conn.execute(query)}
