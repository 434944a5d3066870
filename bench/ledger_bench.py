"""The ledger's reads that must not grow with the list (issue 20, "Speed at scale"): the
status query and the workers' batch claim on a campaign of a million rows on PostgreSQL,
a tenth, half and nine tenths of the way through.

Run from the repository root (the code measured is the one on PYTHONPATH, so the same
script measures two checkouts):

    .venv/bin/python bench/ledger_bench.py [--rows 1000000] [--pg-database bench_ledger]
                                           [--samples 7] [--at 10,50,90]

It builds the list and the campaign straight in the database (subscribers by
generate_series; the deliveries by `lifecycle.add_deliveries`, one INSERT ... SELECT and
ANALYZE, as a send does) and moves the campaign on as workers do, without SMTP: batches
of 20,000 claimed by `lifecycle.claim_batch`, marked `sending` and recorded (one UPDATE
each, so every row leaves the dead versions a send leaves: the server here runs with
autovacuum off, and nothing ANALYZEs after creation); one row in 500 is deferred (retry
in an hour) and one in 1,000 failed, with an error. At each point it prints the median
and max of `samples` runs of:
- status: `campaign_status.status(store, id)` (counts, recent errors, rows held);
- claim: `lifecycle.claim_batch` of the next 500 rows (then sent as above, untimed);
- settle's look: `lifecycle.settle` after a batch (one claimable row looked for).

Also the creation (add_deliveries) time. `--pg-database` is emptied (never a database
you keep). Figures only.

`--writes N` measures instead what the count triggers add to each message: N messages
recorded through `delivery_rows.Ledger` (each reply recorded with the next row marked
`sending`, as a runner does) on a SQLite file and on PostgreSQL, in rounds that take turns
with the triggers there and not (same tables, same process): µs a message, median of the
rounds. On PostgreSQL the schema's triggers (tables.COUNT_TRIGGERS, dropped for the rounds
without); on SQLite, which counts with COUNT instead, the row triggers it would need
(SQLITE_TRIGGERS, made for the rounds with). Needs a branch with revision 0007.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from scale_bench import fresh_pg, pg_url  # noqa: E402

STEP = 20_000  # rows a progress batch claims


def build(url: str, rows: int) -> tuple[Any, int, float]:
    """The store, a running campaign of `rows` pending deliveries, and its creation time."""
    from newsletter.ledger import lifecycle, tables
    from newsletter.ledger.store import Store
    from newsletter.ledger.tables import RUNNING, campaigns, utcnow

    store = Store.open(url)
    with store.begin() as conn:
        numbers = (
            "generate_series(1, :n) g"
            if not store.is_sqlite  # SQLite has no generate_series: a recursive CTE
            else "(WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < :n)"
            " SELECT g FROM s)"
        )
        conn.execute(
            sa.text(
                "INSERT INTO subscribers (email, email_key, name, attributes, status, created_at)"
                " SELECT 'reader' || g || '@example.com', 'reader' || g || '@example.com',"
                f" 'Reader ' || g, '{{}}', 'active', :now FROM {numbers}"
            ).bindparams(sa.bindparam("now", type_=tables.UTCDateTime)),
            {"n": rows, "now": utcnow()},
        )
        campaign_id = conn.execute(
            campaigns.insert()
            .values(
                issue_slug="bench",
                issue_path="issues/bench.md",
                subject="Bench",
                html_template="<p>hi</p>",
                text_template="hi",
                status=RUNNING,
                owner=lifecycle.WORKERS,
                heartbeat_at=utcnow(),
                started_at=utcnow(),
                created_at=utcnow(),
            )
            .returning(campaigns.c.id)
        ).scalar_one()
    t0 = time.perf_counter()
    with store.begin() as conn:
        lifecycle.add_deliveries(conn, campaign_id)
    return store, campaign_id, time.perf_counter() - t0


def workers_config(batch: int) -> Any:
    """What claim_batch and settle read of a Config."""
    return SimpleNamespace(workers=SimpleNamespace(batch_size=batch, lease=60.0))


def send_batch(store: Any, campaign_id: int, owner: str) -> None:
    """What a batch's runner does to its rows, in bulk: marked sending, then recorded (one
    row in 500 deferred for an hour, one in 1,000 failed, each with its error); then the
    batch is released."""
    from newsletter.ledger import delivery_rows

    with store.begin() as conn:
        mine = {"o": owner}
        conn.execute(
            sa.text("UPDATE deliveries SET status = 'sending' WHERE lease_owner = :o"), mine
        )
        conn.execute(
            sa.text(
                "UPDATE deliveries SET attempts = attempts + 1, sent_at = now(),"
                " status = CASE WHEN id % 500 = 7 THEN 'deferred'"
                "  WHEN id % 1000 = 3 THEN 'failed' ELSE 'sent' END,"
                " last_code = CASE WHEN id % 500 = 7 THEN 451"
                "  WHEN id % 1000 = 3 THEN 550 ELSE 250 END,"
                " last_error = CASE WHEN id % 500 = 7 THEN '451 4.7.1 try again later'"
                "  WHEN id % 1000 = 3 THEN '550 5.1.1 no such user' END,"
                " next_attempt_at = CASE WHEN id % 500 = 7"
                "  THEN now() + interval '1 hour' END"
                " WHERE lease_owner = :o AND status = 'sending'"
            ),
            mine,
        )
    delivery_rows.release_batch(store, campaign_id, owner, [])


def advance(store: Any, campaign_id: int, upto: int) -> None:
    """Claim and send batches until `upto` rows are done, as workers would."""
    from newsletter.ledger import lifecycle

    config = workers_config(STEP)
    with store.engine.connect() as conn:
        done = conn.execute(
            sa.text(
                "SELECT count(*) FROM deliveries WHERE campaign_id = :c"
                " AND status NOT IN ('pending', 'sending')"
            ),
            {"c": campaign_id},
        ).scalar_one()
    while done < upto:
        owner = f"bench:{done}"
        claimed = lifecycle.claim_batch(store, config, campaign_id, owner, sweep=False)
        assert claimed is not None and claimed[1], "nothing claimed"
        send_batch(store, campaign_id, owner)
        done += len(claimed[1])


# Row triggers that would keep delivery_counts on SQLite (shard 0): measured by --writes,
# not in the schema (see tables.delivery_counts).
SQLITE_TRIGGERS = (
    "CREATE TRIGGER delivery_counts_insert AFTER INSERT ON deliveries BEGIN"
    " INSERT INTO delivery_counts (campaign_id, status, shard, n)"
    " VALUES (NEW.campaign_id, NEW.status, 0, 1)"
    " ON CONFLICT (campaign_id, status, shard) DO UPDATE SET n = n + 1; END",
    "CREATE TRIGGER delivery_counts_update AFTER UPDATE OF status, campaign_id"
    " ON deliveries WHEN OLD.status <> NEW.status OR OLD.campaign_id <> NEW.campaign_id"
    " BEGIN"
    " UPDATE delivery_counts SET n = n - 1"
    " WHERE campaign_id = OLD.campaign_id AND status = OLD.status AND shard = 0;"
    " INSERT INTO delivery_counts (campaign_id, status, shard, n)"
    " VALUES (NEW.campaign_id, NEW.status, 0, 1)"
    " ON CONFLICT (campaign_id, status, shard) DO UPDATE SET n = n + 1; END",
    "CREATE TRIGGER delivery_counts_delete AFTER DELETE ON deliveries BEGIN"
    " UPDATE delivery_counts SET n = n - 1"
    " WHERE campaign_id = OLD.campaign_id AND status = OLD.status AND shard = 0; END",
)


def ledger_writes(url: str, n: int, rounds: int) -> dict[bool, float]:
    """µs a message through Ledger.commit, with the count triggers (True) and without."""
    import threading

    from newsletter.ledger import tables
    from newsletter.ledger.delivery_rows import Ledger, Rows
    from newsletter.ledger.tables import SENT, utcnow

    store, campaign_id, _ = build(url, n * rounds * 2)
    with store.engine.connect() as conn:
        ids = list(
            conn.execute(
                sa.text("SELECT id FROM deliveries WHERE campaign_id = :c ORDER BY id"),
                {"c": campaign_id},
            ).scalars()
        )
    dialect = store.engine.dialect.name
    # PostgreSQL's triggers are the schema's; SQLite's are the candidate row triggers
    # (SQLITE_TRIGGERS), which the schema does not have.
    create = (
        [q for q in tables.COUNT_TRIGGERS[dialect] if "TRIGGER delivery_counts" in q]
        if dialect == "postgresql"
        else [
            "DELETE FROM delivery_counts",  # counted as they are, as a migration would
            "INSERT INTO delivery_counts (campaign_id, status, shard, n) SELECT campaign_id,"
            " status, 0, count(*) FROM deliveries GROUP BY campaign_id, status",
            *SQLITE_TRIGGERS,
        ]
    )
    on = " ON deliveries" if dialect == "postgresql" else ""
    drop = [f"DROP TRIGGER delivery_counts_{e}{on}" for e in ("insert", "update", "delete")]
    present = dialect == "postgresql"
    times: dict[bool, list[float]] = {True: [], False: []}
    rows = Rows(store, campaign_id)
    for r in range(rounds * 2):
        triggers = r % 2 == 0
        if triggers != present:
            with store.begin() as conn:
                for statement in create if triggers else drop:
                    conn.exec_driver_sql(statement)
            present = triggers
        chunk = ids[r * n : (r + 1) * n]
        with store.writer() as db:
            ledger = Ledger(db, rows.MARK, threading.Lock())
            try:
                now = utcnow()
                t0 = time.perf_counter()
                ledger.commit(None, rows.mark_params(ledger.time, now) | {"did": chunk[0]})
                for done, nxt in zip(chunk, [*chunk[1:], None], strict=True):
                    reply = {
                        "did": done,
                        "new_status": SENT,
                        "code": 250,
                        "error": None,
                        "when_sent": ledger.time(now),
                        "retry_at": None,
                    }
                    mark = (
                        None if nxt is None else rows.mark_params(ledger.time, now) | {"did": nxt}
                    )
                    ledger.commit(reply, mark)
                times[triggers].append((time.perf_counter() - t0) / n * 1e6)
            finally:
                ledger.close()
    store.engine.dispose()
    return {k: statistics.median(v) for k, v in times.items()}


def timed(fn: Callable[[], Any], samples: int) -> tuple[float, float]:
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--pg-database", default="bench_ledger")
    parser.add_argument("--samples", type=int, default=7)
    parser.add_argument("--at", default="10,50,90", help="percentages sent to measure at")
    parser.add_argument("--writes", type=int, default=0, help="messages a round (see above)")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    if args.writes:
        import tempfile

        fresh_pg(args.pg_database)
        with tempfile.TemporaryDirectory() as folder:
            for name, url in (
                ("SQLite", f"sqlite:///{folder}/ledger.db"),
                ("PostgreSQL", pg_url(args.pg_database)),
            ):
                got = ledger_writes(url, args.writes, args.rounds)
                print(
                    f"{name}: {got[True]:.0f} µs a message with the count triggers,"
                    f" {got[False]:.0f} µs without ({args.rounds} rounds of"
                    f" {args.writes:,} each way, median)",
                    flush=True,
                )
        return

    import newsletter
    from newsletter.ledger import campaign_status, lifecycle

    print(f"code: {Path(newsletter.__file__).parent}")
    fresh_pg(args.pg_database)
    store, campaign_id, created = build(pg_url(args.pg_database), args.rows)
    print(f"{args.rows:,} deliveries made in {created:.2f} s (INSERT ... SELECT, ANALYZE)")
    config = workers_config(500)
    print(f"{'sent':>5} | {'status query':>16} | {'claim of 500':>16} | {'settle':>16}")
    for percent in (int(p) for p in args.at.split(",")):
        advance(store, campaign_id, args.rows * percent // 100)

        # Each claim takes the next 500 rows (timed), which are then sent (not timed).
        claims = []
        for _ in range(args.samples):
            owner = f"bench:probe:{percent}:{len(claims)}"
            t0 = time.perf_counter()
            claimed = lifecycle.claim_batch(store, config, campaign_id, owner, False)
            claims.append(time.perf_counter() - t0)
            assert claimed is not None and len(claimed[1]) == 500
            send_batch(store, campaign_id, owner)
        figures = [
            timed(lambda: campaign_status.status(store, campaign_id), args.samples),
            (statistics.median(claims), max(claims)),
            timed(lambda: lifecycle.settle(store, config, campaign_id, lambda _: None), 3),
        ]
        cells = " | ".join(f"{m * 1000:6.1f} / {x * 1000:6.1f} ms" for m, x in figures)
        print(f"{percent:>4}% | {cells}", flush=True)
    [report] = campaign_status.status(store, campaign_id)
    print(
        f"at the end: sent {report.sent:,}, deferred {report.deferred:,},"
        f" failed {report.failed:,}, pending {report.pending:,};"
        f" {len(report.recent_errors)} recent errors shown ({dt.datetime.now(dt.UTC):%H:%M} UTC)"
    )
    store.engine.dispose()


if __name__ == "__main__":
    main()
