"""Tracked links in an issue: which links become signed `<base_url>/c/<token>` links, and
their tokens. `build`, the preview and the sending share this code, so what `build` writes
carries the links readers get (send/tracking records the clicks).

The token carries only numbers (campaign, subscriber, link) and an HMAC; the URL
it leads to comes from the campaign's own link table. So a forged or altered
token, or one with a URL smuggled into it, leads nowhere: never an open redirect.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import lxml.html

from newsletter import tokens
from newsletter.config import Config
from newsletter.issue.render import has_slots, marker

# `build` and the preview have no campaign and no subscriber yet: their tracked links
# carry these ids, which no campaign has (ids start at 1), so `serve` answers them 404.
PLACEHOLDER_CAMPAIGN = 0
PLACEHOLDER_SUBSCRIBER = 0


def tracking_on(config: Config) -> bool:
    """Whether sent messages carry tracked links: [tracking] clicks on, and a base_url."""
    return config.tracking.clicks != "off" and bool(config.publication.base_url)


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


_A_TAG = re.compile(r"<a\b[^>]*>", re.IGNORECASE)


def with_titles(html_source: str, destinations: Mapping[str, str]) -> str:
    """The HTML with a title (shown on hover) naming the destination of each tracked link,
    for the preview: the href is the tracked link readers get, the title where it leads.
    A link with a title of its own keeps it."""
    if not destinations:
        return html_source

    def add(match: re.Match[str]) -> str:
        tag = match.group(0)
        href = _HREF.search(tag)
        if href is None or re.search(r"\stitle=", tag, re.IGNORECASE):
            return tag
        destination = destinations.get(html.unescape(href.group(1)))
        if destination is None:
            return tag
        title = html.escape(destination, quote=True)
        return f'{tag[: href.end()]} title="{title}"{tag[href.end() :]}'

    return _A_TAG.sub(add, html_source)
