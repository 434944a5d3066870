"""`newsletter doctor`: check a publication's setup, one line per check, sending nothing.

Each check says ok, warn or fail. A fail means a send would not work (or not
safely); a warn means it would, with something worth fixing. Nothing is created
or changed: no tables, no secret file, no message (the SMTP check stops at QUIT).

The DNS checks (DKIM's record, SPF, DMARC: `dns_checks`) warn when the DNS cannot
answer, naming what could not be checked; SPF and DMARC findings are warnings at most.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path
from urllib.parse import urlsplit

from newsletter import addresses, tokens
from newsletter import config as config_mod
from newsletter.errors import NewsletterError
from newsletter.hosts import is_loopback
from newsletter.issue import publish
from newsletter.issue.content import Issue
from newsletter.issue.tracked_links import tracking_on
from newsletter.ledger import store
from newsletter.mail import dkim, transport
from newsletter.setup import dns_checks
from newsletter.setup.dns_checks import Dns, DnsLookup, DnsLookupError

OK = "ok"
WARN = "warn"
FAIL = "fail"
LEVELS = (OK, WARN, FAIL)


@dataclass(frozen=True)
class Check:
    level: str  # OK, WARN or FAIL
    name: str  # what was checked: config, templates, database, ..., dkim, spf, dmarc
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"check": self.name, "level": self.level, "message": self.message}


def run(
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    lookup: DnsLookup | None = None,
) -> Iterator[Check]:
    """The checks, in order, as they finish (the SMTP one can take up to [smtp] timeout).

    `lookup` asks the DNS for the DKIM, SPF and DMARC records (default: the system's
    resolver, `dns_checks.lookup_dns`; the tests give their own).

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
    yield check_secret(config, environ)
    yield check_base_url(config)
    yield check_domains(config)
    if tracking_on(config):
        yield check_click_server(config)
    dns = Dns(lookup or dns_checks.lookup_dns)
    if config.dkim.domain:
        yield check_dkim(config, dns)
    # Mail from a domain reserved for examples is a test: its DNS is not the user's.
    if not dns_checks.is_reserved(envelope_domain(config)):
        yield check_spf(config, dns)
    if not dns_checks.is_reserved(from_domain(config)):
        yield check_dmarc(config, dns)


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


def check_secret(config: config_mod.Config, environ: Mapping[str, str]) -> Check:
    """The signing secret (and the older ones that still verify) is long enough to guess
    at no cost; the secret file is read, never created."""
    pub = config.publication
    value = environ.get(pub.secret_env, "")
    where = pub.secret_env
    if not value:
        path = config.root / tokens.SECRET_FILE
        try:
            value = path.read_text(errors="replace").strip()
        except FileNotFoundError:
            return Check(
                OK,
                "secret",
                f"{pub.secret_env} is not set: a random secret will be made in {path} on"
                " first use (every machine that sends or serves needs the same one)",
            )
        except OSError as exc:
            return Check(FAIL, "secret", f"{path}: cannot read the signing secret: {exc}")
        where = str(path)
    problem = tokens.secret_problem(value.encode())
    if problem:
        return Check(FAIL, "secret", f"{where}: the signing secret is too short: {problem}")
    message = f"{where} holds a signing secret of {len(value.encode())} bytes"
    if pub.previous_secrets_env:
        older = tokens.previous_secrets_in(pub.previous_secrets_env, environ)
        message += f"; {len(older)} older one(s) in {pub.previous_secrets_env} still verify links"
        weak = tokens.weak_previous_secrets(pub.previous_secrets_env, environ)
        if weak:
            # It verifies the links signed with it before 32 bytes were required; anyone
            # who guesses it can forge one, until it is dropped from the list.
            return Check(
                WARN,
                "secret",
                f"{weak[0]}; it still verifies the links already sent with it, and anyone"
                " who guesses it can forge one: drop it once those links may stop working",
            )
    return Check(OK, "secret", message)


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


# --- one domain, and serve at base_url ------------------------------------------------


def check_domains(config: config_mod.Config) -> Check:
    """The sender, base_url and the List-Id in one registrable domain (RFC 7489 section
    3.2's organisational domain): else replies, unsubscribe and click links, or the
    list's identity, belong to another domain than the one that sends."""
    pub = config.publication
    named = {"the sender": from_domain(config)}
    host = (urlsplit(pub.base_url).hostname or "") if pub.base_url else ""
    if host:
        named["base_url"] = host
    if pub.list_id:
        named["List-Id"] = pub.list_id.strip("<> ").lower()
    organisations = {what: dns_checks.organisational_domain(d) for what, d in named.items()}
    if len(set(organisations.values())) == 1:
        (domain,) = set(organisations.values())
        names = list(named)
        listed = " and ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else names[0]
        return Check(OK, "domains", f"{listed} are all in {domain}")
    shown = ", ".join(f"{what} {named[what]} ({org})" for what, org in organisations.items())
    return Check(
        WARN,
        "domains",
        f"{shown}: not one domain; replies, unsubscribe and click links would go to a"
        " domain other than the sender's (set [publication] from, base_url and list_id"
        " in the domain you send from)",
    )


HEALTH_TIMEOUT = 3.0  # seconds: serve answers at once; a dead address should not hold doctor


def get_health(url: str, timeout: float) -> str:
    """What `url` answers to a GET (the first 200 bytes). Raises OSError when nothing
    answers, or with an HTTP error (urllib.error.HTTPError is one). Goes direct, not
    through a proxy from the environment: the question is whether serve answers there."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        return bytes(response.read(200)).decode("utf-8", "replace")


def check_click_server(config: config_mod.Config) -> Check:
    """With click tracking on, every tracked link leads through <base_url>/c/: `serve`
    must answer there, or the links readers click (the sponsor's) lead nowhere."""
    url = tokens.health_url(config)
    clicks = f'[tracking] clicks = "{config.tracking.clicks}"'
    try:
        answer = get_health(url, HEALTH_TIMEOUT)
    except urllib.error.HTTPError as exc:
        problem = f"it answers {exc.code}, not `newsletter serve`"
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        problem = f"nothing answers ({reason})"
    else:
        if answer.strip() == tokens.HEALTH_ANSWER:
            return Check(OK, "clicks", f"{clicks}: newsletter serve answers at {url}")
        problem = "something answers that is not `newsletter serve`"
    return Check(
        WARN,
        "clicks",
        f"{clicks}, and at {url} {problem}: run `newsletter serve` at base_url, or the"
        ' tracked links in every message lead nowhere (clicks = "off" sends direct links)',
    )


# --- DKIM -----------------------------------------------------------------------------


def check_dkim(config: config_mod.Config, dns: Dns) -> Check:
    """The private key is readable, and the record its selector names publishes that key."""
    try:
        signer = dkim.DkimSigner.from_config(config)
    except NewsletterError as exc:
        return Check(FAIL, "dkim", str(exc))
    assert signer is not None  # [dkim] domain is set
    name = f"{signer.selector}._domainkey.{signer.domain}"
    published = _dkim_tags(dkim.dns_value(signer.key.public_key()))["p"]
    try:
        records = [_dkim_tags(text) for text in dns.txt(name)]
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


# --- SPF and DMARC --------------------------------------------------------------------
# Warnings, never failures: the mail still goes out, and receivers weigh SPF and DMARC
# with the rest. A failure is for what cannot work at all.


def from_domain(config: config_mod.Config) -> str:
    """The domain of [publication] from, in A-labels: the one DMARC is about."""
    return _domain_of(parseaddr(config.publication.from_addr)[1])


def envelope_sender(config: config_mod.Config) -> str:
    """The envelope sender (MAIL FROM) that SPF checks: [bounces] address when set (its
    VERP addresses keep its domain), else the From address."""
    return config.bounces.address or parseaddr(config.publication.from_addr)[1]


def envelope_domain(config: config_mod.Config) -> str:
    return _domain_of(envelope_sender(config))


def _domain_of(address: str) -> str:
    try:
        address = addresses.ascii_domain(address)
    except ValueError:
        pass  # the config check has passed it; look it up as written
    return address.rpartition("@")[2].lower()


def check_spf(config: config_mod.Config, dns: Dns) -> Check:
    """The envelope domain's SPF record (RFC 7208) authorises the relay's addresses."""
    domain = envelope_domain(config)
    try:
        records = dns_checks.spf_records(domain, dns)
    except DnsLookupError as exc:
        return Check(WARN, "spf", f"cannot look up the SPF record of {domain}: {exc}")
    if not records:
        return Check(
            WARN,
            "spf",
            f"no SPF record at {domain} (the envelope domain): receivers cannot tell which"
            ' servers may send its mail; publish a TXT record "v=spf1 ... ~all" that names'
            " the relay",
        )
    if len(records) > 1:
        return Check(
            WARN,
            "spf",
            f"{domain} has {len(records)} SPF records: receivers take that as an error"
            " (permerror, RFC 7208 section 4.5); merge them into one",
        )
    level, verdicts = OK, []
    for host in dict.fromkeys(smtp.host for _, smtp in transport.servers(config)):
        host_level, verdict = _spf_verdict(host, envelope_sender(config), dns)
        verdicts.append(verdict)
        level = WARN if WARN in (level, host_level) else OK
    return Check(level, "spf", f'{domain}: "{records[0]}": {"; ".join(verdicts)}')


# What each RFC 7208 section 2.6 result means for the relay's mail, as doctor says it.
_SPF_MEANING = {
    "fail": "the record forbids it, and receivers may reject the mail",
    "softfail": "the record does not authorise it, and receivers may file the mail as spam",
    "neutral": "the record neither authorises nor forbids it",
    "none": "no SPF policy applies",
}
_SPF_HINT = (
    "add the relay (ip4:, ip6:, or the include: its provider documents; a provider may"
    " send from other addresses than its relay listens on)"
)


def _spf_verdict(host: str, sender: str, dns: Dns) -> tuple[str, str]:
    """(level, what SPF says of mail that the relay `host` sends for `sender`)."""
    try:
        found = dns_checks.relay_addresses(host, dns)
    except DnsLookupError as exc:
        return WARN, f"cannot look up the relay {host}: {exc}"
    if not found:
        return WARN, f"the relay {host} has no A or AAAA record, so it cannot be checked"
    if is_loopback(host) or all(dns_checks.is_local_address(a) for a in found):
        # A local relay hands the mail on to another server, whose address is what the
        # receivers see and check.
        return WARN, (
            f"the relay {host} is on this machine or network, so SPF sees the server it"
            " hands the mail on to: check that server's addresses against the record"
        )
    results = [dns_checks.evaluate_spf(address, sender, dns) for address in found]
    if all(r.result == "pass" for r in results):
        return OK, f"pass for the relay {host} ({', '.join(found)})"
    worst = next(r for r in results if r.result != "pass")
    if worst.result == "temperror":
        return WARN, f"cannot evaluate it for the relay {host}: {worst.explanation}"
    if worst.result == "permerror":
        return WARN, f"the record is broken ({worst.explanation}): receivers cannot use it"
    which = ", ".join(r.address for r in results if r.result == worst.result)
    by = f" ({worst.mechanism})" if worst.mechanism else ""
    meaning = _SPF_MEANING.get(worst.result, worst.explanation)
    return WARN, f"{worst.result}{by} for the relay {host} ({which}): {meaning}; {_SPF_HINT}"


def check_dmarc(config: config_mod.Config, dns: Dns) -> Check:
    """The From domain's DMARC record (RFC 7489): found, what it asks, and whether the
    DKIM signature or the envelope domain can align with From."""
    domain = from_domain(config)
    try:
        found = dns_checks.discover_dmarc(domain, dns)
    except DnsLookupError as exc:
        return Check(WARN, "dmarc", f"cannot look up the DMARC record of {domain}: {exc}")
    _, alignment = _alignment(config, domain, {})  # relaxed: RFC 7489 section 6.3 defaults
    if not found.records:
        return Check(
            WARN,
            "dmarc",
            f"no DMARC record at {' nor '.join(found.asked)}: receivers apply no policy to"
            f' mail that forges {domain}; publish one, e.g. "v=DMARC1; p=none;'
            f' rua=mailto:dmarc@{domain}" to start with reports; {alignment}',
        )
    if len(found.records) > 1:
        return Check(
            WARN,
            "dmarc",
            f"{found.name} has {len(found.records)} DMARC records: receivers apply none"
            " (RFC 7489 section 6.6.3); keep one",
        )
    tags = dns_checks.dmarc_tags(found.records[0])
    subdomain = found.organisational  # a record found at the organisational domain
    policy = dns_checks.effective_policy(tags, subdomain)
    can_align, alignment = _alignment(config, domain, tags)
    where = f"{found.name} (for {domain})" if subdomain else found.name
    said = ", ".join(f"{t}={tags[t]}" for t in ("p", "sp", "pct", "rua") if t in tags)
    if "rua" not in tags:
        said += ", no rua (no aggregate reports)"
    if policy is None:
        return Check(
            WARN, "dmarc", f"{where}: {said}: no valid p= tag, so receivers ignore the record"
        )
    level = OK if policy != "none" and can_align else WARN
    if policy == "none":
        said += (
            f"; {'sp' if subdomain and 'sp' in tags else 'p'}=none asks receivers to report"
            " only, not to act on mail that fails (quarantine or reject once the reports"
            " show only your mail)"
        )
    return Check(level, "dmarc", f"{where}: {said}; {alignment}")


def _alignment(config: config_mod.Config, domain: str, tags: dict[str, str]) -> tuple[bool, str]:
    """(can DMARC pass, what aligns with the From domain and what cannot): RFC 7489
    section 3.1, relaxed unless the record says adkim=s or aspf=s."""
    envelope = envelope_domain(config)
    dkim_d = config.dkim.domain.lower()
    spf = f"SPF (envelope domain {envelope})"
    dkim = f"DKIM (d={dkim_d})" if dkim_d else "DKIM (no [dkim] signing)"
    spf_ok = dns_checks.aligned(envelope, domain, strict=tags.get("aspf", "").lower() == "s")
    dkim_ok = bool(dkim_d) and dns_checks.aligned(
        dkim_d, domain, strict=tags.get("adkim", "").lower() == "s"
    )
    if spf_ok and dkim_ok:
        return True, f"{spf} and {dkim} align with From"
    if spf_ok or dkim_ok:
        good, bad, alone = (spf, dkim, "SPF") if spf_ok else (dkim, spf, "DKIM")
        return True, f"{good} aligns with From; {bad} cannot, so DMARC rests on {alone} alone"
    return False, f"neither {spf} nor {dkim} aligns with From {domain}: DMARC fails every message"
