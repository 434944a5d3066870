"""Reading a message as a reader's mail program shows it: its HTML and plain-text
parts, its headers, and the inbox line (the first words of the HTML)."""

from __future__ import annotations

import email.policy
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import parseaddr, parsedate_to_datetime

import lxml.html
from lxml.etree import ParserError

from newsletter.issue.check import Finding


@dataclass(frozen=True)
class InboxRow:
    """The message as a mail client lists it."""

    sender: str
    address: str
    subject: str
    preheader: str
    date: str


def short_date(value: str) -> str:
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return value
    return f"{when:%b} {when.day}, {when:%H:%M}"


@dataclass(frozen=True)
class Rendering:
    """One message as readers get it: both parts, its headers and, for an issue, the checks."""

    html: str
    text: str
    headers: tuple[tuple[str, str], ...]
    inbox: InboxRow
    findings: tuple[Finding, ...] | None  # None: not checked (a captured message)

    @property
    def errors(self) -> int:
        return sum(f.level == "error" for f in self.findings or ())

    @property
    def warnings(self) -> int:
        return sum(f.level != "error" for f in self.findings or ())

    @property
    def html_bytes(self) -> int:
        return len(self.html.encode("utf-8"))


def read_message(raw: bytes, html: str | None = None, text: str | None = None) -> Rendering:
    """A Rendering of an RFC 5322 message; `html`/`text` override the parts read from it."""
    msg = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    if html is None:
        html = _part(msg, "html")
    if text is None:
        text = _part(msg, "plain")
    headers = tuple((name, " ".join(str(value).split())) for name, value in msg.items())
    name, address = parseaddr(str(msg.get("From", "")))
    inbox = InboxRow(
        sender=name or address,
        address=address,
        subject=str(msg.get("Subject", "")),
        preheader=preview_text(html) or " ".join(text.split())[:140],
        date=short_date(str(msg.get("Date", ""))),
    )
    return Rendering(html=html, text=text, headers=headers, inbox=inbox, findings=None)


def _part(msg: EmailMessage, subtype: str) -> str:
    part = msg.get_body(preferencelist=(subtype,))
    if part is None:
        return ""
    content = part.get_content()
    if isinstance(content, bytes):
        content = content.decode("utf-8", "replace")
    # Serialised messages carry CRLF; the parts are shown (and built) with LF.
    return str(content).replace("\r\n", "\n")


def preview_text(html: str, limit: int = 140) -> str:
    """The text a mail client shows after the subject: the first text of the body.

    That is the preheader when the template starts with one, and whatever follows
    it when it is short, as in a real inbox.
    """
    if not html.strip():
        return ""
    try:
        doc = lxml.html.document_fromstring(html)
    except (ParserError, ValueError):
        return ""
    for element in doc.xpath("//head|//style|//script|//title"):
        element.drop_tree()
    text = " ".join(doc.text_content().replace("\u200c", "").replace("\u034f", "").split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text
