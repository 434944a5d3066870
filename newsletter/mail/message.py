"""The RFC 5322 message: built once per issue, personalised per recipient by filling slots.

The stdlib email package builds and serialises the skeleton once (headers,
multipart/alternative, boundaries). Building an EmailMessage costs about 2 ms,
so it never happens per recipient: `MessageTemplate.render` only fills the
HTML and text slots and joins them with the per-recipient header lines (To,
Date, Message-ID, List-Unsubscribe) into the prebuilt bytes.

Both bodies are quoted-printable, byte for byte what `binascii.b2a_qp` makes
of the filled body. The lines without slots are encoded once per issue, and so
are the literal pieces of the lines with slots. Per recipient only the slot
values are encoded (a printable ASCII value only has its "=" to encode), and the
slot lines get b2a_qp's line rules (soft line breaks, a space at the end) from
a few string operations, all lines at once: b2a_qp itself costs about 11 ns a
byte, some 15 us a message for the 1.3 KB of slot lines of the sample issue.
A value with a line break takes the plain path: fill each slot line, b2a_qp it.

The Date header is formatted once a second, and the Message-ID is a random
prefix (per process) and a counter, not a uuid4 (a getrandom call each).
"""

from __future__ import annotations

import binascii
import email.policy
import functools
import itertools
import operator
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.header import Header
from email.message import EmailMessage
from email.utils import formataddr, formatdate, parseaddr
from typing import Protocol
from urllib.parse import quote

from newsletter.errors import NewsletterError
from newsletter.issue.render import SlotTemplate, has_slots, marker, text_slots

_PERSONAL = "X-Newsletter-Personal"
_BODY = re.compile(rb"__nlbody_(text|html)__\r?\n")
# One rule for every header value, config's: what newsletter.toml and an issue's subject
# may not hold, a recipient's address, name or unsubscribe link may not hold either.
from newsletter.config import HEADER_FORBIDDEN as _CONTROL  # noqa: E402
from newsletter.config import header_value_problem  # noqa: E402


def check_header_value(name: str, value: str) -> str:
    """Refuse a header value with a control character or a line or paragraph separator:
    CR or LF would start a header of its own (see config.HEADER_FORBIDDEN)."""
    problem = header_value_problem(value)
    if problem:
        raise NewsletterError(f"header {name}: {problem}: {value!r}")
    return value


NAME_MAX = 100


def clean_display_name(name: str) -> str:
    """A subscriber's name as data: what no header value may hold (controls, C1's NEL,
    U+2028/U+2029) becomes a space, and it is cut to NAME_MAX characters (it goes into To:)."""
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
    # Gmail's feedback loop reports complaints per these identifiers: campaign:issue:...
    feedback_id: str = ""


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
            ("Feedback-ID", envelope.feedback_id),
        ):
            check_header_value(name, value)
        self.envelope = envelope
        self.dkim = dkim
        self.html = html
        self.text = text
        self.domain = parseaddr(envelope.from_addr)[1].rpartition("@")[2] or "localhost"
        self.from_address = parseaddr(envelope.from_addr)[1]
        # A subject with merge fields is a per-recipient header, filled like the bodies.
        self._subject = text_slots(envelope.subject) if has_slots(envelope.subject) else None

        msg = EmailMessage(policy=email.policy.SMTP)
        msg["From"] = envelope.from_addr
        if self._subject is None:
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
        if envelope.feedback_id:
            msg["Feedback-ID"] = envelope.feedback_id
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
        text_body = _QuotedPrintableBody(text)
        html_body = _QuotedPrintableBody(html)
        self._slot_lines = _SlotLines((text_body, html_body))
        # The message is frame[0] + To..List-Unsubscribe + frame[2] + slot line 0 +
        # frame[4] + slot line 1 + ...: the constant bytes, ready to join.
        constants = [pieces[0]]
        for body, after in ((text_body, pieces[2]), (html_body, pieces[4])):
            constants[-1] += body.between[0]
            constants += body.between[1:]
            constants[-1] += b"\r\n" + after
        self._frame = [head]
        for constant in constants:
            self._frame += (b"", constant)

    @property
    def slots(self) -> set[str]:
        """Every slot the message fills: its bodies' and its subject's."""
        subject = self._subject.slots if self._subject is not None else set()
        return self.html.slots | self.text.slots | subject

    def subject(self, values: Mapping[str, str]) -> str:
        """The Subject for these slot values: a value's line breaks and controls are
        spaces (a header is one line, RFC 5322 section 2.2)."""
        if self._subject is None:
            return self.envelope.subject
        subject = self._subject.fill(values)
        if subject.isprintable():  # no control, no line or paragraph separator
            return subject.strip()  # an empty value at either end leaves a space
        return " ".join(_CONTROL.sub(" ", subject).split())

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
        into List-Unsubscribe (RFC 2369/8058) beside a mailto fallback. `date` is
        the Date header's value; by default, now.
        """
        check_header_value("To", to_email)
        url = check_header_value("List-Unsubscribe", values["unsubscribe_url"])
        mailto = f"mailto:{self.from_address}?subject=unsubscribe%20{quote(unsubscribe_token)}"
        name = clean_display_name(to_name)
        to = format_to(to_email, name)
        prefix, counter = _message_ids
        personal = (
            (_subject_header(self.subject(values)) if self._subject is not None else "")
            + f"To: {to}\r\n"
            f"Date: {date or _now()}\r\n"
            f"Message-ID: <{prefix}{next(counter):012x}@{self.domain}>\r\n"
            f"List-Unsubscribe: <{url}>,\r\n <{mailto}>\r\n"
        ).encode()
        frame = self._frame.copy()
        frame[1] = personal
        frame[3::2] = self._slot_lines.encode(values)
        message = b"".join(frame)
        return self.dkim.sign(message) if self.dkim is not None else message


def _subject_header(subject: str) -> str:
    """The Subject line as the skeleton's would be: the email package's header and
    policy, RFC 2047 encoded words for non-ASCII and folding (RFC 5322 section 2.2.3).

    A printable ASCII subject that fits on one line (78 characters, section 2.1.1)
    and holds no "=?" (which the package would read as an encoded word) is written as
    it is, as the package writes it: its header and fold cost some 40 us a call.
    """
    if (
        0 < len(subject) <= _SUBJECT_FITS
        and subject.isascii()
        and subject.isprintable()
        and "=?" not in subject
    ):
        return f"Subject: {subject}\r\n"
    return _folded_subject(subject)


_SUBJECT_FITS = 78 - len("Subject: ")


@functools.lru_cache(maxsize=4096)
def _folded_subject(subject: str) -> str:
    # Cached: many recipients share a value (a company, a city).
    header = email.policy.SMTP.header_factory("Subject", subject)
    return header.fold(policy=email.policy.SMTP)


def _now() -> str:
    """formatdate(usegmt=True), formatted once a second.

    The cache is one (second, text) tuple, read and replaced whole, so threads
    at worst format the same second twice, never return another second's text.
    """
    global _date_cache
    now = int(time.time())
    second, text = _date_cache
    if second != now:
        text = formatdate(now, usegmt=True)
        _date_cache = (now, text)
    return text


_date_cache = (-1, "")


def _new_message_ids() -> tuple[str, Iterator[int]]:
    """80 random bits for this process and a counter: a Message-ID's 32 hex digits
    (20 random, 12 counting: 2**48 messages before the ID grows a digit).

    next() on itertools.count is atomic under the GIL, so threads never share a
    number; the random prefix keeps processes (and forks, see below) apart.
    """
    return secrets.token_hex(10), itertools.count()


def _reseed_message_ids() -> None:
    global _message_ids
    _message_ids = _new_message_ids()


_message_ids = _new_message_ids()
if hasattr(os, "register_at_fork"):  # POSIX
    # A forked child would otherwise continue the parent's sequence with its prefix.
    os.register_at_fork(after_in_child=_reseed_message_ids)


class _QuotedPrintableBody:
    """A body part, quoted-printable encoded once except for the lines that hold slots.

    Quoted-printable encodes each line on its own (soft breaks never cross a
    line end), so the lines without slots are encoded here, once per issue;
    per recipient only the few lines with slots are filled and encoded (see
    `_SlotLines`). The encoded body is between[0] + slot line 0 + between[1]
    + ... + between[-1].
    """

    def __init__(self, template: SlotTemplate) -> None:
        self.template = template
        pieces: list[bytes | SlotTemplate] = []
        plain: list[str] = []
        lines = template.source.replace("\r\n", "\n").split("\n")
        if lines[-1] == "":
            lines.pop()  # the final line break is the skeleton's, before the boundary
        for line in lines:
            if has_slots(line):
                if plain:
                    pieces.append(_qp("\n".join(plain)))
                    plain = []
                pieces.append(template.derive(line))
            else:
                plain.append(line)
        if plain:
            pieces.append(_qp("\n".join(plain)))
        # The pieces joined with CRLF, split at the slot lines.
        self.lines: list[SlotTemplate] = []
        self.between = [b""]
        for n, piece in enumerate(pieces):
            if n:
                self.between[-1] += b"\r\n"
            if isinstance(piece, bytes):
                self.between[-1] += piece
            else:
                self.lines.append(piece)
                self.between.append(b"")


class _SlotLines:
    """The lines with slots of both parts, filled and quoted-printable encoded together.

    Each line is kept as its literal pieces, already encoded, and its slot names.
    Per render the values (escaped as each part's template escapes them) are
    encoded: a printable ASCII value only has "=" to encode. Joined with the
    pieces they make each line as b2a_qp's encoded units (one character, or
    "=XX"), which then get b2a_qp's line rules: soft line breaks, a space or
    tab at the end, a lone "." at the start.
    """

    def __init__(self, bodies: Sequence[_QuotedPrintableBody]) -> None:
        self._lines = [line for body in bodies for line in body.lines]
        # Each slot of each part, with the part's escaping: the values, each escaped
        # once, as that part escapes them (a join, cheaper than a SlotTemplate's fill).
        self._values: list[tuple[str, Callable[[str], str]]] = []
        first: dict[tuple[int, str], int] = {}  # (part, slot) -> index among the values
        for n, body in enumerate(bodies):
            names = sorted({name for line in body.lines for name in line.slots})
            escape = body.template.escape or str
            self._values += [(name, escape) for name in names]
            first.update(((n, name), len(first)) for name in names)
        self._value_count = len(first)
        # All the lines, each ending with "\n": the even pieces are encoded literal
        # text, the odd ones slots, filled with the values at `where`.
        pieces = [""]
        where: list[int] = []
        # b2a_qp's rules for a line's first and last character need checking when
        # the line's literal text has such a character there, or a value may.
        self._dots = self._spaces = False
        self._first: list[int] = []  # the slots (indexes into `where`) that start a line
        self._last: list[int] = []  # the slots that end one
        for n, body in enumerate(bodies):
            for line in body.lines:
                slot = {marker(name): name for name in line.slots}
                split = re.split("(" + "|".join(map(re.escape, slot)) + ")", line.source)
                literal = [_qp_units(piece) for piece in split[::2]]
                if not literal[0]:
                    self._first.append(len(where))
                self._dots |= literal[0][:1] == "."
                for piece, name in zip(literal, split[1::2], strict=False):
                    pieces[-1] += piece
                    where.append(first[n, slot[name]])
                    pieces += ("", "")
                if not literal[-1]:
                    self._last.append(len(where) - 1)
                self._spaces |= literal[-1][-1:] in _SPACE
                pieces[-1] += literal[-1] + "\n"
        self._pieces = pieces
        self._pick: Callable[[list[str]], Sequence[str]] = (
            operator.itemgetter(*where) if len(where) > 1 else lambda e: [e[i] for i in where]
        )

    def encode(self, values: Mapping[str, str]) -> list[bytes]:
        """Each slot line filled with `values` and quoted-printable encoded, as b2a_qp would."""
        if not self._lines:
            return []
        joined = "\n".join([escape(values[name]) for name, escape in self._values])
        encoded: list[str | None]
        if joined.isascii() and _PRINTABLE_LINES.fullmatch(joined):
            encoded = list(joined.replace("=", "=3D").split("\n"))
        else:
            # A non-ASCII value (a city, a name) takes b2a_qp, about 1 us; the others
            # keep the cheap way.
            encoded = [
                value.replace("=", "=3D")
                if value.isascii() and value.isprintable()
                else _qp_value(value)
                for value in joined.split("\n")
            ]
        if len(encoded) != self._value_count or None in encoded:
            # A value with a line break: fill and encode each line as it is.
            return [_qp(line.fill(values)) for line in self._lines]
        values_at = self._pick(encoded)  # type: ignore[arg-type]  # no None: checked above
        pieces = self._pieces.copy()
        pieces[1::2] = values_at
        text = "".join(pieces)
        # b2a_qp's rules, on all the lines at once: a lone "." at a line's start
        # (before its end, a CR or a NUL) is encoded; a soft line break ("=" CRLF)
        # goes where the next unit would make the line 76 characters or more,
        # never inside an "=XX"; then a space or tab at the end is encoded, even
        # if that makes the line longer.
        if self._dots or any(not (v := values_at[i]) or v[0] == "." for i in self._first):
            text = _LONE_DOT.sub("=2E", text)
        text = "=\r\n".join(_QP_CHUNK.findall(text))
        if self._spaces or any(not (v := values_at[i]) or v[-1] in _SPACE for i in self._last):
            text = text.replace(" \n", "=20\n").replace("\t\n", "=09\n")
        # Line ends are now "\n=\r\n" (and "\n" at the very end).
        return text[:-1].encode("ascii").split(b"\n=\r\n")


_PRINTABLE_LINES = re.compile(r"[ -~\n]*")
_SPACE = frozenset((" ", "\t"))
_LONE_DOT = re.compile(r"^\.(?=\n|\r|=00)", re.MULTILINE)
# A line's next 73 to 75 characters when more follow (binascii's MAXLINESIZE is
# 76, with the "=" of the soft line break), never cutting an "=XX"; or its rest.
_QP_CHUNK = re.compile(r".{73}(?:[^=\n]{2}|[^=\n](?==)|(?==))(?=.)|.*\n")


def _qp(text: str) -> bytes:
    # b2a_qp takes its soft line break (CRLF or LF) from the data's first line end,
    # so every chunk gets one, removed again after encoding.
    data = (text.replace("\n", "\r\n") + "\r\n").encode("utf-8")
    return binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)[:-2]


def _qp_units(text: str) -> str:
    """`text` (no line break) as b2a_qp encodes it inside a line, soft breaks aside.

    Framed by "x" so that no character is at a line's start or end, where b2a_qp
    has rules of its own; with no line end in the data its soft breaks are "=\n".
    """
    data = b"x" + text.encode("utf-8") + b"x"
    encoded = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
    return encoded.replace(b"=\n", b"")[1:-1].decode("ascii")


def _qp_value(value: str) -> str | None:
    return None if "\n" in value else _qp_units(value)
