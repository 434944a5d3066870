"""The RFC 5322 message: built once per issue, personalised per recipient by filling slots.

The stdlib email package builds and serialises the skeleton once (headers,
multipart/alternative, boundaries). Building an EmailMessage costs about 2 ms,
so it never happens per recipient: `MessageTemplate.render` only fills the
HTML and text slots, quoted-printable encodes the two bodies (binascii, in C)
and joins them with the per-recipient header lines (To, Date, Message-ID,
List-Unsubscribe) into the prebuilt bytes.
"""

from __future__ import annotations

import binascii
import email.policy
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from email.header import Header
from email.message import EmailMessage
from email.utils import formataddr, formatdate, parseaddr
from typing import Protocol
from urllib.parse import quote

from newsletter.errors import NewsletterError
from newsletter.render import SlotTemplate, has_slots

_PERSONAL = "X-Newsletter-Personal"
_BODY = re.compile(rb"__nlbody_(text|html)__\r?\n")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def check_header_value(name: str, value: str) -> str:
    """Refuse a header value with CR or LF: it would start a header of its own."""
    if "\r" in value or "\n" in value:
        raise NewsletterError(f"header {name}: value contains a line break: {value!r}")
    return value


NAME_MAX = 100


def clean_display_name(name: str) -> str:
    """A subscriber's name as data: control characters (CR, LF, ...) become spaces,
    and it is cut to NAME_MAX characters (it goes into the To: header)."""
    return " ".join(_CONTROL.sub(" ", name).split())[:NAME_MAX].strip()


def format_to(email: str, name: str) -> str:
    """The To: value: RFC 2047 for a non-ASCII name, folded with CRLF, never a bare LF."""
    if not name:
        return email
    if name.isascii():
        return formataddr((name, email))
    encoded = Header(name, "utf-8").encode(linesep="\r\n")
    return f"{encoded} <{email}>"


class Signer(Protocol):
    """Signs a finished message (DKIM), returning it with the signature header added."""

    def sign(self, message: bytes) -> bytes: ...


@dataclass(frozen=True)
class Envelope:
    """The per-issue header values."""

    from_addr: str
    subject: str
    reply_to: str = ""
    list_id: str = ""
    list_name: str = ""


class MessageTemplate:
    """One issue's message with slots; `render` makes the bytes for one recipient."""

    def __init__(
        self,
        envelope: Envelope,
        html: SlotTemplate,
        text: SlotTemplate,
        dkim: Signer | None = None,
    ) -> None:
        for name, value in (
            ("From", envelope.from_addr),
            ("Subject", envelope.subject),
            ("Reply-To", envelope.reply_to),
            ("List-Id", envelope.list_id),
        ):
            check_header_value(name, value)
        self.envelope = envelope
        self.dkim = dkim
        self.html = html
        self.text = text
        self.domain = parseaddr(envelope.from_addr)[1].rpartition("@")[2] or "localhost"
        self.from_address = parseaddr(envelope.from_addr)[1]

        msg = EmailMessage(policy=email.policy.SMTP)
        msg["From"] = envelope.from_addr
        msg["Subject"] = envelope.subject
        if envelope.reply_to:
            msg["Reply-To"] = envelope.reply_to
        if envelope.list_id:
            msg["List-Id"] = (
                f"{envelope.list_name} <{envelope.list_id}>"
                if envelope.list_name
                else f"<{envelope.list_id}>"
            )
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        msg[_PERSONAL] = "1"
        msg.set_content("__nlbody_text__\n", subtype="plain", charset="utf-8", cte="7bit")
        msg.add_alternative("__nlbody_html__\n", subtype="html", charset="utf-8", cte="7bit")
        for part in msg.iter_parts():
            part.replace_header("Content-Transfer-Encoding", "quoted-printable")
        skeleton = msg.as_bytes()

        head, sep, rest = skeleton.partition(f"{_PERSONAL}: 1\r\n".encode())
        if not sep:  # pragma: no cover - the stdlib always writes it this way
            raise AssertionError("personal header marker not found in the skeleton")
        pieces = _BODY.split(rest)
        # pieces: [between headers and text body, "text", between, "html", tail]
        if len(pieces) != 5 or pieces[1] != b"text" or pieces[3] != b"html":
            raise AssertionError("body markers not found in the skeleton")  # pragma: no cover
        self._head = head
        self._before_text = pieces[0]
        self._before_html = pieces[2]
        self._tail = pieces[4]
        self._text_qp = _QuotedPrintableBody(text)
        self._html_qp = _QuotedPrintableBody(html)

    def render(
        self,
        to_email: str,
        to_name: str,
        values: Mapping[str, str],
        unsubscribe_token: str,
        date: str | None = None,
    ) -> bytes:
        """The complete message for one recipient, CRLF line endings, ready for SMTP DATA.

        `values` fills the slots and must hold "unsubscribe_url", which also goes
        into List-Unsubscribe (RFC 2369/8058) beside a mailto fallback.
        """
        check_header_value("To", to_email)
        url = check_header_value("List-Unsubscribe", values["unsubscribe_url"])
        mailto = f"mailto:{self.from_address}?subject=unsubscribe%20{quote(unsubscribe_token)}"
        name = clean_display_name(to_name)
        to = format_to(to_email, name)
        personal = (
            f"To: {to}\r\n"
            f"Date: {date or formatdate(usegmt=True)}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@{self.domain}>\r\n"
            f"List-Unsubscribe: <{url}>,\r\n <{mailto}>\r\n"
        ).encode()
        text = self._text_qp.fill(values)
        html = self._html_qp.fill(values)
        message = b"".join(
            (
                self._head,
                personal,
                self._before_text,
                text,
                b"\r\n",
                self._before_html,
                html,
                b"\r\n",
                self._tail,
            )
        )
        return self.dkim.sign(message) if self.dkim is not None else message


class _QuotedPrintableBody:
    """A body part, quoted-printable encoded once except for the lines that hold slots.

    Quoted-printable encodes each line on its own (soft breaks never cross a
    line end), so the lines without slots are encoded here, once per issue;
    per recipient only the few lines with slots are filled and encoded.
    """

    def __init__(self, template: SlotTemplate) -> None:
        self.pieces: list[bytes | SlotTemplate] = []
        plain: list[str] = []
        lines = template.source.replace("\r\n", "\n").split("\n")
        if lines[-1] == "":
            lines.pop()  # the final line break is the skeleton's, before the boundary
        for line in lines:
            if has_slots(line):
                if plain:
                    self.pieces.append(_qp("\n".join(plain)))
                    plain = []
                self.pieces.append(template.derive(line))
            else:
                plain.append(line)
        if plain:
            self.pieces.append(_qp("\n".join(plain)))

    def fill(self, values: Mapping[str, str]) -> bytes:
        return b"\r\n".join(
            p if isinstance(p, bytes) else _qp(p.fill(values)) for p in self.pieces
        )


def _qp(text: str) -> bytes:
    # b2a_qp takes its soft line break (CRLF or LF) from the data's first line end,
    # so every chunk gets one, removed again after encoding.
    data = (text.replace("\n", "\r\n") + "\r\n").encode("utf-8")
    return binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)[:-2]
