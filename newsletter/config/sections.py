"""The sections of newsletter.toml as frozen dataclasses, with their defaults."""

from __future__ import annotations

import datetime as dt
import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from newsletter.config.constants import (  # noqa: F401 (re-exported)
    CONFIG_NAME,
    DKIM_ALGORITHMS,
    ENV_CONFIG,
    ENV_PREFIX,
)
from newsletter.errors import ConfigError
from newsletter.segments import Segment
from newsletter.segments import resolve as resolve_segment


def _key(name: str, **kw: Any) -> Any:
    """A field whose TOML key differs from the Python name (``from`` is a keyword)."""
    return field(metadata={"key": name}, **kw)


@dataclass(frozen=True)
class Publication:
    name: str
    from_addr: str = _key("from")
    postal_address: str = ""
    base_url: str = ""
    reply_to: str = ""
    timezone: str = "UTC"
    language: str = "en"
    list_id: str = ""
    secret_env: str = "NEWSLETTER_SECRET"
    # A variable with older secrets (comma or whitespace separated): they verify the links
    # already sent, never sign (tokens.py).
    previous_secrets_env: str = ""


@dataclass(frozen=True)
class Paths:
    templates: str = "templates"
    issues: str = "issues"
    output: str = "build"


@dataclass(frozen=True)
class Database:
    url: str = "sqlite:///newsletter.db"
    # PostgreSQL: false lets each sender's record return before its WAL is flushed
    # (faster; a database server crash may lose the last ~0.6 s: ASYNC_RISK).
    synchronous_commit: bool = True
    # Rows a sender marks `sending` in one statement, sending them one by one: one commit
    # per N messages, and up to N of a connection in doubt after a crash (mark_ahead_risk).
    mark_ahead: int = 1


@dataclass(frozen=True)
class Smtp:
    host: str = "127.0.0.1"
    port: int = 1025
    security: str = "none"
    username: str = ""
    password_env: str = ""
    timeout: float = 30.0  # seconds for connecting, TLS, EHLO, login, RSET and QUIT
    concurrency: int = 1
    rate: float = 0.0
    ca_file: str = ""  # a CA bundle to trust instead of the system's (relative to this file)
    retries: int = 3  # attempts for a temporary failure (4xx, dropped connection) in one run
    retry_delay: float = 5.0  # seconds before the first retry; doubles each time, with jitter
    # The waits of RFC 5321 section 4.5.3.2, in seconds: its minimums are the defaults. A busy
    # relay can take minutes to answer and still deliver; giving up sooner defers good mail,
    # and after the final dot it leaves the message "in doubt".
    greeting_timeout: float = 300.0  # the server's 220 greeting
    mail_timeout: float = 300.0  # the reply to MAIL FROM
    rcpt_timeout: float = 300.0  # the reply to each RCPT TO
    data_timeout: float = 120.0  # the 354 reply to DATA
    block_timeout: float = 180.0  # each write of the message content
    dot_timeout: float = 600.0  # the reply after the final dot: the server is taking the message


@dataclass(frozen=True)
class Workers:
    """Celery workers: with a broker, a campaign is sent in batches by workers on any machine."""

    broker: str = ""  # redis://... or amqp://...; empty: every campaign is sent in-process
    queue: str = "newsletter"  # the broker queue; one per publication sharing a broker
    batch_size: int = 500  # deliveries one task claims and sends
    lease: float = 60.0  # seconds a batch stays with a worker that stops renewing it


@dataclass(frozen=True)
class Schedule:
    max_late: str = "6h"  # a due campaign found later than this is marked missed, not sent
    give_up_after: str = "24h"  # how long run-due keeps retrying a campaign it did not finish

    @property
    def max_late_seconds(self) -> int:
        return parse_duration(self.max_late)

    @property
    def give_up_after_seconds(self) -> int:
        return parse_duration(self.give_up_after)


# The longest wait any key may name: 100 years. Anything longer is a slip of the keyboard,
# and would overflow where it is used: datetime.timedelta ends at 999,999,999 days, a
# socket timeout at about 292 years (nanoseconds in 64 bits).
MAX_SECONDS = 100 * 365 * 86400


MAX_SECONDS_TEXT = f"at most 100 years ({MAX_SECONDS // 86400}d)"


_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """ "90s", "30m", "6h", "1d" or plain seconds -> seconds, at most MAX_SECONDS.

    Raises ValueError, whose message says what is wrong with `text`.
    """
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text)
    if not match:
        raise ValueError("expected a duration like '6h', '30m' or '90s'")
    digits, unit = match.groups()
    # Thousands of digits would hit int()'s own limit first; 15 are already far too many.
    if len(digits.lstrip("0")) > 15 or int(digits) * _DURATION_UNITS[unit] > MAX_SECONDS:
        raise ValueError(f"too long: {MAX_SECONDS_TEXT}")
    return int(digits) * _DURATION_UNITS[unit]


@dataclass(frozen=True)
class Utm:
    enabled: bool = True
    source: str = ""
    medium: str = "email"


@dataclass(frozen=True)
class Sample:
    """The sample subscriber that `build` and the preview fill the slots for."""

    email: str = "reader@example.com"
    name: str = "Reader"
    # What the issue's merge fields show for the sample: [sample.attributes] company = "..."
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Dkim:
    """DKIM signing of every outgoing message; off while `domain` is empty."""

    domain: str = ""
    selector: str = ""
    private_key: str = ""  # a PEM file, relative to newsletter.toml
    private_key_env: str = ""  # or the variable that holds the PEM
    algorithm: str = "rsa-sha256"


@dataclass(frozen=True)
class Tracking:
    clicks: str = "sponsor"  # "sponsor" links, "all" links, or "off"
    bot_seconds: int = 10  # a click this soon after delivery is a link scanner, not a reader
    # A reader's clicks on one link within this window count once: a double-click, a
    # reload or a mail app that opens the link twice is one click for the sponsor.
    dedupe_window: str = "1h"

    @property
    def dedupe_window_seconds(self) -> int:
        return parse_duration(self.dedupe_window)


@dataclass(frozen=True)
class Preview:
    """The preview's "Send test" button sends to these; without them it is absent."""

    test_recipients: tuple[str, ...] = ()


@dataclass(frozen=True)
class Signup:
    """The signup form of `newsletter serve`: double opt-in, throttled per address, per
    client address and in all, so that the form cannot be used to flood a mailbox."""

    enabled: bool = True
    throttle: str = "10m"  # at most one confirmation message per address this often
    confirm_within: str = "7d"  # how long a confirmation link works
    # A flood of 300 signups from one client sends at most this many confirmations; a
    # person needs one, and five forgives typos and a second try.
    client_per_hour: int = 5  # signups one client address may ask for per hour
    # The cap for a flood from many clients: far above a small list's signups in an hour.
    per_hour: int = 100  # confirmation messages sent per hour, all clients together
    queue_size: int = 100  # confirmations waiting to be sent; past it, dropped (and logged)
    # Behind a reverse proxy every request comes from the proxy: the client is named in
    # client_header, which is believed only from these addresses (anyone can send it).
    trusted_proxies: tuple[str, ...] = ()  # addresses or networks: "127.0.0.1", "10.0.0.0/8"
    client_header: str = "X-Forwarded-For"

    @property
    def throttle_seconds(self) -> int:
        return parse_duration(self.throttle)

    @property
    def confirm_within_seconds(self) -> int:
        return parse_duration(self.confirm_within)


@dataclass(frozen=True)
class Bounces:
    """Where bounces and complaints come back, and when an address is suppressed.

    With `address` set, each campaign message's envelope sender is a VERP address
    (bounces+<signed token>@domain) that names the campaign and the subscriber."""

    address: str = ""  # e.g. bounces@news.example.org; empty: the From address, no VERP
    soft_limit: int = 3  # soft bounces (4.x.x) within soft_days that suppress an address
    soft_days: int = 30
    # `newsletter bounces fetch`: the mailbox the bounces reach.
    imap_host: str = ""
    imap_port: int = 993
    imap_security: str = "tls"  # tls, starttls or none
    imap_username: str = ""
    imap_password_env: str = ""
    imap_folder: str = "INBOX"
    imap_done_folder: str = "newsletter-processed"  # handled messages are moved here
    # POST /webhooks/<provider> on `newsletter serve`: what each provider signs with.
    ses_topic_arns: tuple[str, ...] = ()  # the SNS topics whose messages are accepted
    postmark_username: str = ""  # the webhook's basic-auth credentials
    postmark_password_env: str = ""
    mailgun_signing_key_env: str = ""
    sendgrid_public_key_env: str = ""  # the Event Webhook's verification key (PEM or base64)


@dataclass(frozen=True)
class Check:
    """`newsletter check`: what the spam score (`--spam`, SpamAssassin) may reach."""

    spam_max: float = 2.0


@dataclass(frozen=True)
class ConsoleSettings:
    """`newsletter console`: on an address other machines reach (--host), a password is
    required, kept here as its argon2 hash (`newsletter console --hash-password` makes
    the line). Never the password itself."""

    password_hash: str = ""


@dataclass(frozen=True)
class Sponsor:
    id: str
    name: str
    url: str
    label: str = "Sponsored"
    message: str = ""
    places: tuple[str, ...] = ()
    call_to_action: str = "Learn more"
    phone: str = ""
    # The calling code ("1", "+44") for a phone written as dialled at home, "(949)
    # 800-5678": a tel: link needs it. A phone written with "+" needs none.
    phone_country_code: str = ""
    image: str = ""
    image_alt: str = ""
    image_width: int = 0
    # A booking: issues dated within [start, end] that name no sponsor rotate among
    # the sponsors booked for their date, by weight. No dates: not a booking.
    start: dt.date | None = None
    end: dt.date | None = None
    weight: int = 1

    @property
    def is_booking(self) -> bool:
        return self.start is not None or self.end is not None

    def booked_on(self, day: dt.date) -> bool:
        return (self.start is None or self.start <= day) and (self.end is None or day <= self.end)


@dataclass(frozen=True)
class Config:
    path: Path
    publication: Publication
    paths: Paths
    database: Database
    smtp: Smtp
    schedule: Schedule
    utm: Utm
    sample: Sample
    preview: Preview
    tracking: Tracking
    dkim: Dkim
    signup: Signup
    sponsors: Mapping[str, Sponsor]
    default_sponsor: str | None
    workers: Workers = Workers()
    bounces: Bounces = Bounces()
    check: Check = Check()
    console: ConsoleSettings = ConsoleSettings()
    # [smtp.<name>] tables: more servers sharing the sending; unset keys are [smtp]'s.
    smtp_servers: Mapping[str, Smtp] = field(default_factory=dict)
    # [segments]: a name for a segment expression (`send --all --segment vip`).
    segments: Mapping[str, str] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def templates_dir(self) -> Path:
        return self.root / self.paths.templates

    @property
    def issues_dir(self) -> Path:
        return self.root / self.paths.issues

    @property
    def output_dir(self) -> Path:
        return self.root / self.paths.output

    @property
    def database_url(self) -> str:
        """The database URL with a relative SQLite path resolved against the config file."""
        url = self.database.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/"):
            rest = url[len(prefix) :]
            if rest and rest != ":memory:":
                return prefix + str(self.root / rest)
        return url

    def segment(self, text: str) -> Segment:
        """`--segment TEXT`: a name in [segments], else an expression (SegmentError)."""
        return resolve_segment(text, self.segments)

    def sponsor(self, sponsor_id: str) -> Sponsor:
        try:
            return self.sponsors[sponsor_id]
        except KeyError:
            raise ConfigError(
                f"{self.path}: unknown sponsor {sponsor_id!r}"
                f"{did_you_mean(sponsor_id, self.sponsors)}"
            ) from None


# Every [smtp] wait, in seconds: each positive and at most MAX_SECONDS.
SMTP_TIMEOUTS = (
    "timeout",
    "greeting_timeout",
    "mail_timeout",
    "rcpt_timeout",
    "data_timeout",
    "block_timeout",
    "dot_timeout",
)


def did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
