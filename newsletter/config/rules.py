"""What makes a configuration valid beyond its types: addresses, URLs, zones, durations,
header values; each refusal one line naming the file and the key."""

from __future__ import annotations

import email.errors
import email.policy
import ipaddress
import re
import zoneinfo
from collections.abc import Mapping
from email.utils import parseaddr
from pathlib import Path

from newsletter.config.sections import (
    DKIM_ALGORITHMS,
    MAX_SECONDS,
    MAX_SECONDS_TEXT,
    SMTP_TIMEOUTS,
    Bounces,
    Config,
    ConsoleSettings,
    Signup,
    Smtp,
    Workers,
    parse_duration,
)
from newsletter.errors import ConfigError
from newsletter.segments import SEGMENT_NAME, SegmentError, parse

# Refused in every header value: Unicode's controls (Cc: C0, DEL, C1 with NEL) and its
# line and paragraph separators (Zl, Zp). CR and LF would start a header of their own;
# the rest are line ends to some parsers (Python's str.splitlines among them), or a
# string cut short (NUL), or invisible in a mail client. message.py uses the same rule.
HEADER_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


_HEADER_BREAKS = {
    "\r": "a line break",
    "\n": "a line break",
    "\u2028": "a line separator",
    "\u2029": "a paragraph separator",
}


def header_value_problem(value: str) -> str | None:
    """Why `value` cannot go into a header, e.g. "must not contain a line break (U+000A)";
    None if it can."""
    match = HEADER_FORBIDDEN.search(value)
    if match is None:
        return None
    char = match.group()
    what = _HEADER_BREAKS.get(char, "a control character")
    return f"must not contain {what} (U+{ord(char):04X})"


_SMTP_SECURITY = ("none", "starttls", "tls")


def _sender_problem(value: str) -> str | None:
    """Why `value` cannot be the From: of every issue; None if it is exactly one mailbox.

    RFC 5322 allows several authors, or a group, in From:, but a newsletter has one sender:
    the address that DKIM, DMARC and replies are matched against. The email package's own
    parser decides what the header holds, so this agrees with what the message will say.
    """
    try:
        header = email.policy.default.header_factory("From", value)
    except Exception:  # the parser itself fails on some input ("a@" raises IndexError)
        return "not an email address"
    if any(group.display_name is not None for group in header.groups):
        return "a group ('name: addresses;') cannot be the sender; expected one address"
    if len(header.addresses) > 1:
        return f"expected one address, got {len(header.addresses)}"
    invalid = any(isinstance(d, email.errors.InvalidHeaderDefect) for d in header.defects)
    if invalid or not header.addresses or not header.addresses[0].domain:
        return "not an email address"
    return None


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# [database] mark_ahead: the rows a connection may leave in doubt after a crash. More
# than a few hundred saves nothing more (a commit per hundred messages is cheap already).
MAX_MARK_AHEAD = 1000


def validate(config: Config) -> None:
    path = config.path
    pub = config.publication
    for key, value in (
        ("name", pub.name),
        ("from", pub.from_addr),
        ("reply_to", pub.reply_to),
        ("list_id", pub.list_id),
    ):
        problem = header_value_problem(value)
        if problem:
            raise ConfigError(f"{path}: [publication] {key}: {problem}")
    problem = _sender_problem(pub.from_addr)
    if problem:
        raise ConfigError(f"{path}: [publication] from: {problem}: {pub.from_addr!r}")
    if pub.reply_to and "@" not in parseaddr(pub.reply_to)[1]:
        raise ConfigError(
            f"{path}: [publication] reply_to: not an email address: {pub.reply_to!r}"
        )
    if pub.base_url and not re.match(r"^https?://[^/\s]+", pub.base_url):
        raise ConfigError(
            f"{path}: [publication] base_url: expected an http(s) URL, got {pub.base_url!r}"
        )
    try:
        zoneinfo.ZoneInfo(pub.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{path}: [publication] timezone: unknown time zone {pub.timezone!r}"
        ) from None
    for key, name in (
        ("secret_env", pub.secret_env),
        ("previous_secrets_env", pub.previous_secrets_env),
    ):
        if name and not _ENV_NAME.fullmatch(name):
            raise ConfigError(
                f"{path}: [publication] {key}: expected an environment variable's name,"
                f" got {name!r}"
            )
    if pub.previous_secrets_env and pub.previous_secrets_env == pub.secret_env:
        raise ConfigError(
            f"{path}: [publication] previous_secrets_env: names the same variable as"
            f" secret_env ({pub.secret_env}); older secrets need a variable of their own"
        )
    if not 1 <= config.database.mark_ahead <= MAX_MARK_AHEAD:
        raise ConfigError(
            f"{path}: [database] mark_ahead: expected a number of rows from 1 to"
            f" {MAX_MARK_AHEAD}, got {config.database.mark_ahead}"
        )
    _validate_smtp(path, "smtp", config.smtp)
    for name, server in config.smtp_servers.items():
        _validate_smtp(path, f"smtp.{name}", server)
    _validate_workers(path, config.workers)
    _validate_bounces(path, config.bounces)
    _validate_signup(path, config.signup)
    _validate_segments(path, config.segments)
    _validate_console(path, config.console)
    if config.check.spam_max < 0:
        raise ConfigError(f"{path}: [check] spam_max: must not be negative")
    if config.tracking.clicks not in ("sponsor", "all", "off"):
        raise ConfigError(
            f"{path}: [tracking] clicks: expected sponsor, all or off,"
            f" got {config.tracking.clicks!r}"
        )
    dkim = config.dkim
    if dkim.domain:
        if not dkim.selector:
            raise ConfigError(f"{path}: [dkim] selector: required when [dkim] domain is set")
        if dkim.algorithm not in DKIM_ALGORITHMS:
            raise ConfigError(
                f"{path}: [dkim] algorithm: expected rsa-sha256 or ed25519-sha256,"
                f" got {dkim.algorithm!r}"
            )
    for where, key, value in (
        ("schedule", "max_late", config.schedule.max_late),
        ("schedule", "give_up_after", config.schedule.give_up_after),
        ("tracking", "dedupe_window", config.tracking.dedupe_window),
        ("signup", "throttle", config.signup.throttle),
        ("signup", "confirm_within", config.signup.confirm_within),
    ):
        try:
            parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"{path}: [{where}] {key}: {exc}, got {value!r}") from None
    for sponsor in config.sponsors.values():
        if sponsor.weight < 1:
            raise ConfigError(f"{path}: [sponsors.{sponsor.id}] weight: must be 1 or more")
        if sponsor.start and sponsor.end and sponsor.end < sponsor.start:
            raise ConfigError(f"{path}: [sponsors.{sponsor.id}] end: before start")
        if not re.match(r"^https?://", sponsor.url):
            raise ConfigError(
                f"{path}: [sponsors.{sponsor.id}] url: expected an http(s) URL,"
                f" got {sponsor.url!r}"
            )
        if sponsor.phone_country_code and not re.fullmatch(
            r"\+?[1-9][0-9]{0,2}", sponsor.phone_country_code
        ):
            raise ConfigError(
                f"{path}: [sponsors.{sponsor.id}] phone_country_code: expected a calling code"
                f' such as "1" or "+44", got {sponsor.phone_country_code!r}'
            )


# An argon2 hash in its PHC string form, as argon2-cffi writes it:
# $argon2id$v=19$m=65536,t=3,p=4$<salt>$<hash>
_ARGON2_HASH = re.compile(
    r"\$argon2(id|i|d)\$v=\d+\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+"
)


def _validate_console(path: Path, console: ConsoleSettings) -> None:
    value = console.password_hash
    if value and not _ARGON2_HASH.fullmatch(value):
        shown = value if value.startswith("$") else "(not shown: it may be a password)"
        raise ConfigError(
            f"{path}: [console] password_hash: expected an argon2 hash such as"
            f" '$argon2id$v=19$m=65536,t=3,p=4$...' (make one with `newsletter console"
            f" --hash-password`), got {shown}"
        )


def _validate_smtp(path: Path, where: str, smtp: Smtp) -> None:
    if smtp.security not in _SMTP_SECURITY:
        raise ConfigError(
            f"{path}: [{where}] security: expected one of {', '.join(_SMTP_SECURITY)},"
            f" got {smtp.security!r}"
        )
    if not 0 < smtp.port < 65536:
        raise ConfigError(f"{path}: [{where}] port: out of range: {smtp.port}")
    for key in SMTP_TIMEOUTS:
        seconds = getattr(smtp, key)
        if seconds <= 0:
            raise ConfigError(f"{path}: [{where}] {key}: must be positive, got {seconds:g}")
        _check_not_too_long(path, where, key, seconds)
    if smtp.concurrency < 1:
        raise ConfigError(f"{path}: [{where}] concurrency: must be at least 1")
    if smtp.retries < 0 or smtp.retry_delay < 0:
        raise ConfigError(f"{path}: [{where}] retries and retry_delay: must not be negative")
    _check_not_too_long(path, where, "retry_delay", smtp.retry_delay)
    if smtp.rate < 0:
        raise ConfigError(f"{path}: [{where}] rate: must be 0 (unlimited) or positive")


_BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps", "pyamqp")


def _validate_workers(path: Path, workers: Workers) -> None:
    scheme = workers.broker.partition("://")[0]
    if workers.broker and scheme not in _BROKER_SCHEMES:
        raise ConfigError(
            f"{path}: [workers] broker: expected a redis://... or amqp://... URL,"
            f" got {scheme + '://...' if '://' in workers.broker else repr(workers.broker)}"
        )
    if not workers.queue.strip():
        raise ConfigError(f"{path}: [workers] queue: must not be empty")
    if workers.batch_size < 1:
        raise ConfigError(f"{path}: [workers] batch_size: must be at least 1")
    if workers.lease < 1:
        raise ConfigError(f"{path}: [workers] lease: must be at least 1 second")
    _check_not_too_long(path, "workers", "lease", workers.lease)


def _check_not_too_long(path: Path, where: str, key: str, seconds: float) -> None:
    """Each key checks its own lower bound; the upper one, MAX_SECONDS, is the same for all."""
    if seconds > MAX_SECONDS:
        raise ConfigError(
            f"{path}: [{where}] {key}: too long: {MAX_SECONDS_TEXT}, got {seconds:g} seconds"
        )


# RFC 9110 section 5.1: a field name is a token.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _validate_signup(path: Path, signup: Signup) -> None:
    for key in ("client_per_hour", "per_hour", "queue_size"):
        if getattr(signup, key) < 1:
            raise ConfigError(
                f"{path}: [signup] {key}: must be at least 1, got {getattr(signup, key)}"
            )
    for proxy in signup.trusted_proxies:
        try:
            ipaddress.ip_network(proxy)
        except ValueError:
            raise ConfigError(
                f"{path}: [signup] trusted_proxies: expected IP addresses or networks like"
                f" 127.0.0.1 or 10.0.0.0/8, got {proxy!r}"
            ) from None
    if signup.client_header and not _HEADER_NAME.fullmatch(signup.client_header):
        raise ConfigError(
            f"{path}: [signup] client_header: expected a header name like X-Forwarded-For,"
            f" got {signup.client_header!r}"
        )
    if signup.trusted_proxies and not signup.client_header:
        raise ConfigError(
            f"{path}: [signup] client_header: required with trusted_proxies (the header"
            " in which they name the client, e.g. X-Forwarded-For)"
        )


_IMAP_SECURITY = ("tls", "starttls", "none")


def _validate_bounces(path: Path, bounces: Bounces) -> None:
    if bounces.address:
        problem = header_value_problem(bounces.address)
        local, at, domain = bounces.address.rpartition("@")
        if problem or not at or not local or "." not in domain or "+" in local:
            raise ConfigError(
                f"{path}: [bounces] address: expected a plain address like"
                f" bounces@news.example.org (no '+': VERP adds it), got {bounces.address!r}"
            )
    if bounces.soft_limit < 1 or bounces.soft_days < 1:
        raise ConfigError(f"{path}: [bounces] soft_limit and soft_days: must be at least 1")
    if bounces.imap_security not in _IMAP_SECURITY:
        raise ConfigError(
            f"{path}: [bounces] imap_security: expected one of {', '.join(_IMAP_SECURITY)},"
            f" got {bounces.imap_security!r}"
        )
    if not 0 < bounces.imap_port < 65536:
        raise ConfigError(f"{path}: [bounces] imap_port: out of range: {bounces.imap_port}")
    if bounces.imap_username and not bounces.imap_password_env:
        raise ConfigError(
            f"{path}: [bounces] imap_password_env: name the environment variable that holds"
            f" the password for {bounces.imap_username!r}"
        )
    # arn:partition:sns:region:account-id:topic-name; a topic name is up to 256 letters,
    # digits, '-' and '_' (SNS CreateTopic), with '.fifo' for a FIFO topic.
    topic_arn = r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?"
    for arn in bounces.ses_topic_arns:
        if not re.fullmatch(topic_arn, arn):
            raise ConfigError(
                f"{path}: [bounces] ses_topic_arns: expected SNS topic ARNs like"
                f" arn:aws:sns:us-east-1:123456789012:ses-bounces, got {arn!r}"
            )
    if bounces.postmark_username and not bounces.postmark_password_env:
        raise ConfigError(
            f"{path}: [bounces] postmark_password_env: name the environment variable that"
            f" holds the webhook password for {bounces.postmark_username!r}"
        )
    if bounces.postmark_password_env and not bounces.postmark_username:
        raise ConfigError(
            f"{path}: [bounces] postmark_username: required with postmark_password_env"
            " (the webhook's basic-auth user name)"
        )
    if ":" in bounces.postmark_username:
        # RFC 7617 section 2: the user-id of basic auth cannot contain a colon.
        raise ConfigError(f"{path}: [bounces] postmark_username: must not contain ':'")


def _validate_segments(path: Path, segments: Mapping[str, str]) -> None:
    """Each [segments] entry is a name and an expression that parses, checked on load
    so that a send never finds out at its own time."""
    for name, expression in segments.items():
        if not SEGMENT_NAME.fullmatch(name) or name.lower() in ("and", "or", "not"):
            raise ConfigError(
                f"{path}: [segments] {name}: a segment name is letters, digits, '-' or '_'"
            )
        if not isinstance(expression, str):
            raise ConfigError(
                f"{path}: [segments] {name}: expected a string (an expression such as"
                f' "tag:vip and not tag:churned"), got {expression!r}'
            )
        try:
            parse(expression)
        except SegmentError as exc:
            raise ConfigError(f"{path}: [segments] {name}: {exc}") from None
