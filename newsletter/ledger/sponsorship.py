"""The sponsor side of the ledger: bookings and where each sponsor appeared."""

from __future__ import annotations

import csv
import html
import io
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import sqlalchemy as sa

from newsletter.config import Config
from newsletter.errors import ContentError
from newsletter.issue import sponsor
from newsletter.issue.content import read_issue
from newsletter.ledger.store import Store
from newsletter.ledger.tables import (
    CANCELLED,
    MISSED,
    SENT,
    campaign_links,
    campaigns,
    clicks,
    deliveries,
)


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
    issues = []
    for path in sorted(config.issues_dir.glob("*.md")):
        try:
            issues.append(read_issue(path))
        except ContentError:
            continue
    chosen = sponsor.choices(config, issues)  # the rotation worked out once, for all
    for issue in issues:
        carried = chosen.get(issue.path)
        if carried is not None and issue.slug not in sent_slugs:
            out[carried.id].planned.append(issue.slug)
    return list(out.values())


# --- the advertiser's report --------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    """Clicks on sponsor links, told apart: every request is raw; a bot's (a crawler, a
    mail scanner, a HEAD request, a click right after delivery) is never a reader's; a
    reader's clicks on a link within [tracking] dedupe_window count once."""

    human_unique_clickers: int = 0  # readers who clicked
    human_clicks: int = 0  # readers' clicks, repeats within the window counted once
    bot_clicks: int = 0
    raw_clicks: int = 0  # every request recorded: readers' repeats and bots' included


COUNT_COLUMNS = [f.name for f in fields(Counts)]


@dataclass(frozen=True)
class LinkLine:
    url: str
    counts: Counts

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, **asdict(self.counts)}


@dataclass
class IssueLine:
    """One placement: an issue, however many campaigns sent it (their figures add up)."""

    campaign: int  # the first campaign that sent the issue
    issue: str
    subject: str
    sent_at: str
    delivered: int
    counts: Counts  # over all the issue's sponsor links
    links: list[LinkLine]
    campaigns: list[int] = field(default_factory=list)  # every campaign of the issue

    @property
    def click_rate(self) -> float:
        """Readers who clicked, of those delivered to."""
        unique = self.counts.human_unique_clickers
        return unique / self.delivered if self.delivered else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "issue": self.issue,
            "subject": self.subject,
            "sent_at": self.sent_at,
            "delivered": self.delivered,
            **asdict(self.counts),
            "click_rate": round(self.click_rate, 4),
            "links": [link.as_dict() for link in self.links],
            "campaigns": self.campaigns,
        }


@dataclass
class Report:
    sponsor_id: str
    sponsor_name: str
    dedupe_window: str  # what [tracking] says now: a reader's clicks within it count once
    issues: list[IssueLine]

    @property
    def counts(self) -> Counts:
        """The issues' counts added up: a reader who clicked in two issues is a unique
        clicker of each."""
        return Counts(
            *(sum(getattr(i.counts, name) for i in self.issues) for name in COUNT_COLUMNS)
        )

    @property
    def totals(self) -> dict[str, Any]:
        delivered = sum(i.delivered for i in self.issues)
        counts = self.counts
        unique = counts.human_unique_clickers
        return {
            "issues": len(self.issues),
            "delivered": delivered,
            **asdict(counts),
            "click_rate": round(unique / delivered, 4) if delivered else 0.0,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "sponsor": self.sponsor_id,
            "name": self.sponsor_name,
            "dedupe_window": self.dedupe_window,
            "issues": [i.as_dict() for i in self.issues],
            "totals": self.totals,
        }


def _counted() -> tuple[sa.ColumnElement[Any], ...]:
    """The columns of `Counts`, in its order, over the clicks selected."""
    reader = sa.and_(clicks.c.suspected_bot.is_(False), clicks.c.duplicate.is_(False))
    return (
        sa.func.count(sa.distinct(sa.case((reader, clicks.c.subscriber_id)))),
        sa.func.count(sa.case((reader, 1))),
        sa.func.count(sa.case((clicks.c.suspected_bot.is_(True), 1))),
        sa.func.count(),
    )


def report(config: Config, store: Store, sponsor_id: str) -> Report:
    """What a sponsor's placements delivered: per issue, per link and in total, readers'
    clicks apart from bots' and from the raw count of requests.

    An issue sent by several campaigns (`send --new-only`, `--again`) is one placement:
    their deliveries and clicks add up, and a reader who clicked in two of them is one
    unique clicker. Campaigns that never went out (cancelled, missed) are left out.
    """
    sponsor_cfg = config.sponsor(sponsor_id)
    lines: list[IssueLine] = []
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(campaigns)
            .where(
                campaigns.c.sponsor_id == sponsor_id,
                campaigns.c.status.not_in((CANCELLED, MISSED)),
            )
            .order_by(campaigns.c.id)
        ).all()
        by_issue: dict[str, list[Any]] = {}
        for row in rows:
            by_issue.setdefault(row.issue_slug, []).append(row)
        for slug, placed in by_issue.items():
            ids = [row.id for row in placed]
            delivered = conn.execute(
                sa.select(sa.func.count())
                .select_from(deliveries)
                .where(deliveries.c.campaign_id.in_(ids), deliveries.c.status == SENT)
            ).scalar_one()
            sponsor_links = sa.and_(
                campaign_links.c.campaign_id == clicks.c.campaign_id,
                campaign_links.c.idx == clicks.c.link_idx,
                campaign_links.c.in_sponsor_block.is_(True),
            )
            on_sponsor = clicks.join(campaign_links, sponsor_links)
            # A link is its URL: each campaign numbers its own links.
            urls = conn.execute(
                sa.select(campaign_links.c.url)
                .where(
                    campaign_links.c.campaign_id.in_(ids),
                    campaign_links.c.in_sponsor_block.is_(True),
                )
                .group_by(campaign_links.c.url)
                .order_by(
                    sa.func.min(campaign_links.c.campaign_id), sa.func.min(campaign_links.c.idx)
                )
            ).scalars()
            per_url = {
                url: Counts(*map(int, counts))
                for url, *counts in conn.execute(
                    sa.select(campaign_links.c.url, *_counted())
                    .select_from(on_sponsor)
                    .where(clicks.c.campaign_id.in_(ids))
                    .group_by(campaign_links.c.url)
                )
            }
            links = [LinkLine(url, per_url.get(url, Counts())) for url in urls]
            overall = conn.execute(
                sa.select(*_counted()).select_from(on_sponsor).where(clicks.c.campaign_id.in_(ids))
            ).one()
            first = placed[0]
            lines.append(
                IssueLine(
                    campaign=first.id,
                    issue=slug,
                    subject=first.subject,
                    sent_at=(first.started_at.date().isoformat() if first.started_at else ""),
                    delivered=int(delivered),
                    counts=Counts(*map(int, overall)),
                    links=links,
                    campaigns=ids,
                )
            )
    return Report(sponsor_id, sponsor_cfg.name, config.tracking.dedupe_window, lines)


def report_text(rep: Report) -> str:
    """The report for a terminal: a line per issue, one per link under it, the totals."""

    def figures(n: Counts) -> str:
        return (
            f"{n.human_unique_clickers:,} unique clickers, {n.human_clicks:,} clicks"
            f" ({n.bot_clicks:,} bot clicks, {n.raw_clicks:,} raw requests)"
        )

    out = []
    for i in rep.issues:
        out.append(
            f"{i.issue}: {i.delivered:,} delivered, {figures(i.counts)}, {i.click_rate:.2%}"
        )
        out += [f"    {link.url}: {figures(link.counts)}" for link in i.links]
    t = rep.totals
    out.append(
        f"total ({t['issues']} issues): {t['delivered']:,} delivered,"
        f" {figures(rep.counts)}, {t['click_rate']:.2%}"
    )
    return "".join(line + "\n" for line in out)


def report_csv(rep: Report) -> str:
    """One row per issue and sponsor link (an issue without one has a row with no link),
    then the totals. `delivered` is the issue's, on each of its rows; `click_rate` is the
    link's unique clickers of those delivered to."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["campaign", "issue", "sent", "delivered", "link", *COUNT_COLUMNS,
                     "click_rate"])  # fmt: skip
    for i in rep.issues:
        # The campaigns that sent the issue, space-separated.
        ids = " ".join(str(c) for c in i.campaigns) or str(i.campaign)
        for link in i.links or [LinkLine("", Counts())]:
            n = link.counts
            rate = n.human_unique_clickers / i.delivered if i.delivered else 0.0
            writer.writerow(
                [ids, i.issue, i.sent_at, i.delivered, link.url,
                 *(getattr(n, name) for name in COUNT_COLUMNS), f"{rate:.4f}"]
            )  # fmt: skip
    t = rep.totals
    writer.writerow(
        ["total", "", "", t["delivered"], "", *(t[name] for name in COUNT_COLUMNS),
         f"{t['click_rate']:.4f}"]
    )  # fmt: skip
    return out.getvalue()


def report_html(rep: Report, publication: str) -> str:
    """One self-contained page: a table and an inline SVG bar chart; no external assets."""
    e = html.escape
    t = rep.totals
    width, bar_h, gap, label_w = 640, 22, 10, 220
    top = max((i.counts.human_clicks for i in rep.issues), default=0) or 1
    bars = []
    for n, i in enumerate(rep.issues):
        y = n * (bar_h + gap)
        clicks_n = i.counts.human_clicks
        w = round((width - label_w - 60) * clicks_n / top)
        bars.append(
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{e(i.issue[:32])}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w}" height="{bar_h}" fill="#0b5cad"/>'
            f'<text x="{label_w + w + 6}" y="{y + 15}">{clicks_n}</text>'
        )
    height = max(len(rep.issues), 1) * (bar_h + gap)
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        f' role="img" aria-label="Readers\' clicks per issue"'
        f' font-family="Helvetica, Arial, sans-serif" font-size="13">{"".join(bars)}</svg>'
    )

    def cells(n: Counts) -> str:
        return (
            f"<td>{n.human_unique_clickers:,}</td><td>{n.human_clicks:,}</td>"
            f"<td>{n.bot_clicks:,}</td><td>{n.raw_clicks:,}</td>"
        )

    heads = "<th>Unique clickers</th><th>Clicks</th><th>Bot clicks</th><th>Raw requests</th>"
    rows = "".join(
        f"<tr><td>{e(i.issue)}</td><td>{e(i.sent_at)}</td><td>{i.delivered:,}</td>"
        f"{cells(i.counts)}<td>{i.click_rate:.2%}</td></tr>"
        for i in rep.issues
    )
    links = "".join(
        f"<tr><td>{e(i.issue)}</td><td>{e(link.url)}</td>{cells(link.counts)}</tr>"
        for i in rep.issues
        for link in i.links
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{e(rep.sponsor_name)}: sponsorship report</title>
<style>
body {{ font-family: Helvetica, Arial, sans-serif; color: #1f2933; margin: 32px; }}
h1 {{ font-size: 24px; margin: 0 0 4px 0; }}
p.sub {{ color: #6b7280; margin: 0 0 24px 0; max-width: 720px; }}
.totals {{ display: flex; flex-wrap: wrap; gap: 16px; margin: 0 0 24px 0; }}
.totals div {{ background: #f2f4f7; padding: 12px 16px; border-radius: 6px; }}
.totals b {{ display: block; font-size: 22px; }}
table {{ border-collapse: collapse; margin: 0 0 24px 0; }}
th, td {{ text-align: left; padding: 6px 12px; border-bottom: 1px solid #e5e7eb; }}
th {{ font-size: 12px; text-transform: uppercase; color: #6b7280; }}
</style></head><body>
<h1>{e(rep.sponsor_name)}</h1>
<p class="sub">Sponsorship report, {e(publication)}. Unique clickers and clicks are
readers': a reader's clicks on a link within {e(rep.dedupe_window)} count once. Bot clicks
(crawlers and mail scanners, HEAD requests, clicks right after delivery) are not counted;
raw requests are every request, repeats and bots included.</p>
<div class="totals">
<div><b>{t["issues"]}</b>issues</div><div><b>{t["delivered"]:,}</b>delivered</div>
<div><b>{t["human_unique_clickers"]:,}</b>unique clickers</div>
<div><b>{t["human_clicks"]:,}</b>clicks</div>
<div><b>{t["click_rate"]:.2%}</b>click rate</div>
<div><b>{t["bot_clicks"]:,}</b>bot clicks</div>
<div><b>{t["raw_clicks"]:,}</b>raw requests</div>
</div>
<h2>Readers' clicks per issue</h2>
{svg}
<table><tr><th>Issue</th><th>Sent</th><th>Delivered</th>{heads}
<th>Click rate</th></tr>{rows}</table>
<h2>Per link</h2>
<table><tr><th>Issue</th><th>Link</th>{heads}</tr>{links}</table>
</body></html>
"""
