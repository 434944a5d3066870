"""`newsletter doctor` against real parts: aiosmtpd servers (plain, STARTTLS with a
self-signed certificate, with AUTH), a real SQLite file, the sample templates, real
DKIM keys, pyspf evaluating real SPF records (only the DNS answers are the test's own:
no lookup leaves the machine)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import tls_fixtures
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric import ed25519
from smtp_fixtures import FaultyHandler, SmtpServer, free_port

from newsletter import config as config_mod
from newsletter.cli import cli
from newsletter.ledger import store
from newsletter.ledger.migrations import HEAD, VERSION_TABLE
from newsletter.mail import dkim
from newsletter.setup import dns_checks, doctor

self_signed = tls_fixtures.self_signed
starttls_server = tls_fixtures.starttls_server


def lines_of(result: Result) -> dict[str, str]:
    """check name -> "level  message", from doctor's output."""
    found = {}
    for line in result.stdout.splitlines():
        level, _, rest = line.partition("  ")
        name, _, message = rest.strip().partition(": ")
        if level.strip() in doctor.LEVELS:
            found[name] = f"{level.strip()}  {message}"
    return found


Records = dict[tuple[str, str], list[str]]  # (name, type) -> records


def publish_dns(monkeypatch: pytest.MonkeyPatch, records: Records) -> list[tuple[str, str]]:
    """The DNS that doctor asks holds `records` and nothing else; returns what was asked."""
    asked: list[tuple[str, str]] = []

    def lookup(name: str, rdtype: str) -> list[str]:
        asked.append((name, rdtype))
        return records.get((name, rdtype), [])

    monkeypatch.setattr(dns_checks, "lookup_dns", lookup)
    return asked


@pytest.fixture(autouse=True)
def empty_dns(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every test starts with a DNS that has no records at all."""
    return publish_dns(monkeypatch, {})


@pytest.fixture(autouse=True)
def no_web(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Nothing answers at base_url (no request leaves the machine); returns what was asked.
    The tests of the clicks check serve a real site instead."""
    asked: list[str] = []

    def refuse(url: str, timeout: float) -> str:
        asked.append(url)
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(doctor, "get_health", refuse)
    return asked


NO_SERVE = (
    'warn  [tracking] clicks = "sponsor", and at https://news.helloshuttle.com/healthz nothing'
    " answers ([Errno 111] Connection refused): run `newsletter serve` at base_url, or the"
    ' tracked links in every message lead nowhere (clicks = "off" sends direct links)'
)


# What doctor says of the sample publication (news@helloshuttle.com through 127.0.0.1)
# on a DNS without records.
NO_SPF = (
    "warn  no SPF record at helloshuttle.com (the envelope domain): receivers cannot tell"
    ' which servers may send its mail; publish a TXT record "v=spf1 ... ~all" that names the'
    " relay"
)
NO_DMARC = (
    "warn  no DMARC record at _dmarc.helloshuttle.com: receivers apply no policy to mail that"
    ' forges helloshuttle.com; publish one, e.g. "v=DMARC1; p=none;'
    ' rua=mailto:dmarc@helloshuttle.com" to start with reports; SPF (envelope domain'
    " helloshuttle.com) aligns with From; DKIM (no [dkim] signing) cannot, so DMARC rests on"
    " SPF alone"
)


@pytest.fixture
def smtp_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    def point_at(port: int) -> None:
        monkeypatch.setenv("NEWSLETTER_SMTP_PORT", str(port))
        monkeypatch.setenv("NEWSLETTER_SMTP_TIMEOUT", "5")

    return point_at


def test_passes_against_a_plain_server_and_sends_nothing(
    run_cli: Callable[..., Result],
    publication: Path,
    smtp_server: SmtpServer,
    smtp_env: Callable[[int], None],
) -> None:
    smtp_env(smtp_server.port)
    result = run_cli("doctor")
    assert result.exit_code == 0, result.output
    checks = lines_of(result)
    assert list(checks) == [
        "config",
        "templates",
        "database",
        "smtp",
        "secret",
        "base_url",
        "domains",
        "clicks",
        "spf",
        "dmarc",
    ]
    assert checks["config"] == f"ok  {publication.resolve()} is valid"
    assert checks["templates"].startswith("ok  issues/2024-11-25-")
    assert (
        checks["smtp"]
        == f"ok  127.0.0.1:{smtp_server.port}: connected, EHLO accepted; nothing sent"
    )
    assert checks["base_url"] == "ok  https://news.helloshuttle.com is https"
    assert checks["domains"] == "ok  the sender, base_url and List-Id are all in helloshuttle.com"
    assert checks["clicks"] == NO_SERVE
    assert checks["spf"] == NO_SPF
    assert checks["dmarc"] == NO_DMARC
    assert result.stdout.splitlines()[-1] == "doctor: 6 ok, 4 warning(s), 0 failure(s)"
    assert smtp_server.handler.ehlos == 1
    assert smtp_server.handler.data_commands == 0 and not smtp_server.received


def test_the_database_is_reported_not_created(
    run_cli: Callable[..., Result],
    publication: Path,
    smtp_server: SmtpServer,
    smtp_env: Callable[[int], None],
) -> None:
    smtp_env(smtp_server.port)
    database = publication.parent / "newsletter.db"
    result = run_cli("doctor")
    assert lines_of(result)["database"] == (
        f"warn  {database} (SQLite): not created yet; it will be on first use"
    )
    assert not database.exists()  # looking did not create it

    store.Store.open(f"sqlite:///{database}").close()
    result = run_cli("doctor")
    assert lines_of(result)["database"] == (
        f"ok  {database} (SQLite): schema revision {HEAD} (current), 0 active subscriber(s)"
    )
    with sa.create_engine(f"sqlite:///{database}").begin() as conn:  # as a release before
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '0001'"))
    result = run_cli("doctor")
    assert lines_of(result)["database"] == (
        f"warn  {database} (SQLite): schema revision 0001; the next command upgrades it to"
        f" {HEAD} (or run `newsletter db upgrade`)"
    )


def test_a_database_newer_than_the_tool_fails(
    run_cli: Callable[..., Result],
    publication: Path,
    smtp_server: SmtpServer,
    smtp_env: Callable[[int], None],
) -> None:
    smtp_env(smtp_server.port)
    opened = store.Store.open(f"sqlite:///{publication.parent / 'newsletter.db'}")
    with opened.begin() as conn:
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))
    opened.close()
    result = run_cli("doctor")
    assert result.exit_code == 1
    assert lines_of(result)["database"].startswith(
        f"fail  {publication.parent / 'newsletter.db'} (SQLite): the database is at schema"
        " revision 9999, made by a newer release of newsletter"
    )


def test_fails_a_self_signed_starttls_server_unless_the_config_names_its_ca(
    run_cli: Callable[..., Result],
    starttls_server: tuple[int, FaultyHandler],
    self_signed: tuple[Path, Path],
    smtp_env: Callable[[int], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, handler = starttls_server
    smtp_env(port)
    monkeypatch.setenv("NEWSLETTER_SMTP_SECURITY", "starttls")
    result = run_cli("doctor")
    assert result.exit_code == 1, result.output
    smtp = lines_of(result)["smtp"]
    assert smtp.startswith("fail  SMTP server 127.0.0.1:")
    assert "TLS failed: CERTIFICATE_VERIFY_FAILED" in smtp and "[smtp] ca_file" in smtp

    monkeypatch.setenv("NEWSLETTER_SMTP_CA_FILE", str(self_signed[0]))
    result = run_cli("doctor")
    assert result.exit_code == 0, result.output
    assert lines_of(result)["smtp"] == (
        f"ok  127.0.0.1:{port}: connected, EHLO accepted, STARTTLS with a verified"
        " certificate; nothing sent"
    )
    assert not handler.received


def test_a_missing_ca_file_is_named(
    run_cli: Callable[..., Result],
    smtp_server: SmtpServer,
    smtp_env: Callable[[int], None],
    monkeypatch: pytest.MonkeyPatch,
    publication: Path,
) -> None:
    smtp_env(smtp_server.port)
    monkeypatch.setenv("NEWSLETTER_SMTP_SECURITY", "starttls")
    monkeypatch.setenv("NEWSLETTER_SMTP_CA_FILE", "certs/relay.pem")
    result = run_cli("doctor")
    assert result.exit_code == 1
    assert lines_of(result)["smtp"] == (
        f"fail  [smtp] ca_file: {publication.parent / 'certs/relay.pem'}: no such file"
    )


@pytest.fixture
def auth_server() -> Iterator[SmtpServer]:
    """A plain server that accepts the login news / s3cret (over plain text: a test only)."""
    handler = FaultyHandler()

    def authenticate(
        server: object, session: object, envelope: object, mechanism: str, data: object
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data == LoginPassword(b"news", b"s3cret")
        return AuthResult(success=ok, handled=False)  # not handled: aiosmtpd sends 235 or 535

    port = free_port()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticate,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", port, handler)
    finally:
        controller.stop()


@pytest.fixture
def login_env(
    monkeypatch: pytest.MonkeyPatch, smtp_env: Callable[[int], None], auth_server: SmtpServer
) -> None:
    smtp_env(auth_server.port)
    monkeypatch.setenv("NEWSLETTER_SMTP_USERNAME", "news")
    monkeypatch.setenv("NEWSLETTER_SMTP_PASSWORD_ENV", "RELAY_PASSWORD")


def test_the_login_is_accepted(
    run_cli: Callable[..., Result],
    auth_server: SmtpServer,
    login_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RELAY_PASSWORD", "s3cret")
    result = run_cli("doctor")
    assert result.exit_code == 0, result.output
    checks = lines_of(result)
    assert checks["password"] == "ok  RELAY_PASSWORD is set"
    assert checks["smtp"] == (
        f"ok  127.0.0.1:{auth_server.port}: connected, EHLO accepted,"
        " login as 'news' accepted; nothing sent"
    )
    assert "s3cret" not in result.output


def test_a_refused_login_fails_without_showing_the_password(
    run_cli: Callable[..., Result],
    auth_server: SmtpServer,
    login_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RELAY_PASSWORD", "wrong-password")
    result = run_cli("doctor")
    assert result.exit_code == 1
    smtp = lines_of(result)["smtp"]
    assert smtp.startswith("fail  ") and "login as 'news' refused: 535" in smtp
    assert "wrong-password" not in result.output


def test_fails_when_the_password_variable_is_missing(
    run_cli: Callable[..., Result],
    auth_server: SmtpServer,
    login_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RELAY_PASSWORD", raising=False)
    result = run_cli("doctor")
    assert result.exit_code == 1, result.output
    checks = lines_of(result)
    assert checks["password"] == "fail  RELAY_PASSWORD is not set ([smtp] password_env names it)"
    # The connection is still checked; only the login is left out.
    assert (
        checks["smtp"].startswith("warn  ") and "login not tried (no password)" in checks["smtp"]
    )


def test_warns_on_an_http_base_url(
    run_cli: Callable[..., Result],
    smtp_server: SmtpServer,
    smtp_env: Callable[[int], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    smtp_env(smtp_server.port)
    monkeypatch.setenv("NEWSLETTER_PUBLICATION_BASE_URL", "http://news.example.com")
    result = run_cli("doctor")
    assert result.exit_code == 0, result.output  # a warning is not a failure
    assert lines_of(result)["base_url"] == (
        "warn  http://news.example.com: not https; unsubscribe and view-online links travel"
        " unencrypted"
    )


def test_a_broken_template_fails(
    run_cli: Callable[..., Result],
    publication: Path,
    smtp_server: SmtpServer,
    smtp_env: Callable[[int], None],
    edit_file: Callable[[Path, str, str], None],
) -> None:
    smtp_env(smtp_server.port)
    edit_file(publication.parent / "templates/email.txt", "{{ issue.title", "{{ issue.no_such")
    result = run_cli("doctor")
    assert result.exit_code == 1
    templates = lines_of(result)["templates"]
    assert templates.startswith("fail  ") and "email.txt" in templates and "no_such" in templates


def test_templates_are_checked_without_any_issue(
    run_cli: Callable[..., Result],
    publication: Path,
    smtp_server: SmtpServer,
    smtp_env: Callable[[int], None],
) -> None:
    smtp_env(smtp_server.port)
    for issue in (publication.parent / "issues").glob("*.md"):
        issue.unlink()
    result = run_cli("doctor")
    templates = lines_of(result)["templates"]
    assert templates.startswith("ok  a placeholder issue (issues/ has none) renders to HTML (")


def test_an_unreachable_local_server_suggests_the_capture_server(
    run_cli: Callable[..., Result], smtp_env: Callable[[int], None]
) -> None:
    smtp_env(free_port())
    result = run_cli("doctor")
    assert result.exit_code == 1
    smtp = lines_of(result)["smtp"]
    assert smtp.startswith("fail  ") and "cannot connect" in smtp
    assert "run `newsletter smtpd`" in smtp


def test_an_invalid_config_is_the_only_check(
    run_cli: Callable[..., Result], publication: Path, edit_file: Callable[[Path, str, str], None]
) -> None:
    edit_file(publication, "port = 1025", "prot = 1025")
    result = run_cli("doctor")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"fail  config: {publication.resolve()}: unknown key 'prot' in [smtp]"
        " (did you mean 'port'?)",
        "doctor: 0 ok, 0 warning(s), 1 failure(s)",
    ]


def test_outside_a_publication(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["doctor"], prog_name="newsletter")
    assert result.exit_code == 1
    assert result.stdout.startswith(f"fail  config: no newsletter.toml here or above {tmp_path}")


def test_json(
    run_cli: Callable[..., Result],
    smtp_server: SmtpServer,
    smtp_env: Callable[[int], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    smtp_env(smtp_server.port)
    monkeypatch.setenv("NEWSLETTER_PUBLICATION_BASE_URL", "http://news.example.com")
    result = run_cli("doctor", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert [(c["check"], c["level"]) for c in report["checks"]] == [
        ("config", "ok"),
        ("templates", "ok"),
        ("database", "warn"),
        ("smtp", "ok"),
        ("secret", "ok"),
        ("base_url", "warn"),
        ("domains", "warn"),
        ("clicks", "warn"),
        ("spf", "warn"),
        ("dmarc", "warn"),
    ]


# --- DKIM (the DNS answer is the test's: no lookup leaves the machine) -----------------


@pytest.fixture
def dkim_key(
    publication: Path,
    smtp_server: SmtpServer,
    smtp_env: Callable[[int], None],
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    """[dkim] configured with a new Ed25519 key; returns the TXT record to publish."""
    smtp_env(smtp_server.port)
    key = dkim.keygen(
        publication.parent / "dkim.pem", "helloshuttle.com", "news2026", "ed25519-sha256"
    )
    for name, value in {
        "DOMAIN": "helloshuttle.com",
        "SELECTOR": "news2026",
        "PRIVATE_KEY": "dkim.pem",
        "ALGORITHM": "ed25519-sha256",
    }.items():
        monkeypatch.setenv(f"NEWSLETTER_DKIM_{name}", value)
    return key.dns_value


def test_dkim_passes_when_the_selector_publishes_the_key(
    run_cli: Callable[..., Result], dkim_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Published the way DNS hands it back: split into strings, with spaces in the key.
    published = dkim_key.replace("p=", "p= ")
    asked = publish_dns(
        monkeypatch, {("news2026._domainkey.helloshuttle.com", "TXT"): [published]}
    )
    result = run_cli("doctor")
    assert result.exit_code == 0, result.output
    assert lines_of(result)["dkim"] == (
        "ok  news2026._domainkey.helloshuttle.com publishes the ed25519-sha256 key that signs"
    )
    assert asked[0] == ("news2026._domainkey.helloshuttle.com", "TXT")


def test_dkim_fails_without_a_record_or_with_another_key(
    run_cli: Callable[..., Result], dkim_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run_cli("doctor")
    assert result.exit_code == 1
    assert lines_of(result)["dkim"].startswith(
        "fail  no DKIM record at news2026._domainkey.helloshuttle.com: publish"
    )

    other = dkim.dns_value(ed25519.Ed25519PrivateKey.generate().public_key())
    publish_dns(monkeypatch, {("news2026._domainkey.helloshuttle.com", "TXT"): [other]})
    result = run_cli("doctor")
    assert result.exit_code == 1
    assert lines_of(result)["dkim"].startswith(
        "fail  news2026._domainkey.helloshuttle.com publishes another key than the one in [dkim]"
    )


def test_dkim_fails_when_the_key_cannot_be_read(
    run_cli: Callable[..., Result],
    publication: Path,
    dkim_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (publication.parent / "dkim.pem").unlink()
    result = run_cli("doctor")
    assert result.exit_code == 1
    dkim = lines_of(result)["dkim"]
    assert dkim.startswith("fail  ") and "private_key: cannot read" in dkim and "dkim.pem" in dkim


def test_a_dns_that_does_not_answer_is_a_warning_per_dns_check_and_asked_once(
    run_cli: Callable[..., Result],
    publication: Path,
    dkim_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked = []

    def no_dns(name: str, rdtype: str) -> list[str]:
        asked.append(name)
        raise dns_checks.DnsUnreachable("The DNS operation timed out.")

    monkeypatch.setattr(dns_checks, "lookup_dns", no_dns)
    for output in ("text", "json"):
        result = run_cli("doctor", *(["--json"] if output == "json" else []))
        assert result.exit_code == 0, result.output  # warnings, not failures
        assert "Traceback" not in result.output
        if output == "json":
            report = json.loads(result.stdout)
            checks = {c["check"]: f"{c['level']}  {c['message']}" for c in report["checks"]}
        else:
            checks = lines_of(result)
        # Every other check still ran, each DNS check is one line naming what it could not
        # look up, and the DNS was asked once: the later checks did not wait again.
        assert list(checks) == [
            "config",
            "templates",
            "database",
            "smtp",
            "secret",
            "base_url",
            "domains",
            "clicks",
            "dkim",
            "spf",
            "dmarc",
        ]
        assert checks["smtp"].startswith("ok  ")
        assert checks["dkim"] == (
            "warn  ed25519-sha256 key readable; cannot look up"
            " news2026._domainkey.helloshuttle.com: The DNS operation timed out."
        )
        assert checks["spf"] == (
            "warn  cannot look up the SPF record of helloshuttle.com: The DNS operation timed out."
        )
        assert checks["dmarc"] == (
            "warn  cannot look up the DMARC record of helloshuttle.com: The DNS operation"
            " timed out."
        )
    assert asked == ["news2026._domainkey.helloshuttle.com"] * 2  # once per run


def test_a_dns_error_for_one_name_does_not_stop_the_other_lookups(
    publication: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def lookup(name: str, rdtype: str) -> list[str]:
        if name == "helloshuttle.com":
            raise dns_checks.DnsLookupError("All nameservers failed to answer the query.")
        return {"_dmarc.helloshuttle.com": ["v=DMARC1; p=reject"]}.get(name, [])

    checks = {c.name: c for c in doctor.run(publication, lookup=lookup)}
    assert checks["spf"] == doctor.Check(
        doctor.WARN,
        "spf",
        "cannot look up the SPF record of helloshuttle.com: All nameservers failed to answer"
        " the query.",
    )
    assert checks["dmarc"].level == doctor.OK


# --- SPF (RFC 7208): pyspf evaluates the record for the relay's addresses ---------------

RELAY = "smtp.relay.example"
DOCTOR_SECRET = "doctor-test-secret-0123456789abcdefghij"
RELAY_DNS: Records = {(RELAY, "A"): ["192.0.2.7"], (RELAY, "AAAA"): ["2001:db8::7"]}


def load(publication: Path, **settings: str) -> config_mod.Config:
    """The publication's config with NEWSLETTER_<KEY> settings, e.g. SMTP_HOST="..."."""
    environ = {f"NEWSLETTER_{key}": value for key, value in settings.items()}
    return config_mod.load(publication, {"NEWSLETTER_SECRET": DOCTOR_SECRET, **environ})


def spf_line(config: config_mod.Config, records: Records) -> doctor.Check:
    return doctor.check_spf(config, dns_checks.Dns(lambda n, t: records.get((n, t), [])))


HINT = (
    "add the relay (ip4:, ip6:, or the include: its provider documents; a provider may send"
    " from other addresses than its relay listens on)"
)


def test_spf_passes_when_the_record_authorises_every_address_of_the_relay(
    publication: Path,
) -> None:
    config = load(publication, SMTP_HOST=RELAY)
    record = "v=spf1 ip4:203.0.113.0/24 include:_spf.relay.example -all"
    records: Records = {
        **RELAY_DNS,
        ("helloshuttle.com", "TXT"): ["google-site-verification=abc", record],
        # The provider's include names its servers by a and mx: pyspf follows both.
        ("_spf.relay.example", "TXT"): ["v=spf1 a:out.relay.example mx:relay.example -all"],
        ("out.relay.example", "A"): ["192.0.2.7"],
        ("relay.example", "MX"): ["10 mx.relay.example."],
        ("mx.relay.example", "AAAA"): ["2001:db8::7"],
    }
    assert spf_line(config, records) == doctor.Check(
        doctor.OK,
        "spf",
        f'helloshuttle.com: "{record}": pass for the relay {RELAY} (192.0.2.7, 2001:db8::7)',
    )
    # The IPv6 address alone is not covered: that is what receivers reached over IPv6 see.
    del records[("mx.relay.example", "AAAA")]
    check = spf_line(config, records)
    assert check.level == doctor.WARN
    assert f"fail (-all) for the relay {RELAY} (2001:db8::7): the record forbids it" in (
        check.message
    )


def test_spf_softfail_warns(publication: Path) -> None:
    config = load(publication, SMTP_HOST=RELAY)
    record = "v=spf1 ip4:203.0.113.0/24 ~all"
    check = spf_line(config, {**RELAY_DNS, ("helloshuttle.com", "TXT"): [record]})
    assert check == doctor.Check(
        doctor.WARN,
        "spf",
        f'helloshuttle.com: "{record}": softfail (~all) for the relay {RELAY} (192.0.2.7,'
        " 2001:db8::7): the record does not authorise it, and receivers may file the mail as"
        f" spam; {HINT}",
    )


def test_spf_neutral_warns(publication: Path) -> None:
    config = load(publication, SMTP_HOST="192.0.2.7")  # an address as the host: no lookup
    record = "v=spf1 ip4:203.0.113.0/24 ?all"
    check = spf_line(config, {("helloshuttle.com", "TXT"): [record]})
    assert check.level == doctor.WARN
    assert check.message == (
        f'helloshuttle.com: "{record}": neutral (?all) for the relay 192.0.2.7 (192.0.2.7):'
        f" the record neither authorises nor forbids it; {HINT}"
    )


def test_an_all_that_excludes_the_relay_warns_with_the_reason_and_doctor_passes(
    publication: Path,
    smtp_server: SmtpServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    record = "v=spf1 ip4:203.0.113.0/24 -all"
    records = {**RELAY_DNS, ("helloshuttle.com", "TXT"): [record]}
    check = spf_line(load(publication, SMTP_HOST=RELAY), records)
    assert check == doctor.Check(
        doctor.WARN,
        "spf",
        f'helloshuttle.com: "{record}": fail (-all) for the relay {RELAY} (192.0.2.7,'
        " 2001:db8::7): the record forbids it, and receivers may reject the mail;"
        f" {HINT}",
    )
    # A second server in [smtp.<name>] is checked too, on the same line; doctor exits 0.
    publication.write_text(
        publication.read_text(encoding="utf-8") + f'\n[smtp.backup]\nhost = "{RELAY}"\n',
        encoding="utf-8",
    )
    environ = {"NEWSLETTER_SMTP_PORT": str(smtp_server.port), "NEWSLETTER_SECRET": DOCTOR_SECRET}
    checks = list(doctor.run(publication, environ, lookup=lambda n, t: records.get((n, t), [])))
    spf = next(c for c in checks if c.name == "spf")
    assert spf.level == doctor.WARN
    assert spf.message.startswith(
        f'helloshuttle.com: "{record}": the relay 127.0.0.1 is on this machine or network,'
    )
    assert f"; fail (-all) for the relay {RELAY} (192.0.2.7, 2001:db8::7)" in spf.message
    assert not doctor.failed(checks)


def test_spf_permerror_and_two_records_warn(publication: Path) -> None:
    config = load(publication, SMTP_HOST=RELAY)
    check = spf_line(config, {**RELAY_DNS, ("helloshuttle.com", "TXT"): ["v=spf1 bogus:x -all"]})
    assert check.level == doctor.WARN
    assert "the record is broken (SPF Permanent Error: Unknown mechanism found: bogus:x)" in (
        check.message
    )
    two = ["v=spf1 -all", "v=spf1 ip4:192.0.2.7 -all"]
    assert spf_line(config, {**RELAY_DNS, ("helloshuttle.com", "TXT"): two}) == doctor.Check(
        doctor.WARN,
        "spf",
        "helloshuttle.com has 2 SPF records: receivers take that as an error (permerror,"
        " RFC 7208 section 4.5); merge them into one",
    )


def test_no_spf_record_warns(publication: Path) -> None:
    config = load(publication, SMTP_HOST=RELAY)
    # "v=spf10" is not an SPF record (RFC 7208 section 4.5).
    records = {**RELAY_DNS, ("helloshuttle.com", "TXT"): ["v=spf10 +all", "hello"]}
    assert f"warn  {spf_line(config, records).message}" == NO_SPF


def test_a_relay_without_an_address_warns(publication: Path) -> None:
    config = load(publication, SMTP_HOST=RELAY)
    check = spf_line(config, {("helloshuttle.com", "TXT"): ["v=spf1 -all"]})
    assert check == doctor.Check(
        doctor.WARN,
        "spf",
        f'helloshuttle.com: "v=spf1 -all": the relay {RELAY} has no A or AAAA record, so it'
        " cannot be checked",
    )


def test_a_loopback_relay_warns_that_its_upstream_is_what_spf_sees(
    run_cli: Callable[..., Result],
    publication: Path,
    smtp_server: SmtpServer,
    smtp_env: Callable[[int], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    smtp_env(smtp_server.port)
    publish_dns(monkeypatch, {("helloshuttle.com", "TXT"): ["v=spf1 mx -all"]})
    result = run_cli("doctor")
    assert result.exit_code == 0, result.output
    assert lines_of(result)["spf"] == (
        'warn  helloshuttle.com: "v=spf1 mx -all": the relay 127.0.0.1 is on this machine or'
        " network, so SPF sees the server it hands the mail on to: check that server's"
        " addresses against the record"
    )
    # So does a name that resolves to a private network address (RFC 1918).
    check = spf_line(
        load(publication, SMTP_HOST="relay.lan"),
        {("helloshuttle.com", "TXT"): ["v=spf1 -all"], ("relay.lan", "A"): ["192.168.1.20"]},
    )
    assert "the relay relay.lan is on this machine or network" in check.message


def test_spf_is_looked_up_at_the_bounces_domain(publication: Path) -> None:
    config = load(publication, SMTP_HOST=RELAY, BOUNCES_ADDRESS="bounces@mailer-bounces.net")
    record = "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all"
    records = {**RELAY_DNS, ("mailer-bounces.net", "TXT"): [record]}
    assert spf_line(config, records) == doctor.Check(
        doctor.OK,
        "spf",
        f'mailer-bounces.net: "{record}": pass for the relay {RELAY} (192.0.2.7, 2001:db8::7)',
    )


# --- DMARC (RFC 7489) -------------------------------------------------------------------


def dmarc_line(config: config_mod.Config, records: Records) -> doctor.Check:
    return doctor.check_dmarc(config, dns_checks.Dns(lambda n, t: records.get((n, t), [])))


def test_dmarc_reject_with_dkim_and_spf_aligned_passes_through_the_cli(
    run_cli: Callable[..., Result], dkim_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish_dns(
        monkeypatch,
        {
            ("news2026._domainkey.helloshuttle.com", "TXT"): [dkim_key],
            ("helloshuttle.com", "TXT"): ["v=spf1 mx -all"],
            ("_dmarc.helloshuttle.com", "TXT"): [
                "v=DMARC1; p=reject; pct=100; rua=mailto:dmarc@helloshuttle.com"
            ],
        },
    )
    result = run_cli("doctor")
    assert result.exit_code == 0, result.output
    checks = lines_of(result)
    assert list(checks)[-3:] == ["dkim", "spf", "dmarc"]
    assert checks["dkim"].startswith("ok  ")
    assert checks["dmarc"] == (
        "ok  _dmarc.helloshuttle.com: p=reject, pct=100, rua=mailto:dmarc@helloshuttle.com;"
        " SPF (envelope domain helloshuttle.com) and DKIM (d=helloshuttle.com) align with From"
    )


def test_dmarc_p_none_warns(publication: Path) -> None:
    config = load(publication)
    records = {("_dmarc.helloshuttle.com", "TXT"): ["v=DMARC1;p=none"]}
    assert dmarc_line(config, records) == doctor.Check(
        doctor.WARN,
        "dmarc",
        "_dmarc.helloshuttle.com: p=none, no rua (no aggregate reports); p=none asks receivers"
        " to report only, not to act on mail that fails (quarantine or reject once the"
        " reports show only your mail); SPF (envelope domain helloshuttle.com) aligns with"
        " From; DKIM (no [dkim] signing) cannot, so DMARC rests on SPF alone",
    )


def test_dmarc_missing_warns_after_asking_the_organisational_domain(publication: Path) -> None:
    config = load(publication, PUBLICATION_FROM="News <news@news.helloshuttle.com>")
    asked: list[str] = []

    def lookup(name: str, rdtype: str) -> list[str]:
        asked.append(name)
        return ["v=spf1 -all"] if name == "_dmarc.news.helloshuttle.com" else []  # not DMARC

    check = doctor.check_dmarc(config, dns_checks.Dns(lookup))
    assert asked == ["_dmarc.news.helloshuttle.com", "_dmarc.helloshuttle.com"]
    assert check.level == doctor.WARN
    assert check.message.startswith(
        "no DMARC record at _dmarc.news.helloshuttle.com nor _dmarc.helloshuttle.com:"
        " receivers apply no policy to mail that forges news.helloshuttle.com;"
    )


def test_dmarc_falls_back_to_the_organisational_domain_whose_sp_applies(
    publication: Path,
) -> None:
    # RFC 7489 section 6.6.3: no record at the From domain, so the organisational domain's;
    # its sp= is the policy for the From domain below it (section 6.3).
    config = load(publication, PUBLICATION_FROM="News <news@news.helloshuttle.co.uk>")
    org = ("_dmarc.helloshuttle.co.uk", "TXT")
    check = dmarc_line(config, {org: ["v=DMARC1; p=reject; sp=none; rua=mailto:d@x.example"]})
    assert check.level == doctor.WARN
    assert check.message.startswith(
        "_dmarc.helloshuttle.co.uk (for news.helloshuttle.co.uk): p=reject, sp=none,"
        " rua=mailto:d@x.example; sp=none asks receivers to report only"
    )
    check = dmarc_line(config, {org: ["v=DMARC1; p=quarantine; rua=mailto:d@x.example"]})
    assert check.level == doctor.OK
    assert check.message.startswith(
        "_dmarc.helloshuttle.co.uk (for news.helloshuttle.co.uk): p=quarantine,"
    )


def test_dmarc_says_when_neither_dkim_nor_spf_can_align(publication: Path) -> None:
    record = {("_dmarc.helloshuttle.com", "TXT"): ["v=DMARC1; p=reject; rua=mailto:d@h.example"]}
    # The envelope domain of [bounces] is another organisation's; no DKIM signing.
    config = load(publication, BOUNCES_ADDRESS="bounces@mailer-bounces.net")
    assert dmarc_line(config, record) == doctor.Check(
        doctor.WARN,
        "dmarc",
        "_dmarc.helloshuttle.com: p=reject, rua=mailto:d@h.example; neither SPF (envelope"
        " domain mailer-bounces.net) nor DKIM (no [dkim] signing) aligns with From"
        " helloshuttle.com: DMARC fails every message",
    )
    # A DKIM domain of another organisation does not align either.
    config = load(
        publication,
        BOUNCES_ADDRESS="bounces@mailer-bounces.net",
        DKIM_DOMAIN="esp-mailer.net",
        DKIM_SELECTOR="s1",
        DKIM_PRIVATE_KEY="dkim.pem",
    )
    check = dmarc_line(config, record)
    assert check.level == doctor.WARN
    assert "nor DKIM (d=esp-mailer.net) aligns with From helloshuttle.com" in check.message


def test_dmarc_strict_alignment_needs_the_same_name(publication: Path) -> None:
    config = load(publication, BOUNCES_ADDRESS="bounces@bounces.helloshuttle.com")
    relaxed = "v=DMARC1; p=reject; rua=mailto:d@h.example"
    check = dmarc_line(config, {("_dmarc.helloshuttle.com", "TXT"): [relaxed]})
    assert "SPF (envelope domain bounces.helloshuttle.com) aligns with From" in check.message
    check = dmarc_line(config, {("_dmarc.helloshuttle.com", "TXT"): [relaxed + "; aspf=s"]})
    assert check.level == doctor.WARN
    assert check.message.endswith(
        "neither SPF (envelope domain bounces.helloshuttle.com) nor DKIM (no [dkim] signing)"
        " aligns with From helloshuttle.com: DMARC fails every message"
    )


def test_dmarc_two_records_or_no_valid_policy_warn(publication: Path) -> None:
    config = load(publication)
    name = ("_dmarc.helloshuttle.com", "TXT")
    two = dmarc_line(config, {name: ["v=DMARC1; p=reject", "v=DMARC1; p=none"]})
    assert two == doctor.Check(
        doctor.WARN,
        "dmarc",
        "_dmarc.helloshuttle.com has 2 DMARC records: receivers apply none (RFC 7489 section"
        " 6.6.3); keep one",
    )
    broken = dmarc_line(config, {name: ["v=DMARC1; p=block"]})
    assert broken.level == doctor.WARN
    assert broken.message == (
        "_dmarc.helloshuttle.com: p=block, no rua (no aggregate reports): no valid p= tag, so"
        " receivers ignore the record"
    )
    # With a valid rua, a record without a valid p= counts as p=none (section 6.6.3 step 6).
    reports = dmarc_line(config, {name: ["v=DMARC1; p=block; rua=mailto:d@h.example"]})
    assert reports.level == doctor.WARN and "p=none asks receivers to report only" in (
        reports.message
    )


def test_a_domain_reserved_for_examples_has_no_dns_checks(
    run_cli: Callable[..., Result],
    smtp_server: SmtpServer,
    smtp_env: Callable[[int], None],
    monkeypatch: pytest.MonkeyPatch,
    empty_dns: list[tuple[str, str]],
) -> None:
    smtp_env(smtp_server.port)
    monkeypatch.setenv("NEWSLETTER_PUBLICATION_FROM", "My Letter <me@example.org>")
    result = run_cli("doctor")
    assert result.exit_code == 0, result.output
    assert list(lines_of(result)) == [
        "config",
        "templates",
        "database",
        "smtp",
        "secret",
        "base_url",
        "domains",
        "clicks",
    ]
    assert empty_dns == []  # nothing was asked


def test_names_as_rfc_7489_sees_them() -> None:
    assert dns_checks.organisational_domain("news.helloshuttle.co.uk") == "helloshuttle.co.uk"
    assert dns_checks.organisational_domain("a.b.helloshuttle.com") == "helloshuttle.com"
    assert dns_checks.organisational_domain("co.uk") == "co.uk"
    assert dns_checks.aligned("bounces.helloshuttle.com", "helloshuttle.com", strict=False)
    assert not dns_checks.aligned("bounces.helloshuttle.com", "helloshuttle.com", strict=True)
    assert not dns_checks.aligned("helloshuttle.co.uk", "other.co.uk", strict=False)
    assert dns_checks.is_reserved("news.example.com") and dns_checks.is_reserved("x.test")
    assert not dns_checks.is_reserved("example.co.uk")


# --- one domain; serve at base_url when clicks are tracked ------------------------------

REAL_GET_HEALTH = doctor.get_health  # before the autouse fixture replaces it


def test_warns_when_sender_base_url_and_list_id_are_different_domains(
    run_cli: Callable[..., Result],
    smtp_server: SmtpServer,
    smtp_env: Callable[[int], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    smtp_env(smtp_server.port)
    monkeypatch.setenv("NEWSLETTER_PUBLICATION_FROM", "The Weekly <news@weekly.example.org>")
    monkeypatch.setenv("NEWSLETTER_PUBLICATION_LIST_ID", "weekly.lists.example.co.uk")
    result = run_cli("doctor")
    assert result.exit_code == 0, result.output
    assert lines_of(result)["domains"] == (
        "warn  the sender weekly.example.org (example.org), base_url news.helloshuttle.com"
        " (helloshuttle.com), List-Id weekly.lists.example.co.uk (example.co.uk): not one"
        " domain; replies, unsubscribe and click links would go to a domain other than the"
        " sender's (set [publication] from, base_url and list_id in the domain you send from)"
    )
    # Subdomains of one registrable domain are one domain.
    monkeypatch.setenv("NEWSLETTER_PUBLICATION_BASE_URL", "https://news.weekly.example.org")
    monkeypatch.setenv("NEWSLETTER_PUBLICATION_LIST_ID", "weekly.lists.example.org")
    assert lines_of(run_cli("doctor"))["domains"] == (
        "ok  the sender, base_url and List-Id are all in example.org"
    )


def test_clicks_ok_when_serve_answers_at_base_url(
    publication: Path,
    run_cli: Callable[..., Result],
    smtp_server: SmtpServer,
    smtp_env: Callable[[int], None],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from newsletter.web import site as site_mod

    smtp_env(smtp_server.port)
    monkeypatch.setattr(doctor, "get_health", REAL_GET_HEALTH)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("NEWSLETTER_PUBLICATION_BASE_URL", base_url)
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", f"sqlite:///{tmp_path / 'site.db'}")
    monkeypatch.setenv("NEWSLETTER_SECRET", "doctor-test-secret-of-at-least-32-bytes")
    site = site_mod.Site(config_mod.load(publication))
    server = site_mod.server(site, "127.0.0.1", port)  # the real uvicorn of `serve`
    server.start()
    try:
        result = run_cli("doctor")
    finally:
        server.stop()
        site.close()
    assert result.exit_code == 0, result.output
    assert lines_of(result)["clicks"] == (
        f'ok  [tracking] clicks = "sponsor": newsletter serve answers at {base_url}/healthz'
    )
    # Stopped, the same address answers nothing: the warning.
    warned = lines_of(run_cli("doctor"))["clicks"]
    assert warned.startswith(f'warn  [tracking] clicks = "sponsor", and at {base_url}/healthz')
    assert "nothing answers" in warned and "run `newsletter serve` at base_url" in warned


def test_clicks_warn_when_another_server_answers_at_base_url(
    run_cli: Callable[..., Result],
    smtp_server: SmtpServer,
    smtp_env: Callable[[int], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import http.server
    import threading

    smtp_env(smtp_server.port)
    monkeypatch.setattr(doctor, "get_health", REAL_GET_HEALTH)
    # A plain web server: /healthz is 404, / is a directory listing (200, not serve).
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{other.server_address[1]}"
    monkeypatch.setenv("NEWSLETTER_PUBLICATION_BASE_URL", base_url)
    try:
        result = run_cli("doctor")
    finally:
        other.shutdown()
        other.server_close()
    assert lines_of(result)["clicks"].startswith(
        f'warn  [tracking] clicks = "sponsor", and at {base_url}/healthz it answers 404,'
        " not `newsletter serve`"
    )


def test_no_clicks_check_without_tracking(
    run_cli: Callable[..., Result],
    smtp_server: SmtpServer,
    smtp_env: Callable[[int], None],
    monkeypatch: pytest.MonkeyPatch,
    no_web: list[str],
) -> None:
    smtp_env(smtp_server.port)
    monkeypatch.setenv("NEWSLETTER_TRACKING_CLICKS", "off")
    assert "clicks" not in lines_of(run_cli("doctor"))
    assert no_web == []
