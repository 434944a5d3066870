"""The services some tests need, one pytest marker each.

A test that needs PostgreSQL, the Celery brokers, a browser, SpamAssassin or Dovecot
carries the marker (`postgres`, `celery`, `browser`, `spamassassin`, `dovecot`), so
`pytest -m "not browser"` leaves it out. When a marked test runs and its service is
missing, it is skipped with one line that names the service and how to start or install
it; with `CI` set it fails instead, because `.ci/run` starts or installs every service and
a skip there would hide a broken setup.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

POSTGRES_ENV = "NEWSLETTER_TEST_POSTGRES_URL"
# Read at import: the suite's autouse fixture clears NEWSLETTER_* variables per test.
POSTGRES_URL = os.environ.get(POSTGRES_ENV, "")
REDIS = ("127.0.0.1", 6379)
AMQP = ("127.0.0.1", 5672)
CHROMIUM = Path(os.environ.get("NEWSLETTER_CHROMIUM", "/usr/bin/chromium"))
# Debian's dovecot-imapd: the tests start their own server from these (tests/test_bounces.py).
DOVECOT = Path(os.environ.get("NEWSLETTER_DOVECOT", "/usr/sbin/dovecot"))
DOVECOT_IMAP = Path("/usr/lib/dovecot/imap")


def _reachable(address: tuple[str, int]) -> str | None:
    try:
        socket.create_connection(address, timeout=2).close()
    except OSError as exc:
        return f"not reachable at {address[0]}:{address[1]} ({exc.strerror or exc})"
    return None


def _postgres() -> str | None:
    if not POSTGRES_URL:
        return (
            f"PostgreSQL: {POSTGRES_ENV} is not set (start the server, then "
            f"export {POSTGRES_ENV}=postgresql+psycopg://postgres@127.0.0.1:5432/test)"
        )
    import sqlalchemy as sa

    engine = sa.create_engine(POSTGRES_URL)
    try:
        with engine.connect():
            return None
    except Exception as exc:  # noqa: BLE001 - any failure to connect means "missing"
        first = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        return f"PostgreSQL at {POSTGRES_ENV} is not reachable ({first}); start it first"
    finally:
        engine.dispose()


def _celery() -> str | None:
    missing = []
    for name, address, start in (
        ("Redis", REDIS, "redis-server --daemonize yes --port 6379"),
        ("RabbitMQ", AMQP, "rabbitmq-server -detached"),
    ):
        problem = _reachable(address)
        if problem:
            missing.append(f"{name} {problem}; start it with `{start}`")
    return "; ".join(missing) or None


def _browser() -> str | None:
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install playwright)")
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    return "browser tests need " + " and ".join(missing) if missing else None


def _spamassassin() -> str | None:
    program = shutil.which("spamassassin")
    if program is None:
        return "SpamAssassin: spamassassin is not on PATH (apt-get install spamassassin)"
    # --lint loads the rules: without any (no package rules, no sa-update) it fails.
    lint = subprocess.run(
        [program, "--local", "--lint"], capture_output=True, text=True, timeout=120
    )
    if lint.returncode != 0:
        said = (lint.stderr.strip().splitlines() or ["no message"])[0]
        return f"SpamAssassin's rules do not load ({said}); reinstall spamassassin"


def _dovecot() -> str | None:
    missing = [str(p) for p in (DOVECOT, DOVECOT_IMAP) if not p.exists()]
    if missing:
        return (
            f"Dovecot: {' and '.join(missing)} not found (apt-get install dovecot-imapd;"
            " the tests start their own server on a free port)"
        )
    return None


CHECKS: dict[str, Callable[[], str | None]] = {
    "postgres": _postgres,
    "celery": _celery,
    "browser": _browser,
    "spamassassin": _spamassassin,
    "dovecot": _dovecot,
}


@functools.cache
def missing(service: str) -> str | None:
    """Why `service` cannot be used here (one line), or None when it is there."""
    return CHECKS[service]()


def require(item: pytest.Item) -> None:
    """Skip (or, with CI set, fail) `item` when a service its markers name is missing."""
    for service in CHECKS:
        if item.get_closest_marker(service) is None:
            continue
        reason = missing(service)
        if reason is None:
            continue
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (.ci/run starts it; in CI these tests must not skip)")
        pytest.skip(reason)


def postgres_url() -> str:
    """The test PostgreSQL's URL, for a test marked `postgres` (its check has run)."""
    assert POSTGRES_URL, "a test that uses PostgreSQL must carry the postgres marker"
    return POSTGRES_URL
