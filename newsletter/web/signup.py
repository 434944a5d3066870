"""Signup with double opt-in: a request sends a confirmation link; only that link activates.

    request  -> the address is stored as pending, a confirmation message goes out
    confirm  -> a pending address becomes active

What a signup answers never depends on the address: an active address, a throttled
one and a bot (the honeypot field filled in) get the same answer as a new address,
and the message goes out from a thread of its own (`Outbox`), so not even the time
the answer takes says whether one was sent. At most one confirmation goes to an
address per [signup] throttle; the time of the last one is in the database, so the
limit holds across processes and restarts.

A confirmation token is signed for its own purpose (an unsubscribe token does not
confirm anything) and carries the time it was made: it works for [signup]
confirm_within, and never for an address that has unsubscribed since.
"""

from __future__ import annotations

import datetime as dt
import email.policy
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr

import jinja2

from newsletter import addresses, tokens
from newsletter.config import Config
from newsletter.errors import NewsletterError
from newsletter.issue import render
from newsletter.ledger import signups
from newsletter.ledger.signups import (
    SEND,
)
from newsletter.ledger.store import Store
from newsletter.ledger.tables import utcnow
from newsletter.mail import transport
from newsletter.mail.dkim import DkimSigner
from newsletter.mail.message import clean_display_name

TEXT_TEMPLATE = "confirm.txt"
HTML_TEMPLATE = "confirm.html"

# What a signup request came to; the visitor sees the same page for all but INVALID.
# SEND, THROTTLED and ALREADY_ACTIVE come from the ledger (signups.py).
BOT = "bot"  # the honeypot field was filled in: nothing is stored or sent
INVALID = "invalid"  # not an email address: the form says so

# What following a confirmation link came to (CONFIRMED, ALREADY_CONFIRMED, STALE: the
# ledger's).
EXPIRED = "expired"
FORGED = "forged"

Log = Callable[[str], None]
_POLICY = email.policy.SMTP


def _quiet(message: str) -> None:
    pass


@dataclass(frozen=True)
class Request:
    outcome: str
    email: str = ""
    token: str = ""  # the confirmation token, when outcome is SEND
    at: dt.datetime | None = None  # when the right to send was taken, when outcome is SEND
    problem: str = ""  # why the address was refused, when outcome is INVALID


@dataclass(frozen=True)
class Confirmation:
    outcome: str
    email: str = ""


def confirm_signer(config: Config) -> tokens.Signer:
    return tokens.Signer(tokens.load_secret(config), tokens.CONFIRM)


def make_token(signer: tokens.Signer, email: str, when: dt.datetime) -> str:
    """A confirmation token for `email`, made at `when` (a confirm_signer's)."""
    return signer.sign(f"{email}\n{int(when.timestamp())}")


def read_token(signer: tokens.Signer, token: str) -> tuple[str, dt.datetime] | None:
    """(address, when the token was made), or None for a forged or altered token."""
    payload = signer.verify(token)
    if payload is None:
        return None
    email, _, stamp = payload.rpartition("\n")
    if not email or not stamp.isdigit():
        return None
    return email, dt.datetime.fromtimestamp(int(stamp), dt.UTC)


def request(
    store: Store,
    config: Config,
    signer: tokens.Signer,
    address: str,
    name: str = "",
    honeypot: str = "",
    now: dt.datetime | None = None,
) -> Request:
    """Record a signup and say whether a confirmation is to be sent (see `Outbox`)."""
    if honeypot.strip():
        return Request(BOT)
    try:
        email = addresses.normalize(address)
    except ValueError as exc:
        return Request(INVALID, problem=str(exc))
    now = now or utcnow()
    outcome = signups.claim(
        store, email, clean_display_name(name), now, config.signup.throttle_seconds
    )
    if outcome != SEND:
        return Request(outcome, email)
    return Request(outcome, email, make_token(signer, email, now), now)


def confirm(
    store: Store,
    config: Config,
    signer: tokens.Signer,
    token: str,
    now: dt.datetime | None = None,
) -> Confirmation:
    """Follow a confirmation link: a pending address becomes active."""
    read = read_token(signer, token)
    if read is None:
        return Confirmation(FORGED)
    email, made = read
    now = now or utcnow()
    if now - made > dt.timedelta(seconds=config.signup.confirm_within_seconds):
        return Confirmation(EXPIRED, email)
    return Confirmation(signups.activate(store, email, made), email)


# --- the confirmation message ---------------------------------------------------------------


def describe_duration(seconds: int) -> str:
    """3600 -> "1 hour", 604800 -> "7 days": for people, in the largest whole unit."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds} second{'' if seconds == 1 else 's'}"


class Composer:
    """Builds confirmation messages from templates/confirm.txt and confirm.html."""

    def __init__(self, config: Config) -> None:
        self.config = config
        env = render.environment(config.templates_dir)
        for name in (TEXT_TEMPLATE, HTML_TEMPLATE):
            try:
                env.get_template(name)
            except jinja2.TemplateNotFound:
                raise NewsletterError(
                    f"{config.templates_dir / name}: template not found (the signup form"
                    " sends it; copy it from the sample publication, or set"
                    " [signup] enabled = false)"
                ) from None
            except jinja2.TemplateSyntaxError as exc:
                raise NewsletterError(
                    f"{config.templates_dir / name}:{exc.lineno}: template syntax error:"
                    f" {exc.message}"
                ) from None
        self._env = env
        self._dkim = DkimSigner.from_config(config)
        self.sender = parseaddr(config.publication.from_addr)[1]
        # The envelope sender: bounces of a confirmation go where a campaign's would.
        self.return_path = config.bounces.address or self.sender

    def message(self, email: str, token: str, when: dt.datetime | None = None) -> bytes:
        """The confirmation message for `email`, CRLF line ends, signed when [dkim] is set."""
        pub = self.config.publication
        context = {
            "publication": pub,
            "email": email,
            "confirm_url": tokens.confirm_url(self.config, token),
            "confirm_within": describe_duration(self.config.signup.confirm_within_seconds),
        }
        text = render.render(self._env, TEXT_TEMPLATE, context)
        html = render.render(self._env, HTML_TEMPLATE, context)
        msg = EmailMessage(policy=_POLICY)
        msg["From"] = pub.from_addr
        msg["To"] = email
        if pub.reply_to:
            msg["Reply-To"] = pub.reply_to
        msg["Subject"] = f"Confirm your subscription to {pub.name}"
        msg["Date"] = format_datetime(when or utcnow())
        msg["Message-ID"] = make_msgid(domain=self.sender.rpartition("@")[2] or "localhost")
        # RFC 3834: an automatic message; auto-responders should not answer it.
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(text, subtype="plain", charset="utf-8")
        msg.add_alternative(html, subtype="html", charset="utf-8")
        for part in msg.iter_parts():  # add_alternative gives the new part one of its own
            del part["MIME-Version"]
        data = msg.as_bytes()
        return self._dkim.sign(data) if self._dkim is not None else data


@dataclass(frozen=True)
class _Job:
    email: str
    token: str
    claimed_at: dt.datetime


class Outbox:
    """Sends confirmation messages from a thread of its own, one SMTP session each.

    The page that answers a signup never waits for SMTP. A message that cannot be
    sent is logged, and the throttle is lifted so that the person can try again.
    """

    def __init__(self, store: Store, config: Config, log: Log = _quiet) -> None:
        self._store = store
        self._config = config
        self._composer = Composer(config)
        self._settings = transport.SmtpSettings.from_config(config)
        self._log = log
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._idle = threading.Condition()
        self._waiting = 0
        self._thread: threading.Thread | None = None
        self.sent = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="newsletter-signup", daemon=True)
        self._thread.start()

    def submit(self, signup: Request) -> None:
        """Send the confirmation for a request whose outcome is SEND."""
        assert signup.outcome == SEND and signup.at is not None
        with self._idle:
            self._waiting += 1
        self._queue.put(_Job(signup.email, signup.token, signup.at))

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every submitted message has been handed over (or given up on)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._waiting == 0, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued, then stop the thread."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                self._send(job)
            finally:
                with self._idle:
                    self._waiting -= 1
                    self._idle.notify_all()

    def _send(self, job: _Job) -> None:
        try:
            data = self._composer.message(job.email, job.token, job.claimed_at)
            conn = transport.SmtpConnection(self._settings)
            try:
                result = conn.send(self._composer.return_path, job.email, data)
            finally:
                conn.close()
            problem = "" if result.status == transport.SENT else result.error
        except NewsletterError as exc:
            problem = str(exc)
        except Exception as exc:  # a bug must not end the thread: the next signup still works
            problem = f"unexpected error: {type(exc).__name__}: {exc}"
        if not problem:
            self.sent += 1
            self._log(f"signup: confirmation sent to {job.email}")
            return
        self._log(f"signup: could not send the confirmation to {job.email}: {problem}")
        try:
            signups.release(self._store, job.email, job.claimed_at)
        except Exception as exc:  # noqa: BLE001 - logged; the throttle then just runs out
            self._log(f"signup: could not lift the throttle for {job.email}: {exc}")
