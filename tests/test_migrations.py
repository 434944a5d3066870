"""Schema migrations on real databases (SQLite files and the local PostgreSQL).

A database made by any earlier release, from revision 0001 on, is upgraded in place by
the first open and keeps its data; a new one gets today's tables, the same schema as
running every revision; a database from a newer release is refused in one line.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import Result

from newsletter import segments
from newsletter.errors import NewsletterError
from newsletter.ledger import campaign_status, migrations, tags
from newsletter.ledger import tables as tables_mod
from newsletter.ledger.store import Store, connect
from newsletter.ledger.tables import metadata

NOW = dt.datetime(2026, 11, 2, 9, 30, 15)
OLD = [(migrations.BASELINE, False), (migrations.BASELINE, True)]


@contextmanager
def connection(url: str) -> Iterator[sa.Connection]:
    """A plain transaction on `url`, without the store's own engine settings."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def make_database_at(url: str, revision: str, before_migrations: bool = False) -> None:
    """The tables of `revision`, built by running the revisions up to it; with
    `before_migrations`, as a release before migrations left them (no version table)."""
    with connection(url) as conn:
        command.upgrade(migrations.config(conn), revision)
        if before_migrations:
            conn.execute(sa.text(f"DROP TABLE {migrations.VERSION_TABLE}"))


def revision_of(url: str) -> str | None:
    with connection(url) as conn:
        return migrations.stored_revision(conn)


def fill(url: str) -> dict[str, list[dict[str, Any]]]:
    """Rows in every table of the schema as it is: subscribers, a campaign with
    deliveries, a tracked link and a click, a recurring schedule, a rate bucket.
    Returns every table's rows, as read back."""
    with connection(url) as conn:
        tables = sa.MetaData()
        tables.reflect(conn)
        t = tables.tables

        def key(email: str) -> dict[str, str]:  # the column revision 0002 added
            return {"email_key": email} if "email_key" in t["subscribers"].c else {}

        # One statement a row: the rows set different columns.
        conn.execute(
            t["subscribers"].insert(),
            {"id": 1, "email": "ann@example.com", "name": "Ann", "attributes": '{"city": "Oslo"}',
             "status": "active", "created_at": NOW, **key("ann@example.com")},
        )  # fmt: skip
        conn.execute(
            t["subscribers"].insert(),
            {"id": 2, "email": "bob@example.com", "name": "Bob", "attributes": "{}",
             "status": "unsubscribed", "created_at": NOW, "unsubscribed_at": NOW,
             **key("bob@example.com")},
        )  # fmt: skip
        conn.execute(
            t["campaigns"].insert(),
            {"id": 7, "issue_slug": "2026-11-02-first", "issue_path": "issues/first.md",
             "subject": "First issue", "sponsor_id": "acme", "html_template": "<p>Hi</p>",
             "text_template": "Hi", "status": "done", "created_at": NOW, "started_at": NOW,
             "finished_at": NOW, "total": 2, "batches": 1},
        )  # fmt: skip
        conn.execute(
            t["deliveries"].insert(),
            {"id": 1, "campaign_id": 7, "subscriber_id": 1, "status": "sent", "attempts": 1,
             "last_code": 250, "sent_at": NOW},
        )  # fmt: skip
        conn.execute(
            t["deliveries"].insert(),
            {"id": 2, "campaign_id": 7, "subscriber_id": 2, "status": "skipped"},
        )
        conn.execute(
            t["campaign_links"].insert(),
            {"campaign_id": 7, "idx": 0, "url": "https://acme.example/", "in_sponsor_block": True},
        )
        conn.execute(
            t["clicks"].insert(),
            {"campaign_id": 7, "subscriber_id": 1, "link_idx": 0, "clicked_at": NOW,
             "suspected_bot": False, "reason": None},
        )  # fmt: skip
        conn.execute(
            t["recurring_schedules"].insert(),
            {"cron": "0 9 * * TUE", "timezone": "Europe/Oslo", "status": "active",
             "created_at": NOW, "next_run_at": NOW},
        )  # fmt: skip
        conn.execute(t["rate_buckets"].insert(), {"name": "smtp:127.0.0.1", "next_at": 12.5})
        if "bounces" in t:  # revision 0004
            conn.execute(
                t["bounces"].insert(),
                {"received_at": NOW, "kind": "hard", "source": "dsn", "email": "bob@example.com",
                 "subscriber_id": 2, "campaign_id": 7, "status_code": "5.1.1",
                 "diagnostic": "550 5.1.1 no such user", "event_key": "dsn:<x@mx.example>"},
            )  # fmt: skip
            conn.execute(t["erased"].insert(), {"email_hash": "0" * 64, "erased_at": NOW})
        if "tags" in t:  # revision 0006
            conn.execute(t["tags"].insert(), {"subscriber_id": 1, "tag": "vip"})
        if "delivery_counts" in t and conn.dialect.name == "sqlite":  # revision 0007
            # PostgreSQL's triggers counted the deliveries above; SQLite keeps no counts,
            # but the table is there and its rows are kept like any other's.
            conn.execute(
                t["delivery_counts"].insert(),
                [{"campaign_id": 7, "status": s, "shard": 0, "n": 1} for s in ("sent", "skipped")],
            )
    return rows_of(url)


def rows_of(url: str, columns: dict[str, list[str]] | None = None) -> dict[str, list[dict]]:
    """Every row of every newsletter table, in key order (only `columns` when given)."""
    with connection(url) as conn:
        tables = sa.MetaData()
        tables.reflect(conn)
        out = {}
        for name, table in sorted(tables.tables.items()):
            if name == migrations.VERSION_TABLE or (columns and name not in columns):
                continue
            names = columns[name] if columns else [c.name for c in table.columns]
            query = sa.select(*(table.c[n] for n in names)).order_by(*names)
            out[name] = [dict(row._mapping) for row in conn.execute(query)]
        return out


def wipe(url: str) -> None:
    """Drop every table, whichever revision made it."""
    with connection(url) as conn:
        tables = sa.MetaData()
        tables.reflect(conn)
        tables.drop_all(conn)


# --- HEAD and the revision files ------------------------------------------------------


def test_head_names_the_newest_revision_and_the_history_is_one_line() -> None:
    scripts = migrations.scripts()
    assert scripts.get_heads() == [migrations.HEAD]
    history = [script.revision for script in scripts.walk_revisions()]  # newest first
    assert history[-1] == migrations.BASELINE == "0001"
    assert scripts.get_revision(migrations.BASELINE).down_revision is None
    for script in scripts.walk_revisions():
        assert isinstance(script.down_revision, str | None), script.revision  # no merges


# --- an older database is upgraded by the first open, with its data -------------------


@pytest.mark.parametrize(
    ("start", "before_migrations"), OLD, ids=["at-0001", "made-before-migrations"]
)
def test_an_older_database_is_upgraded_on_open_and_keeps_its_data(
    database_url: str, start: str, before_migrations: bool
) -> None:
    make_database_at(database_url, start, before_migrations)
    before = fill(database_url)
    assert revision_of(database_url) == (None if before_migrations else start)

    store = Store.open(database_url)

    assert revision_of(database_url) == migrations.HEAD
    kept = {table: list(rows[0]) for table, rows in before.items()}
    assert rows_of(database_url, kept) == before
    # Today's code reads every column of every table it knows.
    with store.engine.connect() as conn:
        for table in metadata.sorted_tables:
            conn.execute(sa.select(table)).all()
    assert store.count_subscribers() == 1
    assert store.subscriber("ann@example.com")["created_at"] == NOW.replace(tzinfo=dt.UTC)
    [report] = campaign_status.status(store, 7)
    assert (report.subject, report.sent, report.skipped) == ("First issue", 1, 1)


def test_0002_keys_the_list_and_gives_unicode_domains_their_a_labels(database_url: str) -> None:
    # Before 0002 every address was stored lower-cased, some with a Unicode domain, and an
    # incomplete campaign had no incomplete_since.
    make_database_at(database_url, "0001")
    fill(database_url)
    with connection(database_url) as conn:
        conn.execute(
            sa.text(
                "INSERT INTO subscribers (id, email, name, attributes, status, created_at)"
                " VALUES (3, 'zoë@bücher.example', 'Zoë', '{}', 'active', :now),"
                " (4, 'x@bü..example', '', '{}', 'active', :now)"
            ),
            {"now": NOW},
        )
        conn.execute(sa.text("UPDATE campaigns SET status = 'incomplete'"))
    store = Store.open(database_url)
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(tables_mod.subscribers.c.email, tables_mod.subscribers.c.email_key).order_by(
                tables_mod.subscribers.c.id
            )
        ).all()
        since = conn.execute(sa.select(tables_mod.campaigns.c.incomplete_since)).scalar_one()
    assert [tuple(r) for r in rows] == [
        ("ann@example.com", "ann@example.com"),
        ("bob@example.com", "bob@example.com"),
        ("zoë@xn--bcher-kva.example", "zoë@xn--bcher-kva.example"),
        ("x@bü..example", "x@bü..example"),  # not a valid IDNA name: left as it was
    ]
    assert store.subscriber("Zoë@Bücher.example")["name"] == "Zoë"
    assert since is not None and abs(since - tables_mod.utcnow()) < dt.timedelta(minutes=1)


def test_0006_a_database_of_the_previous_release_gets_tags_and_keeps_its_data(
    database_url: str,
) -> None:
    make_database_at(database_url, "0005")
    before = fill(database_url)
    assert "tags" not in before

    store = Store.open(database_url)

    assert revision_of(database_url) == migrations.HEAD
    kept = {table: list(rows[0]) for table, rows in before.items()}
    assert rows_of(database_url, kept) == before
    after = rows_of(database_url)
    assert after["tags"] == []
    # Every campaign so far went to its whole audience.
    assert [(c["segment"], c["segment_size"]) for c in after["campaigns"]] == [(None, None)]
    # The new table works at once, on the old rows.
    done = tags.apply(store, ["ann@example.com", "bob@example.com"], add=["vip"])
    assert (done.subscribers, done.added, done.unknown) == (2, 2, ())
    assert tags.count(store, segments.resolve('tag:vip and attr:city = "Oslo"', {})) == 1
    [report] = campaign_status.status(store, 7)
    assert (report.segment, report.segment_size) == (None, None)


def test_0007_a_database_of_the_previous_release_gets_its_deliveries_counted(
    database_url: str,
) -> None:
    make_database_at(database_url, "0006")
    fill(database_url)
    with connection(database_url) as conn:  # a second campaign, under way
        conn.execute(
            sa.text(
                "INSERT INTO campaigns (id, issue_slug, issue_path, subject, html_template,"
                " text_template, status, created_at, total, batches, audience)"
                " VALUES (8, 'second', 'issues/second.md', 'Second', '<p>Hi</p>', 'Hi',"
                " 'incomplete', :now, 2, 0, 'all')"
            ),
            {"now": NOW},
        )
        conn.execute(
            sa.text(
                "INSERT INTO deliveries (id, campaign_id, subscriber_id, status, attempts)"
                " VALUES (3, 8, 1, 'pending', 0), (4, 8, 2, 'deferred', 1)"
            )
        )
    before = rows_of(database_url)

    store = Store.open(database_url)

    assert revision_of(database_url) == migrations.HEAD
    kept = {table: list(rows[0]) for table, rows in before.items()}
    assert rows_of(database_url, kept) == before
    after = rows_of(database_url)
    counted = {(r["campaign_id"], r["status"], r["n"]) for r in after["delivery_counts"]}
    if store.is_sqlite:  # SQLite counts with COUNT: the table stays empty
        assert counted == set()
    else:
        assert counted == {
            (7, "sent", 1),
            (7, "skipped", 1),
            (8, "pending", 1),
            (8, "deferred", 1),
        }
    assert [c["claim_from"] for c in after["campaigns"]] == [None, None]
    # The old rows' changes are counted from now on.
    with store.begin() as conn:
        conn.execute(
            tables_mod.deliveries.update()
            .where(tables_mod.deliveries.c.campaign_id == 8)
            .values(status="sent")
        )
    [report] = campaign_status.status(store, 8)
    assert (report.sent, report.pending, report.deferred) == (2, 0, 0)
    [report] = campaign_status.status(store, 7)
    assert (report.sent, report.skipped) == (1, 1)


def test_an_open_of_a_database_at_head_changes_nothing(database_url: str) -> None:
    Store.open(database_url).close()
    fill(database_url)
    before = rows_of(database_url)
    assert Store.upgrade(database_url) == migrations.SchemaChange(migrations.HEAD, migrations.HEAD)
    assert rows_of(database_url) == before


def test_opening_a_database_at_head_costs_one_query(database_url: str) -> None:
    Store.open(database_url).close()
    store = Store(connect(database_url))
    statements: list[str] = []
    sa.event.listen(
        store.engine, "before_cursor_execute", lambda *args: statements.append(args[2])
    )
    store.ensure_schema()
    # SQLite's BEGIN comes from the store's own "begin" hook, not from the schema check.
    assert [s for s in statements if s != "BEGIN"] == [
        f"SELECT version_num FROM {migrations.VERSION_TABLE}"
    ]


def test_opening_a_database_at_head_does_not_import_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'newsletter.db'}"
    Store.open(url).close()
    code = (
        "import sys; from newsletter.ledger.store import Store;"
        f"Store.open({url!r}).close();"
        "print(sorted(m for m in sys.modules if m.partition('.')[0] == 'alembic'))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "[]"


def test_several_processes_opening_a_new_database_at_once_create_it_once(
    database_url: str,
) -> None:
    # Already a file in WAL mode: the switch to WAL, on connecting to a new file, can fail
    # "database is locked" when several connections make it at once (store.connect).
    engine = connect(database_url)
    engine.connect().close()
    engine.dispose()
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def open_store() -> None:
        start.wait()
        try:
            Store.open(database_url).close()
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert revision_of(database_url) == migrations.HEAD
    assert rows_of(database_url)["newsletter_meta"] == [{"key": "schema_version", "value": "1"}]


def test_open_without_create_refuses_an_empty_database(database_url: str) -> None:
    with pytest.raises(NewsletterError, match="no newsletter tables yet"):
        Store.open(database_url, create=False)
    assert revision_of(database_url) is None


# --- a new database: create_all + stamp is the schema the revisions build ---------------


def schema_of(url: str) -> dict[str, Any]:
    """The reflected schema, everything compare_metadata looks at and foreign keys' options."""
    with connection(url) as conn:
        inspector = sa.inspect(conn)
        out: dict[str, Any] = {}
        for table in sorted(inspector.get_table_names()):
            out[table] = {
                "columns": [
                    (c["name"], str(c["type"]), c["nullable"], c["default"])
                    for c in inspector.get_columns(table)
                ],
                "primary key": inspector.get_pk_constraint(table)["constrained_columns"],
                # repr: SQLite's unnamed constraints have None for a name.
                "unique": sorted(
                    (
                        (u["name"], u["column_names"])
                        for u in inspector.get_unique_constraints(table)
                    ),
                    key=repr,
                ),
                "indexes": sorted(
                    (i["name"], i["column_names"], i["unique"])
                    for i in inspector.get_indexes(table)
                ),
                "foreign keys": sorted(
                    (
                        f["constrained_columns"],
                        f["referred_table"],
                        f["referred_columns"],
                        sorted(f["options"].items()),
                    )
                    for f in inspector.get_foreign_keys(table)
                ),
            }
        # Triggers (revision 0007's counts) and partial indexes' conditions, as the
        # database writes them back.
        if conn.dialect.name == "sqlite":
            query = (
                "SELECT type, name, sql FROM sqlite_master WHERE type = 'trigger'"
                " OR (type = 'index' AND sql LIKE '%WHERE%') ORDER BY type, name"
            )
            found = conn.execute(sa.text(query)).all()
            out["triggers, partial indexes"] = [(t, n, " ".join(q.split())) for t, n, q in found]
        else:
            for name, query in (
                ("triggers", "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger"
                 " WHERE NOT tgisinternal ORDER BY tgname"),
                ("partial indexes", "SELECT indexname, indexdef FROM pg_indexes"
                 " WHERE indexdef LIKE '%WHERE%' AND schemaname = current_schema()"
                 " ORDER BY indexname"),
                ("functions", "SELECT proname, prosrc FROM pg_proc"
                 " WHERE pronamespace = current_schema()::regnamespace ORDER BY proname"),
            ):  # fmt: skip
                out[name] = [tuple(r) for r in conn.execute(sa.text(query))]
        return out


def test_the_revisions_build_the_schema_a_new_database_gets(database_url: str) -> None:
    make_database_at(database_url, "head")
    with connection(database_url) as conn:
        context = MigrationContext.configure(conn, opts=migrations.context_options())
        assert compare_metadata(context, metadata) == []
    migrated = schema_of(database_url), rows_of(database_url)["newsletter_meta"]

    wipe(database_url)
    Store.open(database_url).close()

    assert revision_of(database_url) == migrations.HEAD
    assert (schema_of(database_url), rows_of(database_url)["newsletter_meta"]) == migrated


# --- SQLite: a revision that rebuilds a table ------------------------------------------

REBUILD = """
import sqlalchemy as sa
from alembic import op

revision = "9000"
down_revision = {head!r}


def upgrade() -> None:
    # SQLite alters this by copying campaigns, dropping it and renaming the copy.
    with op.batch_alter_table("campaigns", recreate="always") as batch:
        batch.add_column(sa.Column("note", sa.Text))
    {extra}
"""


@pytest.fixture
def migrations_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This release's migrations copied to a folder of the test's, which they run from."""
    location = tmp_path / "migrations"
    shutil.copytree(migrations.LOCATION, location, ignore=shutil.ignore_patterns("__py*"))
    monkeypatch.setattr(migrations, "LOCATION", location)
    return location


@pytest.fixture
def one_more_revision(
    migrations_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], None]:
    """one_more_revision(extra): revision 9000 on top of the copied migrations, as HEAD;
    it rebuilds `campaigns` and runs `extra`."""

    def add(extra: str) -> None:
        code = REBUILD.format(head=migrations.HEAD, extra=extra or "pass")
        (migrations_copy / "versions" / "9000_rebuild_campaigns.py").write_text(code)
        monkeypatch.setattr(migrations, "HEAD", "9000")

    return add


def test_sqlite_rebuilding_a_table_keeps_the_rows_that_reference_it(
    tmp_path: Path, one_more_revision: Callable[[str], None]
) -> None:
    url = f"sqlite:///{tmp_path / 'newsletter.db'}"
    make_database_at(url, migrations.HEAD)
    before = fill(url)
    one_more_revision("")

    Store.open(url)

    assert revision_of(url) == "9000"
    kept = {table: list(rows[0]) for table, rows in before.items()}
    # Foreign keys on, dropping the old campaigns would have deleted its deliveries and links.
    assert rows_of(url, kept) == before


def test_sqlite_an_upgrade_that_would_break_a_foreign_key_changes_nothing(
    tmp_path: Path, one_more_revision: Callable[[str], None]
) -> None:
    url = f"sqlite:///{tmp_path / 'newsletter.db'}"
    make_database_at(url, migrations.HEAD)
    before = fill(url)
    head = migrations.HEAD
    # Subscriber 1 has a delivery and a tag.
    one_more_revision('op.execute("DELETE FROM subscribers WHERE id = 1")')

    with pytest.raises(NewsletterError, match=r"break 2 foreign key\(s\), first in table"):
        Store.open(url)

    assert revision_of(url) == head
    assert rows_of(url) == before


# --- the CLI: db current, db upgrade, and a database from a newer release -----------------


@pytest.fixture
def db_cli(
    run_cli: Callable[..., Result], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Result]:
    """The CLI on the publication whose [database] url is `database_url`."""
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", database_url)
    return run_cli


def output(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def test_db_current_and_upgrade_on_a_new_database(
    db_cli: Callable[..., Result], database_url: str, tmp_path: Path
) -> None:
    head = migrations.HEAD
    assert output(db_cli("db", "current")) == (
        "no tables yet: the first command that uses the database creates them"
    )
    if database_url.startswith("sqlite"):
        assert not (tmp_path / "newsletter.db").exists()  # looking did not create it
    assert output(db_cli("db", "upgrade")) == f"created the tables at {head} (the newest)"
    assert output(db_cli("db", "upgrade")) == f"already at {head} (the newest)"
    assert output(db_cli("db", "current")) == f"{head} (the newest)"


@pytest.mark.parametrize(
    ("start", "before_migrations"), OLD, ids=["at-0001", "made-before-migrations"]
)
def test_db_current_and_upgrade_on_an_older_database(
    db_cli: Callable[..., Result], database_url: str, start: str, before_migrations: bool
) -> None:
    make_database_at(database_url, start, before_migrations)
    head = migrations.HEAD
    name = f"{start} (made before migrations)" if before_migrations else start
    if start == head and not before_migrations:
        assert output(db_cli("db", "current")) == f"{head} (the newest)"
        assert output(db_cli("db", "upgrade")) == f"already at {head} (the newest)"
    else:
        assert output(db_cli("db", "current")) == (
            f"{name}; the newest is {head}: run `newsletter db upgrade`"
        )
        assert output(db_cli("db", "upgrade")) == f"upgraded from {name} to {head}"
    assert output(db_cli("db", "current")) == f"{head} (the newest)"
    assert revision_of(database_url) == head


@pytest.mark.parametrize(
    "command_line",
    [("subscribers", "count"), ("status",), ("db", "upgrade"), ("db", "current")],
    ids=" ".join,
)
def test_a_database_from_a_newer_release_is_refused_in_one_line(
    db_cli: Callable[..., Result],
    database_url: str,
    assert_user_error: Callable[..., str],
    command_line: tuple[str, ...],
) -> None:
    Store.open(database_url).close()
    with connection(database_url) as conn:
        conn.execute(sa.text(f"UPDATE {migrations.VERSION_TABLE} SET version_num = '9999'"))

    line = assert_user_error(db_cli(*command_line), "9999", "upgrade newsletter")

    assert line == (
        f"Error: the database is at schema revision 9999, made by a newer release of"
        f" newsletter (this one knows up to {migrations.HEAD}); upgrade newsletter"
    )
    assert revision_of(database_url) == "9999"


# --- the next revision: drafted from changed tables ---------------------------------------


def test_a_drafted_revision_upgrades_an_older_database_to_the_changed_tables(
    database_url: str, migrations_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Store.open(database_url).close()
    before = fill(database_url)
    changed = sa.MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(changed)
    changed.tables["campaigns"].append_column(sa.Column("note", tables_mod.UTCDateTime))
    monkeypatch.setattr(tables_mod, "metadata", changed)  # what env.py compares with

    with connection(database_url) as conn:
        draft = migrations.write_revision(conn, "add campaigns.note", "9001")

    code = draft.read_text(encoding="utf-8")
    assert draft.parent == migrations_copy / "versions"
    assert "sa.Column('note', sa.DateTime(), nullable=True)" in code
    assert "newsletter" not in code  # a revision does not import store
    monkeypatch.setattr(migrations, "HEAD", "9001")
    Store.open(database_url).close()
    assert revision_of(database_url) == "9001"
    kept = {table: list(rows[0]) for table, rows in before.items()}
    assert rows_of(database_url, kept) == before
    with connection(database_url) as conn:
        context = MigrationContext.configure(conn, opts=migrations.context_options())
        assert compare_metadata(context, changed) == []
