"""Click tracking in the ledger: the links a campaign tracks, and each click on one
(a suspected bot's too: a HEAD request, or a click too soon after delivery)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from newsletter.ledger.store import Store
from newsletter.ledger.tables import campaign_links, clicks, deliveries, utcnow


def save_links(store: Store, campaign_id: int, links: Iterable[tuple[int, str, bool]]) -> None:
    """Record the campaign's tracked links (index, URL, in the sponsor block) once; a
    resume finds the same ones."""
    links = list(links)
    with store.begin() as conn:
        known = conn.execute(
            sa.select(sa.func.count())
            .select_from(campaign_links)
            .where(campaign_links.c.campaign_id == campaign_id)
        ).scalar_one()
        if not known and links:
            conn.execute(
                campaign_links.insert(),
                [
                    {
                        "campaign_id": campaign_id,
                        "idx": idx,
                        "url": url,
                        "in_sponsor_block": sponsor,
                    }
                    for idx, url, sponsor in links
                ],
            )


@dataclass(frozen=True)
class Click:
    url: str
    suspected_bot: bool
    reason: str


def record(
    store: Store,
    campaign_id: int,
    subscriber_id: int,
    idx: int,
    *,
    head: bool,
    bot_seconds: int,
    now: dt.datetime | None = None,
) -> Click | None:
    """Record a click on the campaign's link `idx`; where it leads, or None when the
    campaign has no such link."""
    now = now or utcnow()
    with store.begin() as conn:
        url = conn.execute(
            sa.select(campaign_links.c.url).where(
                campaign_links.c.campaign_id == campaign_id, campaign_links.c.idx == idx
            )
        ).scalar_one_or_none()
        if url is None:
            return None
        sent_at = conn.execute(
            sa.select(deliveries.c.sent_at).where(
                deliveries.c.campaign_id == campaign_id,
                deliveries.c.subscriber_id == subscriber_id,
            )
        ).scalar_one_or_none()
        reason = ""
        if head:
            reason = "HEAD request"
        elif sent_at is None or (now - sent_at).total_seconds() < bot_seconds:
            reason = f"within {bot_seconds} s of delivery"
        conn.execute(
            clicks.insert().values(
                campaign_id=campaign_id,
                subscriber_id=subscriber_id,
                link_idx=idx,
                clicked_at=now,
                suspected_bot=bool(reason),
                reason=reason or None,
            )
        )
    return Click(url, bool(reason), reason)
