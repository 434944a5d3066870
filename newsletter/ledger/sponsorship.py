"""The sponsor side of the ledger: bookings and where each sponsor appeared."""

from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass, field
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
    for path in sorted(config.issues_dir.glob("*.md")):
        try:
            issue = read_issue(path)
            chosen = sponsor.choose(config, issue)
        except ContentError:
            continue
        if chosen is not None and issue.slug not in sent_slugs:
            out[chosen.id].planned.append(issue.slug)
    return list(out.values())


# --- the advertiser's report --------------------------------------------------------------


@dataclass
class IssueLine:
    """One placement: an issue, however many campaigns sent it (their figures add up)."""

    campaign: int  # the first campaign that sent the issue
    issue: str
    subject: str
    sent_at: str
    delivered: int
    unique_clickers: int
    clicks: int
    links: list[dict[str, Any]]  # {"url", "clicks", "unique_clickers"}
    campaigns: list[int] = field(default_factory=list)  # every campaign of the issue

    @property
    def click_rate(self) -> float:
        return self.unique_clickers / self.delivered if self.delivered else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "click_rate": round(self.click_rate, 4)}


@dataclass
class Report:
    sponsor_id: str
    sponsor_name: str
    issues: list[IssueLine]

    @property
    def totals(self) -> dict[str, Any]:
        delivered = sum(i.delivered for i in self.issues)
        unique = sum(i.unique_clickers for i in self.issues)
        return {
            "issues": len(self.issues),
            "delivered": delivered,
            "unique_clickers": unique,
            "clicks": sum(i.clicks for i in self.issues),
            "click_rate": round(unique / delivered, 4) if delivered else 0.0,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "sponsor": self.sponsor_id,
            "name": self.sponsor_name,
            "issues": [i.as_dict() for i in self.issues],
            "totals": self.totals,
        }


def report(config: Config, store: Store, sponsor_id: str) -> Report:
    """What a sponsor's placements delivered: per issue and in total, bots left out.

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
            human = sa.and_(clicks.c.campaign_id.in_(ids), clicks.c.suspected_bot.is_(False))
            sponsor_links = sa.and_(
                campaign_links.c.campaign_id == clicks.c.campaign_id,
                campaign_links.c.idx == clicks.c.link_idx,
                campaign_links.c.in_sponsor_block.is_(True),
            )
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
            on_sponsor = sa.select(
                sa.func.count(), sa.func.count(sa.distinct(clicks.c.subscriber_id))
            ).select_from(clicks.join(campaign_links, sponsor_links))
            links = []
            for url in urls:
                n, unique = conn.execute(
                    on_sponsor.where(human, campaign_links.c.url == url)
                ).one()
                links.append({"url": url, "clicks": int(n), "unique_clickers": int(unique)})
            n, unique = conn.execute(on_sponsor.where(human)).one()
            first = placed[0]
            lines.append(
                IssueLine(
                    campaign=first.id,
                    issue=slug,
                    subject=first.subject,
                    sent_at=(first.started_at.date().isoformat() if first.started_at else ""),
                    delivered=int(delivered),
                    unique_clickers=int(unique),
                    clicks=int(n),
                    links=links,
                    campaigns=ids,
                )
            )
    return Report(sponsor_id, sponsor_cfg.name, lines)


def report_csv(rep: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["campaign", "issue", "sent", "delivered", "unique_clickers", "clicks", "click_rate"]
    )
    for i in rep.issues:
        # One row per issue: the campaigns that sent it, space-separated.
        ids = " ".join(str(c) for c in i.campaigns) or str(i.campaign)
        writer.writerow(
            [ids, i.issue, i.sent_at, i.delivered, i.unique_clickers, i.clicks,
             f"{i.click_rate:.4f}"]
        )  # fmt: skip
    t = rep.totals
    writer.writerow(
        ["total", "", "", t["delivered"], t["unique_clickers"], t["clicks"],
         f"{t['click_rate']:.4f}"]
    )  # fmt: skip
    return out.getvalue()


def report_html(rep: Report, publication: str) -> str:
    """One self-contained page: a table and an inline SVG bar chart; no external assets."""
    e = html.escape
    t = rep.totals
    width, bar_h, gap, label_w = 640, 22, 10, 220
    top = max((i.clicks for i in rep.issues), default=0) or 1
    bars = []
    for n, i in enumerate(rep.issues):
        y = n * (bar_h + gap)
        w = round((width - label_w - 60) * i.clicks / top)
        bars.append(
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{e(i.issue[:32])}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w}" height="{bar_h}" fill="#0b5cad"/>'
            f'<text x="{label_w + w + 6}" y="{y + 15}">{i.clicks}</text>'
        )
    height = max(len(rep.issues), 1) * (bar_h + gap)
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        f' role="img" aria-label="Clicks per issue" font-family="Helvetica, Arial, sans-serif"'
        f' font-size="13">{"".join(bars)}</svg>'
    )
    rows = "".join(
        f"<tr><td>{e(i.issue)}</td><td>{e(i.sent_at)}</td><td>{i.delivered:,}</td>"
        f"<td>{i.unique_clickers:,}</td><td>{i.clicks:,}</td><td>{i.click_rate:.2%}</td></tr>"
        for i in rep.issues
    )
    links = "".join(
        f"<tr><td>{e(i.issue)}</td><td>{e(link['url'])}</td><td>{link['clicks']:,}</td>"
        f"<td>{link['unique_clickers']:,}</td></tr>"
        for i in rep.issues
        for link in i.links
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{e(rep.sponsor_name)}: sponsorship report</title>
<style>
body {{ font-family: Helvetica, Arial, sans-serif; color: #1f2933; margin: 32px; }}
h1 {{ font-size: 24px; margin: 0 0 4px 0; }}
p.sub {{ color: #6b7280; margin: 0 0 24px 0; }}
.totals {{ display: flex; gap: 16px; margin: 0 0 24px 0; }}
.totals div {{ background: #f2f4f7; padding: 12px 16px; border-radius: 6px; }}
.totals b {{ display: block; font-size: 22px; }}
table {{ border-collapse: collapse; margin: 0 0 24px 0; }}
th, td {{ text-align: left; padding: 6px 12px; border-bottom: 1px solid #e5e7eb; }}
th {{ font-size: 12px; text-transform: uppercase; color: #6b7280; }}
</style></head><body>
<h1>{e(rep.sponsor_name)}</h1>
<p class="sub">Sponsorship report, {e(publication)}. Suspected bot clicks (link scanners,
HEAD requests) are not counted.</p>
<div class="totals">
<div><b>{t["issues"]}</b>issues</div><div><b>{t["delivered"]:,}</b>delivered</div>
<div><b>{t["unique_clickers"]:,}</b>unique clickers</div><div><b>{t["clicks"]:,}</b>clicks</div>
<div><b>{t["click_rate"]:.2%}</b>click rate</div>
</div>
<h2>Clicks per issue</h2>
{svg}
<table><tr><th>Issue</th><th>Sent</th><th>Delivered</th><th>Unique clickers</th><th>Clicks</th>
<th>Click rate</th></tr>{rows}</table>
<h2>Per link</h2>
<table><tr><th>Issue</th><th>Link</th><th>Clicks</th><th>Unique clickers</th></tr>{links}</table>
</body></html>
"""
