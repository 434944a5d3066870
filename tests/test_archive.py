"""The archive over real HTTP and as static files: sent issues (campaigns run against the
aiosmtpd fixture, on a SQLite file and PostgreSQL in CI), their web versions without
personal data, the Atom feed, and `archive export` byte for byte equal to the served pages."""

from __future__ import annotations

import datetime as dt
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from campaign_support import Publication, make_publication
from click.testing import CliRunner, Result
from site_support import BASE_URL, Running, running
from smtp_fixtures import SmtpServer

from newsletter import tokens
from newsletter.cli import cli
from newsletter.errors import NewsletterError
from newsletter.issue import publish
from newsletter.ledger import lifecycle
from newsletter.ledger.store import Store, SubscriberRow
from newsletter.ledger.tables import INCOMPLETE, SCHEDULED, campaigns
from newsletter.send import campaign
from newsletter.web import archive

ATOM = "{http://www.w3.org/2005/Atom}"
SECRET = b"test-secret-not-for-production-0123456789"
READERS = [
    SubscriberRow("zoe.personal@example.com", "Zoe"),
    SubscriberRow("max@example.org", "Max"),
]


@pytest.fixture
def pub(tmp_path: Path, database_url: str, smtp_server: SmtpServer) -> Publication:
    return make_publication(tmp_path, database_url, smtp_server.port)


@pytest.fixture
def store(pub: Publication) -> Store:
    store = pub.store()
    store.upsert_subscribers(READERS)
    return store


@pytest.fixture
def site(pub: Publication, store: Store) -> Iterator[Running]:
    with running(pub.config()) as served:
        yield served


def write_issue(pub: Publication, slug: str, day: dt.date, subject: str) -> Path:
    """Another issue: the sample's body under a new slug, date, title and subject."""
    text = pub.issue.read_text(encoding="utf-8")
    quoted = json.dumps(subject)  # a YAML string too
    text = re.sub(r"(?m)^title: .*$", lambda _: f"title: {quoted}", text, count=1)
    text = re.sub(r"(?m)^subject: .*$", lambda _: f"subject: {quoted}", text, count=1)
    text = re.sub(r"(?m)^date: .*$", f"date: {day.isoformat()}", text, count=1)
    path = pub.root / "issues" / f"{day.isoformat()}-{slug}.md"
    path.write_text(text, encoding="utf-8")
    return path


def utc(day: int, month: int = 11, hour: int = 17) -> dt.datetime:
    return dt.datetime(2024, month, day, hour, 0, tzinfo=dt.UTC)


def send(pub: Publication, store: Store, issue: Path, at: dt.datetime) -> int:
    """Send the issue to the list for real, then date the campaign `at` (when it went out)."""
    config = pub.config()
    built = publish.build_issue(config, publish.load_issue(issue))
    cid = lifecycle.create(store, built)
    assert campaign.run(store, config, cid).ok
    with store.begin() as conn:
        conn.execute(
            campaigns.update()
            .where(campaigns.c.id == cid)
            .values(started_at=at, finished_at=at + dt.timedelta(minutes=3))
        )
    return cid


def three_issues(pub: Publication, store: Store) -> dict[str, Path]:
    issues = {
        "first-issue": write_issue(pub, "first-issue", dt.date(2024, 11, 1), "First: hello"),
        "second-issue": write_issue(pub, "second-issue", dt.date(2024, 11, 8), "Second & more"),
        "third-issue": write_issue(pub, "third-issue", dt.date(2024, 11, 15), "Third, latest"),
    }
    send(pub, store, issues["first-issue"], utc(1))
    send(pub, store, issues["third-issue"], utc(15))
    send(pub, store, issues["second-issue"], utc(8))
    return issues


def slugs_in(page: str) -> list[str]:
    return re.findall(r'href="/issues/([a-z0-9-]+)"', page)


def test_index_lists_sent_issues_newest_first_once_each(
    pub: Publication, store: Store, site: Running
) -> None:
    issues = three_issues(pub, store)
    # Sent again later (a resend to new readers): still one entry, dated when it first went out.
    send(pub, store, issues["first-issue"], utc(1, month=12))
    # Not sent (scheduled, or stopped with messages left): not in the archive.
    config = pub.config()
    unsent = write_issue(pub, "not-sent", dt.date(2024, 11, 20), "Not sent")
    built = publish.build_issue(config, publish.load_issue(unsent))
    lifecycle.create(store, built, status=SCHEDULED, scheduled_at=utc(1, month=12))
    stopped = lifecycle.create(store, built)
    with store.begin() as conn:
        conn.execute(campaigns.update().where(campaigns.c.id == stopped).values(status=INCOMPLETE))

    page = site.get("/")
    assert page.status_code == 200
    assert slugs_in(page.text) == ["third-issue", "second-issue", "first-issue"]
    assert "Second &amp; more" in page.text
    assert "November 15, 2024" in page.text  # in the publication's time zone
    assert '<link rel="alternate" type="application/atom+xml"' in page.text


def test_an_empty_archive(site: Running) -> None:
    page = site.get("/")
    assert page.status_code == 200 and "No issues yet" in page.text
    feed = ET.fromstring(site.get("/feed.xml").content)
    assert feed.findall(f"{ATOM}entry") == []


def test_the_web_version_has_no_personal_data(
    pub: Publication, store: Store, site: Running, smtp_server: SmtpServer
) -> None:
    three_issues(pub, store)
    response = site.get("/issues/second-issue")
    assert response.status_code == 200
    page = response.text
    assert "Second &amp; more" in page
    config = pub.config()
    personal = [config.sample.email, config.sample.name, "/unsubscribe/", "__nlslot_"]
    for reader in READERS:
        personal += [reader.email, reader.name, tokens.Signer(SECRET).sign(reader.email)]
    for text in personal:
        assert text not in page, text
    # The slots read sensibly for anyone.
    assert "Hi there," in page
    assert "You are receiving this at your email address because you subscribed" in page
    assert f'href="{BASE_URL}/unsubscribe"' in page  # the page that says how
    # Readers got the same issue, with their own data where the page has neutral words.
    html = smtp_server.received[0].parse().get_body(("html",)).get_content()
    assert READERS[0].email in html or READERS[1].email in html
    assert "script-src" not in response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


def test_view_in_browser_link_of_a_message_is_the_web_version(
    pub: Publication, store: Store, site: Running, smtp_server: SmtpServer
) -> None:
    three_issues(pub, store)  # the second issue goes out last
    html = smtp_server.received[-1].parse().get_body(("html",)).get_content()
    [link] = re.findall(r'<a href="([^"]+)"[^>]*>View in browser</a>', html)
    assert link == tokens.view_online_url(pub.config(), "second-issue")
    served = site.get(link)
    assert served.status_code == 200
    assert served.content == site.get("/issues/second-issue/").content


def test_unknown_issues_are_not_found(pub: Publication, store: Store, site: Running) -> None:
    three_issues(pub, store)
    for path in ("/issues/no-such-issue", "/issues/..%2f..%2fetc%2fpasswd", "/issues/UPPER"):
        assert site.get(path).status_code == 404, path


def test_feed_is_atom_with_an_entry_per_issue(
    pub: Publication, store: Store, site: Running
) -> None:
    three_issues(pub, store)
    response = site.get("/feed.xml")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/atom+xml")
    feed = ET.fromstring(response.content)
    assert feed.tag == f"{ATOM}feed"
    assert feed.findtext(f"{ATOM}title") == "Hello Shuttle News Briefing"
    assert feed.findtext(f"{ATOM}id") == f"{BASE_URL}/"
    self_link = [e.get("href") for e in feed.findall(f"{ATOM}link") if e.get("rel") == "self"]
    assert self_link == [f"{BASE_URL}/feed.xml"]
    assert dt.datetime.fromisoformat(feed.findtext(f"{ATOM}updated") or "") == utc(15) + (
        dt.timedelta(minutes=3)
    )
    entries = [
        (
            e.findtext(f"{ATOM}title"),
            e.find(f"{ATOM}link").get("href"),  # type: ignore[union-attr]
            dt.datetime.fromisoformat(e.findtext(f"{ATOM}updated") or ""),
            dt.datetime.fromisoformat(e.findtext(f"{ATOM}published") or ""),
        )
        for e in feed.findall(f"{ATOM}entry")
    ]
    done = dt.timedelta(minutes=3)
    assert entries == [
        ("Third, latest", f"{BASE_URL}/issues/third-issue", utc(15) + done, utc(15)),
        ("Second & more", f"{BASE_URL}/issues/second-issue", utc(8) + done, utc(8)),
        ("First: hello", f"{BASE_URL}/issues/first-issue", utc(1) + done, utc(1)),
    ]
    summary = feed.find(f"{ATOM}entry").findtext(f"{ATOM}summary")  # type: ignore[union-attr]
    assert summary and summary.startswith("The evolving battlefield dynamics")


def run_cli(pub: Publication, monkeypatch: pytest.MonkeyPatch, *args: str) -> Result:
    for name, value in pub.env.items():
        monkeypatch.setenv(name, value)
    return CliRunner().invoke(cli, ["--config", str(pub.config_path), *args])


def test_static_export_equals_the_served_pages(
    pub: Publication,
    store: Store,
    site: Running,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    three_issues(pub, store)
    out = tmp_path / "public"
    result = run_cli(pub, monkeypatch, "archive", "export", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"3 issue(s), 6 files written to {out}"
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == [
        "feed.xml",
        "index.html",
        "issues/first-issue/index.html",
        "issues/second-issue/index.html",
        "issues/third-issue/index.html",
        "site.css",
    ]
    for name in files:
        url_path = "/" + name.removesuffix("index.html")
        served = site.get(url_path)
        assert served.status_code == 200, url_path
        assert served.content == (out / name).read_bytes(), name
    # The URL every message carries (no trailing slash) is the same page.
    assert (
        site.get("/issues/first-issue").content
        == (out / "issues/first-issue/index.html").read_bytes()
    )
    # Exporting again over the same folder is fine and changes nothing.
    before = {name: (out / name).read_bytes() for name in files}
    assert run_cli(pub, monkeypatch, "archive", "export", str(out)).exit_code == 0
    assert {name: (out / name).read_bytes() for name in files} == before


def test_export_writes_all_files_or_none(
    pub: Publication,
    store: Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    three_issues(pub, store)
    out = tmp_path / "public"
    out.mkdir()
    (out / "issues").write_text("a file where the issues folder goes")
    result = run_cli(pub, monkeypatch, "archive", "export", str(out))
    assert result.exit_code == 1
    assert "Traceback" not in result.output and len(result.stderr.splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["issues"]  # no index.html, no temp files


def test_the_archive_needs_base_url(pub: Publication, store: Store) -> None:
    config = pub.config(NEWSLETTER_PUBLICATION_BASE_URL="")
    with pytest.raises(NewsletterError, match=r"\[publication\] base_url is empty"):
        archive.Archive(store, config)
