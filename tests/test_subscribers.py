"""Subscriber bookkeeping (issue 17, item 10): duplicates in one file are counted and
named, a partial import exits 0 (1 with --strict), and `add` says what it did to an
address that is not active, never wiping a stored name. SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from campaign_support import Publication, make_publication
from click.testing import CliRunner, Result

from newsletter.cli import cli
from newsletter.ledger.tables import BOUNCED

ANN = "ann@example.com"


@pytest.fixture
def pub(tmp_path: Path, database_url: str) -> Publication:
    return make_publication(tmp_path, database_url, 2525)  # nothing is sent


def invoke(pub: Publication, *args: str | Path) -> Result:
    argv = ["--config", str(pub.config_path), *map(str, args)]
    return CliRunner().invoke(cli, argv, env=pub.env)


def ok(pub: Publication, *args: str | Path) -> str:
    result = invoke(pub, *args)
    assert result.exit_code == 0, result.output
    return result.stdout


def write_csv(pub: Publication, text: str, name: str = "list.csv") -> Path:
    path = pub.root / name
    path.write_text(text, encoding="utf-8")
    return path


def subscriber(pub: Publication, email: str) -> tuple[str, str, dict[str, str]]:
    row = pub.store().subscriber(email)
    assert row is not None
    return row["name"], row["status"], json.loads(row["attributes"])


# --- import ---------------------------------------------------------------------------


def test_duplicates_in_one_file_are_counted_and_named_not_merged(pub: Publication) -> None:
    path = write_csv(
        pub,
        "email,name\n"
        "ann@example.com,Ann\n"
        "bob@example.com,Bob\n"
        "ANN@Example.com,Annie\n"
        "bob@example.com,Bobby\n",
    )
    result = invoke(pub, "subscribers", "import", path)
    assert result.exit_code == 0, result.output
    assert result.stdout == "2 added, 0 updated, 2 duplicate(s), 0 rejected\n"
    assert result.stderr.splitlines() == [
        f"duplicate: {path}:4: ANN@example.com: ann@example.com in another case as line 2;"
        " line 2 kept",
        f"duplicate: {path}:5: bob@example.com: the same address as line 3; line 3 kept",
    ]
    # The first row stands: the later row's name did not slip in.
    assert subscriber(pub, ANN)[0] == "Ann" and subscriber(pub, "bob@example.com")[0] == "Bob"
    strict = invoke(pub, "subscribers", "import", path, "--strict")
    assert strict.exit_code == 1
    assert strict.stdout == "0 added, 2 updated, 2 duplicate(s), 0 rejected\n"


def test_a_partial_import_exits_0_and_1_with_strict(pub: Publication) -> None:
    path = write_csv(pub, "email,name\nann@example.com,Ann\nnot-an-address,Bad\n")
    result = invoke(pub, "subscribers", "import", path)
    assert result.exit_code == 0, result.output
    assert result.stdout == "1 added, 0 updated, 1 rejected\n"
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"skipped: {path}:3: 'not-an-address': ")
    strict = invoke(pub, "subscribers", "import", path, "--strict")
    assert strict.exit_code == 1 and strict.stdout == "0 added, 1 updated, 1 rejected\n"
    clean = write_csv(pub, "email,name\nann@example.com,Ann\n", "clean.csv")
    assert invoke(pub, "subscribers", "import", clean, "--strict").exit_code == 0


def test_an_import_where_no_row_is_good_fails(pub: Publication) -> None:
    path = write_csv(pub, "email,name\nnot-an-address,Bad\ncarol@,Carol\n")
    result = invoke(pub, "subscribers", "import", path)
    assert result.exit_code == 1
    assert result.stdout == "0 added, 0 updated, 2 rejected\n"


def test_an_empty_name_or_no_extra_columns_keep_what_is_stored(pub: Publication) -> None:
    ok(
        pub,
        "subscribers",
        "import",
        write_csv(pub, "email,name,city\nann@example.com,Ann,Irvine\n"),
    )
    ok(pub, "subscribers", "import", write_csv(pub, "email\nann@example.com\n", "bare.csv"))
    assert subscriber(pub, ANN) == ("Ann", "active", {"city": "Irvine"})
    ok(
        pub,
        "subscribers",
        "import",
        write_csv(pub, "email,name\nann@example.com,Ann Lee\n", "new.csv"),
    )
    assert subscriber(pub, ANN) == ("Ann Lee", "active", {"city": "Irvine"})


# --- add --------------------------------------------------------------------------------


def test_add_of_an_unsubscribed_address_says_so_and_keeps_the_name(pub: Publication) -> None:
    assert ok(pub, "subscribers", "add", ANN, "--name", "Ann") == f"added {ANN}\n"
    ok(pub, "subscribers", "remove", ANN)
    hint = f"(`newsletter subscribers add --resubscribe {ANN}` if they asked to come back)"
    assert (
        ok(pub, "subscribers", "add", ANN) == f"{ANN} is unsubscribed; left unsubscribed {hint}\n"
    )
    assert subscriber(pub, ANN)[:2] == ("Ann", "unsubscribed")
    renamed = ok(pub, "subscribers", "add", ANN, "--name", "Ann Lee")
    assert renamed == f"{ANN} is unsubscribed; left unsubscribed; name updated {hint}\n"
    assert subscriber(pub, ANN)[:2] == ("Ann Lee", "unsubscribed")
    back = ok(pub, "subscribers", "add", ANN, "--resubscribe")
    assert back == f"resubscribed {ANN}: unsubscribed before, active now\n"
    assert subscriber(pub, ANN)[:2] == ("Ann Lee", "active")
    assert ok(pub, "subscribers", "count") == "1\n"


def test_add_of_an_active_address_without_a_name_changes_nothing(pub: Publication) -> None:
    ok(
        pub,
        "subscribers",
        "import",
        write_csv(pub, "email,name,city\nann@example.com,Ann,Irvine\n"),
    )
    said = ok(pub, "subscribers", "add", "Ann@Example.com")
    assert said == "Ann@Example.com is already subscribed (active); nothing changed\n"
    assert subscriber(pub, ANN) == ("Ann", "active", {"city": "Irvine"})
    same = ok(pub, "subscribers", "add", ANN, "--name", "Ann")
    assert same == f"{ANN} is already subscribed (active); nothing changed\n"


def test_resubscribe_never_revives_a_suppressed_address(pub: Publication) -> None:
    ok(pub, "subscribers", "add", ANN, "--name", "Ann")
    pub.store().set_subscriber_status(ANN, BOUNCED)
    said = ok(pub, "subscribers", "add", ANN, "--resubscribe")
    assert said == f"kept {ANN} suppressed (bounced): only a confirmed signup brings it back\n"
    assert subscriber(pub, ANN)[:2] == ("Ann", "bounced")
