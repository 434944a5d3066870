"""Merge fields: `{{ subscriber.KEY | filter }}` in an issue's body and subject, filled per
recipient from the stored attributes, with the issue still rendered once."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from campaign_support import Publication, make_publication
from smtp_fixtures import SmtpServer

from newsletter import config as config_mod
from newsletter.errors import TemplateError
from newsletter.issue import fields, inline, markdown, publish
from newsletter.ledger import lifecycle
from newsletter.ledger.store import Store, SubscriberRow
from newsletter.send import campaign
from newsletter.web import preview
from newsletter.web.archive import Archive

SUBJECT = 'News for {{ subscriber.company | default("you") }} in {{ subscriber.city }}'
BODY_LINE = (
    'Hello {{ subscriber.company | default("friend") }} from {{ subscriber.city | upper }},'
    ' and {{ subscriber.first_name | default("reader") }}.'
)


def with_fields(issue: Path, subject: str = SUBJECT, line: str = BODY_LINE) -> Path:
    """The sample issue with merge fields in its subject and its body's first line."""
    text = issue.read_text(encoding="utf-8")
    head, sep, body = text.partition("\n---\n")
    head = "\n".join(
        f"subject: {subject}" if row.startswith("subject:") else row for row in head.splitlines()
    )
    issue.write_text(f"{head}{sep}\n{line}\n\n{body}", encoding="utf-8")
    return issue


@pytest.fixture
def pub(tmp_path: Path, database_url: str, smtp_server: SmtpServer) -> Publication:
    publication = make_publication(tmp_path, database_url, smtp_server.port)
    with_fields(publication.issue)
    return publication


SUBSCRIBERS = [
    SubscriberRow("ann@example.com", "Ann Lee", {"company": "<b>&", "City": "Zürich"}),
    SubscriberRow("bob@example.com", "Bob", {"company": "Acme", "city": "Irvine"}),
    SubscriberRow("cat@example.com", ""),  # no attributes at all
]


def send(pub: Publication) -> tuple[Store, str]:
    """A campaign of the issue to SUBSCRIBERS, run; the store and the issue's slug."""
    config = pub.config()
    store = Store.open(config.database_url)
    store.upsert_subscribers(SUBSCRIBERS)
    built = publish.build_issue(config, publish.load_issue(pub.issue))
    result = campaign.run(store, config, lifecycle.create(store, built))
    assert result.ok and result.sent == 3
    return store, built.issue.slug


def test_the_web_version_shows_the_defaults(pub: Publication, smtp_server: SmtpServer) -> None:
    store, slug = send(pub)
    page = Archive(store, pub.config()).web_version(slug)
    assert page is not None
    assert "Hello friend from , and reader." in page.decode("utf-8")
    assert b"__nlslot_" not in page


def test_each_recipient_gets_their_own_fields(pub: Publication, smtp_server: SmtpServer) -> None:
    send(pub)
    got = {r.rcpt_tos[0]: r for r in smtp_server.received}
    assert set(got) == {s.email for s in SUBSCRIBERS}

    ann = got["ann@example.com"]
    msg = ann.parse()
    assert not msg.defects
    # The subject is per recipient, non-ASCII as RFC 2047 encoded words, read back whole.
    assert msg["Subject"] == "News for <b>& in Zürich"
    raw_subject = next(line for line in ann.data.split(b"\r\n") if line.startswith(b"Subject:"))
    assert raw_subject.isascii() and b"=?utf-8?" in raw_subject
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()
    # In HTML the attribute is text, escaped; in the text part it is as stored.
    assert "Hello &lt;b&gt;&amp; from ZÜRICH, and Ann." in html
    assert "<b>&" not in html
    assert "Hello <b>& from ZÜRICH, and Ann." in " ".join(text.split())

    bob = got["bob@example.com"].parse()
    assert bob["Subject"] == "News for Acme in Irvine"
    assert "Hello Acme from IRVINE, and Bob." in bob.get_body(("html",)).get_content()

    cat = got["cat@example.com"].parse()
    # No attributes: the defaults, and an empty value where there is no default.
    assert cat["Subject"] == "News for you in"
    cat_html = cat.get_body(("html",)).get_content()
    assert "Hello friend from , and reader." in cat_html
    # No marker or stand-in is left anywhere.
    for received in smtp_server.received:
        assert b"__nlslot_" not in received.data and b"zqnlfield" not in received.data


def test_the_issue_is_rendered_and_inlined_once(
    pub: Publication, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"inline": 0, "markdown": 0}
    real_inline, real_markdown = inline.inline_css, markdown.to_html

    def counted_inline(html: str) -> str:
        calls["inline"] += 1
        return real_inline(html)

    def counted_markdown(text: str) -> str:
        calls["markdown"] += 1
        return real_markdown(text)

    monkeypatch.setattr(inline, "inline_css", counted_inline)
    monkeypatch.setattr(markdown, "to_html", counted_markdown)
    send(pub)
    assert len(smtp_server.received) == 3
    assert calls == {"inline": 1, "markdown": 1}


def test_a_field_is_a_slot_that_spells_its_expression() -> None:
    field = fields.parse(' subscriber.company | upper | default("the \\"team\\"") ', "x")
    assert field == fields.Field("company", (("upper", ""), ("default", 'the "team"')))
    assert fields.from_slot(field.slot) == field
    assert fields.is_field_slot(field.slot)
    assert field.text == '{{ subscriber.company | upper | default("the \\"team\\"") }}'
    reader = fields.Subscriber("a@example.com", "Ann Lee", '{"Company Name": " Acme "}')
    assert fields.parse("subscriber.company_name|lower", "x").value(reader) == "acme"
    assert fields.parse("subscriber.first_name", "x").value(reader) == "Ann"
    assert fields.parse("subscriber.email|upper", "x").value(reader) == "A@EXAMPLE.COM"
    assert fields.parse("subscriber.name|first_word|title", "x").value(reader) == "Ann"
    assert fields.parse("subscriber.nope|capitalize", "x").value(reader) == ""


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("Hi {{ subscriber.company | shout }}", "unknown filter 'shout'"),
        ("Hi {{ company }}", "expected subscriber.<key>"),
        ("Hi {{ subscriber.company | default }}", "default needs a value"),
        ("Hi {{ subscriber.company | upper(1) }}", "cannot read"),
        ("Hi {{ subscriber.company", "without its closing }}"),
        ("[Hi](https://example.com/?c={{ subscriber.company }})", "not allowed in a link's"),
    ],
)
def test_a_bad_field_is_an_error_naming_file_and_line(
    sample_issue: Path, run_cli, assert_user_error, line: str, needle: str
) -> None:
    with_fields(sample_issue, subject="Plain", line=line)
    body_line = sample_issue.read_text(encoding="utf-8").splitlines().index(line) + 1
    result = run_cli("check", sample_issue)
    message = assert_user_error(result, f"{sample_issue}:{body_line}:", needle)
    assert "merge field" in message


def test_a_bad_field_in_the_subject_names_its_line(sample_issue: Path, run_cli) -> None:
    with_fields(sample_issue, subject="Hi {{ subscriber.x | nope }}", line="Hello")
    line = next(
        n
        for n, row in enumerate(sample_issue.read_text(encoding="utf-8").splitlines(), 1)
        if row.startswith("subject:")
    )
    result = run_cli("check", sample_issue)
    assert result.exit_code != 0
    assert f"{sample_issue}:{line}: merge field" in result.output
    assert "Traceback" not in result.output


def test_build_fields_are_checked_before_markdown(publication: Path, sample_issue: Path) -> None:
    config = config_mod.load(publication)
    issue = with_fields(sample_issue, line="**{{ x }}**")
    with pytest.raises(TemplateError, match="expected subscriber"):
        publish.build_issue(config, publish.load_issue(issue))


def test_check_warns_of_a_field_some_subscribers_have_no_value_for(
    sample_issue: Path, publication: Path, run_cli
) -> None:
    with_fields(sample_issue)
    config = config_mod.load(publication)
    database = config.database_url
    before = run_cli("check", sample_issue)
    # No database yet: nothing to count, and check creates none.
    assert "merge-field" not in before.output and "is empty for" not in before.output
    assert not Path(database.removeprefix("sqlite:///")).exists()

    store = Store.open(database)
    store.upsert_subscribers(SUBSCRIBERS)
    store.upsert_subscribers([SubscriberRow("dan@example.com", "Dan", {"city": "Oslo"})])
    store.set_subscriber_status("dan@example.com", "unsubscribed")  # not counted
    store.close()
    result = run_cli("check", sample_issue)
    warnings = [line for line in result.output.splitlines() if "is empty for" in line]
    # city has no default and cat has none; company and first_name have defaults.
    assert warnings == [next(line for line in warnings if "{{ subscriber.city }}" in line)], (
        result.output
    )
    assert "is empty for 1 of 3 subscriber(s)" in warnings[0]
    assert str(sample_issue) in warnings[0]


SAMPLE_ATTRIBUTES = '\n[sample.attributes]\ncompany = "Sample & Co"\ncity = "Irvine"\n'


@pytest.fixture
def previewed(
    publication: Path, sample_issue: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The preview of an issue with merge fields, served by uvicorn; its URL. The list holds
    SUBSCRIBERS; [sample] has attributes of its own."""
    monkeypatch.setenv("NEWSLETTER_SECRET", "preview-test-secret-0123456789abcdefghij")
    with publication.open("a", encoding="utf-8") as toml:
        toml.write(SAMPLE_ATTRIBUTES)
    with_fields(sample_issue)
    store = Store.open(config_mod.load(publication).database_url)
    store.upsert_subscribers(SUBSCRIBERS)
    store.close()
    srv = preview.server(preview.issue_preview(publication, sample_issue), "127.0.0.1", 0)
    srv.start()
    try:
        yield srv.url
    finally:
        srv.stop()


def get(url: str, path: str, **params: str) -> httpx.Response:
    return httpx.get(url + path.lstrip("/"), params=params, timeout=5.0)


def test_preview_shows_the_samples_values_and_switches_subscriber(previewed: str) -> None:
    page = get(previewed, "/").text
    # The sample's values, from [sample.attributes], in the inbox row, the table and frames.
    assert "News for Sample &amp; Co in Irvine" in page
    assert "<code>{{ subscriber.city }}</code></th><td>Irvine</td>" in page
    assert "data-reader>reader@example.com<" in page
    assert '<option value="ann@example.com">' in page  # the picker lists the subscribers
    frame = get(previewed, "/frame/issue").text
    assert "Hello Sample &amp; Co from IRVINE, and Alex." in frame

    ann = get(previewed, "/", subscriber="ann@example.com").text
    assert "News for &lt;b&gt;&amp; in Zürich" in ann  # the subject, as Ann gets it
    assert "<code>{{ subscriber.city }}</code></th><td>Zürich</td>" in ann
    assert "data-reader>ann@example.com<" in ann
    # The frames and the text link fill the issue for the same subscriber.
    assert 'data-src="/frame/issue?subscriber=ann%40example.com"' in ann
    frame = get(previewed, "/frame/issue", subscriber="ANN@example.com").text
    assert "Hello &lt;b&gt;&amp; from ZÜRICH, and Ann." in frame
    text = get(previewed, "/text/issue", subscriber="ann@example.com").text
    assert "Hello <b>& from ZÜRICH, and Ann." in " ".join(text.split())

    cat = get(previewed, "/", subscriber="cat@example.com").text
    assert '<code>{{ subscriber.city }}</code></th><td><span class="muted">(empty)</span>' in cat

    nobody = get(previewed, "/", subscriber="zed@example.com")
    assert nobody.status_code == 200
    assert "zed@example.com: not in the subscriber list; showing the sample" in nobody.text
    assert "News for Sample &amp; Co in Irvine" in nobody.text


@pytest.mark.parametrize(
    "subject",
    [
        "News for Acme in Irvine",
        "x" * 69,
        "x" * 70,
        "a " * 40 + "end",
        "Zürich & <b>",
        "=?utf-8?q?hi?= there",
        'A: b; c <d@e> "q" (x)',
        "",
    ],
)
def test_a_filled_subject_is_the_header_a_fixed_one_would_be(subject: str) -> None:
    """The per-recipient Subject line is byte for byte what the skeleton writes for the
    same subject (the email package's RFC 2047 encoding and folding)."""
    from newsletter.issue.render import html_slots, marker, text_slots
    from newsletter.mail.message import Envelope, MessageTemplate

    def head(template: MessageTemplate, values: dict[str, str]) -> bytes:
        """The Subject line, with its continuation lines."""
        message = template.render("a@example.com", "", values, "t", date="x")
        header = message.split(b"\r\n\r\n", 1)[0].decode("ascii")
        found = re.search(r"^Subject:.*(?:\r\n[ \t].*)*", header, re.MULTILINE)
        assert found is not None
        return found.group(0).encode("ascii")

    values = {"unsubscribe_url": "https://example.com/u", "email": "a@example.com"}
    body = html_slots("<p>hi</p>\n"), text_slots("hi\n")
    field = fields.Field("subject")
    values[field.slot] = subject
    fixed = MessageTemplate(Envelope("N <n@example.com>", subject), *body)
    filled = MessageTemplate(Envelope("N <n@example.com>", marker(field.slot)), *body)
    assert head(filled, values) == head(fixed, values)
    assert head(filled, values).isascii()


def test_a_test_send_is_filled_as_for_the_sample(
    publication: Path, sample_issue: Path, run_cli
) -> None:
    with publication.open("a", encoding="utf-8") as toml:
        toml.write(SAMPLE_ATTRIBUTES)
    with_fields(sample_issue)
    result = run_cli("send", sample_issue, "--to", "me@example.com", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "me@example.com: would get '[TEST] News for Sample & Co in Irvine'" in result.output


def test_check_without_a_reachable_database_counts_nothing(
    sample_issue: Path, publication: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_fields(sample_issue)
    # Nothing listens on port 9: unreachable, which is no error for check.
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:9/x")
    result = run_cli("check", sample_issue)
    assert result.exit_code == 0, result.output
    assert "is empty for" not in result.output
