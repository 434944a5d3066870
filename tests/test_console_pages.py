"""The console's issues, sponsors and subscribers pages over the real server: what each
shows against the ledger and the config, the actions (send test, import) through the
same library functions as the CLI, and their error paths."""

from __future__ import annotations

import datetime as dt
import re
import stat
import tempfile
from pathlib import Path

import httpx
import lxml.html
import pytest
import sqlalchemy as sa
from campaign_support import SECRET, Publication, add_subscribers, make_publication
from click.testing import CliRunner
from console_support import Running, make_console, running
from smtp_fixtures import SmtpServer

from newsletter.audience import subscribers as subscriber_ops
from newsletter.cli import cli
from newsletter.config import Tracking
from newsletter.issue import publish
from newsletter.ledger import lifecycle, once, privacy
from newsletter.ledger.tables import tags as tag_rows
from newsletter.schedule import plans
from newsletter.schedule.timing import zone
from newsletter.send import campaign, tracking
from newsletter.web.console import issues as issue_pages
from newsletter.web.console import subscribers as console_subscribers
from newsletter.web.console.context import Console

UTC = dt.UTC
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36"
TEST_RECIPIENTS = ("editor@example.com", "second@example.com")


@pytest.fixture
def pub(tmp_path: Path, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> Publication:
    """The sample publication on a SQLite file, sending to the test's aiosmtpd server,
    with two test recipients; its variables set, as `newsletter console` would see them."""
    made = make_publication(tmp_path, f"sqlite:///{tmp_path / 'console.db'}", smtp_server.port)
    text = made.config_path.read_text(encoding="utf-8")
    recipients = ", ".join(f'"{a}"' for a in TEST_RECIPIENTS)
    made.config_path.write_text(
        text.replace("test_recipients = []", f"test_recipients = [{recipients}]"), "utf-8"
    )
    for name, value in made.env.items():
        monkeypatch.setenv(name, value)
    # The import's waiting files go under the test's folder, where the test can see them.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return made


@pytest.fixture
def console(pub: Publication) -> Console:
    now = dt.datetime.now(UTC)
    return make_console(pub.config_path, clock=lambda: now)


def html_of(response: httpx.Response) -> lxml.html.HtmlElement:
    """The page, after the redirect an action answers with (303 to a GET)."""
    if response.status_code == 303:
        response = httpx.get(response.url.join(response.headers["location"]), timeout=10)
    assert response.status_code == 200, response.text
    return lxml.html.fromstring(response.text)


def texts(doc: lxml.html.HtmlElement, xpath: str) -> list[str]:
    return [" ".join(el.text_content().split()) for el in doc.xpath(xpath)]


def local(when: dt.datetime, console: Console) -> str:
    return f"{when.astimezone(zone(console.config.publication.timezone)):%Y-%m-%d %H:%M %Z}"


def sent_campaign(pub: Publication, readers: int = 2) -> int:
    """A campaign of the sample issue sent to `readers` subscribers (really, to aiosmtpd)."""
    store = pub.store()
    add_subscribers(store, readers)
    config = pub.config()
    cid = lifecycle.create(store, publish.build_issue(config, publish.load_issue(pub.issue)))
    result = campaign.run(store, config, cid)
    assert result.ok and result.sent == readers
    return cid


# --- issues ---------------------------------------------------------------------------


def test_issues_lists_each_file_with_its_check_and_its_campaigns(
    pub: Publication, console: Console
) -> None:
    broken = pub.root / "issues" / "2030-01-01-broken.md"
    broken.write_text("no front matter here\n", encoding="utf-8")
    cid = sent_campaign(pub)
    at = dt.datetime(2031, 1, 6, 9, 0)
    scheduled, when, _ = plans.schedule_issue(
        pub.store(), pub.config(), pub.issue, at.isoformat(" "), repeat=once.Repeat.AGAIN
    )
    findings = publish.check_issue(pub.config(), pub.issue)
    with running(console) as web:
        doc = html_of(web.get("/issues"))
    [card] = doc.xpath(f'//li[@id="issue-{pub.issue.stem}"]')
    errors = sum(f.level == "error" for f in findings)
    warnings = sum(f.level == "warning" for f in findings)
    assert card.xpath(".//@data-errors") == [str(errors)]
    assert card.xpath(".//@data-warnings") == [str(warnings)]
    shown = texts(card, './/ul[@class="findings"]/li')
    assert shown == [
        f"{f.level}: {f.message}" + (f" [{f.where}]" if f.where else "") for f in findings
    ]
    went_out = texts(card, './/ul[@class="campaign-lines"]/li')
    assert went_out[0].startswith("sent ") and f"campaign {cid}, 2 recipient(s)" in went_out[0]
    assert went_out[1] == f"scheduled {local(when, console)} campaign {scheduled}"
    assert "2031-01-06 09:00 PST" in went_out[1]  # the publication's zone, as scheduled
    # A file that does not read is listed with its one-line error, first (the newest).
    [bad] = doc.xpath('//li[@id="issue-2030-01-01-broken"]')
    assert "expected front matter" in texts(bad, './/p[@class="error"]')[0]
    assert doc.xpath("//li[contains(@class, 'issue-card')]/@id")[0] == "issue-2030-01-01-broken"
    copy = f"newsletter preview issues/{pub.issue.name}"
    assert copy in " ".join(texts(card, './/p[contains(@class, "copy")]'))


def test_the_issue_view_frames_the_built_html_under_the_frame_policy(
    pub: Publication, console: Console
) -> None:
    config = pub.config()
    expected = publish.sample(config, publish.build_issue(config, publish.load_issue(pub.issue)))
    name = pub.issue.stem
    with running(console) as web:
        doc = html_of(web.get(f"/issues/{name}/view"))
        [frame] = doc.xpath("//iframe")
        assert frame.get("sandbox") == "" and frame.get("src") == f"/issues/{name}/frame"
        assert frame.get("title")
        framed = web.get(frame.get("src"))
        assert framed.status_code == 200
        assert framed.headers["content-security-policy"] == issue_pages.FRAME_CSP
        assert framed.text == expected.html
        assert web.get("/issues/nothing-like-it/view").status_code == 404
        assert web.get("/issues/..%2Fnewsletter/frame").status_code == 404


def test_send_test_sends_the_issue_to_the_test_recipients(
    pub: Publication, console: Console, smtp_server: SmtpServer
) -> None:
    action = f"/issues/{pub.issue.stem}/send-test"
    with running(console) as web:
        page = html_of(web.get("/issues"))
        [form] = page.xpath(f'//form[@action="{action}"]')
        assert form.xpath(".//button/text()") == ["Send test"]
        assert web.get(action).status_code == 405
        assert web.post(action, {"token": "wrong"}).status_code == 403
        assert smtp_server.received == []
        done = web.post(action, follow_redirects=False)
        assert done.status_code == 303
        notice = texts(html_of(web.get(done.headers["location"])), '//p[@role="status"]')
    outcome = "; ".join(f"{a}: sent" for a in TEST_RECIPIENTS)
    assert notice == [f"test send of {pub.issue.name}: {outcome}"]
    got = sorted(r.rcpt_tos[0] for r in smtp_server.received)
    assert got == sorted(TEST_RECIPIENTS)
    # The issue's own page has the button too, and comes back to itself.
    with running(console) as web:
        view = f"/issues/{pub.issue.stem}/view"
        [button] = html_of(web.get(view)).xpath(f'//form[@action="{action}"]//button')
        assert button.text_content() == "Send test"
        again = web.post(action, {"from": "view"}, follow_redirects=False)
        assert again.headers["location"].startswith(view + "?notice=test+send")
    assert len(smtp_server.received) == 2 * len(TEST_RECIPIENTS)
    message = smtp_server.received[0].parse()
    assert message["Subject"].startswith("[TEST] ")
    assert pub.store().count_subscribers() == 0  # nothing recorded: a test send


def test_without_test_recipients_the_button_says_what_to_set(publication: Path) -> None:
    console = make_console(publication)
    name = next((publication.parent / "issues").glob("*.md")).stem
    with running(console) as web:
        doc = html_of(web.get("/issues"))
        [button] = doc.xpath(f'//form[@action="/issues/{name}/send-test"]//button')
        assert button.get("disabled") is not None
        assert "[preview] test_recipients" in button.text_content()
        assert "[preview]" in texts(doc, '//*[@id="no-test-recipients"]')[0]
        refused = web.post(f"/issues/{name}/send-test")
        assert "set [preview] test_recipients" in texts(html_of(refused), '//p[@role="alert"]')[0]


# --- sponsors -------------------------------------------------------------------------


def book_acme(pub: Publication, start: dt.date, end: dt.date) -> None:
    with pub.config_path.open("a", encoding="utf-8") as toml:
        toml.write(
            f'\n[sponsors.acme]\nname = "Acme Rockets"\nurl = "https://acme.example.com"\n'
            f'message = "Rockets."\nstart = {start.isoformat()}\nend = {end.isoformat()}\n'
        )


def test_sponsors_shows_the_bookings_and_who_each_upcoming_issue_carries(
    pub: Publication,
) -> None:
    now = dt.datetime.now(UTC)
    today = now.astimezone(zone("America/Los_Angeles")).date()
    book_acme(pub, today - dt.timedelta(days=3), today + dt.timedelta(days=40))
    dated = today + dt.timedelta(days=8)
    upcoming = pub.root / "issues" / f"{dated.isoformat()}-rockets.md"
    upcoming.write_text(
        f"---\ntitle: Rockets\nsubject: Rockets\ndate: {dated.isoformat()}\n---\n\nHello.\n",
        encoding="utf-8",
    )
    later = today + dt.timedelta(days=400)
    (pub.root / "issues" / f"{later.isoformat()}-far.md").write_text(
        f"---\ntitle: Far\nsubject: Far\ndate: {later.isoformat()}\n---\n\nLater.\n", "utf-8"
    )
    rule, first_tick, _ = plans.add_recurring(pub.store(), pub.config(), "0 9 * * 1", None, now)
    console = make_console(pub.config_path, clock=lambda: now)
    with running(console) as web:
        doc = html_of(web.get("/sponsors"))
    [svg] = doc.xpath("//svg")
    assert svg.get("role") == "img" and "Acme Rockets" in svg.text_content()
    assert "today" in svg.text_content()
    rows = {
        tr.get("data-sponsor"): " ".join(tr.text_content().split())
        for tr in doc.xpath("//tr[@data-sponsor]")
    }
    assert rows["acme"].startswith(f"Acme Rockets {(today - dt.timedelta(days=3)).isoformat()} to")
    assert "rockets" in rows["acme"]  # planned: `sponsors list`'s choice
    assert "default" in rows["helloshuttle"]
    plan = {
        tr.get("data-issue"): texts(tr, "./td")
        for tr in doc.xpath('//table[@id="plan"]//tr[@data-issue]')
    }
    # The first tick takes the oldest unsent issue (the sample, before Acme's booking).
    sample = plan[publish.load_issue(pub.issue).slug]
    assert sample[0] == local(first_tick, console) and sample[2] == "Hello Shuttle"
    assert sample[3] == f"recurring (r{rule})"
    # The rockets issue goes at the first tick on or after its date, with Acme (rotation).
    rockets = plan["rockets"]
    assert rockets[2] == "Acme Rockets" and rockets[3] == f"recurring (r{rule})"
    tick = dt.datetime.strptime(rockets[0][:10], "%Y-%m-%d").date()
    assert dated <= tick < dated + dt.timedelta(days=7)
    # Beyond the 12 weeks, no tick takes it: listed, not scheduled, with the default.
    assert plan["far"] == ["—", f"far ({later.isoformat()})", "Hello Shuttle", "not scheduled"]


def test_a_sponsor_report_shows_the_clis_numbers_and_downloads_its_files(
    pub: Publication, console: Console, tmp_path: Path
) -> None:
    cid = sent_campaign(pub, 3)
    store, config = pub.store(), pub.config()
    built = publish.build_issue(config, publish.load_issue(pub.issue))
    tracking.save_links(
        store, cid, tracking.rewrite(built.html.source, built.text.source, "sponsor").links
    )
    signer = tracking.ClickSigner(SECRET.encode())
    for subscriber, head in ((1, False), (1, False), (2, False), (3, True)):
        tracking.record_click(
            store, signer, signer.sign(cid, subscriber, 0), head=head, user_agent=BROWSER,
            rules=Tracking(), now=dt.datetime.now(UTC) + dt.timedelta(hours=1),
        )  # fmt: skip

    def cli_says(*args: str) -> str:
        result = CliRunner().invoke(
            cli, ["--config", str(pub.config_path), "sponsors", "report", "helloshuttle", *args]
        )
        assert result.exit_code == 0, result.output
        return result.stdout

    cli_html = tmp_path / "cli-report.html"
    cli_says("--html", str(cli_html))
    with running(console) as web:
        doc = html_of(web.get("/sponsors/helloshuttle"))
        csv = web.get("/sponsors/helloshuttle/report.csv")
        page = web.get("/sponsors/helloshuttle/report.html")
        for path in ("/sponsors/nobody", "/sponsors/nobody/report.csv", "/sponsors/x/report.html"):
            assert web.get(path).status_code == 404
    totals = {dd.get("data-total"): dd.text_content() for dd in doc.xpath("//dd[@data-total]")}
    assert totals == {
        "issues": "1",
        "delivered": "3",
        "human_unique_clickers": "2",
        "human_clicks": "2",
        "bot_clicks": "1",
        "raw_clicks": "4",
    }
    slug = publish.load_issue(pub.issue).slug
    [row] = doc.xpath(f'//table[@id="per-issue"]//tr[@data-issue="{slug}"]')
    assert texts(row, "./td")[2:] == ["3", "2", "2", "1", "4", "66.67%"]
    [chart] = doc.xpath("//svg")
    assert chart.get("role") == "img" and chart.xpath("./title")
    assert f"{slug}: 2 clicks" in chart.xpath("./desc")[0].text_content()
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert csv.headers["content-disposition"] == 'attachment; filename="helloshuttle-report.csv"'
    assert csv.text == cli_says("--csv")
    assert page.status_code == 200 and "attachment" in page.headers["content-disposition"]
    assert page.text == cli_html.read_text(encoding="utf-8")


# --- subscribers ----------------------------------------------------------------------


def test_subscribers_shows_the_counts_by_status_and_this_weeks_growth(
    pub: Publication, console: Console
) -> None:
    store = pub.store()
    emails = add_subscribers(store, 4)
    subscriber_ops.remove(store, emails[0])
    with running(console) as web:
        doc = html_of(web.get("/subscribers"))
    counts = {dd.get("data-status"): dd.text_content() for dd in doc.xpath("//dd[@data-status]")}
    expected = {k: str(v) for k, v in privacy.status_counts(store).items()}
    assert counts == {**expected, "all": "4"} and counts["unsubscribed"] == "1"
    rows = doc.xpath('//table[@id="growth"]//tr[@data-week]')
    assert len(rows) == 12
    today = console.clock().astimezone(zone("America/Los_Angeles")).date()
    monday = today - dt.timedelta(days=today.weekday())
    assert rows[-1].get("data-week") == monday.isoformat()
    assert texts(rows[-1], "./td")[1:] == ["4", "1", "3"]
    assert all(texts(r, "./td")[1:] == ["0", "0", "0"] for r in rows[:-1])
    [svg] = doc.xpath("//svg")
    assert svg.get("role") == "img" and "4 subscribed, 1 unsubscribed" in svg.text_content()
    assert "not dated on the subscriber" in doc.text_content()


CSV = (
    "email,name\n"
    "new1@example.com,New One\n"
    "new2@example.com,New Two\n"
    "known@example.com,Known Again\n"
    "not-an-address,Nobody\n"
)


def dry_run(web: Running, body: bytes, **fields: str) -> httpx.Response:
    return httpx.post(
        web.url + "/subscribers/import",
        data={"token": web.console.token, **fields},
        files={"file": ("subscribers.csv", body, "text/csv")},
        timeout=10,
    )


def waiting_files(pub: Publication) -> list[Path]:
    return sorted(pub.root.parent.glob("newsletter-console-import-*/*/*"))


def test_an_import_dry_run_changes_nothing_and_its_confirmation_imports(
    pub: Publication, console: Console
) -> None:
    store = pub.store()
    subscriber_ops.add(store, "known@example.com", "Known")
    with running(console) as web:
        response = dry_run(web, CSV.encode(), tags="Fair, vip")
        doc = html_of(response)
        assert store.count_subscribers(None) == 1  # nothing changed yet
        counts = {dd.get("data-count"): dd.text_content() for dd in doc.xpath("//dd[@data-count]")}
        assert counts == {
            "added": "2", "updated": "1", "kept_suppressed": "0", "duplicates": "0",
            "rejected": "1",
        }  # fmt: skip
        [source] = texts(doc, '//div[@id="dry-run"]/p[1]')
        assert source.startswith("subscribers.csv:") or "subscribers.csv" in source
        [rejected] = texts(doc, '//ul[@data-kind="rejected"]/li')
        assert rejected.startswith("subscribers.csv:5: ")
        assert "would add" in texts(doc, "//h4")[1]
        # The file waits in a folder of its own, 0600, named by an id; no path is shown.
        [kept] = waiting_files(pub)
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
        assert stat.S_IMODE(kept.parent.parent.stat().st_mode) == 0o700
        assert str(kept.parent) not in response.text
        [upload] = doc.xpath(
            '//form[@action="/subscribers/import/confirm"]//input[@name="upload"]/@value'
        )
        assert upload == kept.parent.name
        assert web.get("/subscribers/import/confirm").status_code == 405
        assert (
            web.post("/subscribers/import/confirm", {"upload": upload, "token": "x"}).status_code
            == 403
        )
        assert store.count_subscribers(None) == 1
        done = web.post("/subscribers/import/confirm", {"upload": upload}, follow_redirects=False)
        assert done.status_code == 303
        notice = texts(html_of(web.get(done.headers["location"])), '//p[@role="status"]')
        assert notice == [
            "imported subscribers.csv: 2 added, 1 updated, 0 kept suppressed, 0 duplicate(s),"
            " 1 rejected"
        ]
        assert waiting_files(pub) == []  # deleted after
        again = web.post("/subscribers/import/confirm", {"upload": upload})
        assert "no longer waiting" in texts(html_of(again), '//p[@role="alert"]')[0]
    assert store.count_subscribers() == 3
    known = store.subscriber("known@example.com")
    assert known is not None and known["name"] == "Known Again"
    with store.engine.connect() as conn:
        tagged = conn.execute(sa.select(sa.func.count()).select_from(tag_rows)).scalar_one()
    assert tagged == 3 * 2  # fair and vip on every row imported


def test_a_cancelled_dry_run_deletes_the_file(pub: Publication, console: Console) -> None:
    with running(console) as web:
        doc = html_of(dry_run(web, CSV.encode()))
        [upload] = doc.xpath(
            '//form[@action="/subscribers/import/cancel"]//input[@name="upload"]/@value'
        )
        assert len(waiting_files(pub)) == 1
        web.post("/subscribers/import/cancel", {"upload": upload})
        assert waiting_files(pub) == []
        refused = web.post("/subscribers/import/confirm", {"upload": upload})
        assert "no longer waiting" in texts(html_of(refused), '//p[@role="alert"]')[0]
    assert pub.store().count_subscribers(None) == 0


@pytest.mark.parametrize(
    ("body", "fields", "said"),
    [
        (b"", {}, "subscribers.csv: the file is empty"),
        (CSV.encode(), {"map": "email"}, "--map email: expected FIELD=COLUMN"),
        (CSV.encode(), {"tags": "no spaces!"}, "tag 'spaces!'"),
        (CSV.encode(), {"map": "email=Nope"}, "Nope"),
    ],
)
def test_a_bad_upload_says_why_in_one_line_and_imports_nothing(
    pub: Publication, console: Console, body: bytes, fields: dict[str, str], said: str
) -> None:
    with running(console) as web:
        response = dry_run(web, body, **fields)
        [error] = texts(html_of(response), '//p[@role="alert"]')
    assert said in error and "\n" not in error
    assert str(pub.root.parent) not in error  # the file as uploaded, not where it waits
    assert waiting_files(pub) == []
    assert pub.store().count_subscribers(None) == 0


def test_an_import_without_a_file_or_the_token_is_refused(
    pub: Publication, console: Console
) -> None:
    with running(console) as web:
        nothing = web.post("/subscribers/import")
        assert texts(html_of(nothing), '//p[@role="alert"]') == ["choose a file to import"]
        forged = httpx.post(
            web.url + "/subscribers/import",
            data={"token": "not-it"},
            files={"file": ("subscribers.csv", CSV.encode(), "text/csv")},
            timeout=10,
        )
        assert forged.status_code == 403
        for path in ("/subscribers/import", "/subscribers/import/cancel"):
            assert web.get(path).status_code == 405
    assert waiting_files(pub) == []
    assert pub.store().count_subscribers(None) == 0


def test_a_file_over_the_limit_is_refused_and_nothing_is_kept(
    pub: Publication, console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console_subscribers, "MAX_UPLOAD_BYTES", 4096)
    big = b"email\n" + b"".join(b"reader%d@example.com\n" % i for i in range(400))
    boundary = "limit-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="token"\r\n\r\n'
            f'{console.token}\r\n--{boundary}\r\nContent-Disposition: form-data; name="file";'
            ' filename="subscribers.csv"\r\nContent-Type: text/csv\r\n\r\n'
        ).encode()
        + big
        + f"\r\n--{boundary}--\r\n".encode()
    )
    with running(console) as web:
        # With a Content-Length (what browsers send): refused before the body is read.
        by_length = dry_run(web, big)
        # Chunked, without one: refused once the body read passes the limit.
        chunked = httpx.post(
            web.url + "/subscribers/import",
            content=iter([body[i : i + 1024] for i in range(0, len(body), 1024)]),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
            timeout=10,
        )
        assert "content-length" not in {k.lower() for k in chunked.request.headers}
        for response in (by_length, chunked):
            assert response.status_code == 303
            [error] = texts(html_of(web.get(response.headers["location"])), '//p[@role="alert"]')
            assert error == (
                "the file is larger than the console takes (4 KiB): import it with"
                " `newsletter subscribers import FILE`"
            )
        assert dry_run(web, big[:2000]).status_code == 200  # under the limit: the dry run
    assert len(waiting_files(pub)) == 1  # that one only
    assert pub.store().count_subscribers(None) == 0


def test_pages_are_gets_that_change_nothing(pub: Publication, console: Console) -> None:
    add_subscribers(pub.store(), 2)

    def snapshot() -> list[tuple[object, ...]]:
        with pub.store().engine.connect() as conn:
            return [
                tuple(row)
                for table in ("subscribers", "campaigns", "deliveries", "tags")
                for row in conn.execute(sa.text(f"SELECT * FROM {table}"))  # noqa: S608
            ]

    before = snapshot()
    with running(console) as web:
        for path in ("/issues", "/sponsors", "/sponsors/helloshuttle", "/subscribers",
                     f"/issues/{pub.issue.stem}/view", f"/issues/{pub.issue.stem}/frame",
                     "/sponsors/helloshuttle/report.csv"):  # fmt: skip
            assert web.get(path).status_code == 200, path
            assert re.search(r"\bTraceback\b", web.get(path).text) is None
    assert snapshot() == before


def test_an_issue_changed_on_disk_is_checked_again(pub: Publication, console: Console) -> None:
    def warnings(web: Running) -> list[str]:
        doc = html_of(web.get("/issues"))
        return doc.xpath(f'//li[@id="issue-{pub.issue.stem}"]//@data-warnings')

    with running(console) as web:
        before = warnings(web)
        text = pub.issue.read_text(encoding="utf-8")
        # An image without width or alt text: an error and a warning more.
        pub.issue.write_text(text + "\n![](http://example.com/x.png)\n", encoding="utf-8")
        after = warnings(web)
    findings = publish.check_issue(pub.config(), pub.issue)
    assert after == [str(sum(f.level == "warning" for f in findings))] != before
