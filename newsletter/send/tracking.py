"""Click tracking: sponsor links (or all links) become signed `<base_url>/c/<token>` links at
send time; `newsletter serve` records the click and redirects to the original URL.

Every request for a tracked link is recorded; what the sponsor is told counts only a
reader's, once per window (ledger/clicks.record). Crawlers and mail scanners are known
by their user agent (`known_bot`): crawlerdetect's maintained list, and the few mail
scanners it misses.

The rewriting of links and the tokens live in issue/tracked_links, shared with `build`
and the preview; this module adds what needs the ledger: saving a campaign's links and
recording a click.
"""

from __future__ import annotations

import datetime as dt
import functools

from crawlerdetect import CrawlerDetect

from newsletter.config import Tracking
from newsletter.issue.tracked_links import (
    ClickSigner,
    Link,
    LinkSlots,
    Tracked,
    rewrite,
    tracking_on,
)
from newsletter.ledger import clicks
from newsletter.ledger.store import Store

__all__ = [
    "ClickSigner",
    "Link",
    "LinkSlots",
    "MAIL_SCANNERS",
    "Tracked",
    "known_bot",
    "record_click",
    "rewrite",
    "save_links",
    "tracking_on",
]


def save_links(store: Store, campaign_id: int, links: tuple[Link, ...]) -> None:
    """Record the campaign's tracked links once; a resume finds the same ones."""
    clicks.save_links(
        store, campaign_id, [(link.idx, link.url, link.in_sponsor_block) for link in links]
    )


# Mail-security gateways fetch every link of a message as it arrives, and crawlerdetect's
# list (0.4.2) misses these, which name themselves in the user agent: it knows Barracuda
# only as "Barracuda Sentinel (EE)", and Proofpoint and Mimecast not at all. (Googlebot
# and Microsoft's Safe Links fetcher, "Microsoft Office", it has.) Scanners that pass for
# a browser are left to the bot_seconds rule.
MAIL_SCANNERS = ("Barracuda", "Proofpoint", "Mimecast")


@functools.lru_cache(maxsize=1024)
def known_bot(user_agent: str) -> str:
    """What `user_agent` says it is when it is a crawler or a mail scanner ("crawler:
    Googlebot", "mail scanner: Mimecast"); "" for a browser or no user agent.

    Cached: a scanner sends the same user agent for every link it fetches.
    """
    # One detector per user agent: CrawlerDetect keeps the last match on the instance,
    # and clicks are recorded on several threads at once.
    detector = CrawlerDetect(user_agent=user_agent)
    if detector.is_crawler():
        return f"crawler: {detector.get_matches()}"
    lowered = user_agent.lower()
    for name in MAIL_SCANNERS:
        if name.lower() in lowered:
            return f"mail scanner: {name}"
    return ""


def record_click(
    store: Store,
    signer: ClickSigner,
    token: str,
    *,
    head: bool,
    user_agent: str,
    rules: Tracking,
    now: dt.datetime | None = None,
) -> clicks.Click | None:
    """Record a click and return where it leads; None for a token that is not ours."""
    ids = signer.verify(token)
    if ids is None:
        return None
    campaign_id, subscriber_id, idx = ids
    return clicks.record(
        store,
        campaign_id,
        subscriber_id,
        idx,
        head=head,
        rules=rules,
        known_bot=known_bot(user_agent),
        now=now,
    )
