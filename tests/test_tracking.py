"""Click tracking: which links are tracked, signed tokens, bot rules, the sponsor report."""

from __future__ import annotations

import base64
import datetime as dt
import os
import re
import struct
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import lxml.html
import pytest
import site_support
import sqlalchemy as sa
from campaign_support import SECRET, Publication, add_subscribers, make_publication
from click.testing import CliRunner
from smtp_fixtures import SmtpServer

from newsletter.cli import cli
from newsletter.config import Tracking
from newsletter.issue import publish, tracked_links
from newsletter.issue.render import html_slots, text_slots
from newsletter.ledger import lifecycle, sponsorship
from newsletter.ledger.tables import clicks as click_rows
from newsletter.ledger.tables import deliveries
from newsletter.send import campaign, tracking

UTC = dt.UTC
BROWSER = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/124.0.0.0 Safari/537.36"
)


@pytest.fixture
def pub(tmp_path: Path, smtp_server: SmtpServer) -> Publication:
    return make_publication(tmp_path, f"sqlite:///{tmp_path / 't.db'}", smtp_server.port)


def built(pub: Publication) -> publish.BuiltIssue:
    return publish.build_issue(pub.config(), publish.load_issue(pub.issue))


def test_sponsor_mode_tracks_only_sponsor_links(pub: Publication) -> None:
    b = built(pub)
    tracked = tracking.rewrite(b.html.source, b.text.source, "sponsor")
    urls = {link.url for link in tracked.links}
    assert urls and all(u.startswith("https://www.helloshuttle.com/?utm_source=") for u in urls)
    assert all(link.in_sponsor_block for link in tracked.links)
    assert "utm_campaign=" + b.issue.slug in next(iter(urls))
    # The hrefs became slots, in HTML and in text; unsubscribe/view links are untouched.
    assert "www.helloshuttle.com/?utm" not in tracked.html
    assert "www.helloshuttle.com/?utm" not in tracked.text
    assert "__nlslot_link0__" in tracked.html and "__nlslot_link0__" in tracked.text
    assert "__nlslot_unsubscribe_url__" in tracked.html
    assert 'href="tel:' in tracked.html
    # Filling the slots gives working documents.
    values = {"name": "A", "email": "a@x.org", "unsubscribe_url": "u", "view_online_url": "v"}
    values |= {"link0": "https://news.helloshuttle.com/c/TOKEN"}
    assert 'href="https://news.helloshuttle.com/c/TOKEN"' in html_slots(tracked.html).fill(values)
    assert "https://news.helloshuttle.com/c/TOKEN" in text_slots(tracked.text).fill(values)


def test_all_mode_tracks_article_links_too_and_off_tracks_nothing(pub: Publication) -> None:
    b = built(pub)
    everything = tracking.rewrite(b.html.source, b.text.source, "all")
    assert "https://news.helloshuttle.com" in {link.url for link in everything.links}
    assert any(not link.in_sponsor_block for link in everything.links)
    off = tracking.rewrite(b.html.source, b.text.source, "off")
    assert off.links == () and off.html == b.html.source


def test_tokens_are_signed_and_carry_no_url() -> None:
    signer = tracking.ClickSigner(b"secret")
    token = signer.sign(7, 42, 1)
    assert signer.verify(token) == (7, 42, 1)
    head, sig = token.split(".")
    other = base64.urlsafe_b64encode(struct.pack(">III", 7, 43, 1)).rstrip(b"=").decode()
    assert signer.verify(f"{other}.{sig}") is None  # altered subscriber
    assert signer.verify(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert tracking.ClickSigner(b"other").verify(token) is None
    smuggled = base64.urlsafe_b64encode(b"https://evil.example/").rstrip(b"=").decode()
    assert signer.verify(f"{smuggled}.{sig}") is None
    assert signer.verify("https://evil.example/") is None
    assert signer.verify("") is None


def sent_campaign(pub: Publication, n: int = 3) -> tuple[int, list[str]]:
    store = pub.store()
    emails = add_subscribers(store, n)
    cid = lifecycle.create(store, built(pub))
    with store.begin() as conn:  # as if sent an hour ago
        conn.execute(
            deliveries.update()
            .where(deliveries.c.campaign_id == cid)
            .values(status="sent", sent_at=dt.datetime(2026, 12, 1, 17, 0, tzinfo=UTC))
        )
    b = built(pub)
    tracking.save_links(
        store, cid, tracking.rewrite(b.html.source, b.text.source, "sponsor").links
    )
    return cid, emails


def test_clicks_are_recorded_and_bots_kept_out_of_the_report(pub: Publication) -> None:
    cid, _ = sent_campaign(pub)
    store = pub.store()
    signer = tracking.ClickSigner(SECRET.encode())
    later = dt.datetime(2026, 12, 1, 18, 0, tzinfo=UTC)
    too_soon = dt.datetime(2026, 12, 1, 17, 0, 3, tzinfo=UTC)

    def click(subscriber: int, *, head: bool = False, now: dt.datetime = later):
        return tracking.record_click(
            store, signer, signer.sign(cid, subscriber, 0), head=head, user_agent=BROWSER,
            rules=Tracking(), now=now,
        )  # fmt: skip

    first = click(1)
    assert first is not None and first.counted
    assert first.url.startswith("https://www.helloshuttle.com/?utm_source=")
    again = click(1)  # a second click by the same reader, within the hour
    assert again.url == first.url and again.duplicate and not again.suspected_bot
    assert click(2).counted
    assert click(3, head=True).reason == "HEAD request"
    assert click(3, now=too_soon).reason == "within 10 s of delivery"
    forged = tracking.record_click(
        store, signer, "forged.token", head=False, user_agent=BROWSER, rules=Tracking()
    )
    assert forged is None

    rep = sponsorship.report(pub.config(), store, "helloshuttle")
    [line] = rep.issues
    assert line.delivered == 3
    assert line.counts == sponsorship.Counts(
        human_unique_clickers=2, human_clicks=2, bot_clicks=2, raw_clicks=5
    )
    assert line.click_rate == pytest.approx(2 / 3)
    assert line.links[0].counts == line.counts
    assert rep.totals == {
        "issues": 1,
        "delivered": 3,
        "human_unique_clickers": 2,
        "human_clicks": 2,
        "bot_clicks": 2,
        "raw_clicks": 5,
        "click_rate": 0.6667,
    }


def test_report_formats(pub: Publication, tmp_path: Path) -> None:
    cid, _ = sent_campaign(pub, 2)
    signer = tracking.ClickSigner(SECRET.encode())
    tracking.record_click(
        pub.store(), signer, signer.sign(cid, 1, 0), head=False, user_agent=BROWSER,
        rules=Tracking(), now=dt.datetime(2026, 12, 2, tzinfo=UTC),
    )  # fmt: skip

    def invoke(*args: str):  # noqa: ANN202
        return CliRunner().invoke(
            cli, ["--config", str(pub.config_path), "sponsors", "report", "helloshuttle", *args],
            env=pub.env,
        )  # fmt: skip

    import json

    data = json.loads(invoke("--json").stdout)
    assert data["totals"]["human_clicks"] == 1 and data["issues"][0]["delivered"] == 2
    csv_lines = invoke("--csv").stdout.splitlines()
    assert csv_lines[0] == (
        "campaign,issue,sent,delivered,link,human_unique_clickers,human_clicks,bot_clicks,"
        "raw_clicks,click_rate"
    )
    assert csv_lines[-1] == "total,,,2,,1,1,0,1,0.5000"
    page = tmp_path / "report.html"
    result = invoke("--html", str(page))
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert "<svg" in text and "Hello Shuttle" in text
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert 'src="' not in text and "<link" not in text  # self-contained
    svg = text[text.index("<svg") : text.index("</svg>") + 6]
    ET.fromstring(svg)  # the chart is well-formed XML
    assert invoke("--json", "--csv").exit_code == 2
    unknown = CliRunner().invoke(
        cli, ["--config", str(pub.config_path), "sponsors", "report", "nobody"], env=pub.env
    )
    assert unknown.exit_code == 2 and "unknown sponsor 'nobody'" in unknown.stderr


# --- what build shows is what readers get -------------------------------------------------


@pytest.mark.parametrize("mode", ["sponsor", "all"])
def test_a_sent_message_is_the_build_byte_for_byte_but_its_personal_slots(
    pub: Publication, smtp_server: SmtpServer, tmp_path: Path, mode: str
) -> None:
    """Sent through a real SMTP server and compared with the files `build` writes: the same
    bytes once the recipient's name, address, unsubscribe token and click tokens are put
    back to the sample subscriber's (build's placeholder campaign and subscriber 0)."""
    config = pub.config(NEWSLETTER_TRACKING_CLICKS=mode)
    store = pub.store()
    (email,) = add_subscribers(store, 1)
    outputs, _ = publish.write_build(config, pub.issue, tmp_path / "build")
    b = built(pub)
    cid = campaign.run(store, config, lifecycle.create(store, b)).campaign_id
    (received,) = [r.parse() for r in smtp_server.received]
    with store.begin() as conn:
        (sid,) = conn.execute(sa.select(deliveries.c.subscriber_id)).scalars()

    sample = publish.sample(config, b)
    personalizer = publish.Personalizer(config, b.issue.slug)
    reader, _ = personalizer.values(email, "Reader 0")
    placeholder, _ = personalizer.values(config.sample.email, config.sample.name)
    signer = tracking.ClickSigner(SECRET.encode())
    count = len(sample.destinations)
    assert count >= (2 if mode == "all" else 1)
    reader_links = tracking.LinkSlots(config, signer, cid, count).values(sid)
    for part, built_file in (("html", outputs.html), ("plain", outputs.text)):
        sent = received.get_body((part,)).get_content()
        for slot, value in reader_links.items():
            # Each tracked link is the reader's own (the text part shows only some).
            assert part == "plain" or value in sent, slot
            sent = sent.replace(value, sample_link(sample, slot, count))
        for slot in ("unsubscribe_url", "email", "name"):
            sent = sent.replace(reader[slot], placeholder[slot])
        # The received part's lines end in CRLF (RFC 5322 section 2.3); the files in LF.
        assert sent.replace("\r\n", "\n").encode() == built_file.read_bytes(), part


def sample_link(sample: publish.Sample, slot: str, count: int) -> str:
    """The tracked link `build` shows for link slot `slot`: signed for the placeholder
    campaign and subscriber, found among the sample's own links."""
    signer = tracking.ClickSigner(SECRET.encode())
    idx = int(slot.removeprefix("link"))
    assert 0 <= idx < count
    token = signer.sign(
        tracked_links.PLACEHOLDER_CAMPAIGN, tracked_links.PLACEHOLDER_SUBSCRIBER, idx
    )
    (link,) = [url for url in sample.destinations if url.endswith("/c/" + token)]
    return link


def test_build_and_sending_without_tracking_show_the_direct_links(pub: Publication) -> None:
    config = pub.config(NEWSLETTER_TRACKING_CLICKS="off")
    sample = publish.sample(config, built(pub))
    assert sample.destinations == {}
    assert "/c/" not in sample.html and "https://www.helloshuttle.com/?utm_source=" in sample.html


# --- end to end: a received message, the served redirect, the report ----------------------


def tracked_links_in(received_html: str) -> list[str]:
    return re.findall(r'href="(https://news\.helloshuttle\.com/c/[^"]+)"', received_html)


def test_received_tracked_link_redirects_with_utm_and_counts(
    pub: Publication, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    config = pub.config()
    store = pub.store()
    add_subscribers(store, 2)
    b = built(pub)
    cid = campaign.run(store, config, lifecycle.create(store, b)).campaign_id
    messages = [r.parse() for r in smtp_server.received]
    htmls = [m.get_body(("html",)).get_content() for m in messages]
    texts = [m.get_body(("plain",)).get_content() for m in messages]
    links = [tracked_links_in(h) for h in htmls]
    assert all(links) and links[0] != links[1]  # per-recipient tokens
    assert links[0][0].split("/c/")[1] in texts[0]  # the text part is tracked too
    assert "utm_source" not in htmls[0].split('data-block="sponsor"')[1].split("</table>")[0]
    # The sample build carries tracked links too, made for a placeholder subscriber.
    sample_links = tracked_links_in(publish.sample(config, b).html)
    assert len(sample_links) == len(links[0]) and not set(sample_links) & set(links[0])

    with site_support.running(config) as site:
        head = httpx.head(site.local(links[0][0]), timeout=10, follow_redirects=False)
        # Clicks at once after delivery are scanners: age the deliveries by an hour.
        with store.begin() as conn:
            conn.execute(
                deliveries.update()
                .where(deliveries.c.campaign_id == cid)
                .values(sent_at=dt.datetime.now(UTC) - dt.timedelta(hours=1))
            )
        browser = {"user-agent": BROWSER}
        first = site.get(links[0][0], follow_redirects=False, headers=browser)
        again = site.get(links[0][0], follow_redirects=False, headers=browser)
        other = site.get(links[1][0], follow_redirects=False, headers=browser)
        token = links[0][0].split("/c/")[1]
        forged = site.get(f"/c/{token[:-2]}xy", follow_redirects=False)
        smuggled = site.get("/c/https://evil.example/", follow_redirects=False)
        encoded = site.get("/c/aHR0cHM6Ly9ldmlsLmV4YW1wbGUv.AAAA", follow_redirects=False)
    assert head.status_code == 302
    for response in (first, again, other):
        assert response.status_code == 302
        location = response.headers["location"]
        assert location.startswith("https://www.helloshuttle.com/?utm_source=")
        assert "utm_medium=email" in location and f"utm_campaign={b.issue.slug}" in location
    for response in (forged, smuggled, encoded):
        assert response.status_code == 404 and "location" not in response.headers
    rep = sponsorship.report(config, store, "helloshuttle")
    # HEAD is a bot's; the second click of the first reader is counted once.
    assert rep.issues[0].counts == sponsorship.Counts(
        human_unique_clickers=2, human_clicks=2, bot_clicks=1, raw_clicks=4
    )
    assert rep.issues[0].delivered == 2

    page = tmp_path / "report.html"
    page.write_text(sponsorship.report_html(rep, config.publication.name), encoding="utf-8")
    shot = screenshot(page, tmp_path)
    if shot is not None:
        assert shot.stat().st_size > 5_000


def screenshot(page: Path, tmp_path: Path) -> Path | None:
    """The HTML report rendered in headless Chromium, saved with the test output."""
    chromium = Path("/usr/bin/chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None  # type: ignore[assignment]
    if sync_playwright is None or not chromium.exists():
        if os.environ.get("CI"):
            pytest.fail("the report's browser check needs playwright and /usr/bin/chromium")
        return None
    out = Path(__file__).resolve().parents[1] / "test-output" / "sponsor-report.png"
    out.parent.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(chromium),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"],
            headless=True,
            viewport={"width": 900, "height": 900},
        )  # fmt: skip
        try:
            tab = context.pages[0] if context.pages else context.new_page()
            requests: list[str] = []
            tab.on("request", lambda r: requests.append(r.url))
            tab.goto(page.as_uri())
            assert tab.locator("svg rect").count() == 1
            assert tab.get_by_text("unique clickers").first.is_visible()
            tab.screenshot(path=str(out), full_page=True)
            assert requests == [page.as_uri()]  # self-contained: nothing else loaded
        finally:
            context.close()
    return out


# --- repeats and bots, through the served site -------------------------------------------

SENT_AT = dt.datetime(2026, 12, 1, 17, 0, tzinfo=UTC)  # when sent_campaign delivered
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
# The names these scanners give themselves; the rest of each string is made up.
PROOFPOINT = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Proofpoint URL Defense"
MIMECAST = "Mimecast URL Protect/1.0"
BARRACUDA = "Mozilla/5.0 (compatible; Barracuda Email Security link protection)"
SAFE_LINKS = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17126; Pro)"


class Clock:
    """The site's clock: the test moves it."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def path_of(cid: int, subscriber: int, idx: int = 0) -> str:
    return "/c/" + tracking.ClickSigner(SECRET.encode()).sign(cid, subscriber, idx)


def recorded(pub: Publication) -> list[tuple[int, int, bool, str | None, bool]]:
    """(subscriber, link, bot, reason, duplicate) of every click, in order."""
    c = click_rows.c
    with pub.store().engine.connect() as conn:
        rows = conn.execute(
            sa.select(c.subscriber_id, c.link_idx, c.suspected_bot, c.reason, c.duplicate)
            .order_by(c.id)
        ).all()  # fmt: skip
    return [tuple(row) for row in rows]  # type: ignore[misc]


def visit(site: site_support.Running, path: str, agent: str = BROWSER) -> httpx.Response:
    response = site.get(path, headers={"user-agent": agent}, follow_redirects=False)
    assert response.status_code == 302, response.text
    return response


def slow_click_insert(conn: object, cursor: object, statement: str, *args: object) -> None:
    if statement.startswith("INSERT INTO clicks"):
        time.sleep(0.02)


def test_fifty_gets_of_one_link_count_one_click_and_fifty_raw(
    database_url: str, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    pub = make_publication(tmp_path, database_url, smtp_server.port)
    cid, _ = sent_campaign(pub)
    clock = Clock(SENT_AT + dt.timedelta(hours=1))
    # At once, as a reader's double-clicks and a mail app's prefetch come: the check
    # for an earlier click and the insert must not interleave.
    with site_support.running(pub.config(), clock=clock) as site:
        # Each insert takes a while, so that without a lock another request's check
        # would run before it commits (and count a second click).
        sa.event.listen(site.site.store.engine, "before_cursor_execute", slow_click_insert)
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda _: visit(site, path_of(cid, 1)), range(50)))
    rows = recorded(pub)
    assert len(rows) == 50
    assert sum(not duplicate for *_, duplicate in rows) == 1
    assert not any(bot for _, _, bot, _, _ in rows)
    [line] = sponsorship.report(pub.config(), pub.store(), "helloshuttle").issues
    assert line.counts == sponsorship.Counts(
        human_unique_clickers=1, human_clicks=1, bot_clicks=0, raw_clicks=50
    )


def test_crawlers_and_mail_scanners_are_recorded_as_bots_and_not_counted(
    pub: Publication,
) -> None:
    cid, _ = sent_campaign(pub)
    clock = Clock(SENT_AT + dt.timedelta(hours=1))
    with site_support.running(pub.config(), clock=clock) as site:
        for agent in (GOOGLEBOT, PROOFPOINT, SAFE_LINKS):
            # A scanner still gets where the link leads: it is only not counted.
            location = visit(site, path_of(cid, 1), agent).headers["location"]
            assert location.startswith("https://www.helloshuttle.com/")
        head = httpx.head(site.local(path_of(cid, 1)), headers={"user-agent": MIMECAST})
        assert head.status_code == 302
        visit(site, path_of(cid, 2), BARRACUDA)
        # The reader's own click after the scanners' counts: a bot opens no window.
        visit(site, path_of(cid, 1))
    assert recorded(pub) == [
        (1, 0, True, "crawler: Googlebot", False),
        (1, 0, True, "mail scanner: Proofpoint", False),
        (1, 0, True, "crawler: Microsoft Office", False),
        (1, 0, True, "HEAD request", False),
        (2, 0, True, "mail scanner: Barracuda", False),
        (1, 0, False, None, False),
    ]
    [line] = sponsorship.report(pub.config(), pub.store(), "helloshuttle").issues
    assert line.counts == sponsorship.Counts(
        human_unique_clickers=1, human_clicks=1, bot_clicks=5, raw_clicks=6
    )


@pytest.mark.parametrize(
    ("agent", "reason"),
    [
        (GOOGLEBOT, "crawler: Googlebot"),
        ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; Googlebot/2.1;"
         " +http://www.google.com/bot.html) Chrome/124.0.6367.201 Safari/537.36",
         "crawler: Googlebot"),
        ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
         "crawler: bingbot"),
        ("Mozilla/5.0 (compatible; Barracuda Sentinel (EE))", "crawler: Barracuda Sentinel (EE)"),
        (BARRACUDA, "mail scanner: Barracuda"),
        (PROOFPOINT, "mail scanner: Proofpoint"),
        (MIMECAST, "mail scanner: Mimecast"),
        (SAFE_LINKS, "crawler: Microsoft Office"),
        ("Microsoft Office Existence Discovery", "crawler: Microsoft Office"),
        ("python-httpx/0.27.0", "crawler: python-httpx"),
        (BROWSER, ""),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15"
         " (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1", ""),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0", ""),
        # Apple Mail opening a link in its own view.
        ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15"
         " (KHTML, like Gecko)", ""),
        ("", ""),
    ],
)  # fmt: skip
def test_known_bots_by_user_agent(agent: str, reason: str) -> None:
    assert tracking.known_bot(agent) == reason


def test_a_readers_clicks_count_once_per_window_from_the_counted_click(
    pub: Publication,
) -> None:
    cid, _ = sent_campaign(pub)
    t0 = SENT_AT + dt.timedelta(hours=1)
    clock = Clock(t0)
    config = pub.config(NEWSLETTER_TRACKING_DEDUPE_WINDOW="30m")
    assert config.tracking.dedupe_window_seconds == 1800
    offsets = [0, 1799, 1800, 1801, 3599, 3600]  # seconds after t0, reader 1
    with site_support.running(config, clock=clock) as site:
        for offset in offsets:
            clock.now = t0 + dt.timedelta(seconds=offset)
            visit(site, path_of(cid, 1))
        visit(site, path_of(cid, 2))  # another reader: their own window
    assert [duplicate for *_, duplicate in recorded(pub)] == [
        False,  # 0: counted, the window runs to 30 min
        True,  # 29:59
        False,  # 30:00: the window is over; this click opens the next one
        True,  # 30:01
        True,  # 59:59: within the window of 30:00, though past the first click's
        False,  # 60:00
        False,  # reader 2 at 60:00
    ]
    [line] = sponsorship.report(config, pub.store(), "helloshuttle").issues
    assert line.counts == sponsorship.Counts(
        human_unique_clickers=2, human_clicks=4, bot_clicks=0, raw_clicks=7
    )


def test_the_dedupe_window_is_a_checked_duration(
    pub: Publication, assert_user_error: Callable[..., str]
) -> None:
    assert pub.config().tracking.dedupe_window_seconds == 3600  # default: an hour
    assert pub.config(NEWSLETTER_TRACKING_DEDUPE_WINDOW="0").tracking.dedupe_window_seconds == 0
    result = CliRunner().invoke(
        cli, ["--config", str(pub.config_path), "sponsors", "report", "helloshuttle"],
        env={**pub.env, "NEWSLETTER_TRACKING_DEDUPE_WINDOW": "soon"},
    )  # fmt: skip
    line = assert_user_error(result)
    assert result.exit_code == 2
    assert line == (
        f"Error: {pub.config_path}: [tracking] dedupe_window: expected a duration like"
        " '6h', '30m' or '90s', got 'soon'"
    )


def test_the_report_in_every_format_has_readers_bots_and_raw_per_link(
    pub: Publication, tmp_path: Path
) -> None:
    # A second link in the sponsor block, and a second issue that tracks nothing.
    sponsor_html = pub.root / "templates" / "sponsor.html"
    sponsor_html.write_text(
        sponsor_html.read_text(encoding="utf-8").replace(
            "</td></tr>", '<a href="https://www.helloshuttle.com/fares">Fares</a>\n</td></tr>'
        ),
        encoding="utf-8",
    )
    cid, _ = sent_campaign(pub)
    second = pub.issue.with_name("2024-12-02-second-issue.md")
    second.write_text(pub.issue.read_text(encoding="utf-8"), encoding="utf-8")
    store = pub.store()
    lifecycle.create(store, publish.build_issue(pub.config(), publish.load_issue(second)))
    clock = Clock(SENT_AT + dt.timedelta(hours=1))
    with site_support.running(pub.config(), clock=clock) as site:
        for _ in range(3):
            visit(site, path_of(cid, 1, 0))
        visit(site, path_of(cid, 2, 0))
        visit(site, path_of(cid, 3, 0), GOOGLEBOT)
        visit(site, path_of(cid, 1, 1))
        visit(site, path_of(cid, 2, 1), MIMECAST)

    def invoke(*args: str) -> str:
        result = CliRunner().invoke(
            cli, ["--config", str(pub.config_path), "sponsors", "report", "helloshuttle", *args],
            env=pub.env,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        return result.stdout

    import json

    data = json.loads(invoke("--json"))
    first, other = data["issues"]
    slug = first["issue"]
    url0, url1 = (link["url"] for link in first["links"])
    assert url0.startswith("https://www.helloshuttle.com/?utm_") and url1.endswith("/fares")
    figures = ["human_unique_clickers", "human_clicks", "bot_clicks", "raw_clicks"]
    assert [[link[k] for k in figures] for link in first["links"]] == [[2, 2, 1, 5], [1, 1, 1, 2]]
    assert [first[k] for k in figures] == [2, 3, 2, 7]
    assert first["delivered"] == 3 and first["click_rate"] == 0.6667
    assert other["links"] == [] and [other[k] for k in figures] == [0, 0, 0, 0]
    assert data["totals"] == {
        "issues": 2, "delivered": 3, "human_unique_clickers": 2, "human_clicks": 3,
        "bot_clicks": 2, "raw_clicks": 7, "click_rate": 0.6667,
    }  # fmt: skip
    assert data["dedupe_window"] == "1h"

    assert invoke("--csv").splitlines() == [
        "campaign,issue,sent,delivered,link,human_unique_clickers,human_clicks,bot_clicks,"
        "raw_clicks,click_rate",
        f"{cid},{slug},,3,{url0},2,2,1,5,0.6667",
        f"{cid},{slug},,3,{url1},1,1,1,2,0.3333",
        f"{cid + 1},second-issue,,0,,0,0,0,0,0.0000",
        "total,,,3,,2,3,2,7,0.6667",
    ]

    page = tmp_path / "report.html"
    assert invoke("--html", str(page)) == f"{page}\n"
    doc = lxml.html.fromstring(page.read_text(encoding="utf-8"))
    issues_table, links_table = doc.xpath("//table")

    def cells(table: lxml.html.HtmlElement) -> list[list[str]]:
        return [[td.text_content() for td in tr.xpath("td")] for tr in table.xpath("tr")[1:]]

    headers = [th.text_content() for th in links_table.xpath("tr/th")]
    assert headers == ["Issue", "Link", "Unique clickers", "Clicks", "Bot clicks", "Raw requests"]
    assert cells(links_table) == [
        [slug, url0, "2", "2", "1", "5"],
        [slug, url1, "1", "1", "1", "2"],
    ]
    assert cells(issues_table) == [
        [slug, "", "3", "2", "3", "2", "7", "66.67%"],
        ["second-issue", "", "0", "0", "0", "0", "0", "0.00%"],
    ]
    assert "within 1h count once" in doc.text_content()

    text = invoke()
    assert text.splitlines() == [
        f"{slug}: 3 delivered, 2 unique clickers, 3 clicks (2 bot clicks, 7 raw requests), 66.67%",
        f"    {url0}: 2 unique clickers, 2 clicks (1 bot clicks, 5 raw requests)",
        f"    {url1}: 1 unique clickers, 1 clicks (1 bot clicks, 2 raw requests)",
        "second-issue: 0 delivered, 0 unique clickers, 0 clicks (0 bot clicks,"
        " 0 raw requests), 0.00%",
        "total (2 issues): 3 delivered, 2 unique clickers, 3 clicks (2 bot clicks,"
        " 7 raw requests), 66.67%",
    ]
