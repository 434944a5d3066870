"""Campaigns: the list, one campaign's live progress, its actions, and sending now.

    GET  /campaigns                 newest first, with status and counts (`status`)
    GET  /campaigns/ID              the counters, the recent errors, resume and close
    GET  /campaigns/ID/events       server-sent events: "progress" while it moves
    POST /campaigns/ID/resume       what `newsletter resume ID` does, in the background
    POST /campaigns/ID/close        what `newsletter close ID` does
    GET  /send?issue=NAME           the confirmation, which states the count
    POST /send                      what `newsletter send ISSUE --all --yes` does

A send runs in a thread of the console's server (campaign.run, the one entry to sending),
one at a time: a second is refused with one line while the first runs. The progress is
the ledger's (campaign_status.status, shared with every worker), read every POLL_S while
a page follows it; the stream ends when the campaign stops moving, when the page goes,
or when the server stops.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from newsletter.errors import NewsletterError
from newsletter.issue import publish
from newsletter.ledger import campaign_status, lifecycle, once
from newsletter.ledger.tables import INCOMPLETE, READY, RUNNING, SCHEDULED
from newsletter.schedule import timing
from newsletter.send import campaign, whole_list
from newsletter.web.console.calendar import REPEATS, STATUS_LABELS, issue_choices, issue_path
from newsletter.web.console.context import Console

POLL_S = 0.5  # between two reads of a campaign's counts while a page follows it
RATE_WINDOW_S = 10.0  # the rate is the messages of the last this many seconds
STREAM_MAX_S = 3600.0  # a stream ends after this; the browser opens another
# Statuses in which a campaign moves (or is about to): a page follows these.
MOVING = (READY, RUNNING, SCHEDULED)


@dataclass(frozen=True)
class Row:
    """A campaign as the pages show it: its status, with the calendar's word and colour."""

    status: campaign_status.CampaignStatus
    label: str
    css: str
    when: str  # local time it was scheduled for, or started, or was made


def _rows(console: Console, campaign_id: int | None = None, limit: int = 50) -> list[Row]:
    tz = timing.zone(console.config.publication.timezone)
    out = []
    for s in campaign_status.status(console.store, campaign_id, limit):
        label, css = STATUS_LABELS.get(s.status, (s.status.title(), "scheduled"))
        stamp = s.scheduled_at or s.started_at or s.created_at  # as the calendar places it
        when = f"{dt.datetime.fromisoformat(stamp).astimezone(tz):%Y-%m-%d %H:%M}" if stamp else ""
        out.append(Row(s, label, css, when))
    return out


class Rate:
    """Messages a second over the last RATE_WINDOW_S, from the counts a stream reads."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._seen: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, done: int) -> float:
        now = self._clock()
        self._seen.append((now, done))
        while len(self._seen) > 2 and now - self._seen[0][0] > RATE_WINDOW_S:
            self._seen.popleft()
        first_at, first_done = self._seen[0]
        return (done - first_done) / (now - first_at) if now > first_at else 0.0


def _time_left(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return timing.human(dt.timedelta(seconds=round(seconds)))


def sending_here(console: Console, campaign_id: int) -> bool:
    """Whether a send this console started is running the campaign now."""
    return any(t.is_alive() and t.name == _thread_name(campaign_id) for t in console.senders)


def _thread_name(campaign_id: int) -> str:
    return f"console-campaign-{campaign_id}"


def progress(console: Console, campaign_id: int, rate: Rate) -> dict[str, Any]:
    """What the campaign page's counters show (the "progress" event's data)."""
    [row] = _rows(console, campaign_id)
    s = row.status
    per_second = rate.add(s.sent + s.failed)
    left = s.pending + s.deferred + s.in_doubt + s.in_flight
    here = sending_here(console, campaign_id)
    return {
        "status": s.status,
        "label": row.label,
        "css": row.css,
        "total": s.total,
        "sent": s.sent,
        "failed": s.failed,
        "deferred": s.deferred,
        "in_doubt": s.in_doubt,
        "in_flight": s.in_flight,
        "pending": s.pending,
        "skipped": s.skipped,
        "rate": f"{per_second:.1f}/s" if per_second > 0 else "—",
        "left": _time_left(left / per_second if per_second > 0 else None),
        "errors": [[e.email, e.status, e.error] for e in s.recent_errors],
        "last_error": s.last_error or "",
        "send_error": console.send_errors.get(campaign_id, ""),
        "final": s.status not in MOVING and not here,
    }


def start_send(console: Console, campaign_id: int) -> None:
    """Send the campaign in a thread of this server; the caller holds console.sending,
    which the thread lets go when the send ends."""

    def work() -> None:
        try:
            result = campaign.run(
                console.store, console.config, campaign_id, stop=console.stopping
            )
            console.log(
                f"campaign {campaign_id}: {result.sent} sent, {result.deferred} deferred,"
                f" {result.failed} failed, {result.pending} pending, {result.in_doubt} in"
                f" doubt [{result.status}]"
            )
        except KeyboardInterrupt:
            console.log(f"campaign {campaign_id}: stopped with the console; resume it later")
        except NewsletterError as exc:
            console.send_errors[campaign_id] = str(exc)
            console.log(f"campaign {campaign_id}: {exc}")
        finally:
            console.sending.release()

    console.send_errors.pop(campaign_id, None)
    thread = threading.Thread(target=work, name=_thread_name(campaign_id), daemon=True)
    console.senders[:] = [t for t in console.senders if t.is_alive()] + [thread]
    thread.start()


def _busy(console: Console) -> str:
    names = [t.name.rpartition("-")[2] for t in console.senders if t.is_alive()]
    which = f" (campaign {names[0]})" if names else ""
    return f"a send from this console is running{which}: one at a time; wait for it to end"


def _campaign_id(request: Request) -> int:
    text = request.path_params["cid"]
    if not text.isdigit():
        raise NewsletterError(f"campaign {text!r}: no such campaign")
    return int(text)


def _not_found(console: Console, request: Request, message: str) -> Response:
    return console.render(
        request, "campaigns.html", {"rows": [], "page_error": message}, status_code=404
    )


def routes(console: Console) -> list[BaseRoute]:
    async def listing(request: Request) -> Response:
        rows = await console.run(_rows, console)
        return console.render(request, "campaigns.html", {"rows": rows, "page_error": ""})

    async def page(request: Request) -> Response:
        try:
            cid = _campaign_id(request)
            [row] = await console.run(_rows, console, cid)
        except NewsletterError as exc:
            return _not_found(console, request, str(exc))
        first = await console.run(progress, console, cid, Rate())
        return console.render(
            request,
            "campaign.html",
            {
                "row": row,
                "s": row.status,
                "p": first,
                "can_act": row.status.status in (READY, INCOMPLETE)
                and not sending_here(console, cid),
            },
        )

    async def events(request: Request) -> Response:
        try:
            cid = _campaign_id(request)
            await console.run(_rows, console, cid)
        except NewsletterError as exc:
            return Response(str(exc), status_code=404, media_type="text/plain")
        rate = Rate()

        async def stream() -> AsyncIterator[str]:
            yield "retry: 2000\n\n"
            sent = ""
            until = time.monotonic() + STREAM_MAX_S
            while not console.stopping.is_set() and time.monotonic() < until:
                if await request.is_disconnected():
                    return
                data = await console.run(progress, console, cid, rate)
                text = json.dumps(data)
                if text != sent:
                    sent = text
                    yield f"event: progress\ndata: {text}\n\n"
                if data["final"]:
                    yield "event: end\ndata: {}\n\n"
                    return
                await asyncio.sleep(POLL_S)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    async def resume(request: Request) -> Response:
        await console.form(request)
        try:
            cid = _campaign_id(request)
            await console.run(_rows, console, cid)
        except NewsletterError as exc:
            return _not_found(console, request, str(exc))
        if not console.sending.acquire(blocking=False):
            return _back(cid, error=_busy(console))
        start_send(console, cid)
        console.log(f"campaign {cid}: resumed from the console")
        return _back(cid, notice=f"Resuming campaign {cid}")

    async def close(request: Request) -> Response:
        await console.form(request)
        try:
            cid = _campaign_id(request)
            await console.run(_rows, console, cid)
        except NewsletterError as exc:
            return _not_found(console, request, str(exc))
        try:
            closed = await console.run(lifecycle.close, console.store, cid)
        except NewsletterError as exc:
            return _back(cid, error=str(exc))
        message = (
            f"campaign {cid} closed: {closed.given_up} given up ({closed.deferred} deferred,"
            f" {closed.in_doubt} in doubt, {closed.pending} never tried)"
        )
        console.log(message)
        return _back(cid, notice=message)

    async def confirm(request: Request) -> Response:
        params = request.query_params
        fields = {k: params.get(k, "").strip() for k in ("issue", "segment", "repeat")}
        return await console.run(lambda: _confirm_page(console, request, fields))

    async def send(request: Request) -> Response:
        form = await console.form(request)
        fields = {
            k: v.strip() if isinstance(v := form.get(k), str) else ""
            for k in ("issue", "segment", "repeat", "count")
        }
        if not console.sending.acquire(blocking=False):
            return _confirm_page(console, request, fields, error=_busy(console), status=409)
        started = False
        try:
            chosen, error = await console.run(_plan, console, fields)
            if chosen is None:
                return _confirm_page(console, request, fields, error=error, status=400)
            if str(chosen.count) != fields["count"]:
                # The list moved since the page was shown: ask again with the new count.
                changed = f"the count changed to {chosen.count:,} since you looked: confirm again"
                return _confirm_page(console, request, fields, error=changed, status=409)
            try:
                cid = await console.run(whole_list.create, console.store, chosen)
            except NewsletterError as exc:
                return _confirm_page(console, request, fields, error=str(exc), status=400)
            start_send(console, cid)
            started = True
        finally:
            if not started:
                console.sending.release()
        console.log(f"campaign {cid}: sending {chosen.built.issue.slug} to {chosen.count:,}")
        return _back(cid, notice=f"Sending campaign {cid} to {chosen.count:,} subscribers")

    return [
        Route("/campaigns", listing, methods=["GET"]),
        Route("/campaigns/{cid}", page, methods=["GET"]),
        Route("/campaigns/{cid}/events", events, methods=["GET"]),
        Route("/campaigns/{cid}/resume", resume, methods=["POST"]),
        Route("/campaigns/{cid}/close", close, methods=["POST"]),
        Route("/send", confirm, methods=["GET"]),
        Route("/send", send, methods=["POST"]),
    ]


def _back(campaign_id: int, notice: str = "", error: str = "") -> Response:
    query = urlencode({k: v for k, v in (("notice", notice), ("error", error)) if v})
    return RedirectResponse(f"/campaigns/{campaign_id}?{query}", status_code=303)


def _plan(console: Console, fields: dict[str, str]) -> tuple[whole_list.SendPlan | None, str]:
    """The plan of `send ISSUE --all` for the form's fields, or (None, the one-line why)."""
    try:
        path = issue_path(console, fields["issue"])
        segment = console.config.segment(fields["segment"]) if fields["segment"] else None
        try:
            repeat = once.Repeat(fields["repeat"] or once.Repeat.REFUSE.value)
        except ValueError:
            raise NewsletterError(f"repeat {fields['repeat']!r}: not a choice") from None
        built = publish.build_issue(console.config, publish.load_issue(path))
        chosen = whole_list.plan(console.store, console.config, built, repeat, segment)
        chosen.refuse_empty()
    except NewsletterError as exc:
        return None, str(exc)
    return chosen, ""


def _confirm_page(
    console: Console,
    request: Request,
    fields: dict[str, str],
    error: str = "",
    status: int = 200,
) -> Response:
    chosen, why = _plan(console, fields) if fields.get("issue") else (None, "choose an issue")
    return console.render(
        request,
        "send.html",
        {
            "plan": chosen,
            "fields": fields,
            "issues": issue_choices(console),
            "repeats": REPEATS,
            "page_error": error or why,
        },
        status_code=status if chosen is not None or error else 400,
    )
