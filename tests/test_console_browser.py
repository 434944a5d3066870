"""The console in a real browser: headless Chromium (Debian's `chromium`) driven by
Playwright, as the preview's tests drive it; Playwright never downloads a browser.

Schedule an issue from the calendar and find it in `newsletter schedule list`, cancel it;
watch a campaign's counters move while it sends to a real aiosmtpd server (held at a
gate the test opens, so the page is seen mid-send without sleeps); every control
labelled and reachable by Tab; no sideways scroll at 375 px.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from browser_support import chromium_page
from click.testing import Result
from conftest import SAMPLE_ISSUE_NAME
from console_sending import gated_smtp_server, sending_console, wait_for_sends
from console_support import make_console, running

from newsletter.ledger.store import SubscriberRow
from newsletter.web.console.context import Console

try:
    from playwright.sync_api import Page, expect
except ImportError:  # pragma: no cover - reported by the `browser` marker (tests/services.py)
    expect = None  # type: ignore[assignment]

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 740}
NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)

# Every visible control, and whether it has a name a screen reader says: a <label>, an
# aria-label, or (a button, a link, a summary) its own text.
UNLABELLED = """() => [...document.querySelectorAll("input, select, textarea, button, a, summary")]
  .filter(el => el.type !== "hidden" && el.getClientRects().length)
  .filter(el => !((el.labels && el.labels.length) || el.getAttribute("aria-label")
                  || (["BUTTON", "A", "SUMMARY"].includes(el.tagName) && el.textContent.trim())))
  .map(el => el.outerHTML.slice(0, 120))"""
SIDEWAYS = """() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"""


@pytest.fixture
def browser_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    """The browser itself is checked by the `browser` marker this fixture brings (conftest)."""
    monkeypatch.delenv("NEWSLETTER_CONFIG", raising=False)


def browser(
    profile: Path, viewport: dict[str, int] = DESKTOP
) -> contextlib.AbstractContextManager[Page]:
    return chromium_page(profile, viewport)


@pytest.fixture
def console(publication: Path) -> Console:
    console = make_console(publication, clock=lambda: NOW)
    console.store.upsert_subscribers(
        [SubscriberRow(f"reader{i}@example.com", f"Reader {i}") for i in range(3)]
    )
    return console


def listed(run_cli: Callable[..., Result]) -> list[dict[str, str]]:
    result = run_cli("schedule", "list", "--json")
    assert result.exit_code == 0, result.output
    return list(json.loads(result.stdout)["schedules"])


def test_schedule_an_issue_from_the_calendar_then_cancel_it(
    browser_ready: None, console: Console, run_cli: Callable[..., Result], tmp_path: Path
) -> None:
    with running(console) as web, browser(tmp_path / "profile") as page:
        page.goto(web.url + "/calendar")
        form = page.locator("#schedule-form")
        form.get_by_label("Issue", exact=True).select_option(SAMPLE_ISSUE_NAME)
        form.get_by_label("Time (America/Los_Angeles)").fill("2026-12-01T09:00")
        form.get_by_role("button", name="Schedule").click()
        expect(page.locator(".notice")).to_have_text(
            "campaign 1 scheduled for 2026-12-01 09:00:00 PST (America/Los_Angeles)"
            " = 2026-12-01 17:00:00 UTC"
        )
        [row] = listed(run_cli)
        assert (row["id"], row["status"], row["local_time"]) == (
            "1",
            "scheduled",
            "2026-12-01T09:00:00-08:00",
        )
        entry = page.locator('[data-campaign="1"]')
        expect(entry.locator(".badge")).to_have_text("Scheduled")

        # A time the clocks skip comes back as the CLI's one line; nothing is written.
        form = page.locator("#schedule-form")
        form.get_by_label("Time (America/Los_Angeles)").fill("2027-03-14T02:30")
        form.get_by_role("button", name="Schedule").click()
        expect(page.locator("[data-error]")).to_contain_text("does not exist in America")
        assert len(listed(run_cli)) == 1

        # Cancel it, by keyboard: Tab to the entry's "Move or cancel", open it, Tab on.
        page.goto(web.url + "/calendar")
        summary = page.locator('[data-campaign="1"] summary')
        reach(page, summary)
        page.keyboard.press("Enter")
        cancel = page.get_by_role("button", name="Cancel campaign 1")
        reach(page, cancel)
        page.keyboard.press("Enter")
        expect(page.locator(".notice")).to_have_text("campaign 1 cancelled")
        expect(page.locator('[data-campaign="1"] .badge')).to_have_text("Cancelled")
    [row] = listed(run_cli)
    assert row["status"] == "cancelled"


def reach(page: Page, target: object, presses: int = 80) -> None:
    """Tab until `target` (a Locator) has the focus, and check that the focus shows."""
    for _ in range(presses):
        page.keyboard.press("Tab")
        if target.evaluate("el => el === document.activeElement"):  # type: ignore[attr-defined]
            outline = target.evaluate(  # type: ignore[attr-defined]
                "el => getComputedStyle(el).outlineStyle + ' ' + getComputedStyle(el).outlineWidth"
            )
            assert not outline.startswith("none") and not outline.endswith(" 0px"), outline
            return
    raise AssertionError(f"{target} not reached in {presses} presses of Tab")


def test_a_campaigns_counters_move_live_while_it_sends(
    browser_ready: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with gated_smtp_server(hold_after=1) as smtp:
        setup = sending_console(tmp_path, monkeypatch, smtp)
        with running(setup.console) as web, browser(tmp_path / "profile") as page:
            page.goto(web.url + "/calendar")
            page.locator('form[action="/send"]').get_by_label("Issue", exact=True).select_option(
                SAMPLE_ISSUE_NAME
            )
            page.get_by_role("button", name="Send now to the whole list…").click()
            expect(page.locator("[data-question]")).to_contain_text("to 3 subscriber(s)?")
            page.get_by_role("button", name="Send to 3 subscribers").click()
            page.wait_for_url("**/campaigns/1?**")
            sent = page.locator('[data-count="sent"]')
            # One message went out; the server holds the second: the page says 1, sending.
            assert setup.handler.held.wait(10)
            expect(sent).to_have_text("1")
            expect(page.locator('[data-field="label"]')).to_have_text("Sending")
            page.evaluate("window.sameDocument = true")
            setup.handler.gate.set()
            # The same document, moved by the events: 3 sent, and the stream has ended.
            expect(sent).to_have_text("3")
            expect(page.locator('[data-field="live"]')).to_have_text("Not sending.")
            expect(page.locator('[data-field="label"]')).to_have_text("Sent")
            assert page.evaluate("window.sameDocument") is True
            wait_for_sends(setup.console)
    assert len(smtp.received) == 3


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280px", "375px"])
def test_every_page_is_labelled_and_fits_the_screen(
    browser_ready: None,
    console: Console,
    run_cli: Callable[..., Result],
    tmp_path: Path,
    viewport: dict[str, int],
) -> None:
    assert run_cli("schedule", "--every", "0 9 * * TUE").exit_code == 0
    with running(console) as web, browser(tmp_path / "profile", viewport) as page:
        page.goto(web.url + "/calendar")
        form = page.locator("#schedule-form")
        form.get_by_label("Time (America/Los_Angeles)").fill("2026-12-02T10:30")
        form.get_by_role("button", name="Schedule").click()
        expect(page.locator(".notice")).to_be_visible()
        for path in (
            "/calendar",
            "/calendar?view=month",
            f"/send?issue={SAMPLE_ISSUE_NAME}",
            "/campaigns",
            "/campaigns/1",
        ):
            page.goto(web.url + path)
            assert page.evaluate(UNLABELLED) == [], path
            scroll, width = page.evaluate(SIDEWAYS)
            assert width == viewport["width"] and scroll <= width, (path, scroll, width)
