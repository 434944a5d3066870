"""Choose the sponsor block for an issue: front matter overrides the configured default."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from newsletter.config import Config, Sponsor
from newsletter.content import Issue
from newsletter.errors import ContentError

NO_SPONSOR = "none"


@dataclass(frozen=True)
class SponsorBlock:
    """What the sponsor templates render: the sponsor plus its tagged links."""

    sponsor: Sponsor
    url: str
    tel: str


def choose(config: Config, issue: Issue) -> Sponsor | None:
    """The sponsor for this issue: `sponsor: <id>` or `none` in front matter, else the default."""
    if issue.sponsor is None:
        return config.sponsors[config.default_sponsor] if config.default_sponsor else None
    if issue.sponsor == NO_SPONSOR:
        return None
    try:
        return config.sponsors[issue.sponsor]
    except KeyError:
        known = ", ".join(sorted(config.sponsors)) or "none configured"
        raise ContentError(
            f"{issue.path}: front matter sponsor: unknown sponsor {issue.sponsor!r}"
            f" (known: {known}; or 'none')"
        ) from None


def block(config: Config, issue: Issue, sponsor: Sponsor) -> SponsorBlock:
    url = sponsor.url
    if config.utm.enabled:
        url = tag_utm(
            url,
            source=config.utm.source or config.publication.name,
            medium=config.utm.medium,
            campaign=issue.slug,
        )
    return SponsorBlock(sponsor=sponsor, url=url, tel=tel_uri(sponsor.phone))


def tag_utm(url: str, *, source: str, medium: str, campaign: str) -> str:
    """Add utm_* parameters to a URL, keeping any it already has."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    present = {k for k, _ in query}
    for key, value in (
        ("utm_source", source),
        ("utm_medium", medium),
        ("utm_campaign", campaign),
    ):
        if key not in present:
            query.append((key, value))
    path = parts.path or "/"
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode(query), parts.fragment))


def tel_uri(phone: str) -> str:
    """A tel: URI (RFC 3966) for a phone number as people write it: "(949) 800-5678"."""
    digits = "".join(c for c in phone if c.isdigit() or c == "+")
    return f"tel:{digits}" if digits else ""
