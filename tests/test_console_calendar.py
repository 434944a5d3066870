"""The console's calendar over its real server, on a real SQLite ledger, with the clock
injected: schedule, move and cancel as `newsletter schedule` does (and `schedule list`
sees), the CLI's refusals as one line on the page, recurring ticks with their issue."""

from __future__ import annotations

import datetime as dt
import html
import json
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from click.testing import Result
from conftest import SAMPLE_ISSUE_NAME
from console_support import Running, make_console, running

from newsletter.ledger import schedules
from newsletter.ledger.store import SubscriberRow
from newsletter.schedule import plans
from newsletter.web.console.context import Console

# A name that climbs out of the issues folder (a client may send anything).
UP_AND_OUT = str(Path("..") / "newsletter.toml")

# Monday 30 November 2026, 04:00 in Los Angeles (the sample's [publication] timezone).
NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def console(publication: Path) -> Console:
    console = make_console(publication, clock=lambda: NOW)
    console.store.upsert_subscribers(
        [SubscriberRow(f"reader{i}@example.com", f"Reader {i}") for i in range(3)]
    )
    return console


def error_line(page: str) -> str:
    found = re.findall(r'role="alert" data-error>(.*?)</p>', page, re.S)
    assert len(found) == 1, page[-3000:]
    return html.unescape(found[0])


def scheduled(run_cli: Callable[..., Result]) -> list[dict[str, str]]:
    result = run_cli("schedule", "list", "--json")
    assert result.exit_code == 0, result.output
    return list(json.loads(result.stdout)["schedules"])


def schedule(web: Running, at: str, **more: str) -> httpx.Response:
    form = {"issue": SAMPLE_ISSUE_NAME, "at": at, "view": "week", "date": "2026-11-30", **more}
    return web.post("/calendar/schedule", form, follow_redirects=False)


def test_week_and_month_with_navigation(console: Console) -> None:
    with running(console) as web:
        week = web.get("/calendar")
        month = web.get("/calendar?view=month&date=2026-12-15")
        bad = web.get("/calendar?date=someday")
    assert week.status_code == 200
    assert "Week of 30 Nov – 06 Dec 2026" in week.text
    assert 'href="/calendar?view=week&amp;date=2026-11-23" rel="prev"' in week.text
    assert 'href="/calendar?view=week&amp;date=2026-12-07" rel="next"' in week.text
    assert 'data-date="2026-11-30"' in week.text and 'data-date="2026-12-06"' in week.text
    assert week.text.count('class="cal-day') == 7
    assert month.status_code == 200 and "December 2026" in month.text
    # The month's weeks, Monday first: 30 November to 3 January.
    assert 'data-date="2026-11-30"' in month.text and 'data-date="2027-01-03"' in month.text
    assert month.text.count('class="cal-day') == 35
    assert 'rel="prev"' in month.text and "date=2026-11-01" in month.text
    assert bad.status_code == 400
    assert error_line(bad.text) == "date 'someday': expected YYYY-MM-DD; showing today"


def test_an_issue_scheduled_on_the_page_is_in_schedule_list(
    console: Console, run_cli: Callable[..., Result]
) -> None:
    with running(console) as web:
        done = schedule(web, "2026-12-01T09:00")
        assert done.status_code == 303
        page = web.get(done.headers["location"])
    assert "campaign 1 scheduled for 2026-12-01 09:00:00 PST (America/Los_Angeles)" in page.text
    [row] = scheduled(run_cli)
    assert (row["id"], row["status"]) == ("1", "scheduled")
    assert row["local_time"] == "2026-12-01T09:00:00-08:00"
    assert row["utc"] == "2026-12-01T17:00:00+00:00"
    # On the calendar: its time, the word with the colour, its sponsor and audience.
    entry = page.text[page.text.index('data-campaign="1"') :]
    entry = entry[: entry.index("</li>")]
    assert "09:00" in entry and '<span class="badge scheduled">Scheduled</span>' in entry
    assert "Sponsor: Hello Shuttle" in entry
    assert "3 subscribers (as of now)" in entry


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (
            "2026-11-29T09:00",
            "--at: 2026-11-29 09:00:00 PST (America/Los_Angeles) = 2026-11-29 17:00:00 UTC"
            " is in the past (now: 2026-11-30 04:00:00 PST (America/Los_Angeles))",
        ),
        (
            "2027-03-14T02:30",
            "2027-03-14 02:30 does not exist in America/Los_Angeles (the clocks skip it);"
            " the nearest valid times are 01:59 and 03:00",
        ),
        ("tomorrow", "--at 'tomorrow': expected a local time like '2026-12-01 09:00'"),
    ],
)
def test_the_clis_refusals_come_back_as_one_line_and_nothing_is_written(
    console: Console, run_cli: Callable[..., Result], at: str, expected: str
) -> None:
    with running(console) as web:
        refused = schedule(web, at)
    assert refused.status_code == 400
    assert error_line(refused.text) == expected
    # The form keeps what was typed.
    assert f'name="at" step="60" required value="{at}"' in refused.text
    assert scheduled(run_cli) == []


def test_other_refusals_are_one_line(console: Console, run_cli: Callable[..., Result]) -> None:
    with running(console) as web:
        no_issue = schedule(web, "2026-12-01T09:00", issue=UP_AND_OUT)
        bad_segment = schedule(web, "2026-12-01T09:00", segment="tag:vip and and")
        schedule(web, "2026-12-01T09:00")
        again = schedule(web, "2026-12-02T09:00")
    assert error_line(no_issue.text).startswith(f"issue {UP_AND_OUT!r}: not an issue file")
    assert "segment" in error_line(bad_segment.text)
    assert "already scheduled as campaign 1" in error_line(again.text)
    assert [row["id"] for row in scheduled(run_cli)] == ["1"]


def test_a_time_that_happens_twice_offers_both_readings(
    console: Console, run_cli: Callable[..., Result]
) -> None:
    with running(console) as web:
        asked = schedule(web, "2027-11-07T01:30")
        assert scheduled(run_cli) == []
        assert error_line(asked.text).startswith(
            "2027-11-07 01:30 happens twice in America/Los_Angeles (the clocks go back)"
        )
        text = asked.text
        assert 'name="fold" value="0">The first (PDT, UTC-0700)' in text
        assert 'name="fold" value="1">The second (PST, UTC-0800)' in text
        done = schedule(web, "2027-11-07T01:30", fold="1")
    assert done.status_code == 303
    [row] = scheduled(run_cli)
    assert row["utc"] == "2027-11-07T09:30:00+00:00"  # 01:30 PST, the second


def test_move_and_cancel(console: Console, run_cli: Callable[..., Result]) -> None:
    with running(console) as web:
        schedule(web, "2026-12-01T09:00")
        moved = web.post(
            "/calendar/move",
            {"campaign": "1", "at": "2026-12-03T10:15", "view": "week", "date": "2026-11-30"},
            follow_redirects=True,
        )
        assert moved.status_code == 200
        assert "campaign 1 moved to 2026-12-03 10:15:00 PST" in moved.text
        [row] = scheduled(run_cli)
        assert row["local_time"] == "2026-12-03T10:15:00-08:00"
        past = web.post("/calendar/move", {"campaign": "1", "at": "2026-11-01T10:00"})
        assert past.status_code == 400 and "is in the past" in error_line(past.text)
        cancelled = web.post(
            "/calendar/cancel", {"ref": "1", "view": "week"}, follow_redirects=True
        )
        assert "campaign 1 cancelled" in cancelled.text
        assert '<span class="badge cancelled">Cancelled</span>' in cancelled.text
        twice = web.post("/calendar/cancel", {"ref": "1"})
        assert error_line(twice.text) == "campaign 1 is cancelled, not scheduled"
        unknown = web.post("/calendar/cancel", {"ref": "x1"})
        assert "expected a campaign id (12) or a recurring id (r3)" in error_line(unknown.text)
    [row] = scheduled(run_cli)
    assert row["status"] == "cancelled"


def test_recurring_ticks_show_the_issue_they_would_send(
    console: Console, run_cli: Callable[..., Result]
) -> None:
    plans.add_recurring(console.store, console.config, "0 9 * * TUE", None, NOW)
    with running(console) as web:
        week = web.get("/calendar").text
        month = web.get("/calendar?view=month&date=2026-12-15").text
        entry = week[week.index('data-rule="r1"') :]
        entry = entry[: entry.index("</li>")]
        # Tuesday 1 December, 09:00 local: the oldest unsent issue, the sample.
        assert '<span class="badge recurring">Recurring</span>' in entry
        assert "09:00" in entry and "Biden" in entry and "every 0 9 * * TUE" in entry
        assert "Sponsor: Hello Shuttle" in entry and "3 subscribers (as of now)" in entry
        # Later ticks: no issue is left for them (the one there is goes on the first).
        assert month.count('data-rule="r1"') == 5
        assert month.count("no unsent issue dated by then") == 4
        stopped = web.post("/calendar/cancel", {"ref": "r1"}, follow_redirects=True)
        assert "recurring schedule r1 cancelled" in stopped.text
        assert 'data-rule="r1"' not in stopped.text
    assert scheduled(run_cli)[0]["status"] == "cancelled"


def test_missed_and_sent_campaigns_are_labelled(console: Console) -> None:
    cid, _, _ = plans.schedule_issue(
        console.store,
        console.config,
        console.config.issues_dir / SAMPLE_ISSUE_NAME,
        "2026-12-02 08:00",
        now=NOW - dt.timedelta(days=30),
    )
    assert schedules.mark_missed(console.store, cid, "found 7.0 h late")
    with running(console) as web:
        page = web.get("/calendar").text
    entry = page[page.index(f'data-campaign="{cid}"') :]
    entry = entry[: entry.index("</li>")]
    assert '<span class="badge missed">Missed</span>' in entry and "found 7.0 h late" in entry


def test_a_get_never_changes_anything_and_actions_need_the_token(
    console: Console, run_cli: Callable[..., Result]
) -> None:
    with running(console) as web:
        schedule(web, "2026-12-01T09:00")
        for path in ("/calendar/schedule", "/calendar/move", "/calendar/cancel?ref=1"):
            assert web.get(path).status_code == 405
        for path, form in (
            ("/calendar/cancel", {"ref": "1"}),
            ("/calendar/move", {"campaign": "1", "at": "2026-12-05T09:00"}),
            ("/calendar/schedule", {"issue": SAMPLE_ISSUE_NAME, "at": "2026-12-09T09:00"}),
        ):
            assert web.post(path, {**form, "token": "wrong"}).status_code == 403
            assert web.post(path, {**form, "token": ""}).status_code == 403
    [row] = scheduled(run_cli)
    assert (row["status"], row["local_time"]) == ("scheduled", "2026-12-01T09:00:00-08:00")


def test_a_move_to_a_time_that_happens_twice_offers_both_readings(
    console: Console, run_cli: Callable[..., Result]
) -> None:
    with running(console) as web:
        schedule(web, "2026-12-01T09:00")
        asked = web.post("/calendar/move", {"campaign": "1", "at": "2027-11-07T01:30"})
        assert asked.status_code == 400
        assert "happens twice in America/Los_Angeles" in error_line(asked.text)
        assert 'action="/calendar/move"' in asked.text
        assert 'name="fold" value="0">The first (PDT, UTC-0700)' in asked.text
        assert scheduled(run_cli)[0]["utc"] == "2026-12-01T17:00:00+00:00"
        moved = web.post(
            "/calendar/move", {"campaign": "1", "at": "2027-11-07T01:30", "fold": "0"}
        )
        assert moved.status_code == 303
    assert scheduled(run_cli)[0]["utc"] == "2027-11-07T08:30:00+00:00"  # 01:30 PDT
