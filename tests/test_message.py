"""The RFC 5322 message: what `build` writes as .eml and what every recipient gets."""

from __future__ import annotations

import binascii
import datetime as dt
import email.policy
import os
import random
import re
import threading
import types
from email.parser import BytesParser
from email.utils import formatdate, parseaddr

import pytest

from newsletter import config, tokens
from newsletter.errors import NewsletterError
from newsletter.issue import publish
from newsletter.issue.render import html_slots, marker, text_slots
from newsletter.mail import message
from newsletter.mail.message import Envelope, MessageTemplate

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
    assert (
        tokens.Signer(b"test-secret-not-for-production-0123456789").verify(token)
        == "reader@example.com"
    )
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


# One of each kind the header rule refuses (config.HEADER_FORBIDDEN): C0, DEL, C1 (NEL), Zl, Zp.
NOT_IN_A_HEADER = [
    "\t",
    "\x00",
    "\x0b",
    "\x0c",
    "\x1c",
    "\x1e",
    "\x7f",
    "\x85",
    "\u2028",
    "\u2029",
]


@pytest.mark.parametrize("char", NOT_IN_A_HEADER)
def test_check_header_value_follows_the_config_rule(char):
    value = f"a@example.com{char}Bcc: x@example.com"
    with pytest.raises(NewsletterError) as info:
        message.check_header_value("To", value)
    assert str(info.value).startswith(f"header To: {config.header_value_problem(value)}")
    assert message.check_header_value("To", "Zoë <a@example.com>") == "Zoë <a@example.com>"


@pytest.mark.parametrize("char", ["\x0b", "\x85", "\u2028"])
def test_a_recipient_address_with_a_control_character_is_refused(template, char):
    personalizer, tpl = template
    values, token = personalizer.values("a@example.com", "A")
    with pytest.raises(NewsletterError, match=f"header To: .*U\\+{ord(char):04X}"):
        tpl.render(f"a@example.com{char}Bcc: x@example.com", "A", values, token)


@pytest.mark.parametrize("char", ["\x0b", "\x85", "\u2028", "\u2029"])
def test_an_unsubscribe_link_with_a_control_character_is_refused(template, char):
    personalizer, tpl = template
    values, token = personalizer.values("a@example.com", "A")
    values = {**values, "unsubscribe_url": values["unsubscribe_url"] + char}
    with pytest.raises(NewsletterError, match="header List-Unsubscribe: must not contain"):
        tpl.render("a@example.com", "A", values, token)


@pytest.mark.parametrize("char", NOT_IN_A_HEADER)
def test_a_display_name_loses_every_character_a_header_refuses(template, char):
    assert message.clean_display_name(f"Bob{char}Smith{char}") == "Bob Smith"
    raw = render_for(template, "bob@example.com", f"Bob{char}Bcc: victim@example.com")
    to = parse(raw)["To"]
    assert to.addresses[0].display_name == "Bob Bcc: victim@example.com"
    assert config.header_value_problem(str(to)) is None


def test_a_display_name_keeps_ordinary_unicode():
    assert message.clean_display_name("Zoë\u00a0Ångström 東京") == "Zoë Ångström 東京"


def test_the_sender_domain_names_the_message_id(template):
    _, tpl = template
    assert parseaddr(tpl.envelope.from_addr)[1].endswith("@" + tpl.domain)


# The bodies against a straightforward reference: the whole filled body through
# binascii.b2a_qp (render encodes only the slot lines' values, see message.py).

ENVELOPE = Envelope("News <news@example.com>", "Hello", list_id="list.example.com")
SLOTS = ("name", "email", "unsubscribe_url", "view_online_url", "link0")


def values_for(**given: str) -> dict[str, str]:
    base = {
        "name": "Kim",
        "email": "kim@example.com",
        "unsubscribe_url": "https://example.com/u/abc",
        "view_online_url": "https://example.com/v/1?a=1&b=2",
        "link0": "https://example.com/c/xyz",
    }
    return base | given


def reference_body(source: str, values: dict[str, str], *, html: bool) -> bytes:
    """The part's body as b2a_qp encodes the whole filled template (CRLF line ends)."""
    source = source.replace("\r\n", "\n")
    body = (html_slots if html else text_slots)(source).fill(values)
    if source.endswith("\n"):
        body = body[:-1]  # the skeleton has the final line break before the boundary
    data = (body.replace("\n", "\r\n") + "\r\n").encode()
    return binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)


def body_parts(raw: bytes) -> list[bytes]:
    """The text and the html part's bodies as bytes (the CRLF before a boundary is its own)."""
    boundary = re.search(rb'boundary="([^"]+)"', raw).group(1)
    sections = raw.split(b"\r\n--" + boundary)
    assert len(sections) == 4  # preamble, text, html, the closing "--"
    return [section.split(b"\r\n\r\n", 1)[1] for section in sections[1:3]]


def assert_bodies_match(html: str, text: str, all_values: list[dict[str, str]]) -> None:
    template = MessageTemplate(ENVELOPE, html_slots(html), text_slots(text))
    for values in all_values:
        raw = template.render("kim@example.com", "Kim", values, "token")
        assert body_parts(raw) == [
            reference_body(text, values, html=False),
            reference_body(html, values, html=True),
        ], (html, text, values)


TRICKY_VALUES = [
    values_for(),
    values_for(name="Zoë Ångström-Müller 😀"),
    values_for(name='O\'Brien & <Sons> "quoted"', email="a=b@example.com"),
    values_for(name="trailing space ", email="trailing\ttab\t"),
    values_for(name=".", email=""),
    values_for(name="", link0="=" * 100),
    values_for(view_online_url="https://example.com/" + "x" * 150 + "?q=é&r=" + "y" * 80),
    values_for(name="a\x00b\x7f\x01c", email="\rcr"),
    values_for(name="two\nlines", email="crlf\r\nin it "),  # the plain path
    values_for(name=" " * 80, email="\t" * 3),
]

TRICKY_TEXT = (
    "View in your browser: __nlslot_view_online_url__\n"
    "\n"
    "Hi __nlslot_name__\n"
    "__nlslot_name__\n"
    "Trailing space in the template __nlslot_name__, and after it: \n"
    "Tab\t__nlslot_email__\t\n"
    "An = sign, and 50 % = half: __nlslot_link0__ ... " + "z" * 60 + "\n" + "." * 3 + "\n"
    ".__nlslot_name__\n"
    "__nlslot_name__.\n"
    "Non-ASCII · literal text, €: __nlslot_name__ é" + "é" * 40 + "\n"
    "Line without slots, long and ending in a space " + "w" * 80 + " \n"
    "Unsubscribe: __nlslot_unsubscribe_url__\n"
)

TRICKY_HTML = (
    '<p style="margin:0; color:#4b5563">Hi __nlslot_name__,</p>\n'
    '<a class="button" href="__nlslot_link0__" style="display:inline-block; '
    'padding:10px 20px; background-color:#0b5cad">Book a ride</a>\n'
    "You are receiving this at __nlslot_email__ because you subscribed.<br>\n"
    '<a href="__nlslot_view_online_url__">View in browser</a> · '
    '<a href="__nlslot_unsubscribe_url__">Unsubscribe</a><br> \n'
    "<td>__nlslot_name__</td>\t\n"
    "__nlslot_email__"
)


def test_the_bodies_are_b2a_qp_of_the_filled_templates():
    assert_bodies_match(TRICKY_HTML, TRICKY_TEXT, TRICKY_VALUES)


@pytest.mark.parametrize("width", range(68, 80))
@pytest.mark.parametrize("unit", ["a", "é", "=", " ", "\t", "."])
def test_soft_line_breaks_fall_where_b2a_qp_puts_them(width, unit):
    """Encoded units ("=XX") straddling the 76th column, from a value or the template."""
    lines = [
        "a" * (width - 3) + "__nlslot_name__" + unit * 3 + "b",
        "__nlslot_name__" + unit + "a" * width,
        "x" * width + unit + "__nlslot_name__",
        unit * width + "__nlslot_name__",
    ]
    source = "\n".join(lines) + "\n"
    values = [values_for(name=name) for name in ("", unit, "é" * 2, unit * width, "=" * 30)]
    assert_bodies_match(source, source, values)


def test_random_bodies_are_b2a_qp_of_the_filled_templates():
    rng = random.Random(1)
    alphabets = [
        ["a", "b", " ", ".", "="],
        ["a", " ", ".", "=", "<", "&", '"', "\t", "é", "x" * 10],
        ["a", " ", "\t", "=", ".", "\x00", "\r", "é", "·", "😀", "&", "'", "\x7f", "=3D"],
    ]

    def text(alphabet: list[str], longest: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, longest)))

    def body(alphabet: list[str]) -> str:
        lines = []
        for _ in range(rng.randint(0, 5)):
            pieces = [text(alphabet, rng.choice([2, 40, 100]))]
            for _ in range(rng.randint(0, 3)):
                pieces += [marker(rng.choice(SLOTS)), text(alphabet, rng.choice([2, 40, 100]))]
            lines.append("".join(pieces))
        return "\n".join(lines) + rng.choice(["\n", "", "\r\n", "\n\n"])

    for _ in range(150):
        alphabet = rng.choice(alphabets)
        all_values = [
            {
                slot: text(alphabet + ["\n"] * (rng.random() < 0.05), rng.choice([1, 10, 80]))
                for slot in SLOTS
            }
            | {"unsubscribe_url": "https://example.com/u/" + text(["a", "="], 20)}
            for _ in range(4)
        ]
        assert_bodies_match(body(alphabet), body(alphabet), all_values)


def test_the_parts_decode_to_the_filled_templates():
    template = MessageTemplate(ENVELOPE, html_slots(TRICKY_HTML), text_slots(TRICKY_TEXT))
    for values in TRICKY_VALUES:
        if any("\r" in value for value in values.values()):
            continue  # a lone CR in a value: the reader's line ending, not a character
        msg = parse(template.render("kim@example.com", "Kim", values, "token"))
        assert msg.defects == []
        text, html = (part.get_content().replace("\r\n", "\n") for part in msg.iter_parts())
        assert text == text_slots(TRICKY_TEXT).fill(values)
        assert html == html_slots(TRICKY_HTML).fill(values) + "\n"


def test_a_body_without_slots_and_an_empty_body():
    for html, text in [("<p>no slots</p>\n", "no slots\n"), ("", "\n"), ("x", "y")]:
        assert_bodies_match(html, text, [values_for()])


# Message-ID and Date.

MESSAGE_ID = re.compile(rb"\r\nMessage-ID: (<[0-9a-f]{32}@example\.com>)\r\n")


def message_id(raw: bytes) -> str:
    return MESSAGE_ID.search(raw).group(1).decode()


def test_message_ids_are_unique_and_valid_across_renders_and_threads():
    template = MessageTemplate(ENVELOPE, html_slots("<p>__nlslot_name__</p>\n"), text_slots("x\n"))
    values = values_for()
    raws = [template.render("a@example.com", "A", values, "t") for _ in range(10_000)]
    found: list[list[bytes]] = [[] for _ in range(8)]

    def render(n: int) -> None:
        found[n] = [template.render("a@example.com", "A", values, "t") for _ in range(1000)]

    threads = [threading.Thread(target=render, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    raws += [raw for part in found for raw in part]
    ids = {message_id(raw) for raw in raws}
    assert len(ids) == len(raws) == 18_000
    # Another template (another issue) in the same process shares none either.
    other = MessageTemplate(ENVELOPE, html_slots("<p>y</p>\n"), text_slots("y\n"))
    assert message_id(other.render("a@example.com", "A", values, "t")) not in ids
    # RFC 5322 msg-id syntax, as the stdlib reads it.
    for raw in raws[::500]:
        header = parse(raw)["Message-ID"]
        assert not header.defects
        assert str(header) == message_id(raw)
    for msg_id in list(ids)[::20]:
        assert not email.policy.default.header_factory("Message-ID", msg_id).defects


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
def test_a_forked_process_gets_other_message_ids():
    template = MessageTemplate(ENVELOPE, html_slots("<p>x</p>\n"), text_slots("x\n"))
    values = values_for()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, template.render("a@example.com", "A", values, "t"))
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    parent = [template.render("a@example.com", "A", values, "t") for _ in range(3)]
    child_id = message_id(child)
    assert child_id not in {message_id(raw) for raw in parent}
    assert child_id[1:21] != message_id(parent[0])[1:21]  # another random prefix


def test_the_date_can_be_given():
    template = MessageTemplate(ENVELOPE, html_slots("<p>x</p>\n"), text_slots("x\n"))
    date = "Mon, 25 Nov 2024 08:00:00 +0100"
    raw = template.render("a@example.com", "A", values_for(), "t", date=date)
    assert b"\r\nDate: Mon, 25 Nov 2024 08:00:00 +0100\r\n" in raw
    assert parse(raw)["Date"].datetime == dt.datetime(
        2024, 11, 25, 8, tzinfo=dt.timezone(dt.timedelta(hours=1))
    )


def test_the_default_date_is_now_and_follows_the_clock(monkeypatch):
    template = MessageTemplate(ENVELOPE, html_slots("<p>x</p>\n"), text_slots("x\n"))

    def date_at(now: float) -> str:
        monkeypatch.setattr(message, "time", types.SimpleNamespace(time=lambda: now))
        raw = template.render("a@example.com", "A", values_for(), "t")
        return re.search(rb"\r\nDate: ([^\r]*)\r\n", raw).group(1).decode()

    assert date_at(1_700_000_000.2) == formatdate(1_700_000_000, usegmt=True)
    assert date_at(1_700_000_000.9) == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert date_at(1_700_000_001.0) == "Tue, 14 Nov 2023 22:13:21 GMT"
    assert date_at(1_600_000_000.5) == "Sun, 13 Sep 2020 12:26:40 GMT"
    monkeypatch.undo()
    got = parse(template.render("a@example.com", "A", values_for(), "t"))["Date"].datetime
    assert abs(got - dt.datetime.now(dt.UTC)) < dt.timedelta(seconds=5)
