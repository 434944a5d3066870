"""Shared setup for the store, campaign and sending tests: a publication on a real database."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from services import postgres_url

from newsletter import config as config_mod
from newsletter.ledger.delivery_rows import counts
from newsletter.ledger.store import Store, SubscriberRow
from newsletter.ledger.tables import deliveries, delivery_counts, metadata

REPO = Path(__file__).resolve().parents[1]
SAMPLE_ISSUE = next((REPO / "issues").glob("*.md"))
SECRET = "test-secret-not-for-production-0123456789"


@pytest.fixture(autouse=True)
def close_stores(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Dispose of every Store a test opens: pooled connections must not outlive the test."""
    opened: list[Store] = []
    original = Store.__init__

    def init(self: Store, engine: sa.Engine) -> None:
        original(self, engine)
        opened.append(self)

    monkeypatch.setattr(Store, "__init__", init)
    yield
    for store in opened:
        store.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A real, empty database: a SQLite file, or the local PostgreSQL (tables dropped)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'newsletter.db'}"
        return
    url = postgres_url()
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            metadata.drop_all(conn)
            conn.execute(sa.text("DROP TABLE IF EXISTS newsletter_meta"))
            conn.execute(sa.text("DROP TABLE IF EXISTS newsletter_alembic_version"))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {url} is not reachable: {exc.orig}")
    finally:
        engine.dispose()
    yield url
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        metadata.drop_all(conn)
        # Else the next open would find the version table at head, and no tables.
        conn.execute(sa.text("DROP TABLE IF EXISTS newsletter_alembic_version"))
    engine.dispose()


@dataclass
class Publication:
    root: Path
    config_path: Path
    env: dict[str, str]
    issue: Path

    def config(self, **overrides: str) -> config_mod.Config:
        return config_mod.load(self.config_path, {**self.env, **overrides})

    def store(self) -> Store:
        return Store.open(self.config().database_url)

    def subprocess_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
        return {**env, **self.env, "NEWSLETTER_CONFIG": str(self.config_path)}


TIMEOUTS = ("GREETING", "MAIL", "RCPT", "DATA", "BLOCK", "DOT")


def make_publication(tmp_path: Path, database_url: str, smtp_port: int) -> Publication:
    root = tmp_path / f"pub-{uuid.uuid4().hex[:6]}"
    root.mkdir()
    shutil.copy(REPO / "newsletter.toml", root / "newsletter.toml")
    shutil.copytree(REPO / "templates", root / "templates")
    shutil.copytree(REPO / "issues", root / "issues")
    env = {
        "NEWSLETTER_DATABASE_URL": database_url,
        "NEWSLETTER_SMTP_HOST": "127.0.0.1",
        "NEWSLETTER_SMTP_PORT": str(smtp_port),
        "NEWSLETTER_SMTP_TIMEOUT": "5",
        # A test that hangs fails in seconds, not after RFC 5321's minutes.
        **{f"NEWSLETTER_SMTP_{wait}_TIMEOUT": "5" for wait in TIMEOUTS},
        "NEWSLETTER_SMTP_RETRY_DELAY": "0.01",
        "NEWSLETTER_SECRET": SECRET,
    }
    return Publication(root, root / "newsletter.toml", env, root / "issues" / SAMPLE_ISSUE.name)


def add_subscribers(store: Store, n: int, prefix: str = "reader") -> list[str]:
    rows = [SubscriberRow(f"{prefix}{i:05d}@example.com", f"Reader {i}") for i in range(n)]
    store.upsert_subscribers(rows)
    return [r.email for r in rows]


# --- delivery_counts against COUNT(*) (revision 0007) ------------------------------------


def counted_rows(store: Store) -> dict[tuple[int, str], int]:
    """What COUNT(*) says, per campaign and status."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(deliveries.c.campaign_id, deliveries.c.status, sa.func.count()).group_by(
                deliveries.c.campaign_id, deliveries.c.status
            )
        ).all()
    return {(c, s): int(n) for c, s, n in rows}


def kept_counts(store: Store) -> dict[tuple[int, str], int]:
    """What delivery_counts says, per campaign and status (zeros left out)."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                delivery_counts.c.campaign_id,
                delivery_counts.c.status,
                sa.func.sum(delivery_counts.c.n),
            ).group_by(delivery_counts.c.campaign_id, delivery_counts.c.status)
        ).all()
    return {(c, s): int(n) for c, s, n in rows if n}


def check_counts(store: Store, *campaign_ids: int) -> dict[tuple[int, str], int]:
    """delivery_counts (PostgreSQL; SQLite keeps none and counts) and counts() are exactly
    COUNT(*); returns the counts."""
    truth = counted_rows(store)
    assert kept_counts(store) == ({} if store.is_sqlite else truth)
    for campaign_id in campaign_ids:
        mine = {s: n for (c, s), n in truth.items() if c == campaign_id}
        assert {s: n for s, n in counts(store, campaign_id).items() if n} == mine
    return truth
