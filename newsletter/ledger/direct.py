"""The ledger through its database's own driver, without SQLAlchemy.

For the commands that run often and read a few rows: `run-due` every minute from cron
(schedule/quick.py) and `status` in a watch loop (campaign_status.status_at). Importing
SQLAlchemy and opening a Store costs 0.15-0.5 s, more than everything else they do; the
database's driver (the standard library's sqlite3, or psycopg) is all a read needs.

Only a certain case is read here: a plain SQLite file, opened read-only, or a
`postgresql+psycopg://` URL (host, port, user, password, database and libpq parameters,
as SQLAlchemy's psycopg dialect passes them), at this release's schema revision.
Anything else (another driver, a file not there yet, an older or newer schema, an error
from the driver) gives None, and the command opens the Store as it always did, which
says what is wrong in its own words.

The SQL is written once with `:name` parameters, runs here and through a SQLAlchemy
connection alike (Driver.on), and reads stored times as SQLAlchemy keeps them: naive
UTC, as text on SQLite (tables.UTCDateTime).
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from newsletter.ledger.revision import HEAD

if TYPE_CHECKING:
    import sqlalchemy as sa

T = TypeVar("T")

# How SQLAlchemy keeps a DateTime in SQLite: text that sorts as the time does.
STORED_TIME = "%Y-%m-%d %H:%M:%S.%f"
# A quoted literal (left as it is), a :name parameter (not a ::cast), or a per cent sign.
_TOKENS = re.compile(r"'(?:[^']|'')*'|(?<![:\w]):(\w+)|%")
_REVISION = "SELECT version_num FROM newsletter_alembic_version"


class Driver:
    """One connection, through its driver: SQL with `:name` parameters in, tuples out."""

    def __init__(
        self, execute: Callable[[str, Mapping[str, Any]], Sequence[Sequence[Any]]], sqlite: bool
    ) -> None:
        self._execute = execute
        self.sqlite = sqlite

    @classmethod
    def on(cls, conn: sa.Connection) -> Driver:
        """The same reads through a SQLAlchemy connection (and its transaction)."""
        return cls(
            lambda sql, params: conn.exec_driver_sql(sql, dict(params)).all(),
            conn.dialect.name == "sqlite",
        )

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        if not self.sqlite:  # psycopg's parameters are %(name)s, and a % is written %%
            sql = _TOKENS.sub(_pyformat, sql)
        return [tuple(row) for row in self._execute(sql, params)]

    def time(self, moment: dt.datetime) -> Any:
        """`moment` (aware) as a parameter compared with stored times."""
        naive = moment.astimezone(dt.UTC).replace(tzinfo=None)
        return naive.strftime(STORED_TIME) if self.sqlite else naive

    @staticmethod
    def stored_time(value: Any) -> dt.datetime | None:
        """A stored time as tables.UTCDateTime reads it: aware, in UTC."""
        if value is None:
            return None
        if isinstance(value, str):  # SQLite's text
            value = dt.datetime.fromisoformat(value)
        return value.replace(tzinfo=dt.UTC)


def _pyformat(token: re.Match[str]) -> str:
    if token[1]:
        return f"%({token[1]})s"
    return token[0].replace("%", "%%")


def sqlite_path(url: str) -> Path | None:
    """The file of a plain SQLite URL (`sqlite:///newsletter.db`, a `?timeout=` allowed);
    None for anything else, which the full path handles."""
    parts = urlsplit(url)
    if parts.scheme not in ("sqlite", "sqlite+pysqlite") or parts.netloc or not parts.path:
        return None
    path = unquote(parts.path[1:])  # sqlite:///x.db: "/x.db"; sqlite:////abs: "//abs"
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return Path(path)


def psycopg_params(url: str) -> dict[str, str] | None:
    """libpq's connection parameters for a `postgresql+psycopg://` URL, as SQLAlchemy's
    psycopg dialect gives them; None for any other URL, or one this cannot read for sure
    (a parameter given twice, several hosts)."""
    parts = urlsplit(url)
    if parts.scheme != "postgresql+psycopg":
        return None
    try:
        params = {
            "host": parts.hostname and unquote(parts.hostname),
            "port": parts.port and str(parts.port),
            "user": parts.username and unquote(parts.username),
            "password": parts.password and unquote(parts.password),
            "dbname": unquote(parts.path[1:]) or None,
        }
    except ValueError:  # a port that is not a number
        return None
    query = parse_qsl(parts.query, keep_blank_values=True)
    if len({key for key, _ in query}) != len(query) or "," in parts.netloc:
        return None
    out = {key: value for key, value in params.items() if value}
    out.update(query)
    return out


def read(url: str, work: Callable[[Driver], T]) -> T | None:
    """`work` on a direct, read-only connection to the ledger at `url`, when it is a
    certain case at this release's schema; None otherwise (the caller opens the Store).
    Errors from `work` other than the driver's pass through."""
    path = sqlite_path(url)
    if path is not None:
        return _read_sqlite(path, work) if path.is_file() else None
    params = psycopg_params(url)
    return None if params is None else _read_postgres(params, work)


def _read_sqlite(path: Path, work: Callable[[Driver], T]) -> T | None:
    try:
        # Read-only and without creating anything; a writer holding the lock is waited
        # for briefly, like any reader of a WAL database (readers are not blocked).
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return None
    try:
        driver = Driver(lambda sql, params: conn.execute(sql, params).fetchall(), sqlite=True)
        return work(driver) if _at_head(driver) else None
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def _read_postgres(params: dict[str, str], work: Callable[[Driver], T]) -> T | None:
    try:
        import psycopg
    except ImportError:
        return None
    try:
        conn = psycopg.connect(**params)  # type: ignore[arg-type]
    except psycopg.Error:
        return None
    try:
        conn.read_only = True

        def execute(sql: str, values: Mapping[str, Any]) -> list[Any]:
            return conn.execute(sql, values).fetchall()

        driver = Driver(execute, sqlite=False)
        return work(driver) if _at_head(driver) else None
    except psycopg.Error:
        return None
    finally:
        conn.close()


def _at_head(driver: Driver) -> bool:
    rows = driver.rows(_REVISION)
    return bool(rows) and rows[0][0] == HEAD
