"""Click tracking: sponsor links (or all links) become signed `<base_url>/c/<token>` links at
send time; `newsletter serve` records the click and redirects to the original URL.

Every request for a tracked link is recorded; what the sponsor is told counts only a
reader's, once per window (ledger/clicks.record). Crawlers and mail scanners are known
by their user agent (`known_bot`): crawlerdetect's maintained list, and the few mail
scanners it misses.

The token carries only numbers (campaign, subscriber, link) and an HMAC; the URL
it leads to comes from the campaign's own link table. So a forged or altered
token, or one with a URL smuggled into it, leads nowhere: never an open redirect.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import html
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import lxml.html
from crawlerdetect import CrawlerDetect

from newsletter import tokens
from newsletter.config import Config, Tracking
from newsletter.issue.render import has_slots, marker
from newsletter.ledger import clicks
from newsletter.ledger.store import Store

_HREF = re.compile(r'href="([^"]*)"')
_SIG_BYTES = 12


@dataclass(frozen=True)
class Link:
    idx: int
    url: str
    in_sponsor_block: bool


@dataclass(frozen=True)
class Tracked:
    html: str  # the HTML snapshot with tracked hrefs replaced by link slots
    text: str
    links: tuple[Link, ...]


def rewrite(html_source: str, text_source: str, mode: str) -> Tracked:
    """Replace the tracked links of an issue's snapshot with per-recipient link slots."""
    if mode == "off":
        return Tracked(html_source, text_source, ())
    doc = lxml.html.document_fromstring(html_source)
    in_block = {
        a.get("href", "")
        for block in doc.xpath('//*[@data-block="sponsor"]')
        for a in block.iter("a")
    }
    ordered: list[str] = []
    for a in doc.iter("a"):
        url = a.get("href", "")
        if url in ordered or not url.startswith(("https://", "http://")) or has_slots(url):
            continue
        if mode == "all" or url in in_block:
            ordered.append(url)
    links = tuple(Link(n, url, url in in_block) for n, url in enumerate(ordered))
    slot_for = {link.url: marker(f"link{link.idx}") for link in links}

    def replace(match: re.Match[str]) -> str:
        slot = slot_for.get(html.unescape(match.group(1)))
        return f'href="{slot}"' if slot else match.group(0)

    new_html = _HREF.sub(replace, html_source)
    new_text = text_source
    for url in sorted(slot_for, key=len, reverse=True):
        new_text = new_text.replace(url, slot_for[url])
    return Tracked(new_html, new_text, links)


class ClickSigner:
    """Signs a tracked link's (campaign, subscriber, link); `previous` (older secrets)
    only verify, so a rotation keeps the links already sent working."""

    def __init__(self, secret: bytes, previous: Sequence[bytes] = ()) -> None:
        self._macs = [hmac.new(key, b"click:", hashlib.sha256) for key in (secret, *previous)]

    def sign(self, campaign_id: int, subscriber_id: int, idx: int) -> str:
        data = struct.pack(">III", campaign_id, subscriber_id, idx)
        mac = self._macs[0].copy()
        mac.update(data)
        return tokens.b64encode(data) + "." + tokens.b64encode(mac.digest()[:_SIG_BYTES])

    def verify(self, token: str) -> tuple[int, int, int] | None:
        head, _, sig = token.partition(".")
        try:
            data, given = tokens.b64decode(head), tokens.b64decode(sig)
        except ValueError:
            return None
        if len(data) != 12:
            return None
        for key in self._macs:
            mac = key.copy()
            mac.update(data)
            if hmac.compare_digest(mac.digest()[:_SIG_BYTES], given):
                return struct.unpack(">III", data)
        return None


class LinkSlots:
    """Per-recipient values of the link slots of one campaign."""

    def __init__(self, config: Config, signer: ClickSigner, campaign_id: int, count: int) -> None:
        self.base = f"{config.publication.base_url.rstrip('/')}/c/"
        self.signer = signer
        self.campaign_id = campaign_id
        self.count = count

    def values(self, subscriber_id: int) -> Mapping[str, str]:
        sign = self.signer.sign
        cid = self.campaign_id
        return {f"link{n}": self.base + sign(cid, subscriber_id, n) for n in range(self.count)}


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
