"""One message that came back, as bytes, into the Bounce reports it makes: the one code
path for every way in (a Postfix pipe, a file, the IMAP mailbox).

In this order, the first that applies decides:

1. A delivery status notification (RFC 3464): one report per recipient that failed or
   was delayed.
2. A feedback report (RFC 5965, ARF): a complaint, when its Feedback-Type says abuse or
   fraud.
3. An automatic reply, a vacation notice above all (RFC 3834): ignored, never counted.
   It comes after the reports because mail systems mark DSNs auto-replied too.
4. A non-standard bounce (heuristics.py): hard, or soft when the text shows 4.x.x.
5. Anything else (a reader who wrote to the bounce address): ignored.

A report names its campaign and subscriber when the message came back to a VERP address
(tokens.verp_address) this publication signed: the envelope recipient a bounce was
delivered to, or the envelope sender of the message a complaint quotes. A forged or
altered token reads as none, and the report is matched by its address.

Each report's event_key is "<source>:<Message-ID of the report>:<recipient>", so the
same report read twice, by a pipe and by fetch, or by two fetches at once, is one record.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from email import policy
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser
from email.utils import getaddresses

from newsletter.bounces import heuristics, reports
from newsletter.bounces.reports import Failure, text
from newsletter.errors import NewsletterError
from newsletter.ledger.bounces import Bounce
from newsletter.tokens import read_verp

DSN = "dsn"
ARF = "arf"
TEXT = "text"  # a bounce read by heuristics.py

# A message has at least one of these (RFC 5322 section 3.6; trace fields, section 3.6.7,
# and those a delivery agent prepends): what tells a message from any other bytes.
MESSAGE_FIELDS = (
    "from",
    "date",
    "received",
    "return-path",
    "message-id",
    "delivered-to",
    "subject",
    "to",
    "mime-version",
    "content-type",
)

# Where a delivered message says which address it was delivered to: Postfix's pipe and
# local delivery (Delivered-To, X-Original-To), Exim (Envelope-to), others, then To,
# which a DSN sets to the envelope sender of the message it returns.
ENVELOPE_RECIPIENT = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To")

# Senders that are a mail system, not a person: their notices are bounces even when
# marked auto-replied (Exim, Gmail and Postfix mark them so).
MAIL_SYSTEMS = ("mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon")
OUT_OF_OFFICE = re.compile(
    r"out of (the )?office|auto(matic)?[ -]?(reply|response)|autoreply|vacation|away from"
    r"|abwesenheit|automatische antwort|absence|r[ée]ponse automatique",
    re.IGNORECASE,
)
# An event_key longer than the ledger's column is shortened to a hash of itself.
MAX_KEY = 255


class NotMail(NewsletterError):
    """The input is not an email message at all."""


@dataclass(frozen=True)
class Classified:
    """What one message says: its reports, or why it makes none."""

    bounces: tuple[Bounce, ...]
    sender: str  # the address it came from (for a line about an ignored message)
    ignored: str = ""  # why it makes no report: "an automatic reply", "not a bounce"


def classify(raw: bytes, secret: bytes, where: str = "the message") -> Classified:
    """The Bounce reports in `raw`; NotMail when it is not a message at all."""
    msg = parse(raw, where)
    sender = _sender(msg)
    original = reports.returned_headers(msg)
    feedback = reports.feedback_report(msg)
    status = reports.delivery_status(msg)
    if status is not None:
        source, found = DSN, reports.dsn_failures(status)
        if not found:
            return Classified((), sender, "a delivery report with no failure")
    elif feedback is not None:
        source, found = ARF, reports.complaints(feedback, original)
        if not found:
            kind = reports.feedback_type(feedback) or "none"
            return Classified((), sender, f"feedback of type {kind}, not a complaint")
    elif why := automatic_reply(msg):
        return Classified((), sender, why)
    else:
        source, found = TEXT, heuristics.failures(msg)
        if not found:
            return Classified((), sender, "not a bounce")
    pair = verp(msg, secret, feedback, original)
    report_id = _report_id(msg, raw)
    bounces = tuple(_bounce(source, report_id, f, pair) for f in found if f.address or pair)
    if not bounces:
        return Classified((), sender, "a complaint that names no recipient")
    return Classified(bounces, sender)


def parse(raw: bytes, where: str = "the message") -> Message:
    """The message in `raw` (a leading mbox "From " line, as Postfix's pipe writes with
    flags=F, is allowed); NotMail when the bytes are not a message."""
    if not raw.strip():
        raise NotMail(f"{where}: empty, not an email message")
    # compat32: the model that splits message/delivery-status into its blocks of fields,
    # and the one flufl.bounce's detectors are written for.
    msg = BytesParser(policy=policy.compat32).parsebytes(raw)
    if not any(name.lower() in MESSAGE_FIELDS for name in msg.keys()):
        raise NotMail(
            f"{where}: not an email message (no header fields like From, Date or Received)"
        )
    return msg


def automatic_reply(msg: Message) -> str:
    """Why `msg` is an automatic reply (a vacation notice...), or "" when it is not.

    RFC 3834 section 5: Auto-Submitted with any value but "no". The de facto fields
    older responders set instead: X-Autoreply, X-Autorespond, Precedence: auto_reply,
    and Precedence: bulk or junk on a reply whose subject says out of office."""
    if msg.get("X-Failed-Recipients") or _sender(msg).partition("@")[0] in MAIL_SYSTEMS:
        return ""
    auto = text(msg.get("Auto-Submitted")).lower()
    if auto and not auto.startswith("no"):
        return f"an automatic reply (Auto-Submitted: {auto})"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder"):
        if msg.get(name) is not None:
            return f"an automatic reply ({name})"
    precedence = text(msg.get("Precedence")).lower()
    if precedence == "auto_reply":
        return "an automatic reply (Precedence: auto_reply)"
    if precedence in ("bulk", "junk") and OUT_OF_OFFICE.search(_subject(msg)):
        return f"an automatic reply (Precedence: {precedence}, out of office)"
    return ""


def verp(
    msg: Message, secret: bytes, feedback: Message | None, original: Message | None
) -> tuple[int, int] | None:
    """(campaign id, subscriber id) from the first VERP address this publication signed:
    where the message was delivered, else (a complaint) the Original-Mail-From of the
    feedback report (RFC 5965 section 3.2), else the Return-Path of the message quoted."""
    values = [v for name in ENVELOPE_RECIPIENT for v in msg.get_all(name, [])]
    if feedback is not None:
        for block in feedback.get_payload() if feedback.is_multipart() else []:
            if isinstance(block, Message):
                values += block.get_all("Original-Mail-From", [])
    if original is not None:
        values += original.get_all("Return-Path", [])
    for _, address in getaddresses([text(v) for v in values]):
        if address and (pair := read_verp(address, secret)):
            return pair
    return None


def event_key(source: str, report_id: str, recipient: str) -> str:
    key = f"{source}:{report_id}:{recipient.lower()}"
    if len(key) > MAX_KEY:
        key = f"{source}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"
    return key


def _bounce(source: str, report_id: str, found: Failure, pair: tuple[int, int] | None) -> Bounce:
    campaign_id, subscriber_id = pair if pair else (None, None)
    recipient = found.address or f"c{campaign_id}-s{subscriber_id}"
    return Bounce(
        kind=found.kind,
        email=found.address,
        source=source,
        event_key=event_key(source, report_id, recipient),
        status_code=found.status_code,
        diagnostic=found.diagnostic,
        campaign_id=campaign_id,
        subscriber_id=subscriber_id,
    )


def _report_id(msg: Message, raw: bytes) -> str:
    """The report's Message-ID, or a hash of its body: the header the delivery prepends
    (Received, Delivered-To) differs between the pipe and the mailbox, the body does not."""
    message_id = text(msg.get("Message-ID")).strip("<>")
    if message_id:
        return message_id
    head_end = min((i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0), default=0)
    return "sha256:" + hashlib.sha256(raw[head_end:].strip()).hexdigest()[:32]


def _sender(msg: Message) -> str:
    found = getaddresses([text(v) for v in msg.get_all("From", [])])
    return found[0][1].lower() if found and found[0][1] else ""


def _subject(msg: Message) -> str:
    try:
        return str(make_header(decode_header(text(msg.get("Subject")))))
    except (LookupError, ValueError):  # an unknown charset or a broken encoded word
        return text(msg.get("Subject"))
