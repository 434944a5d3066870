"""The database of one publication: the engine, the schema kept at this release's
revision, and the subscriber list's reads and writes.

SQLite (a file next to newsletter.toml, WAL mode) by default; the same code runs
on PostgreSQL. The tables and statuses are in tables.py.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from newsletter import addresses
from newsletter.errors import NewsletterError
from newsletter.ledger import migrations
from newsletter.ledger.tables import (
    ACTIVE,
    SCHEMA_VERSION,
    SUPPRESSED,
    UNSUBSCRIBED,
    UTCDateTime,
    erased,
    imported_status_applies,
    meta_table,
    metadata,
    subscribers,
    utcnow,
)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN IMMEDIATE: pysqlite's deferred
    # BEGIN would make two writers deadlock on the upgrade to a write lock.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    # Writers take the write lock up front (see Store.begin); readers stay deferred
    # so that a read never waits for, or blocks, a writer.
    if conn.get_execution_options().get(_WRITE):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


_WRITE = "newsletter_write"
# The PostgreSQL advisory lock held while the schema changes (b"nlschema" as a number).
_SCHEMA_LOCK = 0x6E6C736368656D61


def shown_url(url: str) -> str:
    """The database URL without its password, for every message and log line."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:  # not a URL SQLAlchemy reads: mask user:password@ anyway
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for another database or one in memory. A URL that
    is not a database URL is one NewsletterError (its password masked)."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise NewsletterError(f"[database] url: not a database URL: {shown_url(url)!r}") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return Path(parsed.database or "")
    return None


def _create_private(url: str) -> None:
    """Make a new SQLite file readable by its owner only (0600) before SQLite creates it
    with the umask's mode (0644 on most systems: the list readable by every user of the
    machine). SQLite gives its journal and WAL files the database file's mode. An
    existing file is left as it is."""
    file = sqlite_file(url)
    if file is None or file.exists() or not file.parent.is_dir():
        return
    try:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:  # made by another process meanwhile, or not ours to make: SQLite says
        return
    os.close(fd)


def _unsecret(text: str, url: str) -> str:
    """`text` (a driver's message, say) with the URL's password masked wherever it shows."""
    try:
        password = sa.engine.make_url(url).password
    except sa.exc.ArgumentError:
        password = None
    text = text.replace(url, shown_url(url))
    return text.replace(str(password), "***") if password else text


@contextmanager
def _database_errors(url: str) -> Iterator[None]:
    """A database that cannot be reached or read becomes one line naming it."""
    try:
        yield
    except sa.exc.OperationalError as exc:
        reason = _unsecret(" ".join(str(exc.orig).split()), url)
        raise NewsletterError(f"database {shown_url(url)}: {reason}") from None


# How long a SQLite writer waits for another process's lock before it gives up, unless
# the URL says (sqlite:///newsletter.db?timeout=5).
SQLITE_BUSY_SECONDS = 30.0


class DatabaseLocked(NewsletterError):
    """Another process held the SQLite file's write lock for longer than we wait."""


def connect(url: str, **engine_options: Any) -> Engine:
    """An engine for the configured URL, with SQLite tuned for one writer at a time."""
    # Each sending thread holds a connection for the whole run, so the pool must not
    # cap them (the default 5 + 10 made [smtp] concurrency above ~14 time out).
    engine_options.setdefault("max_overflow", -1)
    try:
        parsed = sa.engine.make_url(url)
        busy = SQLITE_BUSY_SECONDS
        if parsed.get_backend_name() == "sqlite":
            # sqlite3's own timeout is the busy handler's: the URL's, or ours.
            busy = float(str(parsed.query.get("timeout", busy)))
            engine_options.setdefault("connect_args", {}).setdefault("timeout", busy)
        engine = sa.create_engine(url, future=True, **engine_options)
    except (sa.exc.ArgumentError, ImportError, ValueError) as exc:
        raise NewsletterError(
            f"[database] url: cannot use {shown_url(url)!r}: {_unsecret(str(exc), url)}"
        ) from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        event.listen(engine, "handle_error", functools.partial(_locked, parsed.database, busy))
    return engine


def _locked(path: str | None, waited: float, context: sa.engine.ExceptionContext) -> None:
    """SQLite's "database is locked" as one line that says what it means (in every
    command and thread), rather than a traceback with the statement in it."""
    original = context.original_exception
    if isinstance(original, sqlite3.OperationalError) and "locked" in str(original):
        raise DatabaseLocked(
            f"database {path}: another process held it locked for over {waited:g} s"
            " (the SQLite busy timeout; set it with ?timeout=SECONDS in [database] url)"
        ) from None


class Store:
    """The database of one publication."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str, create: bool = True, **engine_options: Any) -> Store:
        """The store at `url`, its tables created or upgraded to this release's schema."""
        if create:
            _create_private(url)
        store = cls(connect(url, **engine_options))
        try:
            with _database_errors(url):
                store.ensure_schema(create=create)
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def existing(cls, url: str) -> Store | None:
        """The store at `url` when it is there at this release's schema, else None (not
        created yet, unreachable, older or newer): for a look that creates nothing."""
        try:
            if not cls.schema_state(url).is_head:
                return None
            return cls.open(url, create=False)
        except NewsletterError:
            return None

    @classmethod
    def upgrade(cls, url: str) -> migrations.SchemaChange:
        """Bring the database at `url` to this release's schema, as every open does."""
        _create_private(url)
        store = cls(connect(url))
        try:
            with _database_errors(url):
                return store.ensure_schema()
        finally:
            store.close()

    @staticmethod
    def schema_state(url: str) -> migrations.SchemaState:
        """The schema revision of the database at `url`, changing nothing."""
        file = sqlite_file(url)
        if file is not None and not file.exists():  # connecting would create it
            return migrations.SchemaState(None)
        engine = connect(url)
        try:
            with _database_errors(url), engine.connect() as conn:
                revision = migrations.stored_revision(conn)
                if revision is not None:
                    migrations.check_known(revision)
                    return migrations.SchemaState(revision)
                if sa.inspect(conn).has_table(meta_table.name):
                    return migrations.SchemaState(migrations.BASELINE, before_migrations=True)
                return migrations.SchemaState(None)
        finally:
            engine.dispose()

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A write transaction (on SQLite it holds the write lock from its start)."""
        with self.engine.connect() as conn:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    def writer(self) -> Connection:
        """A connection whose transactions are write transactions; close it when done."""
        conn = self.engine.connect()
        conn.execution_options(**{_WRITE: True})
        return conn

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def ensure_schema(self, create: bool = True) -> migrations.SchemaChange:
        """Give a new database today's tables, or upgrade an older one in place."""
        # The usual open, of a database already at head, costs this one query.
        with self.engine.connect() as conn:
            if migrations.at_head(conn):
                return migrations.SchemaChange(migrations.HEAD, migrations.HEAD)
        with self._schema_transaction() as conn:
            # Looked at again under the lock: another process may have just done the work.
            before = migrations.stored_revision(conn)
            if before is not None:
                migrations.upgrade(conn, before)
                return migrations.SchemaChange(before, migrations.HEAD)
            if not sa.inspect(conn).has_table(meta_table.name):
                if not create:
                    raise NewsletterError("the database has no newsletter tables yet")
                # Today's tables in one go, recorded as head: the schema that running every
                # revision gives (tests/test_migrations.py compares the two), in one step.
                metadata.create_all(conn)
                conn.execute(
                    meta_table.insert().values(key="schema_version", value=str(SCHEMA_VERSION))
                )
                migrations.stamp(conn, migrations.HEAD)
                return migrations.SchemaChange(None, migrations.HEAD)
            # Made before migrations: it holds the tables of the baseline revision.
            version = self.schema_version(conn)
            if version > SCHEMA_VERSION:
                raise NewsletterError(
                    f"the database is at schema version {version}, newer than this tool"
                    f" ({SCHEMA_VERSION}); upgrade newsletter"
                )
            migrations.stamp(conn, migrations.BASELINE)
            migrations.upgrade(conn, migrations.BASELINE)
            return migrations.SchemaChange(
                migrations.BASELINE, migrations.HEAD, before_migrations=True
            )

    @contextmanager
    def _schema_transaction(self) -> Iterator[Connection]:
        """A write transaction for creating or altering tables, one process at a time."""
        with self.engine.connect() as conn:
            driver = conn.connection.driver_connection
            assert driver is not None  # a live connection has its driver's
            if self.is_sqlite:
                # Batch mode alters a SQLite table by copying it, dropping the old one and
                # renaming the copy; with foreign keys on, dropping `campaigns` would
                # cascade to its deliveries. The pragma does nothing inside a transaction.
                driver.execute("PRAGMA foreign_keys=OFF")
            try:
                conn.execution_options(**{_WRITE: True})
                with conn.begin():
                    if conn.dialect.name == "postgresql":
                        # SQLite's BEGIN IMMEDIATE already serialises this; on PostgreSQL
                        # two workers starting on an old database would both alter it.
                        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK)))
                    yield conn
                    if self.is_sqlite:
                        broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                        if broken:
                            raise NewsletterError(
                                f"upgrading the database would break {len(broken)} foreign"
                                f" key(s), first in table {broken[0][0]}; nothing was changed"
                            )
            finally:
                if self.is_sqlite:
                    driver.execute("PRAGMA foreign_keys=ON")

    @staticmethod
    def schema_version(conn: Connection) -> int:
        """The version in newsletter_meta: 1 ever since migrations took over."""
        row = conn.execute(
            sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
        ).scalar_one_or_none()
        return int(row or 0)

    def close(self) -> None:
        self.engine.dispose()

    # --- subscribers ----------------------------------------------------------------------

    def upsert_subscribers(
        self,
        rows: Sequence[SubscriberRow],
        *,
        again_after_erasure: bool = False,
        dry_run: bool = False,
    ) -> Upserted:
        """Insert new addresses, update names/attributes of known ones; keeps statuses.

        An empty name or no attributes leaves the stored ones as they are (`add` without
        --name never wipes a name). An unsubscribed address stays unsubscribed, a
        suppressed one (bounced, complained) stays suppressed. A new address whose data
        was erased at the person's request is refused unless `again_after_erasure`: a
        list import made before the erasure must not bring the person back unnoticed.

        A row's `status` (an export's status column) is a new address's status, and
        changes a known one's only where `tables.imported_status_applies` says: towards
        unsubscribed or suppressed, never back to active. `dry_run` says what would be
        done, in the same words, and writes nothing (it reads in a read transaction).
        """
        if not rows:
            return Upserted(0, 0, {}, {})
        if dry_run:
            with self.engine.connect() as conn:
                return _UpsertPlan.make(conn, rows, again_after_erasure).done()
        with self.begin() as conn:
            plan = _UpsertPlan.make(conn, rows, again_after_erasure)
            plan.write(conn, utcnow())
        return plan.done()

    def set_subscriber_status(self, email: str, status: str) -> bool:
        """Whether the address is on the list. Unsubscribing a bounced or complained
        address leaves it so: it is not sent to either way, and the stronger status is
        what keeps it off the list (and what `count` reports)."""
        values: dict[str, Any] = {"status": status}
        values["unsubscribed_at"] = utcnow() if status == UNSUBSCRIBED else None
        which = subscribers.c.email_key == addresses.key(email)
        with self.begin() as conn:
            kept = conn.execute(
                sa.select(subscribers.c.status).where(which).with_for_update()
            ).scalar_one_or_none()
            if kept is None:
                return False
            if not (status == UNSUBSCRIBED and kept in SUPPRESSED):
                conn.execute(subscribers.update().where(which).values(**values))
        return True

    def subscriber(self, email: str) -> Mapping[str, Any] | None:
        """The subscriber with this address, in any spelling of its case."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(subscribers).where(subscribers.c.email_key == addresses.key(email))
            ).one_or_none()
        return dict(row._mapping) if row else None

    def iter_subscribers(self, status: str | None = None, batch: int = 1000) -> Iterator[Any]:
        """Stream subscribers in id order, a batch at a time: memory stays flat."""
        last = 0
        while True:
            query = sa.select(subscribers).where(subscribers.c.id > last)
            if status:
                query = query.where(subscribers.c.status == status)
            with self.engine.connect() as conn:
                rows = conn.execute(query.order_by(subscribers.c.id).limit(batch)).all()
            yield from rows
            if len(rows) < batch:
                return
            last = rows[-1].id

    def refresh_planner_figures(self) -> None:
        """On PostgreSQL, ANALYZE the subscribers table: a list that grew from empty
        within one import has no planner figures (autovacuum may be off or behind), and
        psycopg's prepared statements keep a generic plan made while the table looked
        empty: each 500-address lookup of an import scanned the whole table (~330 rows/s
        at 60,000 instead of thousands). ANALYZE gives the figures and makes PostgreSQL
        plan the statements again. SQLite is guided by its unique index: nothing to do."""
        if self.engine.dialect.name == "postgresql":
            with self.engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE subscribers")

    def count_subscribers(self, status: str | None = ACTIVE) -> int:
        query = sa.select(sa.func.count()).select_from(subscribers)
        if status:
            query = query.where(subscribers.c.status == status)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())


@dataclass
class _UpsertPlan:
    """What an upsert of one batch does: read once, then written (or only reported)."""

    existing: dict[str, tuple[int, str]]  # {email_key: (id, status)}
    new: list[tuple[str, SubscriberRow]]
    known: list[tuple[str, SubscriberRow]]
    refused: dict[str, dt.datetime]
    restatus: dict[str, str]  # {email: the status the row gives a known address}

    @classmethod
    def make(
        cls, conn: Connection, rows: Sequence[SubscriberRow], again_after_erasure: bool
    ) -> _UpsertPlan:
        keys = [addresses.key(r.email) for r in rows]
        existing: dict[str, tuple[int, str]] = {}
        for chunk_start in range(0, len(keys), 500):
            chunk = keys[chunk_start : chunk_start + 500]
            for sid, email_key, status in conn.execute(
                sa.select(subscribers.c.id, subscribers.c.email_key, subscribers.c.status).where(
                    subscribers.c.email_key.in_(chunk)
                )
            ):
                existing[email_key] = (sid, status)
        new = [(k, r) for k, r in zip(keys, rows, strict=True) if k not in existing]
        refused: dict[str, dt.datetime] = {}
        if new and not again_after_erasure:
            refused = _erased_among(conn, [r.email for _, r in new])
            new = [(k, r) for k, r in new if r.email not in refused]
        known = [(k, r) for k, r in zip(keys, rows, strict=True) if k in existing]
        restatus = {
            r.email: r.status
            for k, r in known
            if r.status and imported_status_applies(r.status, existing[k][1])
        }
        return cls(existing, new, known, refused, restatus)

    def write(self, conn: Connection, now: dt.datetime) -> None:
        if self.new:
            conn.execute(
                subscribers.insert(),
                [
                    {
                        "email": r.email,
                        "email_key": k,
                        "name": r.name,
                        "attributes": json.dumps(r.attributes, ensure_ascii=False),
                        "status": r.status or ACTIVE,
                        "created_at": now,
                        "unsubscribed_at": now if r.status == UNSUBSCRIBED else None,
                    }
                    for k, r in self.new
                ],
            )
        if self.known:
            conn.execute(
                subscribers.update()
                .where(subscribers.c.id == sa.bindparam("sid"))
                .values(
                    name=sa.case(
                        (sa.bindparam("new_name", type_=sa.Text) == "", subscribers.c.name),
                        else_=sa.bindparam("new_name", type_=sa.Text),
                    ),
                    attributes=sa.case(
                        (
                            sa.bindparam("attrs", type_=sa.Text) == "{}",
                            subscribers.c.attributes,
                        ),
                        else_=sa.bindparam("attrs", type_=sa.Text),
                    ),
                ),
                [
                    {
                        "sid": self.existing[k][0],
                        "new_name": r.name,
                        "attrs": json.dumps(r.attributes, ensure_ascii=False),
                    }
                    for k, r in self.known
                ],
            )
        if self.restatus:
            conn.execute(
                subscribers.update()
                .where(subscribers.c.id == sa.bindparam("sid"))
                .values(
                    status=sa.bindparam("new_status", type_=sa.String),
                    unsubscribed_at=sa.bindparam("when", type_=UTCDateTime),
                ),
                [
                    {
                        "sid": self.existing[k][0],
                        "new_status": self.restatus[r.email],
                        "when": now if self.restatus[r.email] == UNSUBSCRIBED else None,
                    }
                    for k, r in self.known
                    if r.email in self.restatus
                ],
            )

    def done(self) -> Upserted:
        suppressed = {
            r.email: self.existing[k][1]
            for k, r in self.known
            if self.existing[k][1] in SUPPRESSED and r.email not in self.restatus
        }
        new_statuses = {r.email: r.status for _, r in self.new if r.status not in ("", ACTIVE)}
        return Upserted(
            len(self.new),
            len(self.known) - len(suppressed),
            suppressed,
            self.refused,
            restatus=dict(self.restatus),
            new_statuses=new_statuses,
            added_emails=frozenset(r.email for _, r in self.new),
        )


def erasure_hash(email: str) -> str:
    """What `erased` keeps of an address: the SHA-256 (hex) of its case-folded form, so
    that the same address in any case is known again, and nothing else about it is."""
    return hashlib.sha256(addresses.key(email).encode("utf-8")).hexdigest()


def _erased_among(conn: Connection, emails: list[str]) -> dict[str, dt.datetime]:
    """Those of `emails` whose data was erased, with when."""
    hashes = {erasure_hash(e): e for e in emails}
    found: dict[str, dt.datetime] = {}
    digests = list(hashes)
    for chunk_start in range(0, len(digests), 500):
        for digest, erased_at in conn.execute(
            sa.select(erased.c.email_hash, erased.c.erased_at).where(
                erased.c.email_hash.in_(digests[chunk_start : chunk_start + 500])
            )
        ):
            found[hashes[digest]] = erased_at
    return found


@dataclass(frozen=True)
class Upserted:
    """What an import or add did to the list."""

    added: int
    updated: int  # known addresses, suppressed ones not counted
    # Known addresses left bounced or complained (their names updated): {email: status}.
    suppressed: Mapping[str, str]
    # New addresses refused, their data erased at the person's request: {email: when}.
    erased: Mapping[str, dt.datetime]
    # Known addresses the rows' status changed (unsubscribed, bounced...): {email: status}.
    restatus: Mapping[str, str] = field(default_factory=dict)
    # New addresses added with a status other than active: {email: status}.
    new_statuses: Mapping[str, str] = field(default_factory=dict)
    added_emails: frozenset[str] = frozenset()  # the addresses added (or, dry, to be)


@dataclass(frozen=True)
class SubscriberRow:
    email: str
    name: str = ""
    attributes: Mapping[str, str] | None = None
    # A status of tables.SUBSCRIBER_STATUSES from the file imported; "" none said.
    status: str = ""

    def __post_init__(self) -> None:
        if self.attributes is None:
            object.__setattr__(self, "attributes", {})
