"""A campaign's counts per status, kept by triggers on PostgreSQL (delivery_counts, revision
0007), are exactly what COUNT(*) ... GROUP BY status gives after every transition the code
makes (SQLite counts: the same transitions, through delivery_rows.counts); the
workers' claim cursor (campaigns.claim_from) never hides a claimable row; and `status`
reads the few rows it shows through partial indexes. On a SQLite file and on the local
PostgreSQL."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from campaign_support import Publication, add_subscribers, check_counts, make_publication
from smtp_fixtures import SmtpServer

from newsletter.errors import NewsletterError
from newsletter.issue import publish
from newsletter.ledger import campaign_status, delivery_rows, lifecycle, privacy
from newsletter.ledger.delivery_rows import LeasedRows, Ledger, Rows, counts
from newsletter.ledger.direct import Driver
from newsletter.ledger.store import Store
from newsletter.ledger.tables import (
    DEFERRED,
    FAILED,
    GIVEN_UP,
    INCOMPLETE,
    PENDING,
    RUNNING,
    SCHEDULED,
    SENDING,
    SENT,
    SKIPPED,
    UNSUBSCRIBED,
    bounces,
    campaigns,
    deliveries,
    delivery_counts,
    subscribers,
    utcnow,
)


@pytest.fixture
def pub(tmp_path: Path, database_url: str, smtp_server: SmtpServer) -> Publication:
    return make_publication(tmp_path, database_url, smtp_server.port)


def new_campaign(pub: Publication, store: Store, **kw: Any) -> int:
    built = publish.build_issue(pub.config(), publish.load_issue(pub.issue))
    return lifecycle.create(store, built, **kw)


def ids_of(store: Store, campaign_id: int) -> list[int]:
    with store.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(deliveries.c.id)
                .where(deliveries.c.campaign_id == campaign_id)
                .order_by(deliveries.c.id)
            ).scalars()
        )


def reply(ledger: Ledger, did: int, status: str, code: int, error: str | None) -> dict[str, Any]:
    later = utcnow() + dt.timedelta(minutes=5)
    return {
        "did": did,
        "new_status": status,
        "code": code,
        "error": error,
        "when_sent": ledger.time(utcnow()) if status == SENT else None,
        "retry_at": ledger.time(later) if status == DEFERRED else None,
    }


def test_every_transition_keeps_the_counts_those_of_count(pub: Publication) -> None:
    store = pub.store()
    emails = add_subscribers(store, 12)
    a = new_campaign(pub, store)  # creation: one INSERT ... SELECT
    later = utcnow() + dt.timedelta(days=1)
    b = new_campaign(pub, store, status=SCHEDULED, scheduled_at=later)
    assert check_counts(store, a, b) == {(a, PENDING): 12}
    lifecycle.claim(store, b, "elsewhere:1:x", (SCHEDULED,))  # its deliveries made now
    assert check_counts(store, a, b)[(b, PENDING)] == 12
    ids = ids_of(store, a)

    # The workers take campaign a: a new round, a batch leased (no status changes).
    lifecycle.claim(store, a, lifecycle.WORKERS, ("ready",))
    lifecycle.new_round(store, a)
    cfg = pub.config(NEWSLETTER_WORKERS_BATCH_SIZE="6")
    claimed = lifecycle.claim_batch(store, cfg, a, "worker-a", sweep=False)
    assert claimed is not None and [i.delivery_id for i in claimed[1]] == ids[:6]
    check_counts(store, a, b)

    # The per-message writes of a worker's batch, as its runner makes them.
    rows = LeasedRows(store, a, "worker-a", claimed[1], 60)
    with store.writer() as db:
        ledger = Ledger(db, rows.MARK, threading.Lock())
        try:

            def mark(did: int) -> dict[str, Any]:
                return rows.mark_params(ledger.time, utcnow()) | {"did": did}

            assert ledger.commit(None, mark(ids[0])) is True  # pending -> sending
            assert check_counts(store, a)[(a, SENDING)] == 1
            assert ledger.commit(reply(ledger, ids[0], SENT, 250, None), mark(ids[1]))
            assert check_counts(store, a)[(a, SENT)] == 1
            error = "451 4.7.1 try again later"
            assert ledger.commit(reply(ledger, ids[1], DEFERRED, 451, error), mark(ids[2]))
            assert check_counts(store, a)[(a, DEFERRED)] == 1
            error = "550 5.1.1 no such user"
            assert ledger.commit(reply(ledger, ids[2], FAILED, 550, error), mark(ids[3]))
            assert check_counts(store, a)[(a, FAILED)] == 1
            ledger.give_back(ids[3])  # sending -> pending
            assert check_counts(store, a)[(a, PENDING)] == 12 - 3
            assert ledger.commit(None, mark(ids[4])) is True  # no reply: in doubt
            # Refused (not this batch's row): nothing changes.
            assert ledger.commit(None, mark(ids[8])) is False
            check_counts(store, a)
        finally:
            ledger.close()
    delivery_rows.undo_failed(store, [ids[2]])  # failed -> pending
    assert (a, FAILED) not in check_counts(store, a)
    delivery_rows.release_batch(store, a, "worker-a", [ids[1]])
    check_counts(store, a)

    # Someone leaves: their rows are skipped, in doubt included; a new round.
    store.set_subscriber_status(emails[4], UNSUBSCRIBED)
    store.set_subscriber_status(emails[5], UNSUBSCRIBED)
    rows.skip_unsubscribed(in_doubt=True)
    truth = check_counts(store, a, b)
    assert truth[(a, SKIPPED)] == 2 and truth[(b, PENDING)] == 12
    lifecycle.new_round(store, a)
    check_counts(store, a)

    # In-process: the runner's rows of campaign b, marked and recorded.
    with store.writer() as db:
        ledger = Ledger(db, Rows.MARK, threading.Lock())
        try:
            b_ids = ids_of(store, b)
            now = utcnow()
            assert ledger.commit(
                None, Rows(store, b).mark_params(ledger.time, now) | {"did": b_ids[0]}
            )
            assert ledger.commit(
                reply(ledger, b_ids[0], SENT, 250, None),
                Rows(store, b).mark_params(ledger.time, now) | {"did": b_ids[1]},
            )
            assert ledger.commit(reply(ledger, b_ids[1], SENT, 250, None), None) is False
        finally:
            ledger.close()
    Rows(store, b).after_pass()  # the two who left: skipped
    assert check_counts(store, a, b)[(b, SKIPPED)] == 2

    # A bulk UPDATE of many rows to several statuses at once, and one that changes none.
    with store.begin() as conn:
        conn.execute(
            deliveries.update()
            .where(deliveries.c.campaign_id == b, deliveries.c.status == PENDING)
            .values(
                status=sa.case(
                    (deliveries.c.id % 3 == 0, SENT),
                    (deliveries.c.id % 3 == 1, FAILED),
                    else_=PENDING,
                )
            )
        )
        conn.execute(deliveries.update().values(attempts=deliveries.c.attempts + 1))
    check_counts(store, a, b)

    privacy.erase(store, emails[1])  # last_error cleared, the status kept
    check_counts(store, a, b)
    lifecycle.release(store, a, lifecycle.WORKERS, INCOMPLETE, None)
    closed = lifecycle.close(store, a)  # what is left is given up
    assert check_counts(store, a, b)[(a, GIVEN_UP)] == closed.given_up > 0

    # A campaign removed takes its deliveries with it (ON DELETE CASCADE): counted too.
    with store.begin() as conn:
        conn.execute(campaigns.delete().where(campaigns.c.id == a))
    assert {c for c, _ in check_counts(store, b)} == {b}
    assert sum(counts(store, a).values()) == 0


@pytest.mark.postgres
def test_two_connections_writing_at_once_never_wait_for_each_other(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    """Each connection adds to its own shard: a transaction that has changed statuses and
    not committed yet does not hold up another's change of the same campaign's statuses,
    and the sum over the shards is exact."""
    from services import postgres_url

    pub = make_publication(tmp_path, postgres_url(), smtp_server.port)
    store = pub.store()
    add_subscribers(store, 6)
    a = new_campaign(pub, store)
    ids = ids_of(store, a)
    with store.engine.connect() as one, store.engine.connect() as two:
        one.begin()
        one.execute(deliveries.update().where(deliveries.c.id == ids[0]).values(status=SENDING))
        one.execute(deliveries.update().where(deliveries.c.id == ids[0]).values(status=SENT))
        # Were the counter rows shared, this would wait for `one` (lock_timeout: fail).
        with two.begin():
            two.exec_driver_sql("SET LOCAL lock_timeout = '2s'")
            two.execute(
                deliveries.update().where(deliveries.c.id == ids[1]).values(status=SENDING)
            )
            two.execute(deliveries.update().where(deliveries.c.id == ids[1]).values(status=SENT))
        one.commit()
    assert check_counts(store, a) == {(a, SENT): 2, (a, PENDING): 4}
    with store.engine.connect() as conn:
        shards = conn.execute(
            sa.select(sa.func.count(sa.distinct(delivery_counts.c.shard))).where(
                delivery_counts.c.campaign_id == a, delivery_counts.c.status == SENT
            )
        ).scalar_one()
    assert shards == 2


# --- the workers' claim cursor ------------------------------------------------------------


def cursor(store: Store, campaign_id: int) -> int | None:
    with store.engine.connect() as conn:
        return conn.execute(
            sa.select(campaigns.c.claim_from).where(campaigns.c.id == campaign_id)
        ).scalar_one()


def set_rows(store: Store, which: list[int], **values: Any) -> None:
    with store.begin() as conn:
        conn.execute(deliveries.update().where(deliveries.c.id.in_(which)).values(**values))


def test_the_claim_cursor_moves_on_and_back_and_hides_no_claimable_row(
    pub: Publication,
) -> None:
    store = pub.store()
    add_subscribers(store, 10)
    a = new_campaign(pub, store)
    ids = ids_of(store, a)
    lifecycle.claim(store, a, lifecycle.WORKERS, ("ready",))
    lifecycle.new_round(store, a)
    assert cursor(store, a) is None
    cfg = pub.config(NEWSLETTER_WORKERS_BATCH_SIZE="3")

    def claim(owner: str) -> list[int]:
        claimed = lifecycle.claim_batch(store, cfg, a, owner, sweep=False)
        assert claimed is not None
        return [i.delivery_id for i in claimed[1]]

    assert claim("w1") == ids[0:3]
    assert cursor(store, a) == ids[0]  # w1's rows are leased, still pending
    # w1 sends two and is on its third; the next claim moves the cursor to the third.
    set_rows(store, ids[0:2], status=SENT)
    set_rows(store, ids[2:3], status=SENDING)
    assert claim("w2") == ids[3:6]
    assert cursor(store, a) == ids[2]
    set_rows(store, ids[2:3], status=SENT)
    set_rows(store, ids[3:6], status=SENT)
    assert claim("w3") == ids[6:9]
    assert cursor(store, a) == ids[6]
    # w3 sends its first two: a claim moves the cursor past them, to w3's third.
    set_rows(store, ids[6:8], status=SENT)
    assert claim("w4") == ids[9:10]
    assert cursor(store, a) == ids[8]
    # w3 had given its second back (no reply from the relay) and releases its batch:
    # the cursor goes back to that row, and the next claim takes it.
    set_rows(store, ids[7:8], status=PENDING)
    delivery_rows.release_batch(store, a, "w3", [])
    assert cursor(store, a) == ids[7]
    assert claim("w5") == ids[7:9]
    set_rows(store, ids[7:10], status=SENT)

    # Below the cursor, claimable rows a claim past it cannot see, from a worker killed
    # before it released its batch: a row it had failed and put back to pending
    # (undo_failed), and a deferred row it was retrying when it died. settle finds them
    # when nothing past the cursor is claimable, and the next claim takes them.
    assert claim("w5b") == []
    earlier = utcnow() - dt.timedelta(seconds=1)
    set_rows(store, ids[1:2], status=PENDING, lease_owner="w0", lease_until=earlier)
    set_rows(store, ids[4:5], status=SENDING, lease_owner="w0", lease_until=earlier)
    assert cursor(store, a) == ids[7]
    assert claim("w6") == []
    queued: list[float] = []
    assert lifecycle.settle(store, cfg, a, queued.append) == "sending"
    assert queued == [0.0] and cursor(store, a) == ids[1]
    assert claim("w7") == [ids[1], ids[4]]
    set_rows(store, [ids[1], ids[4]], status=SENT)
    assert lifecycle.settle(store, cfg, a, queued.append) == "done"


@pytest.mark.postgres
def test_a_claim_late_in_a_long_campaign_reads_as_much_as_the_first(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    """20,000 rows, 16,000 of them sent batch by batch through the claim and UPDATEs (so
    each left dead index entries, and no ANALYZE since the campaign was made): the claim
    of 100 from the cursor reads about as many index and table pages as one at the start;
    the same claim from the first row reads the list."""
    from services import postgres_url

    pub = make_publication(tmp_path, postgres_url(), smtp_server.port)
    store = pub.store()
    with store.begin() as conn:  # the tables of an earlier test
        conn.execute(deliveries.delete())
        conn.execute(subscribers.delete())
    add_subscribers(store, 20_000)
    a = new_campaign(pub, store)
    lifecycle.claim(store, a, lifecycle.WORKERS, ("ready",))
    lifecycle.new_round(store, a)

    def pages(start: int | None) -> tuple[list[int], int]:
        now = utcnow()
        query = delivery_rows.first_claimable(a, now, 100, start)
        compiled = query.compile(store.engine, compile_kwargs={"render_postcompile": True})
        with store.engine.connect() as conn:
            got = conn.execute(query).scalars().all()
            explained = conn.exec_driver_sql(
                f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {compiled}", compiled.params
            ).scalar_one()
        plan = explained[0]["Plan"]
        return list(got), plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]

    # After each batch of 1,000 is sent, the next claim of 100 reads from the cursor: the
    # batch just sent (its rows' dead versions: claimed, marked, recorded, about three
    # pages a row) and the 100, the same at row 1,000 and at row 16,000.
    cfg = pub.config(NEWSLETTER_WORKERS_BATCH_SIZE="1000")
    read = []
    for n in range(16):
        claimed = lifecycle.claim_batch(store, cfg, a, f"w{n}", sweep=False)
        assert claimed is not None and len(claimed[1]) == 1000
        with store.begin() as conn:
            mine = deliveries.c.lease_owner == f"w{n}"
            conn.execute(deliveries.update().where(mine).values(status=SENDING))
            conn.execute(deliveries.update().where(mine).values(status=SENT))
        got, pages_read = pages(cursor(store, a))
        assert got == ids_of(store, a)[(n + 1) * 1000 :][:100]
        read.append(pages_read)
    assert max(read) <= 4 * (1000 + 100), read
    got, unbounded = pages(None)  # from the first row: the 16,000 rows sent before
    assert got == ids_of(store, a)[16_000:16_100]
    assert unbounded > 4 * max(read), (unbounded, read)


# --- status: the rows it shows, through partial indexes ------------------------------------


def plan_text(store: Store, sql: str, **params: Any) -> str:
    """The database's plan for one of campaign_status's reads, run as `status` runs it."""
    with store.engine.connect() as conn:
        driver = Driver.on(conn)
        if store.is_sqlite:
            rows = driver.rows(f"EXPLAIN QUERY PLAN {sql}", **params)
        else:  # a few rows: a sequential scan is cheaper, and says nothing
            conn.exec_driver_sql("SET enable_seqscan = off")
            rows = driver.rows(f"EXPLAIN {sql}", **params)
            conn.exec_driver_sql("RESET enable_seqscan")
    return "\n".join(str(r[-1]) for r in rows)


def test_status_reads_errors_and_leases_through_their_partial_indexes(
    pub: Publication,
) -> None:
    store = pub.store()
    emails = add_subscribers(store, 8)
    a = new_campaign(pub, store)
    ids = ids_of(store, a)
    later = utcnow() + dt.timedelta(minutes=1)
    set_rows(store, ids[0:2], status=SENT)
    set_rows(store, ids[2:3], status=FAILED, last_error="550 5.1.1 no such user")
    set_rows(store, ids[3:4], status=SKIPPED, last_error="451 from before")  # not shown
    set_rows(store, ids[4:6], lease_owner="host:1:ab", lease_until=later)
    set_rows(store, ids[5:6], status=SENDING)
    errors = plan_text(store, campaign_status.RECENT_ERRORS, campaign=a, n=5)
    assert "ix_deliveries_errors" in errors
    now = Driver(lambda *_: [], store.is_sqlite).time(utcnow())
    held = plan_text(store, campaign_status.HELD_ROWS, campaign=a, now=now)
    assert "ix_deliveries_held" in held
    [report] = campaign_status.status(store, a)
    assert [(e.email, e.status) for e in report.recent_errors] == [(emails[2], FAILED)]
    assert (report.sent, report.failed, report.skipped, report.pending) == (2, 1, 1, 3)
    assert (report.in_flight, report.in_doubt, report.batches_sending) == (1, 0, 1)


def test_status_without_sqlalchemy_reads_what_the_store_reads(pub: Publication) -> None:
    # `newsletter status` reads straight from the URL (campaign_status.status_at, through
    # sqlite3 or psycopg); the console and the tests through a Store: the same answer,
    # with the values SQLAlchemy's own types read (aware UTC times, counts, errors).
    store = pub.store()
    url = pub.config().database_url
    emails = add_subscribers(store, 9)
    a = new_campaign(pub, store)
    ids = ids_of(store, a)
    now = utcnow()
    set_rows(store, ids[0:2], status=SENT, sent_at=now)
    set_rows(store, ids[2:3], status=FAILED, last_error="550 5.1.1 no such user")
    set_rows(store, ids[3:4], status=DEFERRED, last_error="451 4.7.1 later")
    set_rows(store, ids[4:5], status=SENDING, last_error="no reply after the final dot")
    set_rows(store, ids[5:7], lease_owner="host-b:7:cd", lease_until=now + dt.timedelta(hours=1))
    set_rows(store, ids[5:6], status=SENDING)  # in flight, under the live lease
    set_rows(store, ids[7:8], lease_owner="host-c:1:ef", lease_until=now - dt.timedelta(hours=1))
    set_rows(store, ids[8:9], status=SKIPPED)
    with store.begin() as conn:
        conn.execute(
            sa.insert(bounces),
            [
                {"kind": kind, "source": "dsn", "email": emails[i], "campaign_id": a}
                | {"received_at": now, "event_key": f"k{i}"}
                for i, kind in enumerate(["hard", "soft", "complaint", "hard"])
            ],
        )
    retry = now + dt.timedelta(minutes=30)
    b = new_campaign(
        pub, store, status=SCHEDULED, scheduled_at=dt.datetime(2027, 1, 2, 9, 30, tzinfo=dt.UTC)
    )
    with store.begin() as conn:
        conn.execute(
            campaigns.update()
            .where(campaigns.c.id == a)
            .values(status=INCOMPLETE, resume_after=retry, last_error="the relay hung up")
        )

    direct = campaign_status.status_at(url)
    assert direct is not None
    assert direct == campaign_status.status(store)
    assert campaign_status.status_at(url, a) == campaign_status.status(store, a)
    assert [r.id for r in direct] == [b, a]  # newest first
    with store.engine.connect() as conn:
        stored = {r.id: r for r in conn.execute(sa.select(campaigns))}
    report_b, report_a = direct
    assert report_b.scheduled_at == "2027-01-02T09:30:00+00:00"
    assert report_a.created_at == stored[a].created_at.isoformat()
    assert report_a.retry_at == retry.isoformat()  # microseconds and zone kept
    assert (report_a.status, report_a.last_error) == (INCOMPLETE, "the relay hung up")
    assert (report_a.sent, report_a.failed, report_a.deferred, report_a.skipped) == (2, 1, 1, 1)
    assert (report_a.pending, report_a.in_flight, report_a.in_doubt) == (2, 1, 1)
    assert (report_a.batches_sending, report_a.workers_sending) == (1, 1)
    assert (report_a.bounced, report_a.complaints) == (3, 1)
    assert [(e.email, e.status) for e in report_a.recent_errors] == [
        (emails[4], SENDING),
        (emails[3], DEFERRED),
        (emails[2], FAILED),
    ]
    assert report_b.total == 0 and report_b.pending == 0  # its deliveries come at send time

    with pytest.raises(NewsletterError, match=f"campaign {b + 1}: no such campaign"):
        campaign_status.status_at(url, b + 1)
    with store.begin() as conn:  # an older schema: the Store's open upgrades it first
        conn.execute(sa.text("UPDATE newsletter_alembic_version SET version_num = '0006'"))
    assert campaign_status.status_at(url) is None


def test_a_live_in_process_send_s_rows_are_in_flight_those_without_a_reply_in_doubt(
    pub: Publication,
) -> None:
    # In-process there is no lease: a row `sending` in a campaign a live process sends is
    # going out now, unless its final dot had no reply (recorded with an error).
    store = pub.store()
    url = pub.config().database_url
    add_subscribers(store, 6)
    a = new_campaign(pub, store)
    ids = ids_of(store, a)
    set_rows(store, ids[0:2], status=SENT)
    set_rows(store, ids[2:4], status=SENDING)  # marked, their messages going out
    set_rows(store, ids[4:5], status=SENDING, last_error="no reply after the final dot")

    def seen(owner: str | None, beat_ago: dt.timedelta, status: str = RUNNING) -> tuple:
        with store.begin() as conn:
            conn.execute(
                campaigns.update()
                .where(campaigns.c.id == a)
                .values(status=status, owner=owner, heartbeat_at=utcnow() - beat_ago)
            )
        [direct] = campaign_status.status_at(url, a) or [None]
        [full] = campaign_status.status(store, a)
        assert direct == full
        return (full.in_flight, full.in_doubt)

    assert seen("host-a:41:ab12cd34", dt.timedelta(seconds=5)) == (2, 1)
    assert seen("host-a:41:ab12cd34", dt.timedelta(minutes=3)) == (0, 3)  # its owner is gone
    # On this host the process itself is asked (lifecycle's rule, statuses.owner_alive).
    here = socket.gethostname()
    assert seen(f"{here}:{os.getpid()}:ab12cd34", dt.timedelta(seconds=5)) == (2, 1)
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert seen(f"{here}:{ended.stdout.strip()}:ab12cd34", dt.timedelta(seconds=5)) == (0, 3)
    assert seen(None, dt.timedelta(seconds=5), INCOMPLETE) == (0, 3)  # stopped
    assert seen("[workers]", dt.timedelta(seconds=5)) == (0, 3)  # workers: by their leases
    plan = plan_text(store, campaign_status.SENDING_WITH_AN_ERROR, campaign=a)
    assert "ix_deliveries_campaign_status" in plan or "ix_deliveries_errors" in plan, plan
