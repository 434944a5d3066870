"""Importing what people export (issue 19): the files of Mailchimp, Substack, Buttondown,
Kit, Beehiiv and Ghost in their column layouts, Excel's semicolons and BOM, tabs, --map,
--dry-run, --encoding, statuses that never re-activate anyone, and a file streamed in
batches. SQLite and PostgreSQL, through the CLI."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from campaign_support import Publication, make_publication
from click.testing import CliRunner, Result

from newsletter.audience import exports
from newsletter.audience import subscribers as subscriber_ops
from newsletter.cli import audience as audience_cli
from newsletter.cli import cli
from newsletter.ledger.store import Store, SubscriberRow, Upserted
from newsletter.ledger.tables import BOUNCED, COMPLAINED, subscribers


@pytest.fixture
def pub(tmp_path: Path, database_url: str) -> Publication:
    return make_publication(tmp_path, database_url, 2525)  # nothing is sent


def invoke(pub: Publication, *args: str | Path) -> Result:
    argv = ["--config", str(pub.config_path), *map(str, args)]
    return CliRunner().invoke(cli, argv, env=pub.env)


def ok(pub: Publication, *args: str | Path) -> Result:
    result = invoke(pub, *args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def write(pub: Publication, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = pub.root / name
    path.write_bytes(text.encode(encoding))
    return path


def the_list(pub: Publication) -> dict[str, tuple[str, str]]:
    """{address: (name, status)} of everyone on the list."""
    store = pub.store()
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(subscribers.c.email, subscribers.c.name, subscribers.c.status)
        )
        return {email: (name, status) for email, name, status in rows}


def attributes(pub: Publication, email: str) -> dict[str, str]:
    row = pub.store().subscriber(email)
    assert row is not None
    return dict(json.loads(row["attributes"]))


# --- each tool's export --------------------------------------------------------------------

MAILCHIMP_HEAD = (
    '"Email Address","First Name","Last Name",Address,"Phone Number",MEMBER_RATING,'
    "OPTIN_TIME,OPTIN_IP,CONFIRM_TIME,CONFIRM_IP,LATITUDE,LONGITUDE,GMTOFF,DSTOFF,"
    "TIMEZONE,CC,REGION,LAST_CHANGED,LEID,EUID,NOTES,TAGS"
)
_OPTIN, _CONFIRM, _CHANGED = '"2023-01-05 10:00:00"', '"2023-01-05 10:01:00"', '"2024-03-01"'
# Address .. TAGS: 19 fields after the names.
MAILCHIMP_ROW = "," + ",".join(
    ["", "", "2", _OPTIN, "", _CONFIRM, *[""] * 8, _CHANGED, "1", "ab12", "", ""]
)

# (tool, file name, text, {address: (name, status)} expected on the list)
EXPORTS: list[tuple[str, str, str, dict[str, tuple[str, str]]]] = [
    (
        "mailchimp subscribed",
        "subscribed_members_export_1a2b3c.csv",
        f"{MAILCHIMP_HEAD}\n"
        f"ann@example.com,Ann,Lee{MAILCHIMP_ROW}\n"
        f"bob@example.com,Bob,{MAILCHIMP_ROW}\n",
        {"ann@example.com": ("Ann Lee", "active"), "bob@example.com": ("Bob", "active")},
    ),
    (
        "mailchimp unsubscribed",
        "unsubscribed_members_export_1a2b3c.csv",
        f"{MAILCHIMP_HEAD},UNSUB_TIME,UNSUB_CAMPAIGN_TITLE,UNSUB_CAMPAIGN_ID,UNSUB_REASON,"
        "UNSUB_REASON_OTHER\n"
        f'cat@example.com,Cat,Ng{MAILCHIMP_ROW},"2024-02-01 09:00:00","May issue",c1,'
        '"No longer interested",\n',
        {"cat@example.com": ("Cat Ng", "unsubscribed")},
    ),
    (
        "mailchimp cleaned",
        "cleaned_members_export_1a2b3c.csv",
        f"{MAILCHIMP_HEAD},CLEAN_TIME,CLEAN_CAMPAIGN_TITLE,CLEAN_CAMPAIGN_ID\n"
        f'dan@example.com,Dan,{MAILCHIMP_ROW},"2024-02-02 09:00:00","May issue",c1\n',
        {"dan@example.com": ("Dan", "bounced")},
    ),
    (
        "substack",
        "email_list.mypub.csv",
        "email,active_subscription,expiry,plan,email_disabled,created_at,first_payment_at\n"
        "ann@example.com,true,2025-07-06T16:20:44.000Z,yearly,false,2023-08-27T15:06:27.713Z,"
        "2023-08-27T15:06:27.713Z\n"
        "bob@example.com,false,,,true,2023-09-01T10:00:00.000Z,\n"
        "cat@example.com,false,,,false,2023-09-02T10:00:00.000Z,\n",
        {
            "ann@example.com": ("", "active"),
            "bob@example.com": ("", "unsubscribed"),
            "cat@example.com": ("", "active"),
        },
    ),
    (
        "buttondown",
        "buttondown-subscribers.csv",
        "id,email,creation_date,subscriber_type,notes,tags,metadata,referrer_url\n"
        "1f0c,ann@example.com,2024-01-01T00:00:00Z,regular,,news,{},\n"
        "2a0d,bob@example.com,2024-01-02T00:00:00Z,unsubscribed,,,{},\n"
        "3b0e,cat@example.com,2024-01-03T00:00:00Z,unactivated,,,{},\n"
        "4c0f,dan@example.com,2024-01-04T00:00:00Z,premium,paid,,{},\n",
        {
            "ann@example.com": ("", "active"),
            "bob@example.com": ("", "unsubscribed"),
            "cat@example.com": ("", "pending"),
            "dan@example.com": ("", "active"),
        },
    ),
    (
        "kit",
        "subscribers.csv",
        "first_name,email_address,state,created_at,tags\n"
        'Ann,ann@example.com,active,2024-01-01 10:00:00 UTC,"vip, news"\n'
        "Bob,bob@example.com,cancelled,2024-01-02 10:00:00 UTC,\n"
        "Cat,cat@example.com,complained,2024-01-03 10:00:00 UTC,\n",
        {
            "ann@example.com": ("Ann", "active"),
            "bob@example.com": ("Bob", "unsubscribed"),
            "cat@example.com": ("Cat", "complained"),
        },
    ),
    (
        "beehiiv",
        "beehiiv_subscribers.csv",
        "email,status,created_at,subscription_tier,utm_source,utm_medium,utm_campaign,"
        "referring_site\n"
        "ann@example.com,active,2024-01-01 10:00:00,free,twitter,social,,\n"
        "bob@example.com,inactive,2024-01-02 10:00:00,free,,,,\n"
        "cat@example.com,validating,2024-01-03 10:00:00,free,,,,\n",
        {
            "ann@example.com": ("", "active"),
            "bob@example.com": ("", "unsubscribed"),
            "cat@example.com": ("", "pending"),
        },
    ),
    (
        "ghost",
        "members.2024-05-01.csv",
        "id,email,name,note,subscribed_to_emails,complimentary_plan,stripe_customer_id,"
        "created_at,deleted_at,labels,tiers\n"
        "6543,ann@example.com,Ann Lee,,true,false,,2024-01-01T10:00:00.000Z,,vip,\n"
        '6544,bob@example.com,"Lee, Bob",,false,false,cus_1,2024-01-02T10:00:00.000Z,,,\n',
        {
            "ann@example.com": ("Ann Lee", "active"),
            "bob@example.com": ("Lee, Bob", "unsubscribed"),
        },
    ),
]


@pytest.mark.parametrize(
    ("tool", "name", "text", "expected"), EXPORTS, ids=[e[0] for e in EXPORTS]
)
def test_each_tools_export_imports_with_names_and_statuses(
    pub: Publication, tool: str, name: str, text: str, expected: dict[str, tuple[str, str]]
) -> None:
    result = ok(pub, "subscribers", "import", write(pub, name, text))
    assert result.stderr == ""
    assert the_list(pub) == expected
    summary = result.stdout.splitlines()[-1]
    assert summary.startswith(f"{len(expected)} added, 0 updated")
    others = sorted(s for _, s in expected.values() if s != "active")
    for status in set(others):
        assert f"{others.count(status)} {status}" in summary


def test_the_other_columns_stay_attributes_and_the_status_columns_do_not(
    pub: Publication,
) -> None:
    _, name, text, _ = EXPORTS[7]  # Ghost
    ok(pub, "subscribers", "import", write(pub, name, text))
    kept = attributes(pub, "ann@example.com")
    assert kept["labels"] == "vip" and kept["id"] == "6543"
    assert "subscribed_to_emails" not in kept and "email" not in kept and "name" not in kept
    _, name, text, _ = EXPORTS[0]  # Mailchimp
    ok(pub, "subscribers", "import", write(pub, name, text))
    kept = attributes(pub, "ann@example.com")
    assert kept["member_rating"] == "2"
    assert "first name" not in kept and "email address" not in kept


# --- how the file is written ---------------------------------------------------------------


def test_excel_semicolons_with_a_bom_and_crlf(pub: Publication) -> None:
    text = "E-Mail;First Name;Last Name;Stadt\r\nzoe@example.com;Zoë;Müller;Köln\r\n"
    path = write(pub, "excel.csv", text, "utf-8-sig")  # as Excel's "CSV UTF-8" writes it
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    ok(pub, "subscribers", "import", path)
    assert the_list(pub) == {"zoe@example.com": ("Zoë Müller", "active")}
    assert attributes(pub, "zoe@example.com") == {"stadt": "Köln"}


def test_a_tsv_file(pub: Publication) -> None:
    path = write(pub, "list.tsv", "Email\tName\tCity\nann@example.com\tAnn, Lee\tIrvine\n")
    ok(pub, "subscribers", "import", path)
    assert the_list(pub) == {"ann@example.com": ("Ann, Lee", "active")}
    assert attributes(pub, "ann@example.com") == {"city": "Irvine"}


def test_a_bad_row_is_reported_with_its_line_and_the_rest_imported(pub: Publication) -> None:
    path = write(
        pub,
        "list.csv",
        "email;name;status\n"
        "ann@example.com;Ann;active\n"
        "not-an-address;Bad;active\n"
        "bob@example.com;Bob;frobnicated\n"
        "cat@example.com;Cat;unsubscribed\n",
    )
    result = ok(pub, "subscribers", "import", path)
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"skipped: {path}:3: 'not-an-address': ")
    assert lines[1].startswith(f"skipped: {path}:4: bob@example.com: status 'frobnicated'")
    assert "--map status=" in lines[1]
    assert (
        result.stdout == "2 added, 0 updated, 2 rejected; by the file's status: 1 unsubscribed\n"
    )
    assert the_list(pub) == {
        "ann@example.com": ("Ann", "active"),
        "cat@example.com": ("Cat", "unsubscribed"),
    }
    assert invoke(pub, "subscribers", "import", path, "--strict").exit_code == 1


def test_lines_are_the_files_own_across_quoted_newlines_and_blank_lines(
    pub: Publication,
) -> None:
    path = write(
        pub,
        "list.csv",
        'email,name\nann@example.com,"Ann\nLee"\n\nnot-an-address,X\nbob@example.com,Bob\n',
    )
    result = ok(pub, "subscribers", "import", path)
    assert result.stderr.startswith(f"skipped: {path}:5: 'not-an-address'")
    assert the_list(pub) == {
        "ann@example.com": ("Ann Lee", "active"),
        "bob@example.com": ("Bob", "active"),
    }
    one_column = write(pub, "one.csv", "Email\ncat@example.com\n")
    ok(pub, "subscribers", "import", one_column)
    assert the_list(pub)["cat@example.com"] == ("", "active")


# --- --map ---------------------------------------------------------------------------------


def test_map_names_the_columns(pub: Publication) -> None:
    path = write(pub, "crm.csv", "Kontakt,Anrede,Adresse\nAnn Lee,Frau,ann@example.com\n")
    plain = invoke(pub, "subscribers", "import", path)
    assert plain.exit_code == 1
    assert "no 'email' column (found: Kontakt, Anrede, Adresse)" in plain.stderr
    assert "--map email=COLUMN" in plain.stderr
    ok(pub, "subscribers", "import", path, "--map", "email=adresse", "--map", "name=kontakt")
    assert the_list(pub) == {"ann@example.com": ("Ann Lee", "active")}
    assert attributes(pub, "ann@example.com") == {"anrede": "Frau"}


def test_map_of_a_column_not_there_is_one_line_naming_it(
    pub: Publication, assert_user_error: Callable[..., str]
) -> None:
    path = write(pub, "crm.csv", "Kontakt,Mail\nAnn Lee,ann@example.com\n")
    result = invoke(pub, "subscribers", "import", path, "--map", "email=E-Mail")
    line = assert_user_error(result, "'E-Mail'", "its columns: Kontakt, Mail")
    assert result.exit_code == 2 and line.startswith("Error: --map email=E-Mail")
    result = invoke(pub, "subscribers", "import", path, "--map", "phone=Mail")
    assert_user_error(result, "--map phone=", "email, name, status")
    assert result.exit_code == 2
    assert the_list(pub) == {}


def test_map_status_empty_leaves_the_status_column_out(pub: Publication) -> None:
    path = write(pub, "x.csv", "email,status\nann@example.com,weird\n")
    ok(pub, "subscribers", "import", path, "--map", "status=")
    assert the_list(pub) == {"ann@example.com": ("", "active")}
    assert attributes(pub, "ann@example.com") == {"status": "weird"}


# --- --dry-run -----------------------------------------------------------------------------


def dump(pub: Publication) -> list[tuple[Any, ...]]:
    with pub.store().engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(subscribers).order_by(subscribers.c.id))]


def test_dry_run_says_what_would_be_done_and_changes_nothing(pub: Publication) -> None:
    ok(pub, "subscribers", "add", "ann@example.com", "--name", "Ann")
    ok(pub, "subscribers", "add", "dan@example.com")
    pub.store().set_subscriber_status("dan@example.com", BOUNCED)
    before = dump(pub)
    path = write(
        pub,
        "list.csv",
        "email,name,status\n"
        "ann@example.com,Ann Lee,active\n"
        "bob@example.com,Bob,active\n"
        "cat@example.com,Cat,unsubscribed\n"
        "nobody,X,active\n"
        "BOB@example.com,Bobby,active\n"
        "dan@example.com,Dan,active\n",
    )
    result = ok(pub, "subscribers", "import", path, "--dry-run")
    assert dump(pub) == before
    out = result.stdout.splitlines()
    assert out[0].startswith(f"{path}: 6 row(s), comma-separated, UTF-8; email='email'")
    assert f"would add: {path}:3: bob@example.com" in out
    assert f"would add: {path}:4: cat@example.com" in out
    assert f"would update: {path}:2: ann@example.com" in out
    assert f"would keep bounced: {path}:7: dan@example.com" in out
    assert f"would be unsubscribed (the file says): {path}:4: cat@example.com" in out
    assert out[-1] == (
        "dry run, nothing changed: would be 2 added, 1 updated, 1 kept suppressed,"
        " 1 duplicate(s), 1 rejected; by the file's status: 1 unsubscribed"
    )
    errors = result.stderr.splitlines()
    assert errors[0].startswith(f"skipped: {path}:5: 'nobody'")
    assert errors[1].startswith(f"duplicate: {path}:6: BOB@example.com: bob@example.com")
    # The real import does what the dry run said.
    real = ok(pub, "subscribers", "import", path)
    assert real.stdout.splitlines()[-1] == out[-1].removeprefix(
        "dry run, nothing changed: would be "
    )


# --- statuses ------------------------------------------------------------------------------


def test_a_files_status_never_reactivates_anyone(pub: Publication) -> None:
    for email in ("ann", "bob", "cat", "dan", "eve"):
        ok(pub, "subscribers", "add", f"{email}@example.com")
    ok(pub, "subscribers", "remove", "ann@example.com")
    pub.store().set_subscriber_status("bob@example.com", BOUNCED)
    pub.store().set_subscriber_status("cat@example.com", COMPLAINED)
    path = write(
        pub,
        "kit.csv",
        "first_name,email_address,state\n"
        "Ann,ann@example.com,active\n"
        "Bob,bob@example.com,unsubscribed\n"
        "Cat,cat@example.com,active\n"
        "Dan,dan@example.com,cancelled\n"
        "Eve,eve@example.com,pending\n",
    )
    result = ok(pub, "subscribers", "import", path)
    assert the_list(pub) == {
        "ann@example.com": ("Ann", "unsubscribed"),  # "active" in the file: still left
        "bob@example.com": ("Bob", "bounced"),  # suppressed outranks unsubscribed
        "cat@example.com": ("Cat", "complained"),
        "dan@example.com": ("Dan", "unsubscribed"),  # active here, left there: left
        "eve@example.com": ("Eve", "active"),  # "pending" does not undo a confirmation
    }
    assert result.stdout == (
        "0 added, 3 updated, 2 kept suppressed, 0 rejected; by the file's status: 1 unsubscribed\n"
    )
    assert pub.store().subscriber("dan@example.com")["unsubscribed_at"] is not None  # type: ignore[index]


# --- encodings -----------------------------------------------------------------------------


def test_another_encoding_is_named_with_encoding(
    pub: Publication, assert_user_error: Callable[..., str]
) -> None:
    path = write(
        pub, "latin.csv", "email;name\nann@example.com;Ann\nzoe@example.com;Zoë\n", "cp1252"
    )
    result = invoke(pub, "subscribers", "import", path)
    assert_user_error(result, f"{path}:3: not UTF-8 (byte 0xeb)", "--encoding")
    assert result.exit_code == 1
    assert the_list(pub) == {}  # nothing of a file that cannot be read
    ok(pub, "subscribers", "import", path, "--encoding", "cp1252")
    assert the_list(pub)["zoe@example.com"] == ("Zoë", "active")
    wrong = invoke(pub, "subscribers", "import", path, "--encoding", "klingon")
    assert_user_error(wrong, "--encoding klingon: not an encoding")
    assert wrong.exit_code == 2


# --- a large file, streamed ----------------------------------------------------------------


class CountingStore(Store):
    """The real store, noting the size of each batch it is given."""

    batches: list[int]

    def upsert_subscribers(
        self,
        rows: Sequence[SubscriberRow],
        *,
        again_after_erasure: bool = False,
        dry_run: bool = False,
    ) -> Upserted:
        self.batches.append(len(rows))
        return super().upsert_subscribers(
            rows, again_after_erasure=again_after_erasure, dry_run=dry_run
        )


def test_the_file_is_read_lazily_and_written_in_batches(pub: Publication) -> None:
    rows = 2500
    path = write(
        pub,
        "big.csv",
        "email,name\n"
        + "".join(f"r{i}@example.com,R {i}\n" for i in range(rows))
        + "r7@example.com,Again\n",
    )
    source = exports.ExportFile.open(path)
    assert source.rows == rows + 1
    assert inspect.isgenerator(source.records())
    store = CountingStore.open(pub.config().database_url)
    store.batches = []
    seen: list[tuple[int, int]] = []
    report = subscriber_ops.import_csv(store, path, progress=lambda d, t: seen.append((d, t)))
    store.close()
    assert store.batches == [1000, 1000, 500]  # the duplicate is not written
    assert seen == [(1000, 2501), (2000, 2501), (2501, 2501)]
    assert (report.added, report.duplicates.count) == (rows, 1)
    assert pub.store().count_subscribers() == rows


def test_the_progress_bar_shows_only_on_a_terminal(
    pub: Publication, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(pub, "list.csv", "email\nann@example.com\n")
    assert "importing" not in ok(pub, "subscribers", "import", path).stderr
    monkeypatch.setattr(audience_cli, "_stderr_is_terminal", lambda: True)
    shown = ok(pub, "subscribers", "import", path)
    assert "importing" in shown.stderr  # click writes the label alone off a real tty
    assert shown.stdout == "0 added, 1 updated, 0 rejected\n"


class FiguresStore(Store):
    refreshed: list[int]

    def refresh_planner_figures(self) -> None:
        self.refreshed.append(self.count_subscribers(status=None))
        super().refresh_planner_figures()


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_an_import_into_an_empty_postgresql_list_gives_the_planner_its_figures(
    pub: Publication,
) -> None:
    # Without them, psycopg's prepared lookup kept a plan made for an empty table and
    # scanned the whole list for each batch of 500 addresses (~330 rows/s at 60,000).
    path = write(pub, "big.csv", "email\n" + "".join(f"r{i}@example.com\n" for i in range(2500)))
    store = FiguresStore.open(pub.config().database_url)
    store.refreshed = []
    subscriber_ops.import_csv(store, path, dry_run=True)
    assert store.refreshed == []  # a dry run writes nothing, figures included
    subscriber_ops.import_csv(store, path)
    assert store.refreshed == [1000, 2000, 2500]  # doubling, then at the end
    small = write(pub, "small.csv", "email\nlate1@example.com\nlate2@example.com\n")
    subscriber_ops.import_csv(store, small)
    assert store.refreshed == [1000, 2000, 2500]  # two rows more: the figures stand
    with store.engine.connect() as conn:
        reltuples = conn.exec_driver_sql(
            "SELECT reltuples FROM pg_class WHERE relname = 'subscribers'"
        ).scalar_one()
    store.close()
    assert reltuples == 2500  # -1 (never analyzed) before


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_refreshing_the_planner_figures_on_sqlite_changes_nothing(pub: Publication) -> None:
    store = pub.store()
    store.refresh_planner_figures()
    with store.engine.connect() as conn:
        names = conn.exec_driver_sql("SELECT name FROM sqlite_master").scalars().all()
    assert "sqlite_stat1" not in names
