"""/sponsors: the bookings on a timeline, which upcoming issue carries whom, and each
sponsor's report with its chart, as CSV and as the HTML report.

    GET  /sponsors                  the timeline (12 weeks from this one), the bookings,
                                    the rotation plan
    GET  /sponsors/ID               the report: per issue and link, human/bot/raw
    GET  /sponsors/ID/report.csv    `newsletter sponsors report ID --csv`, byte for byte
    GET  /sponsors/ID/report.html   `newsletter sponsors report ID --html FILE`'s file

Nothing here changes anything: there is no action. The bookings are `sponsors list`'s
(ledger/sponsorship.bookings), the report and its files `sponsors report`'s
(sponsorship.report, report_csv, report_html), the plan schedule/sponsor_plan's.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from newsletter.ledger import sponsorship
from newsletter.schedule import sponsor_plan
from newsletter.schedule.timing import zone
from newsletter.web.console import charts
from newsletter.web.console.context import Console

WEEKS = 12  # the timeline's reach, from the start of this week

# The HTML report is one self-contained page with its own <style>: let it show as it is.
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"

HOW = {
    sponsor_plan.SCHEDULED_BY: "scheduled",
    sponsor_plan.RECURRING_BY: "recurring",
    sponsor_plan.UNSCHEDULED: "not scheduled",
}


def routes(console: Console) -> list[BaseRoute]:
    def local(when: dt.datetime | None) -> str:
        if when is None:
            return ""
        return f"{when.astimezone(zone(console.config.publication.timezone)):%Y-%m-%d %H:%M %Z}"

    def overview() -> dict[str, Any]:
        config = console.config
        now = console.clock()
        today = now.astimezone(zone(config.publication.timezone)).date()
        first = today - dt.timedelta(days=today.weekday())
        days = WEEKS * 7
        booked = sponsorship.bookings(config, console.store)
        colours = {b.id: charts.PALETTE[n % len(charts.PALETTE)] for n, b in enumerate(booked)}
        spans = [
            charts.Span(s.name, s.start, s.end, colours[s.id])
            for s in config.sponsors.values()
            if s.is_booking
        ]
        until = dt.datetime.combine(first + dt.timedelta(days=days), dt.time(), dt.UTC)
        planned = sponsor_plan.plan(console.store, config, until)
        return {
            "bookings": booked,
            "timeline": charts.timeline(
                f"Sponsor bookings, {WEEKS} weeks from {first:%b %d}", spans, first, days, today
            ),
            "spans": spans,
            "today": today,
            "planned": planned,
            "how": HOW,
            "local": local,
            "default_sponsor": config.default_sponsor,
        }

    def report_of(request: Request) -> sponsorship.Report:
        sponsor_id = request.path_params["id"]
        if sponsor_id not in console.config.sponsors:
            raise HTTPException(404, f"no sponsor {sponsor_id!r} in [sponsors]")
        return sponsorship.report(console.config, console.store, sponsor_id)

    async def listing(request: Request) -> Response:
        return console.render(request, "sponsors.html", await console.run(overview))

    async def one(request: Request) -> Response:
        rep = await console.run(report_of, request)
        chart = charts.bars(
            f"Readers' clicks per issue for {rep.sponsor_name}",
            [i.issue for i in rep.issues],
            [i.counts.human_clicks for i in rep.issues],
            "clicks",
        )
        return console.render(
            request,
            "sponsor.html",
            {
                "rep": rep,
                "totals": rep.totals,
                "chart": chart,
                "sponsor": console.config.sponsors[rep.sponsor_id],
            },
        )

    async def csv_file(request: Request) -> Response:
        rep = await console.run(report_of, request)
        return Response(
            sponsorship.report_csv(rep).encode("utf-8"),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": _attachment(f"{rep.sponsor_id}-report.csv")},
        )

    async def html_file(request: Request) -> Response:
        rep = await console.run(report_of, request)
        page = sponsorship.report_html(rep, console.config.publication.name)
        return Response(
            page.encode("utf-8"),
            media_type="text/html; charset=utf-8",
            headers={
                "content-disposition": _attachment(f"{rep.sponsor_id}-report.html"),
                "content-security-policy": REPORT_CSP,
            },
        )

    return [
        Route("/sponsors", listing),
        Route("/sponsors/{id}", one),
        Route("/sponsors/{id}/report.csv", csv_file),
        Route("/sponsors/{id}/report.html", html_file),
    ]


def _attachment(name: str) -> str:
    # The sponsor ids are [sponsors.ID] keys: letters, digits, '_' and '-'; quoted anyway.
    safe = "".join(c for c in name if c.isalnum() or c in "._-")
    return f'attachment; filename="{safe}"'
