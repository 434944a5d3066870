"""The RFC 5322 message: what `build` writes as .eml and what every recipient gets."""

from __future__ import annotations

import email.policy
import re
from email.parser import BytesParser
from email.utils import parseaddr

import pytest

from newsletter import config, publish, tokens
from newsletter.errors import NewsletterError
from newsletter.message import Envelope, MessageTemplate
from newsletter.render import html_slots, text_slots

LINE_MAX = 998


def parse(raw: bytes):
    return BytesParser(policy=email.policy.default).parsebytes(raw)


def parse_file(path):
    """As a mail reader opens an .eml file (line endings become "\\n")."""
    with path.open("rb") as fh:
        return BytesParser(policy=email.policy.default).parse(fh)


@pytest.fixture
def written(publication, sample_issue, run_cli):
    """build -o OUT on the sample: the three paths it printed."""
    out = publication.parent / "out"
    result = run_cli("build", sample_issue, "-o", out)
    assert result.exit_code == 0, result.output
    html, text, eml = (out / name for name in result.stdout.split())
    return html, text, eml


@pytest.fixture
def template(publication, sample_issue):
    cfg = config.load(publication)
    built = publish.build_issue(cfg, publish.load_issue(sample_issue))
    personalizer = publish.Personalizer(cfg, built.issue.slug)
    return personalizer, publish.message_template(cfg, built)


def render_for(template, email_addr: str, name: str) -> bytes:
    personalizer, tpl = template
    values, token = personalizer.values(email_addr, name)
    return tpl.render(email_addr, name, values, token)


def test_the_eml_parses_with_every_required_header(written):
    _, _, eml = written
    raw = eml.read_bytes()
    msg = parse(raw)
    assert msg.defects == []
    assert str(msg["From"]) == "Hello Shuttle News <news@helloshuttle.com>"
    assert str(msg["To"]) == "Alex <reader@example.com>"
    assert msg["Subject"] == (
        "What Motivated Biden to Authorize Ukraine’s Use of ATACMS Against Russia?"
    )
    assert msg["Date"].datetime is not None
    assert re.fullmatch(r"<[0-9a-f]{32}@helloshuttle\.com>", msg["Message-ID"])
    assert msg["MIME-Version"] == "1.0"
    assert msg["Reply-To"] == "editor@helloshuttle.com"
    assert msg["List-Id"] == "Hello Shuttle News Briefing <briefing.news.helloshuttle.com>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    for name in ("From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe"):
        assert len(msg.get_all(name)) == 1, name


def test_list_unsubscribe_has_the_https_link_and_a_mailto(written):
    html, _, eml = written
    msg = parse(eml.read_bytes())
    uris = re.findall(r"<([^>]+)>", str(msg["List-Unsubscribe"]))
    assert len(uris) == 2
    https, mailto = uris
    assert https.startswith("https://news.helloshuttle.com/unsubscribe/")
    # The same signed link as in the body, and it verifies for the sample subscriber.
    assert f'href="{https}"' in html.read_text(encoding="utf-8")
    token = https.rsplit("/", 1)[1]
    assert tokens.Signer(b"test-secret-not-for-production").verify(token) == "reader@example.com"
    assert mailto.startswith("mailto:news@helloshuttle.com?subject=unsubscribe")
    assert token in mailto


def test_the_parts_are_exactly_the_written_files(written):
    html, text, eml = written
    msg = parse_file(eml)
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert all(p.get_content_charset() == "utf-8" for p in parts)
    assert parts[0].get_content() == text.read_text(encoding="utf-8")
    assert parts[1].get_content() == html.read_text(encoding="utf-8")


def test_the_eml_has_crlf_lines_within_the_limit(written):
    _, _, eml = written
    raw = eml.read_bytes()
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= LINE_MAX
    assert raw.endswith(b"\r\n")


@pytest.mark.parametrize(
    "name",
    [
        "Bob\r\nBcc: victim@example.com",
        "Bob\nBcc: victim@example.com",
        "Bob\rBcc: victim@example.com",
        "Bob\r\n\r\n<html>injected body",
    ],
)
def test_a_name_with_a_line_break_adds_no_header(template, name):
    raw = render_for(template, "bob@example.com", name)
    msg = parse(raw)
    assert msg.get_all("Bcc") is None
    assert msg.defects == []
    headers = raw.split(b"\r\n\r\n", 1)[0]
    assert not re.search(rb"\r\n(Bcc|<html>)", headers)
    assert [k for k in msg.keys()] == [k for k in parse(render_for(template, "a@b.c", "A")).keys()]
    assert msg["To"].addresses[0].addr_spec == "bob@example.com"
    assert "Bob" in msg["To"].addresses[0].display_name
    assert len(list(msg.iter_parts())) == 2


def test_a_non_ascii_name_is_encoded_and_decodes_back(template):
    name = "Zoë Ångström-Müller"
    raw = render_for(template, "zoe@example.com", name)
    headers = raw.split(b"\r\n\r\n", 1)[0]
    to_line = next(line for line in headers.split(b"\r\n") if line.startswith(b"To:"))
    assert b"=?utf-8?" in to_line.lower()
    assert headers.isascii()
    address = parse(raw)["To"].addresses[0]
    assert (address.display_name, address.addr_spec) == (name, "zoe@example.com")


def test_a_name_with_specials_is_quoted(template):
    address = parse(render_for(template, "jd@example.com", 'Doe, "J" <x@evil>'))["To"].addresses
    assert len(address) == 1
    assert address[0].addr_spec == "jd@example.com"


@pytest.mark.parametrize("name", ["Zoë Ångström " * 60, "A" * 1200])
def test_no_line_is_over_998_bytes_even_for_a_long_name(template, name):
    raw = render_for(template, "long@example.com", name)
    assert max(len(line) for line in raw.split(b"\r\n")) <= LINE_MAX


def test_every_recipient_gets_a_unique_message_id(template):
    ids = {parse(render_for(template, f"r{n}@example.com", "R"))["Message-ID"] for n in range(50)}
    assert len(ids) == 50


def test_personal_values_reach_both_parts(template):
    msg = parse(render_for(template, "kim@example.com", "Kim"))
    text, html = (p.get_content() for p in msg.iter_parts())
    for part in (text, html):
        assert "Hi Kim," in part
        assert "You are receiving this at kim@example.com" in part
    assert "Alex" not in text + html


def test_an_empty_name_gets_a_greeting_and_a_bare_address(template):
    msg = parse(render_for(template, "anon@example.com", ""))
    assert str(msg["To"]) == "anon@example.com"
    assert "Hi there," in next(msg.iter_parts()).get_content()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("from_addr", "News <n@example.com>\r\nBcc: x@example.com"),
        ("subject", "Hello\nBcc: x@example.com"),
        ("reply_to", "r@example.com\rBcc: x@example.com"),
    ],
)
def test_the_envelope_refuses_line_breaks(field, value):
    envelope = {"from_addr": "News <n@example.com>", "subject": "Hello"} | {field: value}
    with pytest.raises(NewsletterError, match="line break"):
        MessageTemplate(Envelope(**envelope), html_slots("<p>x</p>"), text_slots("x\n"))


def test_a_recipient_address_with_a_line_break_is_refused(template):
    personalizer, tpl = template
    values, token = personalizer.values("a@example.com", "A")
    with pytest.raises(NewsletterError, match="line break"):
        tpl.render("a@example.com\r\nBcc: x@example.com", "A", values, token)


def test_the_sender_domain_names_the_message_id(template):
    _, tpl = template
    assert parseaddr(tpl.envelope.from_addr)[1].endswith("@" + tpl.domain)
