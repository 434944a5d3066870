"""Screenshots of the marketer's console for the README and docs/console.md.

Builds a demo publication in a temporary folder (the sample's config, templates and
issue, a few more issues, subscribers, campaigns sent, scheduled, cancelled and missed
through the library, a recurring rule), serves its console on 127.0.0.1 and saves
docs/console-<page>.png at 1280 px wide, and docs/console-calendar-phone.png at 375 px,
with headless Chromium (Debian's `chromium`, driven by Playwright).

    .venv/bin/python docs/console_screenshots.py                 # the default pages
    .venv/bin/python docs/console_screenshots.py /calendar /issues

A page the console does not have (a 404) is skipped with a line saying so.
/campaigns/<id> stands for the demo's sent campaign; a query does not change the name
(/calendar?view=month is docs/console-calendar.png).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
import tempfile
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
DEFAULT_PATHS = (
    "/calendar?view=month",
    "/campaigns",
    "/campaigns/<id>",
    "/issues",
    "/sponsors",
    "/subscribers",
)
SUBSCRIBERS = 1_240
CHROMIUM = Path(os.environ.get("NEWSLETTER_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run"]

MORE_ISSUES = (
    # (days from today, slug, subject)
    (-22, "shuttles-to-the-harbor-lights", "Shuttles to the harbor lights"),
    (-15, "how-we-plan-a-thanksgiving-rush", "How we plan a Thanksgiving rush"),
    (-6, "airport-rides-before-the-holidays", "Airport rides before the holidays"),
    (-1, "winter-schedules-at-lax", "Winter schedules at LAX, terminal by terminal"),
    (2, "cruise-season-opens-in-long-beach", "Cruise season opens in Long Beach"),
    (5, "a-quieter-ride-to-disneyland", "A quieter ride to Disneyland"),
)


def build_demo(root: Path, smtp_port: int) -> tuple[object, int]:
    """The demo publication under `root`; returns (its config, the sent campaign's id)."""
    from newsletter import config as config_mod
    from newsletter.issue import publish
    from newsletter.ledger import schedules
    from newsletter.ledger.store import Store, SubscriberRow
    from newsletter.schedule import due, plans, timing
    from newsletter.send import campaign, whole_list

    shutil.copy(REPO / "newsletter.toml", root / "newsletter.toml")
    shutil.copytree(REPO / "templates", root / "templates")
    shutil.copytree(REPO / "issues", root / "issues")
    sample = next((REPO / "issues").glob("*.md")).read_text(encoding="utf-8")
    body = sample.split("---", 2)[2]
    os.environ.update(
        {
            "NEWSLETTER_SECRET": "console-screenshots-secret-0123456789abcdef",
            "NEWSLETTER_DATABASE_URL": f"sqlite:///{root / 'demo.db'}",
            "NEWSLETTER_SMTP_HOST": "127.0.0.1",
            "NEWSLETTER_SMTP_PORT": str(smtp_port),
            "NEWSLETTER_SMTP_CONCURRENCY": "4",
        }
    )
    config = config_mod.load(root / "newsletter.toml")
    zone = timing.zone(config.publication.timezone)
    now = dt.datetime.now(dt.UTC)
    today = now.astimezone(zone).date()
    paths = {}
    for days, slug, subject in MORE_ISSUES:
        day = today + dt.timedelta(days=days)
        path = root / "issues" / f"{day}-{slug}.md"
        path.write_text(
            f"---\ntitle: {subject}\nsubject: {subject}\ndate: {day}\n---\n{body}",
            encoding="utf-8",
        )
        paths[slug] = path

    store = Store.open(config.database_url)
    store.upsert_subscribers(
        [SubscriberRow(f"reader{i:05d}@example.com", f"Reader {i}") for i in range(SUBSCRIBERS)]
    )

    # Sent yesterday (its row says when it started: now; the calendar shows it today).
    built = publish.build_issue(
        config, publish.load_issue(paths["airport-rides-before-the-holidays"])
    )
    sent_id = whole_list.create(store, whole_list.plan(store, config, built))
    campaign.run(store, config, sent_id)

    def local(days: int, hour: int, minute: int = 0) -> str:
        day = today + dt.timedelta(days=days)
        return f"{day} {hour:02d}:{minute:02d}"

    # Two issues scheduled weeks ago and sent when they were due (run-due at that time).
    for days, slug in ((-22, "shuttles-to-the-harbor-lights"), (-15, "how-we-plan-a-thanksgiving-rush")):
        _, when, _ = plans.schedule_issue(
            store, config, paths[slug], local(days, 9), now=now - dt.timedelta(days=40)
        )
        due.run_due(store, config, now=when + dt.timedelta(seconds=30))

    plans.schedule_issue(
        store, config, paths["cruise-season-opens-in-long-beach"], local(2, 9), now=now
    )
    cancelled, _, _ = plans.schedule_issue(
        store, config, paths["a-quieter-ride-to-disneyland"], local(3, 7, 30), now=now
    )
    schedules.cancel_campaign(store, cancelled)
    plans.schedule_issue(
        store, config, paths["a-quieter-ride-to-disneyland"], local(5, 8, 15), now=now
    )
    missed, _, _ = plans.schedule_issue(
        store,
        config,
        paths["winter-schedules-at-lax"],
        local(-1, 6),
        now=now - dt.timedelta(days=3),
    )
    schedules.mark_missed(store, missed, "found 7.0 h late, over [schedule] max_late")
    plans.add_recurring(store, config, "0 9 * * TUE", None, now)
    store.close()
    return config, sent_id


def shoot(paths: list[str], target: Path = DOCS) -> list[Path]:
    from playwright.sync_api import sync_playwright

    from newsletter.ledger.store import Store
    from newsletter.mail import capture
    from newsletter.web.console import app
    from newsletter.web.console.context import Console

    saved: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "demo"
        root.mkdir()
        port = _free_port()
        smtp = capture.start(Path(tmp) / "outbox", "127.0.0.1", port)
        try:
            config, sent_id = build_demo(root, port)
            console = Console(
                config.path,  # type: ignore[attr-defined]
                config,  # type: ignore[arg-type]
                Store.open(config.database_url),  # type: ignore[attr-defined]
            )
            server = app.server(console)
            server.start()
            try:
                with sync_playwright() as playwright:
                    browser = playwright.chromium.launch(
                        executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
                    )
                    try:
                        for path in paths:
                            real = path.replace("<id>", str(sent_id))
                            name = _name(path)
                            url = server.url.rstrip("/") + real
                            if httpx.get(url, timeout=30).status_code == 404:
                                print(f"{path}: 404, not in this console; skipped")
                                continue
                            shots = [("", {"width": 1280, "height": 900})]
                            if name == "calendar":
                                shots.append(("-phone", {"width": 375, "height": 800}))
                            for suffix, viewport in shots:
                                page = browser.new_page(viewport=viewport)  # type: ignore[arg-type]
                                page.goto(url)
                                page.wait_for_load_state("networkidle")
                                out = target / f"console-{name}{suffix}.png"
                                page.screenshot(path=str(out), full_page=True)
                                page.close()
                                saved.append(out)
                                print(out)
                    finally:
                        browser.close()
            finally:
                server.stop()
                console.store.close()
        finally:
            smtp.stop()
    return saved


def _name(path: str) -> str:
    """/calendar -> calendar; /campaigns/<id> -> campaign."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    if len(parts) > 1 and parts[0] == "campaigns":
        return "campaign"
    return "-".join(parts) or "home"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    shoot(sys.argv[1:] or list(DEFAULT_PATHS))
