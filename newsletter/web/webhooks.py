"""POST /webhooks/PROVIDER: the bounces and complaints a mail provider reports.

Each provider proves its requests its own way, and a request that does not prove
itself is refused (401 or 403) with one word: the answer never says which check
failed, the site's log does. Nothing of a refused request is recorded.

    ses       Amazon SES through an SNS topic of [bounces] ses_topic_arns: the SNS
              message signature, with SNS's own certificate (sns.py)
    postmark  HTTP basic auth: [bounces] postmark_username and the password in the
              variable postmark_password_env names
    mailgun   HMAC-SHA256 of timestamp + token with the key in mailgun_signing_key_env;
              the timestamp within 5 minutes, each token once
    sendgrid  the Signed Event Webhook: ECDSA P-256 (SHA-256) over timestamp + body with
              the verification key in sendgrid_public_key_env; the timestamp within 5 minutes

A verified request becomes `ledger.bounces` records: hard and soft bounces and complaints
(deliveries, opens and the rest are acknowledged and ignored), each once by its event key,
so a provider's retry counts once. When the report echoes our envelope sender and it is a
VERP address we signed for a delivery the ledger made, it names the campaign and the
subscriber; otherwise the bounced address is looked up.

A provider that is not configured is a 404. The module knows no web framework: site.py
hands it the body and the headers and turns the `Answer` into a response.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Protocol

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from newsletter import tokens
from newsletter.config import Config
from newsletter.errors import ConfigError
from newsletter.ledger import bounces
from newsletter.ledger.bounces import COMPLAINT, HARD, SOFT, Bounce
from newsletter.ledger.store import Store
from newsletter.web import sns

SES = "ses"
POSTMARK = "postmark"
MAILGUN = "mailgun"
SENDGRID = "sendgrid"

# A provider's report is a few kilobytes; a SendGrid batch holds up to about a thousand
# events. More than this is not a report: site.py stops reading and answers TOO_LARGE.
MAX_BODY_BYTES = 1024 * 1024
# Mailgun asks that the timestamp be "not too far from the current time" and SendGrid signs
# one without saying; five minutes either way, as Standard Webhooks and most providers do.
TIMESTAMP_TOLERANCE_S = 300
# A Mailgun token is refused the second time. It cannot come back with a fresh timestamp
# later than 2 x TIMESTAMP_TOLERANCE_S after it was first seen, so it is forgotten then; the
# cap only bounds memory if more valid requests than that come in ten minutes.
MAX_TOKENS = 10_000

Fetch = sns.Fetch
Log = Callable[[str], None]


@dataclass(frozen=True)
class Answer:
    """What to answer the provider: a status, one word of text, and any headers."""

    status: int
    text: str
    headers: Mapping[str, str] = field(default_factory=dict)


OK = Answer(200, "ok")
BAD_REQUEST = Answer(400, "bad request")
# RFC 7235 section 3.1: a 401 carries a challenge (a client that waits for one then sends
# its credentials).
UNAUTHORIZED = Answer(401, "unauthorized", {"www-authenticate": 'Basic realm="webhooks"'})
FORBIDDEN = Answer(403, "forbidden")
NOT_FOUND = Answer(404, "not found")
TOO_LARGE = Answer(413, "too large")
# The SNS certificate could not be fetched: not the sender's fault, and SNS retries.
UNAVAILABLE = Answer(503, "try again later")


class _Refused(Exception):
    """Not from the provider. The message is for the log, never for the answer."""


class _Unauthorized(_Refused):
    """No valid basic-auth credentials: a 401 with a challenge."""


class _Malformed(Exception):
    """Not a body the provider sends."""


class _Unavailable(Exception):
    """Cannot verify now."""


class _Report(NamedTuple):
    bounce: Bounce
    envelope_sender: str  # the MAIL FROM the provider echoes, "" when it does not


class _Receiver(Protocol):
    def reports(self, body: bytes, headers: Mapping[str, str]) -> list[_Report]: ...


def _quiet(message: str) -> None:
    pass


class Webhooks:
    """The configured providers' endpoints. One per site; `receive` may be called from
    several threads at once."""

    def __init__(
        self,
        store: Store,
        config: Config,
        secret: bytes,
        fetch: Fetch | None = None,
        log: Log = _quiet,
        environ: Mapping[str, str] = os.environ,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`secret` is the publication's (tokens.load_secret), for the VERP addresses;
        `fetch` gets an https URL's body (the SNS certificates and subscription
        confirmations), sns.fetch_https unless a test gives its own."""
        self._store = store
        self._secret = secret
        self._log = log
        self._soft_limit = config.bounces.soft_limit
        self._soft_days = config.bounces.soft_days
        self._receivers = _receivers(config, fetch or sns.fetch_https, log, environ, clock)

    @property
    def providers(self) -> tuple[str, ...]:
        return tuple(self._receivers)

    def receive(self, provider: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        """Verify a request, record what it reports, and say what to answer.

        `headers` is looked up by lower-case name (Starlette's Headers, or a plain dict)."""
        receiver = self._receivers.get(provider)
        if receiver is None:
            return NOT_FOUND
        try:
            reports = receiver.reports(body, headers)
        except _Unauthorized as exc:
            self._log(f"webhook {provider}: refused: {exc}")
            return UNAUTHORIZED
        except _Refused as exc:
            self._log(f"webhook {provider}: refused: {exc}")
            return FORBIDDEN
        except _Malformed as exc:
            self._log(f"webhook {provider}: cannot read the request: {exc}")
            return BAD_REQUEST
        except _Unavailable as exc:
            self._log(f"webhook {provider}: {exc}")
            return UNAVAILABLE
        for report in reports:
            self._record(provider, report)
        return OK

    def _record(self, provider: str, report: _Report) -> None:
        bounce = report.bounce
        named = tokens.read_verp(report.envelope_sender, self._secret)
        # A signed token is ours, but the pair must also be one the ledger sent to
        # (bounces.delivery_of): then the VERP address is the truth, whatever address the
        # report names (a forwarding address bounces under another name).
        if named is not None and bounces.delivery_of(self._store, *named):
            bounce = replace(bounce, campaign_id=named[0], subscriber_id=named[1])
        recorded = bounces.record(self._store, bounce, self._soft_limit, self._soft_days)
        if not recorded.new:
            return
        what = f"{bounce.kind} {bounce.email}"
        if recorded.suppressed:
            what += f": now {recorded.suppressed}"
        elif recorded.subscriber_id is None:
            what += ": not on the list"
        self._log(f"webhook {provider}: {what}")


def _receivers(
    config: Config,
    fetch: Fetch,
    log: Log,
    environ: Mapping[str, str],
    clock: Callable[[], float],
) -> dict[str, _Receiver]:
    """The providers [bounces] configures and whose secrets are in the environment."""
    settings = config.bounces
    found: dict[str, _Receiver] = {}
    if settings.ses_topic_arns:
        found[SES] = _Ses(sns.Endpoint(settings.ses_topic_arns, fetch, clock))

    def secret(provider: str, variable: str) -> str:
        value = environ.get(variable, "")
        if not value:
            log(f"webhooks: ${variable} is not set: /webhooks/{provider} answers 404")
        return value

    if settings.postmark_username:
        password = secret(POSTMARK, settings.postmark_password_env)
        if password:
            found[POSTMARK] = _Postmark(settings.postmark_username, password)
    if settings.mailgun_signing_key_env:
        key = secret(MAILGUN, settings.mailgun_signing_key_env)
        if key:
            found[MAILGUN] = _Mailgun(key.encode(), clock)
    if settings.sendgrid_public_key_env:
        text = secret(SENDGRID, settings.sendgrid_public_key_env)
        if text:
            public_key = _sendgrid_key(text, settings.sendgrid_public_key_env)
            found[SENDGRID] = _SendGrid(public_key, clock)
    return found


# --- Amazon SES through SNS ---------------------------------------------------------------


class _Ses:
    def __init__(self, endpoint: sns.Endpoint) -> None:
        self._endpoint = endpoint

    def reports(self, body: bytes, headers: Mapping[str, str]) -> list[_Report]:
        try:
            notification = self._endpoint.receive(body)
        except sns.NotFromSns as exc:
            raise _Refused(str(exc)) from None
        except sns.CannotVerify as exc:
            raise _Unavailable(str(exc)) from None
        return [] if notification is None else _ses_reports(notification.message)


# https://docs.aws.amazon.com/ses/latest/dg/notification-contents.html: a bounce object
# (bounceType Permanent, Transient or Undetermined; bouncedRecipients) or a complaint
# object (complainedRecipients), each with a feedbackId, and the mail object, whose
# `source` is the envelope MAIL FROM. Event publishing names the type eventType.
# SES cannot tell why an Undetermined bounce bounced: soft, so only repeats suppress.
_SES_BOUNCE_KINDS = {"Permanent": HARD, "Transient": SOFT, "Undetermined": SOFT}


def _ses_reports(text: str) -> list[_Report]:
    try:
        notification = json.loads(text)
    except (ValueError, RecursionError):
        notification = None
    if not isinstance(notification, dict):
        # Verified, so from our topic, but not an SES notification: SES's own "Successfully
        # validated SNS topic" message, or one published by hand. Acknowledged, else SNS
        # would retry it.
        return []
    what = _text(notification.get("notificationType") or notification.get("eventType"))
    mail = _object(notification.get("mail"))
    if what == "Bounce":
        details = _object(notification.get("bounce"))
        kind = _SES_BOUNCE_KINDS.get(_text(details.get("bounceType")))
        recipients = _objects(details.get("bouncedRecipients"))
    elif what == "Complaint":
        details = _object(notification.get("complaint"))
        kind = COMPLAINT
        recipients = _objects(details.get("complainedRecipients"))
    else:
        return []  # Delivery, Send, Open, Click...: nothing to suppress
    if kind is None:
        return []
    feedback = _text(details.get("feedbackId"))
    message_id = _text(mail.get("messageId"))
    # Our campaign messages have one recipient each: a VERP sender names that one only.
    envelope = _text(mail.get("source")) if len(recipients) == 1 else ""
    reports = []
    for recipient in recipients:
        email = _text(recipient.get("emailAddress"))
        if "@" not in email or not (feedback or message_id):
            continue
        key = f"{feedback}:{email}" if feedback else f"{message_id}:{kind}:{email}"
        diagnostic = _text(recipient.get("diagnosticCode")) or _text(
            details.get("complaintFeedbackType")
        )
        status = _text(recipient.get("status")) or _enhanced_code(diagnostic)
        bounce = Bounce(kind, email, SES, f"ses:{key.lower()}", status, diagnostic)
        reports.append(_Report(bounce, envelope))
    return reports


# --- Postmark -------------------------------------------------------------------------------
#
# Postmark signs nothing; its webhook URL carries basic-auth credentials
# (https://postmarkapp.com/developer/webhooks/webhooks-overview). The Bounce webhook's Type
# (https://postmarkapp.com/developer/webhooks/bounce-webhook) and the SpamComplaint webhook
# (RecordType SpamComplaint). Bounce and complaint IDs are one sequence, Postmark's bounces.
_POSTMARK_KINDS = {
    "HardBounce": HARD,
    "SoftBounce": SOFT,
    "Transient": SOFT,
    "SpamComplaint": COMPLAINT,
}


class _Postmark:
    def __init__(self, username: str, password: str) -> None:
        self._credentials = f"{username}:{password}".encode()

    def reports(self, body: bytes, headers: Mapping[str, str]) -> list[_Report]:
        given = _basic_credentials(headers.get("authorization", ""))
        # compare_digest: how long the comparison takes says nothing of how much was right.
        if given is None or not hmac.compare_digest(given, self._credentials):
            raise _Unauthorized("no or wrong basic-auth credentials")
        event = _json_object(body)
        record_type = _text(event.get("RecordType"))
        if record_type == "SpamComplaint":
            kind: str | None = COMPLAINT
        elif record_type == "Bounce":
            kind = _POSTMARK_KINDS.get(_text(event.get("Type")))
        else:
            kind = None  # Delivery, Open, Click, SubscriptionChange
        email, ident = _text(event.get("Email")), _text(event.get("ID"))
        if kind is None or "@" not in email or not ident:
            return []
        diagnostic = _text(event.get("Details")) or _text(event.get("Description"))
        bounce = Bounce(
            kind, email, POSTMARK, f"postmark:{ident}", _enhanced_code(diagnostic), diagnostic
        )
        return [_Report(bounce, "")]


def _basic_credentials(header: str) -> bytes | None:
    """user-id:password from an Authorization header (RFC 7617), as bytes."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


# --- Mailgun --------------------------------------------------------------------------------
#
# https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/securing-webhooks: the
# body's "signature" holds timestamp, token and signature, the hex HMAC-SHA256 of timestamp
# and token concatenated, keyed with the webhook signing key; a receiver may refuse a token
# it has seen and a timestamp far from now. "event-data" is the event
# (https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/webhook-payloads):
# failed (severity permanent or temporary) or complained.
_MAILGUN_FAILED = {"permanent": HARD, "temporary": SOFT}


class _Mailgun:
    def __init__(self, key: bytes, clock: Callable[[], float]) -> None:
        self._key = key
        self._clock = clock
        self._seen: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._lock = threading.Lock()

    def reports(self, body: bytes, headers: Mapping[str, str]) -> list[_Report]:
        payload = _json_object(body)
        signed = _object(payload.get("signature"))
        timestamp, token = _text(signed.get("timestamp")), _text(signed.get("token"))
        expected = hmac.new(self._key, f"{timestamp}{token}".encode(), hashlib.sha256)
        if not token or not _same(expected.hexdigest(), _text(signed.get("signature"))):
            raise _Refused("the Mailgun signature does not verify")
        _check_fresh(timestamp, self._clock())
        self._once(token)
        data = _object(payload.get("event-data"))
        event = _text(data.get("event"))
        if event == "failed":
            kind = _MAILGUN_FAILED.get(_text(data.get("severity")))
        elif event == "complained":
            kind = COMPLAINT
        else:
            kind = None  # accepted, delivered, opened, clicked, unsubscribed...
        email, ident = _text(data.get("recipient")), _text(data.get("id"))
        if kind is None or "@" not in email or not ident:
            return []
        status = _object(data.get("delivery-status"))
        diagnostic = (
            _text(status.get("message"))
            or _text(status.get("description"))
            or _text(data.get("reason"))
        )
        code = _text(status.get("enhanced-code")) or _enhanced_code(diagnostic)
        bounce = Bounce(kind, email, MAILGUN, f"mailgun:{ident}", code, diagnostic)
        return [_Report(bounce, _text(_object(data.get("envelope")).get("sender")))]

    def _once(self, token: str) -> None:
        with self._lock:
            now = self._clock()
            while self._seen and next(iter(self._seen.values())) < now - 2 * TIMESTAMP_TOLERANCE_S:
                self._seen.popitem(last=False)
            if token in self._seen:
                raise _Refused("a token seen before (a replay)")
            self._seen[token] = now
            if len(self._seen) > MAX_TOKENS:
                self._seen.popitem(last=False)


# --- SendGrid -------------------------------------------------------------------------------
#
# https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/getting-started-event-webhook-security-features:
# X-Twilio-Email-Event-Webhook-Signature is the base64 of an ECDSA (P-256, SHA-256)
# signature, DER-encoded, over the X-Twilio-Email-Event-Webhook-Timestamp value followed by
# the raw body; the verification key is base64 DER (SubjectPublicKeyInfo). The body is an
# array of events (https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/event):
# bounce (type bounce, or blocked), dropped (reason "Bounced Address": on SendGrid's bounce
# list), spamreport.
# A bounce event without a type is taken for the bounce it says it is.
_SENDGRID_BOUNCE_KINDS = {"bounce": HARD, "blocked": SOFT, "": HARD}
_SENDGRID_SIGNATURE = "x-twilio-email-event-webhook-signature"
_SENDGRID_TIMESTAMP = "x-twilio-email-event-webhook-timestamp"


class _SendGrid:
    def __init__(self, key: ec.EllipticCurvePublicKey, clock: Callable[[], float]) -> None:
        self._key = key
        self._clock = clock

    def reports(self, body: bytes, headers: Mapping[str, str]) -> list[_Report]:
        timestamp = headers.get(_SENDGRID_TIMESTAMP, "")
        signature = _b64(headers.get(_SENDGRID_SIGNATURE, ""))
        try:
            # HTTP header values are latin-1 (Starlette decodes them so): their own bytes.
            signed = timestamp.encode("latin-1") + body
            self._key.verify(signature, signed, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            raise _Refused("the SendGrid signature does not verify") from None
        _check_fresh(timestamp, self._clock())
        try:
            events = json.loads(body)
        except (ValueError, RecursionError):
            raise _Malformed("the body is not JSON") from None
        if not isinstance(events, list):
            raise _Malformed("the body is not an array of events")
        return [report for event in _objects(events) if (report := _sendgrid_report(event))]


def _sendgrid_report(event: Mapping[str, Any]) -> _Report | None:
    what = _text(event.get("event"))
    if what == "bounce":
        kind = _SENDGRID_BOUNCE_KINDS.get(_text(event.get("type")))
    elif what == "dropped" and _text(event.get("reason")).strip().lower() == "bounced address":
        kind = HARD
    elif what == "spamreport":
        kind = COMPLAINT
    else:
        kind = None  # processed, delivered, deferred, open, click, unsubscribe...
    email, ident = _text(event.get("email")), _text(event.get("sg_event_id"))
    if kind is None or "@" not in email or not ident:
        return None
    diagnostic = _text(event.get("reason"))
    status = _text(event.get("status")) or _enhanced_code(diagnostic)
    return _Report(Bounce(kind, email, SENDGRID, f"sendgrid:{ident}", status, diagnostic), "")


def _sendgrid_key(text: str, variable: str) -> ec.EllipticCurvePublicKey:
    """The Event Webhook's verification key, as SendGrid shows it (base64 DER) or as PEM."""
    try:
        if "-----BEGIN" in text:
            key: Any = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, UnsupportedAlgorithm, binascii.Error):
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(
            f"${variable} ([bounces] sendgrid_public_key_env): not an ECDSA P-256 public key;"
            " expected the Event Webhook's verification key (base64, or PEM)"
        )
    return key


# --- shared ---------------------------------------------------------------------------------


def _check_fresh(timestamp: str, now: float) -> None:
    try:
        seconds = int(timestamp)
    except ValueError:
        raise _Refused("no timestamp") from None
    if abs(now - seconds) > TIMESTAMP_TOLERANCE_S:
        raise _Refused(f"a timestamp {now - seconds:.0f} s from now")


def _same(expected: str, given: str) -> bool:
    """Constant-time equality of two strings, whatever characters `given` holds."""
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogatepass"))


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _Refused("a signature that is not base64") from None


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise _Malformed("the body is not JSON") from None
    if not isinstance(value, dict):
        raise _Malformed("the body is not a JSON object")
    return value


def _object(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _objects(value: object) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _text(value: object) -> str:
    """A string field, or a number one as text (Postmark's IDs, Mailgun's timestamps)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return ""


# RFC 3463: class.subject.detail, class 2, 4 or 5, subject and detail up to three digits.
_ENHANCED_CODE = re.compile(r"\b[245]\.\d{1,3}\.\d{1,3}\b")


def _enhanced_code(text: str) -> str:
    found = _ENHANCED_CODE.search(text)
    return found.group() if found else ""
