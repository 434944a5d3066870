"""Read newsletter.toml once into frozen objects.

Every key is checked here, when the file is read, and every message names the
file and the key. After loading, the rest of the code trusts the Config.

Any key can be overridden from the environment as NEWSLETTER_<SECTION>_<KEY>
(for example NEWSLETTER_SMTP_PORT=2525, NEWSLETTER_SPONSORS_HELLOSHUTTLE_PHONE).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import email.errors
import email.policy
import math
import os
import re
import tomllib
import types
import typing
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from newsletter.errors import ConfigError
from newsletter.fileio import read_text

CONFIG_NAME = "newsletter.toml"
ENV_CONFIG = "NEWSLETTER_CONFIG"
ENV_PREFIX = "NEWSLETTER_"

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


@dataclass(frozen=True)
class Paths:
    templates: str = "templates"
    issues: str = "issues"
    output: str = "build"


@dataclass(frozen=True)
class Database:
    url: str = "sqlite:///newsletter.db"


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
_MAX_SECONDS_TEXT = f"at most 100 years ({MAX_SECONDS // 86400}d)"
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
        raise ValueError(f"too long: {_MAX_SECONDS_TEXT}")
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


@dataclass(frozen=True)
class Preview:
    """The preview's "Send test" button sends to these; without them it is absent."""

    test_recipients: tuple[str, ...] = ()


@dataclass(frozen=True)
class Signup:
    """The signup form of `newsletter serve`: double opt-in, throttled per address."""

    enabled: bool = True
    throttle: str = "10m"  # at most one confirmation message per address this often
    confirm_within: str = "7d"  # how long a confirmation link works

    @property
    def throttle_seconds(self) -> int:
        return parse_duration(self.throttle)

    @property
    def confirm_within_seconds(self) -> int:
        return parse_duration(self.confirm_within)


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
    # [smtp.<name>] tables: more servers sharing the sending; unset keys are [smtp]'s.
    smtp_servers: Mapping[str, Smtp] = field(default_factory=dict)

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

    def sponsor(self, sponsor_id: str) -> Sponsor:
        try:
            return self.sponsors[sponsor_id]
        except KeyError:
            raise ConfigError(
                f"{self.path}: unknown sponsor {sponsor_id!r}"
                f"{_did_you_mean(sponsor_id, self.sponsors)}"
            ) from None


_SECTIONS: dict[str, type] = {
    "publication": Publication,
    "paths": Paths,
    "database": Database,
    "smtp": Smtp,
    "schedule": Schedule,
    "utm": Utm,
    "sample": Sample,
    "preview": Preview,
    "tracking": Tracking,
    "dkim": Dkim,
    "signup": Signup,
    "workers": Workers,
}
_SMTP_SECURITY = ("none", "starttls", "tls")
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
_SPONSOR_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_TOO_DEEP = "arrays or inline tables nested too deeply"


def find_config(start: Path | None = None) -> Path:
    """NEWSLETTER_CONFIG if set, else newsletter.toml here or in a parent folder."""
    env = os.environ.get(ENV_CONFIG)
    if env:
        return Path(env)
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_NAME
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"no {CONFIG_NAME} here or above {here}; run `newsletter init` to create one,"
        " or pass --config PATH"
    )


def load(path: Path | str, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the configuration file, applying environment overrides."""
    path = Path(path)
    environ = os.environ if environ is None else environ
    # read_text names the line of a bad byte and drops a BOM, which tomllib rejects.
    raw_text = read_text(path, ConfigError)
    try:
        data = tomllib.loads(raw_text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:
        # tomllib reads arrays and inline tables recursively: a value nested some thousand
        # levels deep ("a = [[[[...") runs out of stack before anything else is wrong.
        raise ConfigError(f"{path}: invalid TOML: {_TOO_DEEP}") from None
    return _build(path.resolve(), data, environ)


def _build(path: Path, data: dict[str, Any], environ: Mapping[str, str]) -> Config:
    known = [*_SECTIONS, "sponsors"]
    for section in data:
        if section not in known:
            raise ConfigError(
                f"{path}: unknown section [{section}]{_did_you_mean(section, known)}"
            )
        if not isinstance(data[section], dict):
            raise ConfigError(f"{path}: {section} must be a table ([{section}])")
    if "publication" not in data:
        raise ConfigError(f"{path}: missing section [publication]")

    smtp_tables = {k: v for k, v in data.get("smtp", {}).items() if isinstance(v, dict)}
    data = {
        **data,
        "smtp": {k: v for k, v in data.get("smtp", {}).items() if k not in smtp_tables},
    }
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        sections[name] = _section(path, name, cls, data.get(name, {}), environ)
    servers = _smtp_servers(path, sections["smtp"], smtp_tables, environ)

    sponsors, default = _sponsors(path, data.get("sponsors", {}), environ)
    config = Config(
        path=path, sponsors=sponsors, default_sponsor=default, smtp_servers=servers, **sections
    )
    _validate(config)
    return config


def _smtp_servers(
    path: Path, base: Smtp, tables: dict[str, Any], environ: Mapping[str, str]
) -> dict[str, Smtp]:
    inherited = {key: getattr(base, f.name) for key, f in _fields(Smtp).items()}
    servers = {}
    for name, values in tables.items():
        if not _SPONSOR_ID.match(name):
            raise ConfigError(
                f"{path}: [smtp.{name}]: a server name is lowercase letters, digits, '-' or '_'"
            )
        servers[name] = _section(path, f"smtp.{name}", Smtp, {**inherited, **values}, environ)
    return servers


def _fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.metadata.get("key", f.name): f for f in dataclasses.fields(cls)}


def _section(
    path: Path,
    where: str,
    cls: type,
    values: dict[str, Any],
    environ: Mapping[str, str],
    fixed: dict[str, Any] | None = None,
) -> Any:
    fields = _fields(cls)
    hints = typing.get_type_hints(cls)
    settable = [k for k in fields if k not in (fixed or {})]
    for key in values:
        if key not in settable:
            raise ConfigError(
                f"{path}: unknown key {key!r} in [{where}]{_did_you_mean(key, settable)}"
            )
    kwargs: dict[str, Any] = dict(fixed or {})
    env_section = where.replace(".", "_").upper()
    for key in settable:
        f = fields[key]
        expected = hints[f.name]
        env_name = f"{ENV_PREFIX}{env_section}_{key.upper()}"
        if env_name in environ:
            value = _from_env(path, env_name, environ[env_name], expected)
            label = f"{env_name} (overriding [{where}] {key})"
        elif key in values:
            value = values[key]
            label = f"[{where}] {key}"
        else:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{path}: missing key {key!r} in [{where}]")
            continue
        kwargs[f.name] = _coerce(path, label, value, expected)
    return cls(**kwargs)


def _from_env(path: Path, name: str, text: str, expected: Any) -> Any:
    if expected is str:
        return text
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        # Not a TOML literal: let _coerce report the type mismatch.
        return text
    except RecursionError:
        raise ConfigError(f"{path}: {name}: {_TOO_DEEP}") from None


def _coerce(path: Path, label: str, value: Any, expected: Any) -> Any:
    origin = typing.get_origin(expected)
    if expected is float and isinstance(value, int | float) and not isinstance(value, bool):
        # TOML has nan and inf (and integers of any size, which float() may not hold): no
        # number of seconds or messages per second is either, and every comparison with
        # nan is false, so `timeout <= 0` would let it through.
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{path}: {label}: expected a finite number, got {value!r}")
        return number
    if expected in (str, int, float, bool):
        if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
            return value
        raise ConfigError(
            f"{path}: {label}: expected {_type_name(expected)}, got {_type_name(type(value))}"
            f" {value!r}"
        )
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{path}: {label}: expected a list of strings, got {value!r}")
    if expected is dt.date:
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: {label}: expected a date like 2026-12-01, got {value!r}")
    if origin in (types.UnionType, typing.Union):
        inner = [t for t in typing.get_args(expected) if t is not type(None)]
        return _coerce(path, label, value, inner[0])
    raise AssertionError(f"unsupported config type {expected!r}")


def _type_name(tp: Any) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "a table",
    }.get(tp, tp.__name__)


def _sponsors(
    path: Path, data: dict[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, Sponsor], str | None]:
    sponsors: dict[str, Sponsor] = {}
    default = environ.get(f"{ENV_PREFIX}SPONSORS_DEFAULT", data.get("default"))
    for sponsor_id, values in data.items():
        if sponsor_id == "default":
            continue
        if not isinstance(values, dict):
            raise ConfigError(
                f"{path}: [sponsors] {sponsor_id}: expected a table [sponsors.{sponsor_id}]"
                f" or the key 'default'"
            )
        if not _SPONSOR_ID.match(sponsor_id) or sponsor_id == "none":
            raise ConfigError(
                f"{path}: [sponsors.{sponsor_id}]: a sponsor id is lowercase letters, digits,"
                " '-' or '_', and not 'none'"
            )
        sponsors[sponsor_id] = _section(
            path, f"sponsors.{sponsor_id}", Sponsor, values, environ, fixed={"id": sponsor_id}
        )
    if default is not None:
        if not isinstance(default, str):
            raise ConfigError(f"{path}: [sponsors] default: expected a string, got {default!r}")
        if default == "none":
            default = None
        elif default not in sponsors:
            raise ConfigError(
                f"{path}: [sponsors] default: unknown sponsor {default!r}"
                f"{_did_you_mean(default, sponsors)}"
            )
    elif len(sponsors) == 1:
        default = next(iter(sponsors))
    elif sponsors:
        raise ConfigError(f"{path}: [sponsors] default: missing; name one of {sorted(sponsors)}")
    return sponsors, default


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


def _validate(config: Config) -> None:
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
    _validate_smtp(path, "smtp", config.smtp)
    for name, server in config.smtp_servers.items():
        _validate_smtp(path, f"smtp.{name}", server)
    _validate_workers(path, config.workers)
    if config.tracking.clicks not in ("sponsor", "all", "off"):
        raise ConfigError(
            f"{path}: [tracking] clicks: expected sponsor, all or off,"
            f" got {config.tracking.clicks!r}"
        )
    dkim = config.dkim
    if dkim.domain:
        if not dkim.selector:
            raise ConfigError(f"{path}: [dkim] selector: required when [dkim] domain is set")
        if dkim.algorithm not in ("rsa-sha256", "ed25519-sha256"):
            raise ConfigError(
                f"{path}: [dkim] algorithm: expected rsa-sha256 or ed25519-sha256,"
                f" got {dkim.algorithm!r}"
            )
    for where, key, value in (
        ("schedule", "max_late", config.schedule.max_late),
        ("schedule", "give_up_after", config.schedule.give_up_after),
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
            f"{path}: [{where}] {key}: too long: {_MAX_SECONDS_TEXT}, got {seconds:g} seconds"
        )


def _did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
