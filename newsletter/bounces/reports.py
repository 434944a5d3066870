"""What a mail system's report says about each recipient.

Two machine-readable formats share the multipart/report container (RFC 6522): the
delivery status notification (RFC 3464; report-type=delivery-status), one block of
fields per recipient, and the feedback report of a complaint (RFC 5965, ARF;
report-type=feedback-report). The parts are found by their own content type rather than
by the report-type parameter, which some senders leave out.

Everything here reads a parsed message (the stdlib's compat32 model, which splits a
message/delivery-status part into its blocks of fields) and returns plain values.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses

from newsletter.ledger.bounces import COMPLAINT, HARD, SOFT

# An enhanced status code, class.subject.detail (RFC 3463 section 2): the class is 2, 4
# or 5, subject and detail up to three digits. Not part of a longer dotted number (an
# IP address like 10.4.5.6 holds "4.5.6").
STATUS_CODE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?!\d|\.\d)")

# RFC 5965 section 7.3's registry: the types that mean "a person called this unwanted".
# not-spam (RFC 6430), auth-failure (RFC 6591) and virus are not about the reader's wish.
COMPLAINT_TYPES = ("abuse", "fraud")


@dataclass(frozen=True)
class Failure:
    """What one report says about one recipient."""

    kind: str  # HARD, SOFT or COMPLAINT
    address: str  # "" when the report withholds it (RFC 6590 redaction)
    status_code: str = ""
    diagnostic: str = ""


def text(value: object) -> str:
    """A header value on one line; bytes that were not ASCII read as UTF-8 (RFC 6532)."""
    raw = str(value or "").encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return " ".join(raw.split())


def status_code(value: str) -> str:
    """The first enhanced status code in `value`, or ""."""
    found = STATUS_CODE.search(value)
    return ".".join(found.groups()) if found else ""


def _part(msg: Message, content_type: str) -> Message | None:
    for part in msg.walk():
        if part.get_content_type() == content_type:
            return part
    return None


def delivery_status(msg: Message) -> Message | None:
    """The message/delivery-status part of a DSN, or None."""
    return _part(msg, "message/delivery-status")


def feedback_report(msg: Message) -> Message | None:
    """The message/feedback-report part of an ARF report, or None."""
    return _part(msg, "message/feedback-report")


def _field_blocks(part: Message) -> list[Message]:
    """The blocks of fields of a report part: the parser splits message/delivery-status
    into them, and message/feedback-report into one message; a part it kept as text (an
    unusual transfer encoding) is split here, blocks being separated by blank lines."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    body = part.get_payload(decode=True)
    decoded = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(payload)
    chunks = re.split(r"\r?\n[ \t]*\r?\n", decoded.strip())
    return [HeaderParser().parsestr(chunk) for chunk in chunks if chunk.strip()]


def _recipient(value: object) -> str:
    """The address of an Original-Recipient or Final-Recipient field: "address-type ;
    address" (RFC 3464 section 2.3.1 and 2.3.2). A utf-8 address (RFC 6533 section 3)
    writes a character as \\x{HEX}."""
    kind, semicolon, address = text(value).partition(";")
    if not semicolon:
        address, kind = kind, "rfc822"
    address = address.strip().strip("<>").strip()
    if kind.strip().lower() == "utf-8":
        address = re.sub(r"\\x\{([0-9A-Fa-f]{1,6})\}", lambda m: chr(int(m[1], 16)), address)
    return address if "@" in address else ""


def dsn_failures(part: Message) -> list[Failure]:
    """Each recipient a DSN reports failed or delayed (RFC 3464 section 2.3).

    The first block holds the per-message fields; each further block is one recipient.
    Action failed with a 5.x.x Status is hard; delayed, or failed with a 4.x.x Status (a
    server that gave up retrying a temporary failure), is soft. delivered, relayed and
    expanded are no failure. "error" is not in RFC 3464, but OpenSMTPD writes it for
    failed."""
    failures = []
    for block in _field_blocks(part)[1:]:
        action = text(block.get("Action")).lower()
        code = status_code(text(block.get("Status")))
        if action.startswith("delayed"):
            kind = SOFT
        elif action.startswith(("failed", "error")):
            kind = SOFT if code.startswith("4") else HARD
        else:
            continue
        # Original-Recipient is the address as we gave it in RCPT TO (section 2.3.1); the
        # Final-Recipient may be where a forward led (section 2.3.2).
        address = _recipient(block.get("Original-Recipient")) or _recipient(
            block.get("Final-Recipient")
        )
        # Diagnostic-Code: diagnostic-type ; text (section 2.3.6): the server's own words.
        diagnostic = text(block.get("Diagnostic-Code")).partition(";")
        failures.append(Failure(kind, address, code, (diagnostic[2] or diagnostic[0]).strip()))
    return failures


def feedback_type(part: Message) -> str:
    blocks = _field_blocks(part)
    return text(blocks[0].get("Feedback-Type")).lower() if blocks else ""


def complaints(part: Message, original: Message | None) -> list[Failure]:
    """The complaint an ARF report makes, one per complaining recipient.

    The recipient is the report's Original-Rcpt-To (RFC 5965 section 3.2, may repeat),
    else the To of the original message it carries. Providers often redact both (RFC
    6590); then one complaint with no address is left, for the VERP address to name."""
    blocks = _field_blocks(part)
    fields = blocks[0] if blocks else Message()
    kind = feedback_type(part)
    if kind not in COMPLAINT_TYPES:
        return []
    agent = text(fields.get("User-Agent"))
    diagnostic = f"{kind} ({agent})" if agent else kind
    found = _addresses(fields.get_all("Original-Rcpt-To", []))
    if not found and original is not None:
        found = _addresses(original.get_all("To", []))
    return [Failure(COMPLAINT, a, "", diagnostic) for a in found] or [
        Failure(COMPLAINT, "", "", diagnostic)
    ]


def _addresses(values: Sequence[object]) -> list[str]:
    seen: dict[str, None] = {}
    for _, address in getaddresses([text(v) for v in values]):
        if "@" in address:
            seen.setdefault(address, None)
    return list(seen)


def returned_headers(msg: Message) -> Message | None:
    """The headers of the message a report is about: its message/rfc822 part, or a
    text/rfc822-headers part (RFC 6522 section 4), parsed. None when it has neither."""
    for part in msg.walk():
        content_type = part.get_content_type()
        if content_type == "message/rfc822" and part.is_multipart():
            inner = part.get_payload(0)
            return inner if isinstance(inner, Message) else None
        if content_type == "text/rfc822-headers":
            body = part.get_payload(decode=True)
            if isinstance(body, bytes):
                return HeaderParser().parsestr(body.decode("utf-8", "replace"))
    return None
