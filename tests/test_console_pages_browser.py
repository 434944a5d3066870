"""The console's issues, sponsors and subscribers pages in a real browser: headless
Chromium (Debian's `chromium`) driven by Playwright, at 1280 px and on a phone (375 px).

Each page fits its width (the body never scrolls sideways), every control on it is
reached with the Tab key, and the import goes through its dry run and confirmation as a
marketer does it. Screenshots of every page at both widths go to test-output/console/
(or to $CONSOLE_SCREENSHOTS), to look at.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from pathlib import Path

import pytest
from browser_support import chromium_page
from campaign_support import SECRET, Publication, add_subscribers, make_publication
from console_support import make_console, running
from smtp_fixtures import SmtpServer

from newsletter.audience import subscribers as subscriber_ops
from newsletter.config import Tracking
from newsletter.issue import publish
from newsletter.ledger import lifecycle, once
from newsletter.schedule import plans
from newsletter.send import campaign, tracking

try:
    from playwright.sync_api import Page, expect
except ImportError:  # pragma: no cover - reported by the `browser` marker (tests/services.py)
    expect = None  # type: ignore[assignment]

REPO = Path(__file__).resolve().parents[1]
WIDTHS = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 375, "height": 800}}
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36"
SHOTS = Path(os.environ.get("CONSOLE_SCREENSHOTS", REPO / "test-output" / "console"))

# What the Tab key should reach: every visible control that is not disabled.
CONTROLS = """() => {
  const all = document.querySelectorAll("a[href], button:not([disabled]), select, textarea,"
    + " input:not([type=hidden]):not([disabled]), summary, iframe");
  // A control in a closed <details> is reached once its summary opens it.
  const shown = el => {
    const closed = el.closest("details:not([open])");
    return !closed || (el.tagName === "SUMMARY" && el.parentElement === closed);
  };
  return [...all].filter(el => el.getClientRects().length > 0 && shown(el)).map((el, n) => {
    el.dataset.tabCheck = String(n);
    return n;
  });
}"""
FOCUSED = "() => document.activeElement ? document.activeElement.dataset.tabCheck ?? null : null"
SIDEWAYS = """() => [document.documentElement.scrollWidth, document.documentElement.clientWidth,
  document.body.scrollWidth]"""


@pytest.fixture
def browser_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    """The browser itself is checked by the `browser` marker this fixture brings (conftest)."""
    monkeypatch.setenv("NEWSLETTER_SECRET", SECRET)


@pytest.fixture
def pub(
    browser_ready: None, tmp_path: Path, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> Publication:
    """The sample publication with something on every page: a sponsor booked around today,
    a sent campaign with clicks, a scheduled one, a recurring rule, subscribers who came
    and one who left."""
    made = make_publication(tmp_path, f"sqlite:///{tmp_path / 'console.db'}", smtp_server.port)
    for name, value in made.env.items():
        monkeypatch.setenv(name, value)
    text = made.config_path.read_text(encoding="utf-8")
    made.config_path.write_text(
        text.replace("test_recipients = []", 'test_recipients = ["editor@example.com"]'), "utf-8"
    )
    today = dt.date.today()
    with made.config_path.open("a", encoding="utf-8") as toml:
        toml.write(
            '\n[sponsors.acme]\nname = "Acme Rockets"\nurl = "https://acme.example.com"\n'
            f'message = "Rockets."\nstart = {today - dt.timedelta(days=10)}\n'
            f"end = {today + dt.timedelta(days=30)}\nweight = 2\n"
        )
    dated = today + dt.timedelta(days=6)
    (made.root / "issues" / f"{dated}-rockets.md").write_text(
        f"---\ntitle: Rockets at dawn\nsubject: Rockets at dawn\ndate: {dated}\n---\n\n"
        "The launch window opens.\n",
        encoding="utf-8",
    )
    store, config = made.store(), made.config()
    emails = add_subscribers(store, 6)
    subscriber_ops.remove(store, emails[0])
    built = publish.build_issue(config, publish.load_issue(made.issue))
    cid = lifecycle.create(store, built)
    assert campaign.run(store, config, cid).ok
    tracking.save_links(
        store, cid, tracking.rewrite(built.html.source, built.text.source, "sponsor").links
    )
    signer = tracking.ClickSigner(SECRET.encode())
    for subscriber in (1, 2, 2, 3):
        tracking.record_click(
            store, signer, signer.sign(cid, subscriber, 0), head=False, user_agent=BROWSER,
            rules=Tracking(), now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
        )  # fmt: skip
    soon = dt.datetime.now() + dt.timedelta(days=3)
    plans.schedule_issue(
        store, config, made.issue, f"{soon:%Y-%m-%d} 09:00", repeat=once.Repeat.AGAIN
    )
    plans.add_recurring(store, config, "0 9 * * 1", None, None)
    return made


def browser_page(
    viewport: dict[str, int], profile: Path
) -> contextlib.AbstractContextManager[Page]:
    return chromium_page(profile, viewport)


def reached_by_tab(page: Page) -> tuple[set[str], set[str]]:
    """(the controls on the page, those the Tab key reached), by their marks."""
    controls = {str(n) for n in page.evaluate(CONTROLS)}
    page.locator("body").focus()
    reached: set[str] = set()
    for _ in range(len(controls) + 15):
        page.keyboard.press("Tab")
        mark = page.evaluate(FOCUSED)
        if mark is not None:
            reached.add(mark)
        if reached >= controls:
            break
    return controls, reached


@pytest.mark.parametrize("width", list(WIDTHS))
def test_each_page_fits_and_every_control_is_reached_by_keyboard(
    pub: Publication, tmp_path: Path, width: str
) -> None:
    console = make_console(pub.config_path)
    pages = {
        "issues": "/issues",
        "issue": f"/issues/{pub.issue.stem}/view",
        "sponsors": "/sponsors",
        "sponsor": "/sponsors/helloshuttle",
        "subscribers": "/subscribers",
    }
    SHOTS.mkdir(parents=True, exist_ok=True)
    with running(console) as web, browser_page(WIDTHS[width], tmp_path / "profile") as page:
        for name, path in pages.items():
            page.goto(web.url + path)
            expect(page.locator("h1")).to_be_visible()
            scroll, client, body = page.evaluate(SIDEWAYS)
            assert scroll <= client and body <= client, f"{path} at {width}: {scroll} > {client}"
            controls, reached = reached_by_tab(page)
            assert controls and controls <= reached, f"{path}: not reached {controls - reached}"
            page.screenshot(path=str(SHOTS / f"console-{name}-{width}.png"), full_page=True)
        # The charts are drawn, with their names for screen readers.
        page.goto(web.url + "/sponsors/helloshuttle")
        expect(
            page.get_by_role("img", name="Readers' clicks per issue for Hello Shuttle")
        ).to_be_visible()


def test_an_import_through_the_browser_dry_run_then_confirm(
    pub: Publication, tmp_path: Path
) -> None:
    console = make_console(pub.config_path)
    store = pub.store()
    before = store.count_subscribers(None)
    upload = tmp_path / "fair-signups.csv"
    upload.write_text(
        "Email Address;First Name\nann@example.com;Ann\nbob@example.com;Bob\nnot-an-address;X\n",
        encoding="utf-8",
    )
    with running(console) as web, browser_page(WIDTHS["phone"], tmp_path / "profile") as page:
        page.goto(web.url + "/subscribers")
        page.get_by_label("File").set_input_files(str(upload))
        page.get_by_label("Tags for every row (optional)").fill("fair")
        page.get_by_role("button", name="Dry run").press("Enter")
        dry = page.locator("#dry-run")
        expect(dry).to_contain_text("Dry run of fair-signups.csv: nothing changed yet")
        expect(dry.locator('[data-count="added"]')).to_have_text("2")
        expect(dry.locator('[data-count="rejected"]')).to_have_text("1")
        expect(dry.locator('[data-kind="rejected"] li').first).to_contain_text(
            "fair-signups.csv:4"
        )
        assert store.count_subscribers(None) == before
        page.screenshot(path=str(SHOTS / "console-subscribers-dry-run-phone.png"), full_page=True)
        page.get_by_role("button", name="Import fair-signups.csv").press("Enter")
        expect(page.get_by_role("status")).to_have_text(
            "imported fair-signups.csv: 2 added, 0 updated, 0 kept suppressed, 0 duplicate(s),"
            " 1 rejected"
        )
        assert page.url.startswith(web.url + "/subscribers?")
    assert store.count_subscribers(None) == before + 2
    assert store.subscriber("ann@example.com") is not None
