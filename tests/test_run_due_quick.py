"""run-due's first look (schedule/quick.py) against the full one (schedules.due and
due_rules): it may say "nothing" only when the full look finds nothing, at every moment
around each row's time, on SQLite and on PostgreSQL (ledger/direct.py, without
SQLAlchemy)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa
from campaign_support import Publication, make_publication
from click.testing import CliRunner

from newsletter.cli import cli
from newsletter.ledger import migrations, schedules, tables
from newsletter.ledger.revision import HEAD
from newsletter.ledger.store import Store
from newsletter.schedule import plans, quick

NOW = dt.datetime(2026, 12, 1, 17, 0, tzinfo=dt.UTC)
SECOND = dt.timedelta(seconds=1)


@pytest.fixture
def pub(tmp_path: Path, database_url: str) -> Publication:
    return make_publication(tmp_path, database_url, 2525)


def _full_look(store: Store, now: dt.datetime) -> bool:
    due, stopped = schedules.due(store, now)
    return bool(due or stopped or schedules.due_rules(store, now))


def _agree(pub: Publication, store: Store, moments: list[dt.datetime]) -> list[bool]:
    url = pub.config().database_url
    answers = []
    for moment in moments:
        assert quick.nothing_due(url, moment) == (not _full_look(store, moment)), moment
        answers.append(quick.nothing_due(url, moment))
    return answers


def test_the_constants_are_the_ledgers() -> None:
    assert quick._ACTIVE_RULE == schedules.ACTIVE_RULE
    assert HEAD == migrations.HEAD


def test_a_scheduled_campaign_and_a_rule_around_their_times(pub: Publication) -> None:
    store = pub.store()
    config = pub.config()
    assert _agree(pub, store, [NOW]) == [True]  # an empty ledger
    cid, when, _ = plans.schedule_issue(store, config, pub.issue, "2026-12-01 10:00:00", now=NOW)
    # 10:00 in the publication's zone; before it nothing, from it on the campaign.
    assert _agree(pub, store, [when - SECOND, when, when + SECOND]) == [True, False, False]
    plans.cancel(store, str(cid))
    assert _agree(pub, store, [when + SECOND]) == [True]

    rule_id, first, _ = plans.add_recurring(store, config, "0 9 * * TUE", "UTC", NOW)
    assert _agree(pub, store, [first - SECOND, first, first + dt.timedelta(days=1)]) == [
        True,
        False,
        False,
    ]
    schedules.cancel_rule(store, rule_id)
    assert _agree(pub, store, [first + SECOND]) == [True]


def test_sending_and_incomplete_campaigns(pub: Publication) -> None:
    store = pub.store()
    cid, when, _ = plans.schedule_issue(
        store, pub.config(), pub.issue, "2026-12-01 10:00:00", now=NOW
    )
    later = when + dt.timedelta(hours=1)
    with store.begin() as conn:
        conn.execute(
            tables.campaigns.update()
            .where(tables.campaigns.c.id == cid)
            .values(status=tables.RUNNING)
        )
    assert _agree(pub, store, [when - SECOND, later]) == [False, False]  # its runner may be dead
    with store.begin() as conn:
        conn.execute(
            tables.campaigns.update()
            .where(tables.campaigns.c.id == cid)
            .values(status=tables.INCOMPLETE, resume_after=later)
        )
    assert _agree(pub, store, [later - SECOND, later, later + SECOND]) == [True, False, False]
    with store.begin() as conn:  # run-due gave up on it: no retry time
        conn.execute(
            tables.campaigns.update().where(tables.campaigns.c.id == cid).values(resume_after=None)
        )
    assert _agree(pub, store, [later + SECOND]) == [True]


def test_anything_uncertain_means_the_full_look(pub: Publication, tmp_path: Path) -> None:
    assert not quick.nothing_due(f"sqlite:///{tmp_path / 'not-there.db'}", NOW)
    assert not quick.nothing_due("postgresql+psycopg://postgres@127.0.0.1:1/test", NOW)
    assert not quick.nothing_due("postgresql://postgres@127.0.0.1/test", NOW)  # psycopg2
    assert not quick.nothing_due("sqlite://", NOW)  # in memory
    (tmp_path / "junk.db").write_bytes(b"not a database")
    assert not quick.nothing_due(f"sqlite:///{tmp_path / 'junk.db'}", NOW)
    store = pub.store()
    url = pub.config().database_url
    assert quick.nothing_due(url, NOW)
    if store.is_sqlite:
        assert quick.nothing_due(url + "?timeout=5", NOW)
    else:  # libpq's own parameters pass; one it does not know means the full look
        assert quick.nothing_due(url + "?connect_timeout=5&application_name=t", NOW)
        assert not quick.nothing_due(url + "?no_such_parameter=1", NOW)
    with store.begin() as conn:  # an older revision: the full run upgrades it
        conn.execute(sa.text("UPDATE newsletter_alembic_version SET version_num = '0005'"))
    assert not quick.nothing_due(url, NOW)


# tests/test_startup.py: run-due with nothing due loads no SQLAlchemy.


def test_run_due_still_sends_what_is_due(pub: Publication) -> None:
    # The first look says "something": the full run happens (here: a missed campaign,
    # found a day late, reported and exit 1).
    store = pub.store()
    cid, _, _ = plans.schedule_issue(
        store, pub.config(), pub.issue, "2026-12-01 10:00:00", now=NOW
    )
    with store.begin() as conn:  # its time came a day ago (run-due reads the real clock)
        conn.execute(
            tables.campaigns.update()
            .where(tables.campaigns.c.id == cid)
            .values(scheduled_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
        )
    store.close()
    runner = CliRunner()
    result = runner.invoke(
        cli, ["--config", str(pub.config_path), "run-due"], env=pub.env, catch_exceptions=False
    )
    assert result.exit_code == 1
    assert f"campaign {cid} missed" in result.output
