"""Choose the sponsor block for an issue: front matter overrides the configured default."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from newsletter.config import Config, Sponsor
from newsletter.errors import ContentError
from newsletter.issue.content import Issue, read_issue

NO_SPONSOR = "none"


@dataclass(frozen=True)
class SponsorBlock:
    """What the sponsor templates render: the sponsor plus its tagged links."""

    sponsor: Sponsor
    url: str
    tel: str


def choose(config: Config, issue: Issue) -> Sponsor | None:
    """The sponsor for this issue.

    `sponsor: <id>` or `none` in front matter wins. Otherwise the sponsors booked
    for the issue's date take turns by weight over the issues of their period
    (see `rotation`), and without a booking the configured default appears.
    """
    return _chosen(config, issue, lambda: rotation(config, [issue]))


def choices(config: Config, issues: Iterable[Issue]) -> dict[Path, Sponsor | None]:
    """`choose` for each of `issues` (by its path), the rotation worked out once for all
    of them: listing every issue costs one reading of issues/, not one per issue. An
    issue whose front matter names an unknown sponsor is left out (`choose` raises the
    ContentError that `check` reports)."""
    listed = list(issues)
    booked: dict[Path, Sponsor] | None = None

    def rotated() -> dict[Path, Sponsor]:
        nonlocal booked
        if booked is None:
            booked = rotation(config, listed)
        return booked

    out: dict[Path, Sponsor | None] = {}
    for issue in listed:
        try:
            out[issue.path] = _chosen(config, issue, rotated)
        except ContentError:
            continue
    return out


def _chosen(
    config: Config, issue: Issue, rotated: Callable[[], Mapping[Path, Sponsor]]
) -> Sponsor | None:
    if issue.sponsor is None:
        booked = rotated().get(issue.path)
        if booked is not None:
            return booked
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


def rotation(config: Config, extra: Iterable[Issue] = ()) -> dict[Path, Sponsor]:
    """Which booked sponsor each unpinned issue gets: deterministic, spread by weight.

    The issues in issues/ (plus `extra`) are taken in date order; each issue that
    names no sponsor and has bookings on its date goes to the booked sponsor with
    the most accumulated weight (smooth weighted round-robin), so over a period
    each sponsor appears in proportion to its weight, evenly spaced, and the same
    issue always gets the same sponsor in `build`, `preview` and `send`. Issues
    added later (by date) do not change the ones before them.
    """
    bookings = [s for s in config.sponsors.values() if s.is_booking]
    if not bookings:
        return {}
    issues = {i.path.resolve(): i for i in _issues(config)}
    for issue in extra:
        issues[issue.path.resolve()] = issue
    credit = {s.id: 0 for s in bookings}
    chosen: dict[Path, Sponsor] = {}
    for issue in sorted(issues.values(), key=lambda i: (i.date, i.slug)):
        if issue.sponsor is not None:
            continue
        candidates = [s for s in bookings if s.booked_on(issue.date)]
        if not candidates:
            continue
        total = sum(s.weight for s in candidates)
        for s in candidates:
            credit[s.id] += s.weight
        winner = max(candidates, key=lambda s: (credit[s.id], -bookings.index(s)))
        credit[winner.id] -= total
        chosen[issue.path] = winner
        chosen[issue.path.resolve()] = winner
    return chosen


def booking_problem(config: Config, issue: Issue) -> str | None:
    """Why a pinned sponsor cannot appear in this issue (expired or not yet started)."""
    if issue.sponsor in (None, NO_SPONSOR) or issue.sponsor not in config.sponsors:
        return None
    s = config.sponsors[issue.sponsor]
    if not s.is_booking or s.booked_on(issue.date):
        return None
    if s.end is not None and issue.date > s.end:
        return f"sponsor {s.id!r} was booked until {s.end}; this issue is dated {issue.date}"
    return f"sponsor {s.id!r} is booked from {s.start}; this issue is dated {issue.date}"


def _issues(config: Config) -> list[Issue]:
    out = []
    for path in sorted(config.issues_dir.glob("*.md")):
        try:
            out.append(read_issue(path))
        except ContentError:
            continue  # a broken issue elsewhere must not stop this one; `check` reports it
    return out


def block(config: Config, issue: Issue, sponsor: Sponsor) -> SponsorBlock:
    url = sponsor.url
    if config.utm.enabled:
        url = tag_utm(
            url,
            source=config.utm.source or config.publication.name,
            medium=config.utm.medium,
            campaign=issue.slug,
        )
    return SponsorBlock(
        sponsor=sponsor, url=url, tel=tel_uri(sponsor.phone, sponsor.phone_country_code)
    )


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


def tel_uri(phone: str, country_code: str = "") -> str:
    """A tel: URI (RFC 3966) for a phone number as people write it, in E.164 form.

    "+1 (949) 800-5678", or "(949) 800-5678" with the country code "1", give
    tel:+19498005678. Without a country code the link has only the digits, which dial
    only from inside the country: `check` warns about such a link.
    """
    digits = "".join(c for c in phone if c.isdigit())
    if not digits:
        return ""
    if phone.strip().startswith("+"):
        return f"tel:+{digits}"
    code = country_code.strip().removeprefix("+")
    if code:
        # A national number's leading 0 is the trunk prefix, dialled only at home:
        # 020 7946 0000 in the UK is +44 20 7946 0000. (Italy keeps its 0: write
        # those numbers with "+39".)
        return f"tel:+{code}{digits.removeprefix('0')}"
    return f"tel:{digits}"
