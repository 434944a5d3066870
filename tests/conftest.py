"""Shared fixtures: a throwaway copy of the sample publication and a way to run the CLI."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from newsletter.cli import cli

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_ISSUE_NAME = "2024-11-25-motivated-biden-authorize-ukraines-use-atacms.md"
TEST_SECRET = "test-secret-not-for-production-0123456789"


@pytest.fixture(autouse=True)
def newsletter_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No NEWSLETTER_* variable leaks in from the shell, and the signing secret is fixed,
    so no test creates a .newsletter-secret file."""
    for name in list(os.environ):
        if name.startswith("NEWSLETTER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NEWSLETTER_SECRET", TEST_SECRET)
    yield


@pytest.fixture(autouse=True)
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests stay on 127.0.0.1: doctor's SPF, DMARC and DKIM lookups answer "unreachable"
    unless a test hands doctor its own lookup."""
    from newsletter.setup import dns_checks

    def unreachable(name: str, rdtype: str) -> list[str]:
        raise dns_checks.DnsUnreachable(f"{name}: no DNS in the tests")

    monkeypatch.setattr(dns_checks, "lookup_dns", unreachable)


@pytest.fixture(autouse=True)
def no_web(monkeypatch: pytest.MonkeyPatch) -> None:
    """Doctor's GET of <base_url>/healthz is refused at once (base_url is a public name);
    tests/test_doctor.py has its own, and serves a real site where it needs one."""
    from newsletter.setup import doctor

    def refuse(url: str, timeout: float) -> str:
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(doctor, "get_health", refuse)


@pytest.fixture
def publication(tmp_path: Path) -> Path:
    """A copy of the sample publication (config, templates, issues); its newsletter.toml."""
    shutil.copy(REPO_ROOT / "newsletter.toml", tmp_path / "newsletter.toml")
    shutil.copytree(REPO_ROOT / "templates", tmp_path / "templates")
    shutil.copytree(REPO_ROOT / "issues", tmp_path / "issues")
    return tmp_path / "newsletter.toml"


@pytest.fixture
def sample_issue(publication: Path) -> Path:
    """The sample issue inside the copied publication."""
    return publication.parent / "issues" / SAMPLE_ISSUE_NAME


@pytest.fixture
def run_cli(publication: Path) -> Callable[..., Result]:
    """run_cli("build", path, config=...) runs `newsletter --config CONFIG ...` in-process."""

    def run(*args: str | Path, config: Path | None = publication) -> Result:
        argv = ["--config", str(config)] if config is not None else []
        argv += [str(a) for a in args]
        return CliRunner().invoke(cli, argv, prog_name="newsletter")

    return run


@pytest.fixture
def assert_user_error() -> Callable[..., str]:
    """Check a failed CLI run the way a user sees it; returns the one stderr line.

    Non-zero exit, exactly one line on stderr holding every `needle`, no traceback,
    no uncaught exception, and nothing (not even a temporary file) in `out_dir`.
    """

    def check(result: Result, *needles: str, out_dir: Path | None = None) -> str:
        assert result.exit_code != 0, result.output
        assert isinstance(result.exception, SystemExit), repr(result.exception)
        assert "Traceback" not in result.output
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        for needle in needles:
            assert needle in lines[0], (needle, lines[0])
        if out_dir is not None and out_dir.exists():
            assert sorted(p.name for p in out_dir.iterdir()) == []
        return lines[0]

    return check


@pytest.fixture
def edit_file() -> Callable[[Path, str, str], None]:
    """edit_file(path, old, new): replace the one occurrence of `old`; fails if it is not there,
    so a test never passes on an edit that silently did nothing."""

    def edit(path: Path, old: str, new: str) -> None:
        text = path.read_text(encoding="utf-8")
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {path}"
        path.write_text(text.replace(old, new), encoding="utf-8")

    return edit


# Fixtures of the sending tests: a real SMTP server and a real database.
import services  # noqa: E402
from campaign_support import close_stores, database_url  # noqa: E402, F401
from smtp_fixtures import silent_server, smtp_server, utf8_smtp_server  # noqa: E402, F401

# Tests that need a service carry its marker (tests/services.py). The fixtures that reach a
# service bring the marker with them, so `-m "not celery"` leaves out every test using one.
FIXTURE_SERVICES = {"pg_url": "postgres", "broker": "celery", "browser_ready": "browser"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, service in FIXTURE_SERVICES.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(service)
                if service == "celery":  # the workers' ledger is PostgreSQL
                    item.add_marker("postgres")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    services.require(item)
