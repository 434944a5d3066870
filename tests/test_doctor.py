"""`newsletter doctor` against real parts: aiosmtpd servers (plain, STARTTLS with a
self-signed certificate, with AUTH), a real SQLite file, the sample templates, real
DKIM keys (only the DNS answer is the test's own)."""

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

from newsletter.cli import cli
from newsletter.ledger import store
from newsletter.ledger.migrations import HEAD, VERSION_TABLE
from newsletter.mail import dkim
from newsletter.setup import doctor

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
    assert list(checks) == ["config", "templates", "database", "smtp", "base_url"]
    assert checks["config"] == f"ok  {publication.resolve()} is valid"
    assert checks["templates"].startswith("ok  issues/2024-11-25-")
    assert (
        checks["smtp"]
        == f"ok  127.0.0.1:{smtp_server.port}: connected, EHLO accepted; nothing sent"
    )
    assert checks["base_url"] == "ok  https://news.helloshuttle.com is https"
    assert result.stdout.splitlines()[-1] == "doctor: 4 ok, 1 warning(s), 0 failure(s)"
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
        ("base_url", "warn"),
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


def publish_dns(monkeypatch: pytest.MonkeyPatch, records: dict[str, list[str]]) -> list[str]:
    asked: list[str] = []

    def lookup(name: str) -> list[str]:
        asked.append(name)
        return records.get(name, [])

    monkeypatch.setattr(doctor, "lookup_dns_txt", lookup)
    return asked


def test_dkim_passes_when_the_selector_publishes_the_key(
    run_cli: Callable[..., Result], dkim_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Published the way DNS hands it back: split into strings, with spaces in the key.
    published = dkim_key.replace("p=", "p= ")
    asked = publish_dns(monkeypatch, {"news2026._domainkey.helloshuttle.com": [published]})
    result = run_cli("doctor")
    assert result.exit_code == 0, result.output
    assert lines_of(result)["dkim"] == (
        "ok  news2026._domainkey.helloshuttle.com publishes the ed25519-sha256 key that signs"
    )
    assert asked == ["news2026._domainkey.helloshuttle.com"]


def test_dkim_fails_without_a_record_or_with_another_key(
    run_cli: Callable[..., Result], dkim_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish_dns(monkeypatch, {})
    result = run_cli("doctor")
    assert result.exit_code == 1
    assert lines_of(result)["dkim"].startswith(
        "fail  no DKIM record at news2026._domainkey.helloshuttle.com: publish"
    )

    other = dkim.dns_value(ed25519.Ed25519PrivateKey.generate().public_key())
    publish_dns(monkeypatch, {"news2026._domainkey.helloshuttle.com": [other]})
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
    publish_dns(monkeypatch, {})
    (publication.parent / "dkim.pem").unlink()
    result = run_cli("doctor")
    assert result.exit_code == 1
    dkim = lines_of(result)["dkim"]
    assert dkim.startswith("fail  ") and "private_key: cannot read" in dkim and "dkim.pem" in dkim


def test_dkim_warns_when_the_dns_cannot_answer(
    run_cli: Callable[..., Result], dkim_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_dns(name: str) -> list[str]:
        raise doctor.DnsLookupError("The DNS operation timed out.")

    monkeypatch.setattr(doctor, "lookup_dns_txt", no_dns)
    result = run_cli("doctor")
    assert result.exit_code == 0, result.output
    assert lines_of(result)["dkim"] == (
        "warn  ed25519-sha256 key readable; cannot look up news2026._domainkey.helloshuttle.com:"
        " The DNS operation timed out."
    )
