"""The calendar: campaigns by week and month in the publication's time zone, the coming
ticks of the recurring rules, and the schedule's actions.

    GET  /calendar              ?view=week|month&date=YYYY-MM-DD
    POST /calendar/schedule     issue, at (datetime-local), segment, repeat, fold
    POST /calendar/move         campaign, at, fold
    POST /calendar/cancel       ref: a campaign id (12) or a recurring rule (r3)

Each action calls what `newsletter schedule ISSUE --at`, `schedule move` and `schedule
cancel` call (schedule/plans.py), with the console's clock as now: the same zone rules
and the same one-line refusals, shown on the page; nothing is written when one comes.
A time that happens twice (the clocks go back) comes back with its two readings to
choose from, as the CLI's --fold offers them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from newsletter.errors import ContentError, NewsletterError
from newsletter.issue import sponsor as sponsor_mod
from newsletter.issue.content import Issue, read_issue
from newsletter.ledger import once, schedules
from newsletter.ledger.tables import (
    CANCELLED,
    CLOSED,
    DONE,
    INCOMPLETE,
    MISSED,
    READY,
    RUNNING,
    SCHEDULED,
)
from newsletter.schedule import plans, timing
from newsletter.web.console.context import Console

VIEWS = ("week", "month")

# A campaign's status as the calendar names it (a word beside the colour: the colour is
# never the only sign), and the badge's class in console.css.
STATUS_LABELS = {
    SCHEDULED: ("Scheduled", "scheduled"),
    READY: ("Ready", "scheduled"),
    RUNNING: ("Sending", "sending"),
    DONE: ("Sent", "sent"),
    INCOMPLETE: ("Incomplete", "missed"),
    MISSED: ("Missed", "missed"),
    CANCELLED: ("Cancelled", "cancelled"),
    CLOSED: ("Closed", "cancelled"),
}
RECURRING = ("Recurring", "recurring")
REPEATS = (
    (once.Repeat.REFUSE.value, "Refuse (one issue once)"),
    (once.Repeat.NEW_ONLY.value, "Only those who have not had it"),
    (once.Repeat.AGAIN.value, "Everyone again"),
)


@dataclass(frozen=True)
class Entry:
    """One line of the calendar: a campaign, or a coming tick of a recurring rule."""

    local: dt.datetime
    label: str
    css: str
    subject: str
    issue: str
    sponsor: str
    audience: int | None
    audience_note: str  # "" for a campaign's deliveries, "now" for a count made now
    campaign_id: int | None = None
    rule: str = ""  # "r3" for a recurring rule's tick
    segment: str | None = None
    note: str = ""
    status: str = ""  # the campaign's (tables.py); "" for a tick

    @property
    def movable(self) -> bool:
        """A campaign still waiting for its time: `schedule move` and `cancel` take it."""
        return self.status == SCHEDULED


@dataclass
class Day:
    date: dt.date
    in_range: bool
    today: bool
    entries: list[Entry] = field(default_factory=list)


@dataclass(frozen=True)
class Period:
    view: str
    date: dt.date
    first: dt.date  # the first day shown (a Monday)
    days: int
    title: str
    previous: dt.date
    following: dt.date

    @property
    def last(self) -> dt.date:
        return self.first + dt.timedelta(days=self.days - 1)


def period(view: str, day: dt.date) -> Period:
    """The days a view shows around `day`: its week (Monday first), or its month's weeks."""
    if view == "month":
        start = day.replace(day=1)
        following = (start + dt.timedelta(days=32)).replace(day=1)
        previous = (start - dt.timedelta(days=1)).replace(day=1)
        first = start - dt.timedelta(days=start.weekday())
        end = following - dt.timedelta(days=1)
        last = end + dt.timedelta(days=6 - end.weekday())
        return Period(
            view, day, first, (last - first).days + 1, f"{start:%B %Y}", previous, following
        )
    first = day - dt.timedelta(days=day.weekday())
    last = first + dt.timedelta(days=6)
    title = f"Week of {first:%d %b} – {last:%d %b %Y}"
    return Period(
        view, day, first, 7, title, day - dt.timedelta(days=7), day + dt.timedelta(days=7)
    )


def _utc(day: dt.date, tz_name: str) -> dt.datetime:
    """Midnight at the start of `day` in the zone, in UTC."""
    return dt.datetime.combine(day, dt.time.min, tzinfo=timing.zone(tz_name)).astimezone(dt.UTC)


@dataclass(frozen=True)
class IssueChoice:
    name: str  # the file name in the issues folder: what a form sends
    label: str


def issue_choices(console: Console) -> list[IssueChoice]:
    """Every readable issue file, newest first, for the forms' select."""
    issues = []
    for path in sorted(console.config.issues_dir.glob("*.md")):
        try:
            issue = read_issue(path)
        except ContentError:
            continue
        issues.append(
            (issue.date, path.name, IssueChoice(path.name, f"{issue.date} · {issue.subject}"))
        )
    return [choice for *_, choice in sorted(issues, key=lambda t: (t[0], t[1]), reverse=True)]


def issue_path(console: Console, name: object) -> Path:
    """The issue a form names, which must be a file of the issues folder."""
    names = {choice.name for choice in issue_choices(console)}
    if not isinstance(name, str) or name not in names:
        raise NewsletterError(f"issue {name!r}: not an issue file in {console.config.issues_dir}")
    return console.config.issues_dir / name


class _Audiences:
    """Audience sizes, each counted once a page: a scheduled campaign's as the list is now
    (the `subscribers count --segment` count, within "one issue once")."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._cache: dict[tuple[str, str, str | None], int | None] = {}

    def now(self, issue_slug: str, audience: str, segment: str | None) -> int | None:
        key = (issue_slug, audience, segment)
        if key not in self._cache:
            repeat = once.Repeat.NEW_ONLY if audience == once.NEWCOMERS else None
            try:
                chosen = self.console.config.segment(segment) if segment else None
                size: int | None = once.audience_size(
                    self.console.store, issue_slug, repeat, chosen
                )
            except NewsletterError:
                size = None
            self._cache[key] = size
        return self._cache[key]


def _sponsor_name(console: Console, sponsor_id: str | None) -> str:
    if not sponsor_id:
        return ""
    known = console.config.sponsors.get(sponsor_id)
    return known.name if known else sponsor_id


def _tick_sponsor(console: Console, issue: Issue | None) -> str:
    if issue is None:
        return ""
    try:
        chosen = sponsor_mod.choose(console.config, issue)
    except NewsletterError:
        return ""
    return chosen.name if chosen else ""


def entries(console: Console, start: dt.datetime, end: dt.datetime) -> list[Entry]:
    """What the calendar shows from `start` to `end` (UTC), in time order."""
    tz = timing.zone(console.config.publication.timezone)
    audiences = _Audiences(console)
    out = []
    for row in schedules.on_calendar(console.store, start, end):
        label, css = STATUS_LABELS.get(row.status, (row.status.title(), "scheduled"))
        when = row.scheduled_at or row.started_at or row.created_at
        waiting = row.status in (SCHEDULED, CANCELLED, MISSED) and not row.total
        out.append(
            Entry(
                local=when.astimezone(tz),
                label=label,
                css=css,
                subject=row.subject,
                issue=row.issue_slug,
                sponsor=_sponsor_name(console, row.sponsor_id),
                audience=(
                    audiences.now(row.issue_slug, row.audience, row.segment)
                    if waiting
                    else row.total
                ),
                audience_note="now" if waiting else "",
                campaign_id=row.id,
                segment=row.segment,
                note=row.last_error or "",
                status=row.status,
            )
        )
    active = console.store.count_subscribers()
    for tick in plans.upcoming_ticks(console.store, console.config, end):
        if tick.at < start:
            continue
        out.append(
            Entry(
                local=tick.at.astimezone(tz),
                label=RECURRING[0],
                css=RECURRING[1],
                subject=tick.issue.subject if tick.issue else "no unsent issue dated by then",
                issue=tick.issue.slug if tick.issue else "",
                sponsor=_tick_sponsor(console, tick.issue),
                audience=active,
                audience_note="now",
                rule=f"r{tick.rule_id}",
                note=f"every {tick.cron}",
            )
        )
    out.sort(key=lambda e: (e.local, e.campaign_id or 0))
    return out


def _today(console: Console) -> dt.date:
    return console.clock().astimezone(timing.zone(console.config.publication.timezone)).date()


def _view_and_date(console: Console, params: Any) -> tuple[str, dt.date, str]:
    """The view and day asked for; a bad date falls back to today, with the error."""
    view = params.get("view", "week")
    view = view if view in VIEWS else "week"
    text = params.get("date", "")
    if not text:
        return view, _today(console), ""
    try:
        return view, dt.date.fromisoformat(text), ""
    except ValueError:
        return view, _today(console), f"date {text[:40]!r}: expected YYYY-MM-DD; showing today"


@dataclass
class Retry:
    """An action to send again with one of two readings of an ambiguous time."""

    action: str
    fields: dict[str, str]
    choices: tuple[tuple[int, str], ...]


def _page(
    console: Console,
    request: Request,
    view: str,
    day: dt.date,
    error: str = "",
    status_code: int = 200,
    form: dict[str, str] | None = None,
    retry: Retry | None = None,
) -> Response:
    shown = period(view, day)
    tz_name = console.config.publication.timezone
    start = _utc(shown.first, tz_name)
    end = _utc(shown.last + dt.timedelta(days=1), tz_name) - dt.timedelta(microseconds=1)
    today = _today(console)
    in_range = (
        (lambda d: d.month == day.month and d.year == day.year)
        if view == "month"
        else (lambda d: True)
    )
    days = [
        Day(d, in_range(d), d == today)
        for d in (shown.first + dt.timedelta(days=i) for i in range(shown.days))
    ]
    by_date = {d.date: d for d in days}
    for entry in entries(console, start, end):
        if entry.local.date() in by_date:
            by_date[entry.local.date()].entries.append(entry)
    now_local = console.clock().astimezone(timing.zone(tz_name))
    suggested = (now_local + dt.timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    return console.render(
        request,
        "calendar.html",
        {
            "period": shown,
            "days": days,
            "weeks": [days[i : i + 7] for i in range(0, len(days), 7)],
            "today": today,
            "issues": issue_choices(console),
            "repeats": REPEATS,
            "form": {
                "issue": "",
                "at": f"{suggested:%Y-%m-%dT%H:%M}",
                "segment": "",
                "repeat": once.Repeat.REFUSE.value,
                **(form or {}),
            },
            "page_error": error,
            "retry": retry,
            "now_local": now_local,
        },
        status_code=status_code,
    )


def _back(view: str, day: dt.date, notice: str) -> Response:
    query = urlencode({"view": view, "date": day.isoformat(), "notice": notice})
    return RedirectResponse(f"/calendar?{query}", status_code=303)


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _fold(form: FormData) -> int | None:
    value = _text(form, "fold")
    return int(value) if value in ("0", "1") else None


def routes(console: Console) -> list[BaseRoute]:
    async def calendar(request: Request) -> Response:
        view, day, error = _view_and_date(console, request.query_params)
        return await console.run(
            lambda: _page(console, request, view, day, error, 400 if error else 200)
        )

    async def schedule(request: Request) -> Response:
        form = await console.form(request)
        view, day, _ = _view_and_date(console, form)
        fields = {k: _text(form, k) for k in ("issue", "at", "segment", "repeat")}

        def act() -> Response:
            try:
                path = issue_path(console, fields["issue"])
                segment = console.config.segment(fields["segment"]) if fields["segment"] else None
                try:
                    repeat = once.Repeat(fields["repeat"] or once.Repeat.REFUSE.value)
                except ValueError:
                    raise NewsletterError(f"repeat {fields['repeat']!r}: not a choice") from None
                cid, when, tz_name = plans.schedule_issue(
                    console.store,
                    console.config,
                    path,
                    fields["at"],
                    None,
                    _fold(form),
                    now=console.clock(),
                    repeat=repeat,
                    segment=segment,
                )
            except timing.AmbiguousTime as exc:
                retry = Retry("/calendar/schedule", {**fields, "view": view}, exc.choices)
                return _page(console, request, view, day, str(exc), 400, fields, retry)
            except NewsletterError as exc:
                return _page(console, request, view, day, str(exc), 400, fields)
            message = f"campaign {cid} scheduled for {timing.describe(when, tz_name)}"
            console.log(message)
            return _back(view, when.astimezone(timing.zone(tz_name)).date(), message)

        return await console.run(act)

    async def move(request: Request) -> Response:
        form = await console.form(request)
        view, day, _ = _view_and_date(console, form)
        campaign, at = _text(form, "campaign"), _text(form, "at")

        def act() -> Response:
            try:
                if not campaign.isdigit():
                    raise NewsletterError(f"campaign {campaign!r}: expected a campaign id")
                when, tz_name = plans.move(
                    console.store, int(campaign), at, None, _fold(form), now=console.clock()
                )
            except timing.AmbiguousTime as exc:
                retry = Retry(
                    "/calendar/move", {"campaign": campaign, "at": at, "view": view}, exc.choices
                )
                return _page(console, request, view, day, str(exc), 400, None, retry)
            except NewsletterError as exc:
                return _page(console, request, view, day, str(exc), 400)
            message = f"campaign {campaign} moved to {timing.describe(when, tz_name)}"
            console.log(message)
            return _back(view, when.astimezone(timing.zone(tz_name)).date(), message)

        return await console.run(act)

    async def cancel(request: Request) -> Response:
        form = await console.form(request)
        view, day, _ = _view_and_date(console, form)

        def act() -> Response:
            try:
                message = plans.cancel(console.store, _text(form, "ref"))
            except NewsletterError as exc:
                return _page(console, request, view, day, str(exc), 400)
            console.log(message)
            return _back(view, day, message)

        return await console.run(act)

    return [
        Route("/calendar", calendar, methods=["GET"]),
        Route("/calendar/schedule", schedule, methods=["POST"]),
        Route("/calendar/move", move, methods=["POST"]),
        Route("/calendar/cancel", cancel, methods=["POST"]),
    ]
