"""Schema migrations of the ledger (Alembic), run from code: no alembic.ini is needed.

`versions/` holds one file per revision; 0001 is the schema as it stood when
migrations began. `Store.open` brings every database to HEAD before any command
uses it, so a database made by an earlier release upgrades in place, with its
data, in one transaction (all of it or none).

The revision a database is at lives in VERSION_TABLE. A database made before
migrations has `newsletter_meta` and no VERSION_TABLE: it counts as BASELINE.

Alembic is imported only when a database is created, upgraded or inspected:
importing it costs about 85 ms, which the usual open (a database already at HEAD,
one query) does not pay.

To add a revision: change the tables in tables.py, then let `write_revision` draft
versions/NNNN_what_it_does.py from the difference with a database at HEAD, e.g.

    with sa.create_engine("sqlite:///newsletter.db").begin() as conn:
        write_revision(conn, "add campaigns.note", "0002")

Read and edit the draft (a rename looks like a drop and an add), run ruff format
on it, and move HEAD to it: a test checks that HEAD names the newest revision.
A revision never imports tables.py, whose tables keep changing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from newsletter.errors import NewsletterError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

# The newest revision in versions/: comparing against it needs no Alembic import.
HEAD = "0007"
# What a database made before migrations is at.
BASELINE = "0001"
# Not Alembic's default "alembic_version": a PostgreSQL database shared with another
# application that uses Alembic would otherwise mix the two histories.
VERSION_TABLE = "newsletter_alembic_version"
# env.py, script.py.mako and versions/ (a test points it at a copy with one more revision).
LOCATION = Path(__file__).parent


@dataclass(frozen=True)
class SchemaChange:
    """What bringing a database to HEAD did."""

    before: str | None  # None: the database was new and got today's tables
    after: str
    before_migrations: bool = False  # made before migrations, so `before` is BASELINE

    @property
    def changed(self) -> bool:
        return self.before != self.after or self.before_migrations


@dataclass(frozen=True)
class SchemaState:
    """The revision a database is at, as `newsletter db current` reports it."""

    revision: str | None  # None: no newsletter tables yet
    before_migrations: bool = False
    head: str = HEAD  # the newest revision this release knows

    @property
    def is_head(self) -> bool:
        return self.revision == self.head and not self.before_migrations


def at_head(conn: Connection) -> bool:
    """True when the database is at HEAD: one query, for every open of a store."""
    try:
        stored = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    except (sa.exc.OperationalError, sa.exc.ProgrammingError):
        # No version table (a new database or one made before migrations): the caller
        # looks closer in a write transaction. PostgreSQL has aborted this transaction.
        return False
    return [row[0] for row in stored] == [HEAD]


def context_options() -> dict[str, Any]:
    """Alembic's migration context options: our version table, and how autogenerate
    compares a database with tables.metadata and writes a revision (env.py, tests)."""
    return {
        "version_table": VERSION_TABLE,
        "compare_type": True,
        "compare_server_default": _compare_server_default,
        "render_item": _render_item,
    }


def _render_item(kind: str, obj: Any, autogen_context: Any) -> str | bool:
    # A column of one of store's own types (UTCDateTime) is written as the type it
    # stores: a revision must not import store. False: Alembic renders it.
    if kind == "type" and isinstance(obj, sa.types.TypeDecorator):
        return f"sa.{type(obj.impl_instance).__name__}()"
    return False


def _compare_server_default(
    context: Any,
    inspected_column: Any,
    metadata_column: Any,
    inspected_default: str | None,
    metadata_default: Any,
    rendered_metadata_default: str | None,
) -> bool | None:
    # Alembic's SQLite comparison unquotes only a non-empty string, so the empty-string
    # default of subscribers.name always looked changed. None: Alembic decides.
    if rendered_metadata_default == "" and inspected_default in ("''", "('')"):
        return False
    return None


def stored_revision(conn: Connection) -> str | None:
    """The revision recorded in the database, or None when it has no version table."""
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    stored = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if len(stored) != 1:
        # Our history is one line; several heads (or none) were written by something else.
        raise NewsletterError(
            f"the database's {VERSION_TABLE} holds {len(stored)} revisions"
            f" ({', '.join(stored) or 'none'}); expected one"
        )
    return str(stored[0])


def config(conn: Connection | None = None) -> Config:
    """Alembic's configuration of our revisions, run on `conn` (in its transaction)."""
    from alembic.config import Config

    cfg = Config()
    # A "%" would start an interpolation in Alembic's ini-style options.
    cfg.set_main_option("script_location", str(LOCATION).replace("%", "%%"))
    cfg.attributes["connection"] = conn
    return cfg


def scripts() -> ScriptDirectory:
    """The revisions this release has."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(config())


def check_known(revision: str) -> None:
    """Raise the "upgrade newsletter" error for a revision this release does not have."""
    from alembic.util import CommandError

    try:
        known = scripts().get_revision(revision) is not None
    except CommandError:
        known = False
    if not known:
        raise NewsletterError(
            f"the database is at schema revision {revision}, made by a newer release of"
            f" newsletter (this one knows up to {HEAD}); upgrade newsletter"
        )


def stamp(conn: Connection, revision: str) -> None:
    """Record `revision` as the database's, changing no table."""
    from alembic import command

    command.stamp(config(conn), revision)


def upgrade(conn: Connection, current: str, target: str = "head") -> None:
    """Run the revisions after `current` (the database's) up to `target`, in its transaction."""
    from alembic import command

    check_known(current)
    command.upgrade(config(conn), target)


def write_revision(conn: Connection, message: str, revision: str) -> Path:
    """Draft versions/<revision>_<message>.py: what turns the database at `conn` (at
    HEAD) into tables.metadata, as Alembic's autogenerate finds it. Returns its path."""
    from alembic import command

    script = command.revision(config(conn), message, autogenerate=True, rev_id=revision)
    assert script is not None and not isinstance(script, list)  # one revision, one file
    return Path(script.path)
