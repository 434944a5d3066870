"""The rows a sender takes, marks and records: the per-message ledger discipline.

A runner fetches the unsent rows of a campaign in bounded id windows (`Rows`), or
the batch a worker has leased (`LeasedRows`); each message is marked `sending` in
the transaction that records the reply to the one before (`Ledger`, straight
through the driver).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from newsletter.errors import NewsletterError
from newsletter.ledger import campaign_status
from newsletter.ledger.direct import Driver
from newsletter.ledger.store import Store
from newsletter.ledger.tables import (
    ACTIVE,
    DEFERRED,
    FAILED,
    PENDING,
    SENDING,
    SKIPPED,
    UNSENT,
    campaigns,
    deliveries,
    subscribers,
    utcnow,
)

BATCH = 500


@dataclass
class Item:
    delivery_id: int
    email: str
    name: str
    subscriber_id: int = 0
    attributes: str = ""  # the stored JSON text, parsed only for an issue's merge fields


def item_query() -> sa.Select[Any]:
    """The columns of an Item: a delivery row and its subscriber."""
    return sa.select(
        deliveries.c.id,
        subscribers.c.email,
        subscribers.c.name,
        subscribers.c.id.label("sid"),
        subscribers.c.attributes,
    ).join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)


def lease_free(now: dt.datetime) -> sa.ColumnElement[bool]:
    """No live worker holds the row (never leased, or its lease has run out)."""
    return sa.or_(deliveries.c.lease_until.is_(None), deliveries.c.lease_until < now)


class Rows:
    """What a runner sends: every unsent row of the campaign, in id order (in-process).

    Rows of subscribers who left are not fetched; `skip_unsubscribed` marks them
    skipped once the pass is over (and before each round of retries).
    """

    # The ids one query looks at: the unsent rows in that span are sorted by id (the
    # index is by status first), so each fetch costs the same however long the list.
    BATCH = BATCH  # rows a fetch returns at most (a class attribute: tests make it small)
    WINDOW = 4 * BATCH

    def __init__(self, store: Store, campaign_id: int) -> None:
        self.store = store
        self.campaign_id = campaign_id
        self._span: tuple[int, int] | None = None  # the campaign's first and last row id

    def fetch(self, last_id: int) -> list[Item]:
        """Up to BATCH unsent rows after `last_id` whose subscriber is active, by id."""
        items: list[Item] = []
        with self.store.engine.connect() as conn:
            if self._span is None:
                first, last = conn.execute(
                    sa.select(sa.func.min(deliveries.c.id), sa.func.max(deliveries.c.id)).where(
                        deliveries.c.campaign_id == self.campaign_id
                    )
                ).one()
                self._span = (first or 0, last or 0)
            first, last = self._span
            start = max(last_id, first - 1)
            while len(items) < self.BATCH and start < last:
                end = min(start + self.WINDOW, last)
                query = (
                    item_query()
                    .where(
                        deliveries.c.campaign_id == self.campaign_id,
                        deliveries.c.status.in_(UNSENT),
                        deliveries.c.id > start,
                        deliveries.c.id <= end,
                        subscribers.c.status == ACTIVE,
                        lease_free(utcnow()),
                    )
                    .order_by(deliveries.c.id)
                    .limit(self.BATCH - len(items))
                )
                items += [
                    Item(r.id, r.email, r.name, r.sid, r.attributes) for r in conn.execute(query)
                ]
                start = end
        return items

    # Marking a row `sending` runs once per message (see Ledger); a row skipped since
    # it was fetched (its subscriber left) is not marked, so not sent.
    MARK = (
        "UPDATE deliveries SET status = 'sending'"
        " WHERE id = :did AND (lease_until IS NULL OR lease_until < :now)"
        " AND status IN ('pending', 'sending', 'deferred')"
    )

    def mark_params(self, time: Callable[[dt.datetime], Any], now: dt.datetime) -> dict[str, Any]:
        """MARK's parameters but the row's id: no worker has leased the row meanwhile."""
        return {"now": time(now)}

    def skip_unsubscribed(self, in_doubt: bool = False) -> None:
        """An unsubscribe during the campaign stops later messages to that address.

        `in_doubt` skips their rows left `sending` too (a crash, or no reply to the
        final dot); only before the senders start, when no row is in flight."""
        self._skip(deliveries.c.campaign_id == self.campaign_id, in_doubt)

    def after_pass(self) -> None:
        """The first pass is over: rows not fetched because their subscriber left are
        marked skipped."""
        self.skip_unsubscribed()

    def _skip(self, which: sa.ColumnElement[bool], in_doubt: bool) -> None:
        gone = sa.select(subscribers.c.id).where(subscribers.c.status != ACTIVE)
        statuses = (PENDING, DEFERRED, SENDING) if in_doubt else (PENDING, DEFERRED)
        with self.store.begin() as conn:
            conn.execute(
                deliveries.update()
                .where(
                    which,
                    deliveries.c.status.in_(statuses),
                    deliveries.c.subscriber_id.in_(gone),
                )
                .values(status=SKIPPED)
            )


class LeasedRows(Rows):
    """What a worker's batch sends: the rows it claimed, leased to it (`owner`)."""

    def __init__(
        self, store: Store, campaign_id: int, owner: str, items: list[Item], lease: float
    ) -> None:
        super().__init__(store, campaign_id)
        self.owner = owner
        self.items = items
        self.lease = dt.timedelta(seconds=lease)

    def fetch(self, last_id: int) -> list[Item]:
        # Whoever left since the batch was claimed had their rows skipped just before it
        # started (workers: skip_unsubscribed(in_doubt=True)), and MARK refuses them: no
        # update here, nor after the pass (one per batch, not three).
        return [i for i in self.items if i.delivery_id > last_id][: self.BATCH]

    def after_pass(self) -> None:
        pass

    # A lease that ran out (this worker stalled) may have passed the row to another;
    # the row in flight keeps a fresh lease even if a renewal skipped it (_renew).
    # A row skipped since the batch was claimed (its subscriber left) is not marked.
    MARK = (
        "UPDATE deliveries SET status = 'sending', lease_until = :until"
        " WHERE id = :did AND lease_owner = :owner"
        " AND status IN ('pending', 'sending', 'deferred')"
    )

    def mark_params(self, time: Callable[[dt.datetime], Any], now: dt.datetime) -> dict[str, Any]:
        return {"owner": self.owner, "until": time(now + self.lease)}

    def skip_unsubscribed(self, in_doubt: bool = False) -> None:
        self._skip(deliveries.c.lease_owner == self.owner, in_doubt)


class Ledger:
    """The two writes every message makes, in one transaction, straight through the
    driver (sqlite3 or psycopg) of one sender's own connection.

    Through SQLAlchemy Core the pair cost ~330 µs a message, most of it building
    and executing statements; the driver does the same work in a few tens of µs.
    The SQL is plain and the same on both databases; times are stored as the
    store's UTCDateTime stores them (naive UTC; ISO text on SQLite). On SQLite the
    senders of one process take turns (`turns`) rather than meet at the database's
    write lock, whose busy handler sleeps a millisecond or more at every collision.

    On PostgreSQL the pair is one statement (two UPDATEs in data-modifying WITH
    clauses, atomic as any statement) on a connection in autocommit: one round trip
    and one commit a message, where BEGIN, UPDATE, UPDATE, COMMIT took four. With
    `synchronous` False ([database] synchronous_commit = false) that connection does
    not wait for the commit's WAL flush: see `ASYNC_RISK`.
    """

    RECORD = (
        "UPDATE deliveries SET status = :new_status, attempts = attempts + 1,"
        " last_code = :code, last_error = :error, sent_at = :when_sent,"
        " next_attempt_at = :retry_at WHERE id = :did"
    )

    def __init__(
        self,
        db: sa.Connection,
        mark_sql: str,
        turns: threading.Lock,
        synchronous: bool = True,
    ) -> None:
        self.db = db
        self.dialect = db.dialect.name
        self.mark_sql = mark_sql
        self.record_sql = self.RECORD
        self.both_sql = ""
        self._raw: Any = None
        if self.dialect == "postgresql":
            self.record_sql, self.mark_sql = (
                re.sub(r":(\w+)", r"%(\1)s", q) for q in (self.RECORD, mark_sql)
            )
            # The record's parameters are renamed r_*: both statements have a `did`.
            record = re.sub(r":(\w+)", r"%(r_\1)s", self.RECORD)
            self.both_sql = (
                f"WITH recorded AS ({record}), marked AS ({self.mark_sql} RETURNING id)"
                " SELECT count(*) FROM marked"
            )
            raw = db.connection.dbapi_connection
            assert raw is not None
            raw.rollback()  # nothing is open on a fresh writer; autocommit needs none
            raw.autocommit = True
            self._raw = raw
            if not synchronous:
                raw.cursor().execute("SET synchronous_commit = off")
        self.turns: contextlib.AbstractContextManager[Any] = (
            turns if self.dialect == "sqlite" else contextlib.nullcontext()
        )

    def close(self) -> None:
        """The connection as the pool lent it: transactions, synchronous commits."""
        raw, self._raw = self._raw, None
        if raw is not None and not raw.closed:
            with contextlib.suppress(Exception):
                raw.cursor().execute("RESET synchronous_commit")
                raw.autocommit = False

    def time(self, value: dt.datetime) -> Any:
        """A time as the driver takes it for a UTCDateTime column."""
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat(" ", "microseconds") if self.dialect == "sqlite" else value

    def give_back(self, delivery_id: int) -> None:
        """The row marked `sending` did not go out (the server refused us, not this
        recipient): pending again, blaming nobody."""
        with self.db.begin():
            self.db.execute(
                deliveries.update().where(deliveries.c.id == delivery_id).values(status=PENDING)
            )

    def commit(self, record: dict[str, Any] | None, mark: dict[str, Any] | None) -> bool:
        """Record a reply and/or mark the next row `sending`; True when the row was marked.

        Time values in the parameters are already converted (`time`)."""
        db = self.db
        if self.dialect == "postgresql":
            return self._commit_pg(record, mark)
        if self.dialect != "sqlite":
            with db.begin():
                if record is not None:
                    db.execute(sa.text(self.RECORD), record)
                if mark is None:
                    return False
                return db.execute(sa.text(self.mark_sql), mark).rowcount == 1
        with immediate(db, self.turns) as cur:
            if record is not None:
                cur.execute(self.record_sql, record)
            if mark is None:
                return False
            cur.execute(self.mark_sql, mark)
            return bool(cur.rowcount == 1)

    def _commit_pg(self, record: dict[str, Any] | None, mark: dict[str, Any] | None) -> bool:
        """One statement in autocommit: its own transaction, all of it or nothing."""
        with self._raw.cursor() as cur:
            if mark is None:
                if record is not None:
                    cur.execute(self.record_sql, record)
                return False
            if record is None:
                cur.execute(self.mark_sql, mark)
                return bool(cur.rowcount == 1)
            cur.execute(self.both_sql, {**{f"r_{k}": v for k, v in record.items()}, **mark})
            row = cur.fetchone()
            return bool(row is not None and row[0] == 1)


@contextlib.contextmanager
def immediate(db: sa.Connection, turns: contextlib.AbstractContextManager[Any]) -> Iterator[Any]:
    """One SQLite write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any error) on
    the DB-API connection under `db`, in the senders' turns: a cursor of its own."""
    raw = db.connection.dbapi_connection
    assert raw is not None
    cur = raw.cursor()
    try:
        with turns:
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    cur.execute("ROLLBACK")
                raise
    finally:
        cur.close()


# What [database] synchronous_commit = false risks, printed when a send starts with it.
ASYNC_RISK = (
    "[database] synchronous_commit = false: PostgreSQL confirms each record before its"
    " WAL is on disk; a crash of the database server (not of this tool) may lose the"
    " last ~0.6 s of records (3 x wal_writer_delay), and their messages may be sent"
    " again by the next resume without being reported in doubt"
)


def counts(store: Store, campaign_id: int, conn: sa.Connection | None = None) -> dict[str, int]:
    """The campaign's deliveries per status: what COUNT(*) ... GROUP BY status gives
    (campaign_status.counts: kept by triggers on PostgreSQL, counted on SQLite)."""
    if conn is None:
        with store.engine.connect() as own:
            return campaign_status.counts(Driver.on(own), campaign_id)
    return campaign_status.counts(Driver.on(conn), campaign_id)


def claimable(now: dt.datetime) -> sa.ColumnElement[bool]:
    """Unsent, held by nobody, and due: pending; in flight on a worker that stopped (its
    lease ran out: in doubt, sent again); or deferred and its retry time come.

    Parked until the campaign is dispatched again (resume, run-due), as in-process: a
    deferred row whose retries ran out in a batch (no next_attempt_at), and a row left
    in doubt by a batch (no reply to its final dot: `sending`, no lease)."""
    return sa.and_(
        deliveries.c.status.in_(UNSENT),
        lease_free(now),
        sa.or_(
            deliveries.c.status == PENDING,
            sa.and_(deliveries.c.status == SENDING, deliveries.c.lease_until.is_not(None)),
            deliveries.c.next_attempt_at <= now,
        ),
    )


def first_claimable(
    campaign_id: int, now: dt.datetime, n: int, start: int | None = None
) -> sa.Select[Any]:
    """The ids of the campaign's first `n` claimable rows, found at the same cost at row 1
    and at row 1,000,000: what is sent is never looked at.

    One id-ordered range of the index (campaign_id, status, id) per unsent status, each
    cut at `n`: pending rows from the lowest (the leased ones, at most a batch per live
    worker, are passed over), rows in flight on a worker that stopped, deferred rows.
    A single query over the three statuses sorted every claimable row of the campaign
    for each batch. The rows are locked by the caller (FOR UPDATE is not allowed with
    UNION).

    `start` is the campaign's claim cursor (campaigns.claim_from, see
    `advance_claim_cursor`): the pending and the in-flight ranges begin there. Without
    it they begin at the campaign's first row, and late in a long send PostgreSQL passed
    over every row sent before (each left a dead entry in both ranges, and with
    autovacuum off the planner's figures say every row is pending): 1-2 s a claim at
    half of a million rows (bench/ledger_bench.py). The deferred range is read whole:
    it holds the rows ever deferred, few, whatever the list's length."""

    def first(status: str, *due: sa.ColumnElement[bool]) -> sa.Select[Any]:
        # Each range a subquery of its own: SQLite allows no LIMIT in a part of a UNION.
        part = (
            sa.select(deliveries.c.id)
            .where(
                deliveries.c.campaign_id == campaign_id,
                deliveries.c.status == status,
                lease_free(now),
                *due,
            )
            .order_by(deliveries.c.id)
            .limit(n)
            .subquery()
        )
        return sa.select(part.c.id)

    since = [] if start is None else [deliveries.c.id >= start]
    parts = sa.union_all(
        first(PENDING, *since),
        first(SENDING, deliveries.c.lease_until.is_not(None), *since),
        first(DEFERRED, deliveries.c.next_attempt_at <= now),
    ).subquery()
    return sa.select(parts.c.id).order_by(parts.c.id).limit(n)


# The workers' claim cursor (campaigns.claim_from): no pending row of the campaign, and
# no row in flight under a lease, has a lower id. It moves on as batches are claimed
# (`advance_claim_cursor`, under the campaign's row lock) and back when rows become
# claimable again below it: a batch's rows handed back (`release_batch`: rows it failed
# and put back, undo_failed), a new round (NULL: from the first, lifecycle.new_round).
# What a worker killed before releasing its batch leaves below it (such a row, or a
# deferred row it was retrying) is found when nothing is claimable past the cursor
# (`lower_claim_cursor`, from lifecycle.settle): later than the lease's end, never lost.


def advance_claim_cursor(conn: sa.Connection, campaign_id: int, start: int | None) -> None:
    """After a claim: the cursor moves to the lowest row still pending, or in flight under
    a lease, from `start` (the rows leased just now count: they are pending). Both looks
    read from `start` to that row: the rows claimed since the last claim, bounded by
    the batches in flight, not by the list's length. One statement, one snapshot: a row
    that moves from pending to sending meanwhile is seen in one state or the other."""

    def lowest(*where: sa.ColumnElement[bool]) -> sa.ScalarSelect[Any]:
        since = [] if start is None else [deliveries.c.id >= start]
        return (
            sa.select(sa.func.min(deliveries.c.id))
            .where(deliveries.c.campaign_id == campaign_id, *where, *since)
            .scalar_subquery()
        )

    found = conn.execute(
        sa.select(
            lowest(deliveries.c.status == PENDING),
            lowest(deliveries.c.status == SENDING, deliveries.c.lease_until.is_not(None)),
        )
    ).one()
    ids = [i for i in found if i is not None]
    if ids and min(ids) != start:
        conn.execute(
            campaigns.update().where(campaigns.c.id == campaign_id).values(claim_from=min(ids))
        )


def lower_claim_cursor(conn: sa.Connection, campaign_id: int, lowest: int) -> None:
    """Rows from `lowest` on may be claimable: the cursor goes back there if it is past it."""
    conn.execute(
        campaigns.update()
        .where(campaigns.c.id == campaign_id, campaigns.c.claim_from > lowest)
        .values(claim_from=lowest)
    )


def release_batch(store: Store, campaign_id: int, owner: str, given_up: list[int]) -> None:
    """Hand back what the batch did not send; park what used up its retries. Its pending
    rows are claimable again: the claim cursor goes back to the first of them."""
    with store.begin() as conn:
        if given_up:
            conn.execute(
                deliveries.update()
                .where(
                    deliveries.c.id.in_(given_up),
                    deliveries.c.lease_owner == owner,
                    deliveries.c.status == DEFERRED,
                )
                .values(next_attempt_at=None)
            )
        released = conn.execute(
            deliveries.update()
            .where(deliveries.c.lease_owner == owner, deliveries.c.status.in_(UNSENT))
            .values(lease_until=None)
            .returning(deliveries.c.id, deliveries.c.status)
        ).all()
        pending = [r.id for r in released if r.status == PENDING]
        if pending:
            lower_claim_cursor(conn, campaign_id, min(pending))


def renew_leases(store: Store, owner: str, lease: dt.timedelta) -> None:
    """Keep a worker's batch leased to it: its unsent rows' leases run `lease` from now.

    Rows a sender has locked right now are skipped, not waited for: its transaction
    marks or records them (marking renews the lease too), and waiting could deadlock.
    A database that is busy or away is one NewsletterError."""
    held = (
        sa.select(deliveries.c.id)
        .where(deliveries.c.lease_owner == owner, deliveries.c.status.in_(UNSENT))
        .with_for_update(skip_locked=True)
    )
    try:
        with store.begin() as conn:
            conn.execute(
                deliveries.update()
                .where(deliveries.c.id.in_(held.scalar_subquery()))
                .values(lease_until=utcnow() + lease)
            )
    except sa.exc.OperationalError as exc:
        raise NewsletterError(str(exc.orig)) from None


def undo_failed(store: Store, delivery_ids: list[int]) -> None:
    """Rows failed by a fault of ours (see runner.FAULTS_IN_A_ROW) go back to pending:
    the fault was not theirs, and `failed` is never retried."""
    with store.begin() as conn:
        conn.execute(
            deliveries.update()
            .where(deliveries.c.id.in_(delivery_ids), deliveries.c.status == FAILED)
            .values(status=PENDING, last_error=None, last_code=None)
        )
