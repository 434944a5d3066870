"""Signup with double opt-in: a request sends a confirmation link; only confirming it
(a POST: the button on the page the link opens) activates.

    request  -> a new address is stored as pending, a confirmation message goes out
    open     -> the link shows a button and changes nothing (mail scanners open links)
    confirm  -> the address becomes active, with the name typed into the form

What a signup answers never depends on the address: an active address, a throttled
one, a request over a limit and a bot (the honeypot field filled in) get the same
answer as a new address, and the message goes out from a thread of its own (`Outbox`),
so not even the time the answer takes says whether one was sent.

The limits, so that the form cannot flood a mailbox or the relay ([signup]):
- one confirmation per address per `throttle`, kept in the database (across processes
  and restarts);
- kept in memory, per process: `client_per_hour` signups per client address
  (limits.py says who the client is behind a proxy); one confirmation per mailbox per
  `throttle`, where the variants of an address that differ in a "+tag" are one mailbox
  (victim+1@, victim+2@ ... all reach the victim); `per_hour` confirmations in all;
- at most `queue_size` confirmations waiting to be sent; more are dropped and logged.

A confirmation token is signed for its own purpose (an unsubscribe token does not
confirm anything) and carries the time it was made and the name typed into the form,
so the name is bound to the link the mailbox's owner confirms and nothing a stranger
typed is stored. It works for [signup] confirm_within, and never for an address that
left (unsubscribed, bounced, complained) after it was made.
"""

from __future__ import annotations

import datetime as dt
import email.policy
import queue
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr

import jinja2

from newsletter import addresses, tokens
from newsletter.config import Config
from newsletter.errors import NewsletterError
from newsletter.issue import render
from newsletter.ledger import signups
from newsletter.ledger.signups import CONFIRMED, SEND
from newsletter.ledger.store import Store
from newsletter.ledger.tables import utcnow
from newsletter.mail import transport
from newsletter.mail.dkim import DkimSigner
from newsletter.mail.message import clean_display_name
from newsletter.web import limits

TEXT_TEMPLATE = "confirm.txt"
HTML_TEMPLATE = "confirm.html"

# What a signup request came to; the visitor sees the same page for all but INVALID.
# SEND, THROTTLED and ALREADY_ACTIVE come from the ledger (signups.py).
BOT = "bot"  # the honeypot field was filled in: nothing is stored or sent
INVALID = "invalid"  # not an email address: the form says so
LIMITED = "limited"  # over a limit of [signup]: nothing is stored or sent
DROPPED = "dropped"  # the confirmation queue is full: nothing is sent

# What a confirmation link came to (READY, CONFIRMED, ALREADY_CONFIRMED, STALE: the
# ledger's).
EXPIRED = "expired"
FORGED = "forged"

HOUR = 3600
_SITE = ""  # the key of the site-wide window

Log = Callable[[str], None]
Clock = Callable[[], dt.datetime]
_POLICY = email.policy.SMTP


def _quiet(message: str) -> None:
    pass


@dataclass(frozen=True)
class Request:
    outcome: str
    email: str = ""
    problem: str = ""  # why the address was refused, when outcome is INVALID


@dataclass(frozen=True)
class Confirmation:
    outcome: str
    email: str = ""
    name: str = ""  # the name typed into the form; it applies once confirmed


@dataclass(frozen=True)
class Link:
    """What a confirmation token says."""

    email: str
    made: dt.datetime
    name: str = ""


def confirm_signer(config: Config) -> tokens.Signer:
    return tokens.publication_signer(config, tokens.CONFIRM)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_STAMP = re.compile(r"(\d{1,12})(?:\.(\d{6}))?")


def make_token(signer: tokens.Signer, email: str, when: dt.datetime, name: str = "") -> str:
    """A confirmation token for `email`, made at `when`, that sets `name` (a confirm_signer's)."""
    # To the microsecond, as the database keeps when an address left: a link asked for a
    # moment before an unsubscribe must not bring the address back. (Links made before
    # names were carried have whole seconds, and no name.)
    seconds, micros = divmod((when - _EPOCH) // dt.timedelta(microseconds=1), 1_000_000)
    payload = f"{email}\n{seconds}.{micros:06d}"
    if name:
        # Hex: the signer folds the case of what it signs, and a name keeps its own.
        payload += f"\n{name.encode('utf-8').hex()}"
    return signer.sign(payload)


def read_token(signer: tokens.Signer, token: str) -> Link | None:
    """What a token says, or None for a forged or altered token."""
    payload = signer.verify(token)
    if payload is None:
        return None
    email, _, rest = payload.partition("\n")
    stamp, _, name_hex = rest.partition("\n")
    match = _STAMP.fullmatch(stamp)
    if not email or match is None:
        return None
    seconds, micros = int(match[1]), int(match[2] or 0)
    try:
        name = bytes.fromhex(name_hex).decode("utf-8")
    except ValueError:  # UnicodeDecodeError is a ValueError
        return None
    made = _EPOCH + dt.timedelta(seconds=seconds, microseconds=micros)
    return Link(email, made, clean_display_name(name))


def mailbox_key(email: str) -> str:
    """The mailbox an address reaches: its "+tag" dropped (RFC 5233 subaddresses)."""
    local, _, domain = addresses.key(email).rpartition("@")
    return f"{local.partition('+')[0]}@{domain}"


@dataclass(frozen=True)
class Outgoing:
    """A confirmation to send."""

    email: str
    token: str
    claimed_at: dt.datetime  # when the right to send was taken


class Desk:
    """The signup form's side of the site: takes requests within the limits, hands their
    confirmations to the `Outbox`, opens and confirms the links. Thread-safe."""

    def __init__(
        self,
        store: Store,
        config: Config,
        signer: tokens.Signer,
        log: Log = _quiet,
        clock: Clock = utcnow,
    ) -> None:
        self._store = store
        self._config = config
        self._signer = signer
        self._log = log
        self._clock = clock
        settings = config.signup
        self._trusted = limits.networks(settings.trusted_proxies)
        self.client_header = settings.client_header
        self._clients = limits.Window(settings.client_per_hour, HOUR)
        self._mailboxes = limits.Window(1, settings.throttle_seconds)
        self._site = limits.Window(settings.per_hour, HOUR)
        self._lock = threading.Lock()
        self._warned = False
        self.outbox = Outbox(config, self._unsent, log, settings.queue_size)

    # -- asking

    def client(self, peer: str | None, forwarded: Sequence[str]) -> str:
        """Whom a request counts against: from `peer`, with these client_header lines."""
        address = limits.client_address(peer, forwarded, self._trusted)
        direct = limits.parse_address(peer or "")
        if forwarded and not self._warned and not limits.is_trusted(direct, self._trusted):
            # Behind a proxy nobody told us about, every visitor is the proxy: say so once.
            self._warned = True
            self._log(
                f"signup: a request from {peer} carries {self.client_header}, and {peer} is"
                " not in [signup] trusted_proxies: the header is ignored (behind a proxy,"
                " every visitor counts as the proxy)"
            )
        return limits.client_key(address)

    def ask(self, client: str, address: str, name: str = "", honeypot: str = "") -> Request:
        """A signup from the form: send a confirmation if no limit says otherwise."""
        if honeypot.strip():
            self._log("signup: nothing sent (bot)")
            return Request(BOT)
        try:
            email = addresses.normalize(address)
        except ValueError as exc:
            return Request(INVALID, problem=str(exc))
        now = self._clock()
        over = self._reserve(client, email, now)
        if over:
            self._log(f"signup: nothing sent ({over}) {email}")
            return Request(LIMITED, email)
        try:
            outcome = signups.claim(self._store, email, now, self._config.signup.throttle_seconds)
        except BaseException:
            self._give_back(email, now)
            raise
        if outcome != SEND:
            self._give_back(email, now)
            self._log(f"signup: nothing sent ({outcome}) {email}")
            return Request(outcome, email)
        job = Outgoing(email, make_token(self._signer, email, now, clean_display_name(name)), now)
        if not self.outbox.submit(job):
            self._log(
                f"signup: nothing sent to {email}: {self.outbox.capacity} confirmations are"
                " waiting already ([signup] queue_size)"
            )
            self._unsent(job)
            return Request(DROPPED, email)
        return Request(SEND, email)

    def _reserve(self, client: str, email: str, now: dt.datetime) -> str:
        """Count the request against the limits; why it is over one, or "" (then the
        mailbox's and the site's are taken, to give back if nothing is sent)."""
        at = now.timestamp()
        mailbox = mailbox_key(email)
        settings = self._config.signup
        with self._lock:
            # Every request counts against its client, sent or not: a flood is requests.
            if not self._clients.take(client, at):
                return f"{client} asked {settings.client_per_hour} times within the hour"
            if not self._mailboxes.allows(mailbox, at):
                return f"{mailbox} was sent one within [signup] throttle"
            if not self._site.allows(_SITE, at):
                return f"{settings.per_hour} confirmations sent within the hour"
            self._mailboxes.take(mailbox, at)
            self._site.take(_SITE, at)
        return ""

    def _give_back(self, email: str, now: dt.datetime) -> None:
        at = now.timestamp()
        with self._lock:
            self._mailboxes.give_back(mailbox_key(email), at)
            self._site.give_back(_SITE, at)

    def _unsent(self, job: Outgoing) -> None:
        """A confirmation was not sent: the person may try again at once."""
        self._give_back(job.email, job.claimed_at)
        try:
            signups.release(self._store, job.email, job.claimed_at)
        except Exception as exc:  # noqa: BLE001 - logged; the throttle then just runs out
            self._log(f"signup: could not lift the throttle for {job.email}: {exc}")

    # -- the link

    def look(self, token: str) -> Confirmation:
        """What the link would do (GET, HEAD): changes nothing."""
        return self._follow(token, press=False)

    def confirm(self, token: str) -> Confirmation:
        """The button on the link's page was pressed (POST): the address becomes active."""
        return self._follow(token, press=True)

    def _follow(self, token: str, press: bool) -> Confirmation:
        link = read_token(self._signer, token)
        if link is None:
            return Confirmation(FORGED)
        within = dt.timedelta(seconds=self._config.signup.confirm_within_seconds)
        if self._clock() - link.made > within:
            return Confirmation(EXPIRED, link.email, link.name)
        if not press:
            return Confirmation(
                signups.check(self._store, link.email, link.made), link.email, link.name
            )
        outcome = signups.activate(self._store, link.email, link.made, link.name)
        if outcome == CONFIRMED:
            self._log(f"signup: {link.email} confirmed")
        return Confirmation(outcome, link.email, link.name)


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


class Outbox:
    """Sends confirmation messages from a thread of its own, one SMTP session each.

    The page that answers a signup never waits for SMTP. At most `capacity` messages
    wait or are being sent; `submit` refuses more, so a flood cannot fill the memory. A
    message that cannot be sent is logged and handed to `unsent` (which lifts the
    throttle, so that the person can try again).
    """

    def __init__(
        self,
        config: Config,
        unsent: Callable[[Outgoing], None],
        log: Log = _quiet,
        capacity: int = 100,
    ) -> None:
        self._composer = Composer(config)
        self._settings = transport.SmtpSettings.from_config(config)
        self._unsent = unsent
        self._log = log
        self.capacity = capacity
        self._queue: queue.Queue[Outgoing | None] = queue.Queue()
        self._idle = threading.Condition()
        self._waiting = 0
        self._thread: threading.Thread | None = None
        self.sent = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="newsletter-signup", daemon=True)
        self._thread.start()

    def submit(self, job: Outgoing) -> bool:
        """Queue a confirmation; False when `capacity` are waiting or being sent already."""
        with self._idle:
            # Counted with the one being sent, so what is refused does not depend on
            # whether the thread has taken the first message off the queue yet.
            if self._waiting >= self.capacity:
                return False
            self._waiting += 1
        self._queue.put(job)
        return True

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

    def _send(self, job: Outgoing) -> None:
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
        self._unsent(job)
