"""ledger/direct.py: which database URLs it reads without SQLAlchemy, with what
connection parameters; anything it cannot read for sure is left to the Store."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa

from newsletter.ledger import direct


@pytest.mark.parametrize(
    ("url", "params"),
    [
        (
            "postgresql+psycopg://postgres@127.0.0.1:5432/test",
            {"host": "127.0.0.1", "port": "5432", "user": "postgres", "dbname": "test"},
        ),
        (
            "postgresql+psycopg://u%40x:p%2Fw%3Ad@db.example/news%20letter",
            {"host": "db.example", "user": "u@x", "password": "p/w:d", "dbname": "news letter"},
        ),
        (
            "postgresql+psycopg:///test?host=/run/postgresql",
            {"dbname": "test", "host": "/run/postgresql"},
        ),
        (
            "postgresql+psycopg://h/d?sslmode=require&connect_timeout=5",
            {"host": "h", "dbname": "d", "sslmode": "require", "connect_timeout": "5"},
        ),
    ],
)
def test_a_psycopg_url_gives_libpq_s_parameters(url: str, params: dict[str, str]) -> None:
    assert direct.psycopg_params(url) == params
    # The URL's parts read as SQLAlchemy reads them.
    made = sa.engine.make_url(url)
    parts = {"host": made.host, "user": made.username, "password": made.password}
    parts |= {"dbname": made.database, "port": made.port and str(made.port)}
    parts = {k: v for k, v in parts.items() if v}
    assert parts == {k: v for k, v in params.items() if k in parts}


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@127.0.0.1/test",  # psycopg2, SQLAlchemy's default driver
        "postgresql+asyncpg://postgres@127.0.0.1/test",
        "postgresql+psycopg://h/d?host=a&host=b",  # a parameter twice
        "postgresql+psycopg://a:1,b:2/d",  # several hosts
        "postgresql+psycopg://h:port/d",  # not a port
        "mysql://root@127.0.0.1/test",
        "sqlite://",
    ],
)
def test_anything_else_is_left_to_the_store(url: str) -> None:
    assert direct.psycopg_params(url) is None
    assert direct.read(url, lambda _: True) is None


def test_sqlite_paths(tmp_path: Path) -> None:
    assert direct.sqlite_path("sqlite:///x.db") == Path("x.db")
    assert direct.sqlite_path(f"sqlite:///{tmp_path}/a b.db?timeout=5") == tmp_path / "a b.db"
    assert direct.sqlite_path("sqlite+pysqlite:////abs/x.db") == Path("/abs/x.db")
    for url in ("sqlite://", "sqlite:///:memory:", "sqlite:///file:x.db?mode=ro&uri=true"):
        assert direct.sqlite_path(url) is None


def test_times_are_read_and_bound_as_sqlalchemy_keeps_them() -> None:
    moment = dt.datetime(2026, 12, 1, 18, 30, 5, 120, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    sqlite = direct.Driver(lambda *_: [], sqlite=True)
    postgres = direct.Driver(lambda *_: [], sqlite=False)
    assert sqlite.time(moment) == "2026-12-01 17:30:05.000120"
    assert postgres.time(moment) == dt.datetime(2026, 12, 1, 17, 30, 5, 120)
    utc = moment.astimezone(dt.UTC)
    assert direct.Driver.stored_time("2026-12-01 17:30:05.000120") == utc
    assert direct.Driver.stored_time(dt.datetime(2026, 12, 1, 17, 30, 5, 120)) == utc
    assert direct.Driver.stored_time(None) is None


def test_named_parameters_become_psycopg_s() -> None:
    seen: list[str] = []
    driver = direct.Driver(lambda sql, _: seen.append(sql) or [], sqlite=False)
    driver.rows("SELECT :a, x::text, ':b', 'it''s :c' FROM t WHERE y = :c_1 AND z % 2", a=1)
    assert seen == ["SELECT %(a)s, x::text, ':b', 'it''s :c' FROM t WHERE y = %(c_1)s AND z %% 2"]
