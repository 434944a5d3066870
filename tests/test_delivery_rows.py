"""The per-message ledger writes (`delivery_rows.Ledger`) and the workers' batch claim
(`delivery_rows.first_claimable`), on a SQLite file and on the local PostgreSQL."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from campaign_support import Publication, add_subscribers, make_publication
from smtp_fixtures import SmtpServer

from newsletter.issue import publish
from newsletter.ledger import delivery_rows, lifecycle
from newsletter.ledger.delivery_rows import ASYNC_RISK, LeasedRows, Ledger, Rows, claimable
from newsletter.ledger.store import Store
from newsletter.ledger.tables import (
    DEFERRED,
    DONE,
    PENDING,
    SENDING,
    SENT,
    deliveries,
    metadata,
    subscribers,
    utcnow,
)
from newsletter.send import campaign


@pytest.fixture
def pub(tmp_path: Path, database_url: str, smtp_server: SmtpServer) -> Publication:
    return make_publication(tmp_path, database_url, smtp_server.port)


def new_campaign(pub: Publication, store: Store, n: int) -> tuple[int, list[int]]:
    add_subscribers(store, n)
    cfg = pub.config()
    built = publish.build_issue(cfg, publish.load_issue(pub.issue))
    campaign_id = lifecycle.create(store, built)
    with store.engine.connect() as conn:
        ids = conn.execute(
            sa.select(deliveries.c.id)
            .where(deliveries.c.campaign_id == campaign_id)
            .order_by(deliveries.c.id)
        ).scalars()
        return campaign_id, list(ids)


def statuses(store: Store, ids: list[int]) -> list[tuple[str, int]]:
    with store.engine.connect() as conn:
        return [
            (r.status, r.attempts)
            for r in conn.execute(
                sa.select(deliveries.c.status, deliveries.c.attempts)
                .where(deliveries.c.id.in_(ids))
                .order_by(deliveries.c.id)
            )
        ]


# --- the Ledger's one transaction a message ------------------------------------------------


def record(ledger: Ledger, did: int) -> dict[str, Any]:
    return {
        "did": did,
        "new_status": SENT,
        "code": 250,
        "error": None,
        "when_sent": ledger.time(utcnow()),
        "retry_at": None,
    }


def test_a_reply_is_recorded_with_the_next_row_marked_or_refused(pub: Publication) -> None:
    store = pub.store()
    campaign_id, ids = new_campaign(pub, store, 3)
    rows = LeasedRows(store, campaign_id, "worker-a", [], 60)
    with store.begin() as conn:  # the third row is leased to another worker
        conn.execute(
            deliveries.update()
            .where(deliveries.c.id == ids[2])
            .values(lease_owner="worker-b", lease_until=utcnow() + dt.timedelta(minutes=1))
        )
        conn.execute(
            deliveries.update()
            .where(deliveries.c.id.in_(ids[:2]))
            .values(lease_owner="worker-a", status=SENDING)
        )
    with store.writer() as db:
        ledger = Ledger(db, rows.MARK, threading.Lock())
        try:
            now = utcnow()
            mark = rows.mark_params(ledger.time, now) | {"did": ids[1]}
            assert ledger.commit(record(ledger, ids[0]), mark) is True
            assert statuses(store, ids) == [(SENT, 1), (SENDING, 0), (PENDING, 0)]
            # Refused (another worker's row): the reply is recorded all the same.
            mark = rows.mark_params(ledger.time, now) | {"did": ids[2]}
            assert ledger.commit(record(ledger, ids[1]), mark) is False
            assert statuses(store, ids) == [(SENT, 1), (SENT, 1), (PENDING, 0)]
        finally:
            ledger.close()


@pytest.mark.postgres
def test_synchronous_commit_off_is_the_senders_alone_and_given_back(tmp_path: Path) -> None:
    from services import postgres_url

    store = Store.open(postgres_url())
    show = "SHOW synchronous_commit"
    with store.writer() as db:
        ledger = Ledger(db, Rows.MARK, threading.Lock(), synchronous=False)
        raw = db.connection.dbapi_connection
        assert raw is not None
        assert raw.cursor().execute(show).fetchone() == ("off",)
        with store.engine.connect() as other:
            assert other.exec_driver_sql(show).scalar() == "on"
        ledger.close()
        assert raw.cursor().execute(show).fetchone() == ("on",)
        assert raw.autocommit is False
    with store.writer() as db:  # the pool's next user gets it as it was
        assert db.exec_driver_sql(show).scalar() == "on"


@pytest.mark.postgres
def test_a_campaign_with_synchronous_commit_off_says_what_it_risks(
    tmp_path: Path, smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    from services import postgres_url

    pub = make_publication(tmp_path, postgres_url(), smtp_server.port)
    store = pub.store()
    with store.begin() as conn:  # the tables of an earlier test
        conn.execute(deliveries.delete())
        conn.execute(subscribers.delete())
    campaign_id, ids = new_campaign(pub, store, 5)
    cfg = pub.config(NEWSLETTER_DATABASE_SYNCHRONOUS_COMMIT="false")
    assert cfg.database.synchronous_commit is False
    with caplog.at_level(logging.WARNING, "newsletter.campaign"):
        result = campaign.run(store, cfg, campaign_id)
    assert result.status == DONE and result.sent == 5
    assert ASYNC_RISK in caplog.text
    assert len(smtp_server.received) == 5
    assert statuses(store, ids) == [(SENT, 1)] * 5


def test_synchronous_commit_is_the_default(pub: Publication) -> None:
    assert pub.config().database.synchronous_commit is True


@pytest.mark.postgres
def test_a_new_campaign_gives_the_planner_its_rows(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    """Without statistics PostgreSQL took a new campaign's 2,000 rows for one and joined
    each to every active subscriber: 0.2-0.7 s a fetch of 500 rows."""
    from services import postgres_url

    pub = make_publication(tmp_path, postgres_url(), smtp_server.port)
    store = pub.store()
    with store.begin() as conn:  # fresh tables: nothing analyzed yet
        conn.execute(deliveries.delete())
        conn.execute(subscribers.delete())
    store.close()
    engine = sa.create_engine(postgres_url())
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE deliveries CASCADE")
    engine.dispose()
    store = pub.store()
    with store.begin() as conn:
        metadata.create_all(conn)
        reltuples = "SELECT reltuples FROM pg_class WHERE relname = 'deliveries'"
        assert conn.exec_driver_sql(reltuples).scalar_one() < 0  # never analyzed
    campaign_id, ids = new_campaign(pub, store, 2000)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql(reltuples).scalar_one() == 2000
    rows = Rows(store, campaign_id)
    assert [i.delivery_id for i in rows.fetch(0)] == ids[: Rows.BATCH]


# --- the workers' claim: a batch from the front, whatever was sent before ------------------


def test_the_claim_takes_the_first_claimable_rows_by_id(pub: Publication) -> None:
    store = pub.store()
    campaign_id, ids = new_campaign(pub, store, 40)
    now = utcnow()
    later, earlier = now + dt.timedelta(minutes=5), now - dt.timedelta(minutes=5)
    changes: list[tuple[list[int], dict[str, Any]]] = [
        (ids[0:10], {"status": SENT}),
        (ids[10:13], {"lease_owner": "w", "lease_until": later}),  # held by a live worker
        (ids[13:14], {"status": SENDING, "lease_owner": "w", "lease_until": earlier}),  # died
        (ids[14:15], {"status": SENDING}),  # in doubt after a batch: parked
        (ids[15:16], {"status": DEFERRED, "next_attempt_at": later}),  # not yet due
        (ids[16:17], {"status": DEFERRED, "next_attempt_at": earlier}),  # due
        (ids[17:18], {"status": DEFERRED}),  # retries used up: parked
        (ids[30:31], {"status": DEFERRED, "next_attempt_at": earlier}),
    ]
    with store.begin() as conn:
        for which, values in changes:
            conn.execute(deliveries.update().where(deliveries.c.id.in_(which)).values(values))
    with store.engine.connect() as conn:
        for n in (1, 3, 8, 100):
            expected = (
                conn.execute(
                    sa.select(deliveries.c.id)
                    .where(deliveries.c.campaign_id == campaign_id, claimable(now))
                    .order_by(deliveries.c.id)
                    .limit(n)
                )
                .scalars()
                .all()
            )
            got = conn.execute(delivery_rows.first_claimable(campaign_id, now, n)).scalars().all()
            assert got == expected
    assert expected[:3] == [ids[13], ids[16], ids[18]]
    assert len(expected) == 40 - 10 - 3 - 1 - 1 - 1


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(n for child in plan.get("Plans", []) for n in plan_nodes(child))]


@pytest.mark.postgres
def test_a_claim_deep_in_a_large_campaign_looks_at_a_batch_not_the_list(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    """20,000 rows, the first 19,000 sent and 300 leased to a live worker: the claim of 100
    reads about the leased rows and the batch, through the index, with no sort of the list."""
    from services import postgres_url

    pub = make_publication(tmp_path, postgres_url(), smtp_server.port)
    store = pub.store()
    with store.begin() as conn:
        conn.execute(deliveries.delete())
        conn.execute(subscribers.delete())
    campaign_id, ids = new_campaign(pub, store, 20_000)
    now = utcnow()
    with store.begin() as conn:
        conn.execute(deliveries.update().where(deliveries.c.id <= ids[18_999]).values(status=SENT))
        conn.execute(
            deliveries.update()
            .where(deliveries.c.id.between(ids[19_000], ids[19_299]))
            .values(lease_owner="w", lease_until=now + dt.timedelta(minutes=5))
        )
        conn.exec_driver_sql("ANALYZE deliveries")
    query = delivery_rows.first_claimable(campaign_id, now, 100)
    compiled = query.compile(store.engine, compile_kwargs={"render_postcompile": True})
    with store.engine.connect() as conn:
        got = conn.execute(query).scalars().all()
        explained = conn.exec_driver_sql(
            f"EXPLAIN (ANALYZE, FORMAT JSON) {compiled}", compiled.params
        ).scalar_one()
    assert got == ids[19_300:19_400]
    nodes = plan_nodes(explained[0]["Plan"])
    on_deliveries = [n for n in nodes if n.get("Relation Name") == "deliveries"]
    assert on_deliveries and all("Index" in n["Node Type"] for n in on_deliveries), nodes
    read = sum(n["Actual Rows"] + n.get("Rows Removed by Filter", 0) for n in on_deliveries)
    assert read <= 300 + 100 + 10, read
    assert all(n["Actual Rows"] <= 300 for n in nodes if n["Node Type"] == "Sort")


def test_a_batch_claimed_is_leased_with_its_addresses(pub: Publication) -> None:
    store = pub.store()
    campaign_id, ids = new_campaign(pub, store, 5)
    lifecycle.claim(store, campaign_id, lifecycle.WORKERS, ("ready",))
    cfg = pub.config(NEWSLETTER_WORKERS_BATCH_SIZE="3")
    claimed = lifecycle.claim_batch(store, cfg, campaign_id, "worker-a", sweep=False)
    assert claimed is not None
    _, items, number = claimed
    assert [(i.delivery_id, i.email) for i in items] == [
        (ids[n], f"reader{n:05d}@example.com") for n in range(3)
    ]
    with store.engine.connect() as conn:
        owners = conn.execute(
            sa.select(deliveries.c.lease_owner).order_by(deliveries.c.id)
        ).scalars()
        assert list(owners) == ["worker-a"] * 3 + [None] * 2
    claimed = lifecycle.claim_batch(store, cfg, campaign_id, "worker-b", sweep=False)
    assert claimed is not None
    assert [i.delivery_id for i in claimed[1]] == ids[3:]
