"""`newsletter doctor`: check a publication's setup, one line per check, sending nothing.

Each check says ok, warn or fail. A fail means a send would not work (or not
safely); a warn means it would, with something worth fixing. Nothing is created
or changed: no tables, no secret file, no message (the SMTP check stops at QUIT).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from newsletter import config as config_mod
from newsletter.errors import NewsletterError
from newsletter.hosts import is_loopback
from newsletter.issue import publish
from newsletter.issue.content import Issue
from newsletter.ledger import store
from newsletter.mail import dkim, transport

OK = "ok"
WARN = "warn"
FAIL = "fail"
LEVELS = (OK, WARN, FAIL)


@dataclass(frozen=True)
class Check:
    level: str  # OK, WARN or FAIL
    name: str  # what was checked: config, templates, database, password, smtp, base_url
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"check": self.name, "level": self.level, "message": self.message}


def run(
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    lookup_txt: Callable[[str], list[str]] | None = None,
) -> Iterator[Check]:
    """The checks, in order, as they finish (the SMTP one can take up to [smtp] timeout).

    `lookup_txt` finds the DKIM record (default: the DNS; the tests give their own).

    Without a valid config nothing else can be checked: the config check is the only one.
    """
    environ = os.environ if environ is None else environ
    try:
        path = config_path or config_mod.find_config()
        config = config_mod.load(path, environ)
    except NewsletterError as exc:
        yield Check(FAIL, "config", str(exc))
        return
    yield Check(OK, "config", f"{config.path} is valid")
    yield check_templates(config)
    yield check_database(config)
    password_check = check_password(config, environ)
    if password_check is not None:
        yield password_check
    yield check_smtp(config, have_password=password_check is None or password_check.level == OK)
    yield check_base_url(config)
    if config.dkim.domain:
        yield check_dkim(config, lookup_txt or lookup_dns_txt)


def summary(checks: list[Check]) -> str:
    counts = {level: sum(c.level == level for c in checks) for level in LEVELS}
    return f"{counts[OK]} ok, {counts[WARN]} warning(s), {counts[FAIL]} failure(s)"


def failed(checks: list[Check]) -> bool:
    return any(c.level == FAIL for c in checks)


# --- templates ------------------------------------------------------------------------


def check_templates(config: config_mod.Config) -> Check:
    """Build the newest issue (or a placeholder when there is none) through the templates."""
    newest = _newest_issue(config.issues_dir)
    try:
        issue = publish.load_issue(newest) if newest else _placeholder_issue(config)
        built = publish.build_issue(config, issue)
    except NewsletterError as exc:
        return Check(FAIL, "templates", str(exc))
    what = _shown(newest, config.root) if newest else "a placeholder issue (issues/ has none)"
    size = len(built.html.source.encode("utf-8")) / 1024
    return Check(OK, "templates", f"{what} renders to HTML ({size:.0f} KB) and text")


def _newest_issue(folder: Path) -> Path | None:
    # Issue files are named YYYY-MM-DD-slug.md, so the last name is the newest issue.
    issues = sorted(folder.glob("*.md")) if folder.is_dir() else []
    return issues[-1] if issues else None


def _placeholder_issue(config: config_mod.Config) -> Issue:
    return Issue(
        path=config.issues_dir / "doctor.md",
        slug="doctor",
        date=dt.date.today(),
        title="Doctor's check",
        subject="Doctor's check",
        body="A paragraph with a [link](https://example.com).\n",
    )


def _shown(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return str(path)


# --- database -------------------------------------------------------------------------


def check_database(config: config_mod.Config) -> Check:
    """Reachable and at this tool's schema version; an empty database is fine (warn)."""
    url = config.database_url
    try:
        file = store.sqlite_file(url)
    except NewsletterError as exc:
        return Check(FAIL, "database", str(exc))
    shown = store.shown_url(url)
    not_yet = "not created yet; it will be on first use"
    if file is not None:
        # Connecting would create the file: look before touching it.
        shown = f"{file} (SQLite)"
        if not file.parent.is_dir():
            return Check(FAIL, "database", f"{shown}: the folder {file.parent} does not exist")
        if not file.exists():
            return Check(WARN, "database", f"{shown}: {not_yet}")
    try:
        state = store.Store.schema_state(url)  # changes nothing, unlike opening the store
    except NewsletterError as exc:
        return Check(FAIL, "database", f"{shown}: {exc}")
    if state.revision is None:
        return Check(WARN, "database", f"{shown}: reachable, tables {not_yet}")
    if not state.is_head:
        return Check(
            WARN,
            "database",
            f"{shown}: schema revision {state.revision}; the next command upgrades it to"
            f" {state.head} (or run `newsletter db upgrade`)",
        )
    try:
        opened = store.Store.open(url, create=False)
        try:
            subscribers = opened.count_subscribers()
        finally:
            opened.close()
    except NewsletterError as exc:
        return Check(FAIL, "database", str(exc))
    return Check(
        OK,
        "database",
        f"{shown}: schema revision {state.revision} (current), {subscribers} active subscriber(s)",
    )


# --- SMTP -----------------------------------------------------------------------------


def check_password(config: config_mod.Config, environ: Mapping[str, str]) -> Check | None:
    """The password variable, when there is a login; None when there is none."""
    smtp = config.smtp
    if not smtp.username:
        return None
    if not smtp.password_env:
        return Check(
            FAIL,
            "password",
            f"[smtp] password_env: empty; name the environment variable that holds the"
            f" password for {smtp.username!r}",
        )
    if not environ.get(smtp.password_env):
        return Check(
            FAIL, "password", f"{smtp.password_env} is not set ([smtp] password_env names it)"
        )
    return Check(OK, "password", f"{smtp.password_env} is set")


def check_smtp(config: config_mod.Config, have_password: bool = True) -> Check:
    """Connect, EHLO, STARTTLS/TLS as configured (certificate verified), log in, QUIT."""
    smtp = config.smtp
    where = f"{smtp.host}:{smtp.port}"
    if smtp.ca_file and not (config.root / smtp.ca_file).is_file():
        return Check(FAIL, "smtp", f"[smtp] ca_file: {config.root / smtp.ca_file}: no such file")
    login = bool(smtp.username) and have_password
    if not login:
        # Without a password, still check the connection and TLS; only the login is left out.
        config = dataclasses.replace(config, smtp=dataclasses.replace(smtp, username=""))
    try:
        connection = transport.SmtpConnection(transport.SmtpSettings.from_config(config))
        connection.connect()
        connection.close()
    except transport.SmtpError as exc:
        return Check(FAIL, "smtp", f"{exc}{_smtp_hint(config, str(exc))}")
    steps = ["connected", "EHLO accepted"]
    if smtp.security == "starttls":
        steps.append("STARTTLS with a verified certificate")
    elif smtp.security == "tls":
        steps.append("TLS with a verified certificate")
    if login:
        steps.append(f"login as {smtp.username!r} accepted")
    elif smtp.username:
        steps.append("login not tried (no password)")
    message = f"{where}: {', '.join(steps)}; nothing sent"
    if smtp.username and not login:
        return Check(WARN, "smtp", message)
    if smtp.security == "none" and not is_loopback(smtp.host):
        return Check(
            WARN,
            "smtp",
            f"{message}; but mail{' and password' if login else ''} travel unencrypted"
            ' ([smtp] security = "none"; use starttls or tls)',
        )
    return Check(OK, "smtp", message)


def _smtp_hint(config: config_mod.Config, error: str) -> str:
    smtp = config.smtp
    if "CERTIFICATE_VERIFY_FAILED" in error and not smtp.ca_file:
        return (
            " (a self-signed or private certificate? name its CA in [smtp] ca_file;"
            " verification is never switched off)"
        )
    if "cannot connect" in error and is_loopback(smtp.host):
        return " (for a local test, run `newsletter smtpd` in another terminal)"
    return ""


# --- links ----------------------------------------------------------------------------


def check_base_url(config: config_mod.Config) -> Check:
    """Unsubscribe and view-online links start with base_url: it should be https."""
    url = config.publication.base_url
    if not url:
        return Check(
            WARN,
            "base_url",
            "[publication] base_url is empty: unsubscribe and view-online links will not work",
        )
    if not url.startswith("https://"):
        return Check(
            WARN,
            "base_url",
            f"{url}: not https; unsubscribe and view-online links travel unencrypted",
        )
    return Check(OK, "base_url", f"{url} is https")


# --- DKIM -----------------------------------------------------------------------------


class DnsLookupError(Exception):
    """The DNS could not answer (no resolver, timeout): not the same as "no record"."""


def check_dkim(config: config_mod.Config, lookup_txt: Callable[[str], list[str]]) -> Check:
    """The private key is readable, and the record its selector names publishes that key."""
    try:
        signer = dkim.DkimSigner.from_config(config)
    except NewsletterError as exc:
        return Check(FAIL, "dkim", str(exc))
    assert signer is not None  # [dkim] domain is set
    name = f"{signer.selector}._domainkey.{signer.domain}"
    published = _dkim_tags(dkim.dns_value(signer.key.public_key()))["p"]
    try:
        records = [_dkim_tags(text) for text in lookup_txt(name)]
    except DnsLookupError as exc:
        return Check(
            WARN, "dkim", f"{signer.algorithm} key readable; cannot look up {name}: {exc}"
        )
    keys = [r for r in records if r.get("v", "DKIM1") == "DKIM1" and "p" in r]
    if not keys:
        return Check(
            FAIL,
            "dkim",
            f"no DKIM record at {name}: publish the one `newsletter dkim keygen` printed for"
            " this key (receivers cannot check the signatures until then)",
        )
    if not any(r["p"] == published for r in keys):
        return Check(
            FAIL,
            "dkim",
            f"{name} publishes another key than the one in [dkim]"
            " (a new key needs a new selector, or the record updated)",
        )
    return Check(OK, "dkim", f"{name} publishes the {signer.algorithm} key that signs")


def _dkim_tags(record: str) -> dict[str, str]:
    """'v=DKIM1; k=rsa; p=MII...' -> {'v': 'DKIM1', 'k': 'rsa', 'p': 'MII...'} (spaces dropped)."""
    tags = {}
    for part in record.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            tags[key.strip()] = "".join(value.split())
    return tags


def lookup_dns_txt(name: str) -> list[str]:
    """The TXT records at `name` ([] when there is none), each one's strings joined."""
    import dns.exception
    import dns.resolver

    try:
        answer = dns.resolver.resolve(name, "TXT", lifetime=5.0)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as exc:
        raise DnsLookupError(str(exc) or type(exc).__name__) from None
    return [b"".join(rdata.strings).decode("ascii", "replace") for rdata in answer]
