"""Click tracking in the ledger: the links a campaign tracks, and each request for one
(a suspected bot's too: a HEAD request, a crawler or mail scanner, a click too soon after
delivery; and a reader's repeated clicks, marked as duplicates)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from newsletter.config import Tracking
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
    reason: str  # why it is a bot's; "" for a reader's
    duplicate: bool  # the reader's again, within the window: recorded, not counted

    @property
    def counted(self) -> bool:
        return not (self.suspected_bot or self.duplicate)


def record(
    store: Store,
    campaign_id: int,
    subscriber_id: int,
    idx: int,
    *,
    head: bool,
    rules: Tracking,
    known_bot: str = "",
    now: dt.datetime | None = None,
) -> Click | None:
    """Record a request for the campaign's link `idx`; where it leads, or None when the
    campaign has no such link.

    Every request is a row. A bot's (a HEAD request, `known_bot`: what its user agent
    says it is, or a click within `rules.bot_seconds` of delivery) is never counted. A
    reader's counts once per `rules.dedupe_window`: a click within the window after
    their last counted one on the same link is a duplicate. The window starts at the
    counted click, so a reader who comes back every few minutes counts once per window,
    not once for ever.
    """
    now = now or utcnow()
    with store.begin() as conn:
        # FOR UPDATE: two requests for one link at once (a scanner fetching twice) wait
        # for each other here, so the second one's duplicate check sees the first click.
        # SQLite has no row locks; its write lock, taken at BEGIN, does the same.
        url = conn.execute(
            sa.select(campaign_links.c.url)
            .where(campaign_links.c.campaign_id == campaign_id, campaign_links.c.idx == idx)
            .with_for_update()
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
        elif known_bot:
            reason = known_bot
        elif sent_at is None or (now - sent_at).total_seconds() < rules.bot_seconds:
            reason = f"within {rules.bot_seconds} s of delivery"
        duplicate = False
        if not reason:
            window_start = now - dt.timedelta(seconds=rules.dedupe_window_seconds)
            duplicate = (
                conn.execute(
                    sa.select(clicks.c.id)
                    .where(
                        clicks.c.campaign_id == campaign_id,
                        clicks.c.subscriber_id == subscriber_id,
                        clicks.c.link_idx == idx,
                        clicks.c.suspected_bot.is_(False),
                        clicks.c.duplicate.is_(False),
                        clicks.c.clicked_at > window_start,
                        clicks.c.clicked_at <= now,
                    )
                    .limit(1)
                ).first()
                is not None
            )
        reason = reason[:64]  # the width of clicks.reason; a user agent can be longer
        conn.execute(
            clicks.insert().values(
                campaign_id=campaign_id,
                subscriber_id=subscriber_id,
                link_idx=idx,
                clicked_at=now,
                suspected_bot=bool(reason),
                reason=reason or None,
                duplicate=duplicate,
            )
        )
    return Click(url, bool(reason), reason, duplicate)
