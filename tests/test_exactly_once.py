"""Exactly once at the edges, as a user meets them: the CLI against the real aiosmtpd
server and a real database (a SQLite file, and PostgreSQL in CI).

International addresses, a relay that answers after the final dot's timeout, one
recipient whose message cannot be made, an in-doubt row whose subscriber left,
closing a campaign, and run-due's retries of an incomplete one.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from campaign_support import Publication, make_publication
from click.testing import CliRunner, Result
from site_support import confirm_link, running
from smtp_fixtures import SmtpServer, running_smtp_server

from newsletter.cli import cli
from newsletter.ledger import delivery_rows, lifecycle
from newsletter.ledger.store import Store
from newsletter.ledger.tables import (
    DONE,
    GIVEN_UP,
    RUNNING,
    SENDING,
    SKIPPED,
    campaigns,
    deliveries,
    utcnow,
)
from newsletter.schedule.due import run_due

LIST = [
    "ann@example.com",
    "bob@example.com",
    "zoë@example.com",  # needs SMTPUTF8
    "user@bücher.example",  # an international domain: sent as its A-label
    "carol@example.com",
    "Dave.Lee@Example.com",  # the local part keeps its case
]


@pytest.fixture
def pub(tmp_path: Path, database_url: str, smtp_server: SmtpServer) -> Publication:
    return make_publication(tmp_path, database_url, smtp_server.port)


def invoke(pub: Publication, *args: str, **env: str) -> Result:
    return CliRunner().invoke(
        cli, ["--config", str(pub.config_path), *args], env={**pub.env, **env}
    )


def import_list(pub: Publication, emails: list[str]) -> None:
    path = pub.root / "list.csv"
    path.write_text("email\n" + "\n".join(emails) + "\n", encoding="utf-8")
    result = invoke(pub, "subscribers", "import", str(path))
    assert result.exit_code == 0, result.output


def send_all(pub: Publication, **env: str) -> Result:
    return invoke(pub, "send", str(pub.issue), "--all", "--yes", **env)


def stored(pub: Publication) -> list[str]:
    listed = invoke(pub, "subscribers", "list").stdout
    return [line.split("\t")[0] for line in listed.splitlines()]


# --- international addresses ------------------------------------------------------------


def test_addresses_keep_the_local_part_and_get_an_ascii_domain(pub: Publication) -> None:
    import_list(pub, LIST)
    import_list(pub, ["ANN@EXAMPLE.COM"])  # the same subscriber as ann@: updated, kept
    assert stored(pub) == [
        "ann@example.com",
        "bob@example.com",
        "zoë@example.com",
        "user@xn--bcher-kva.example",
        "carol@example.com",
        "Dave.Lee@example.com",
    ]
    # Found in any spelling, by the domain's Unicode form too.
    assert invoke(pub, "subscribers", "remove", "dave.lee@EXAMPLE.com").exit_code == 0
    assert invoke(pub, "subscribers", "remove", "USER@Bücher.example").exit_code == 0
    assert invoke(pub, "subscribers", "count").stdout.strip() == "4"


def test_an_address_that_needs_smtputf8_fails_alone_where_the_relay_lacks_it(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    import_list(pub, LIST)
    result = send_all(pub, NEWSLETTER_SMTP_CONCURRENCY="1")
    assert result.exit_code == 1, result.output  # one failed
    assert "5 sent, 0 deferred, 1 failed, 0 skipped, 0 pending, 0 in doubt [done]" in result.stdout
    assert "zoë@example.com: zoë@example.com: the address needs SMTPUTF8" in result.stderr
    # Everybody after that row got exactly one copy, each at the address as stored.
    assert smtp_server.handler.count_by_recipient() == {
        "ann@example.com": 1,
        "bob@example.com": 1,
        "user@xn--bcher-kva.example": 1,
        "carol@example.com": 1,
        "dave.lee@example.com": 1,
    }
    assert [r.rcpt_tos[0] for r in smtp_server.received][-1] == "Dave.Lee@example.com"
    assert "1 failed" in invoke(pub, "status").stdout


def test_an_address_that_needs_smtputf8_goes_out_where_the_relay_offers_it(
    tmp_path: Path, database_url: str, utf8_smtp_server: SmtpServer
) -> None:
    pub = make_publication(tmp_path, database_url, utf8_smtp_server.port)
    import_list(pub, LIST)
    result = send_all(pub)
    assert result.exit_code == 0, result.output
    received = {r.rcpt_tos[0]: r for r in utf8_smtp_server.received}
    assert set(received) == set(stored(pub))
    # Headers in UTF-8 (RFC 6532), which SMTPUTF8 allows.
    data = received["zoë@example.com"].data.decode("utf-8")
    message = email.message_from_string(data, policy=email.policy.default)
    assert message["To"].addresses[0].addr_spec == "zoë@example.com"
    # A test send to such an address works the same way.
    test = invoke(pub, "send", str(pub.issue), "--to", "zoë@bücher.example")
    assert test.exit_code == 0 and "sent" in test.stdout
    assert utf8_smtp_server.received[-1].rcpt_tos == ["zoë@xn--bcher-kva.example"]


def test_a_signup_confirmation_reaches_an_international_address(
    tmp_path: Path, database_url: str, utf8_smtp_server: SmtpServer
) -> None:
    pub = make_publication(tmp_path, database_url, utf8_smtp_server.port)
    with running(pub.config()) as site:
        site.post("/subscribe", data={"email": "Zoë@Bücher.example", "name": "Zoë"})
        site.wait_for_mail()
        [received] = utf8_smtp_server.received
        assert received.rcpt_tos == ["Zoë@xn--bcher-kva.example"]
        link = confirm_link(received.parse().get_body(("plain",)).get_content())
        assert site.post(link).status_code == 200
    assert pub.store().subscriber("zoë@bücher.example")["status"] == "active"


# --- one bad row does not stop the others -----------------------------------------------


def test_a_fault_in_the_middle_of_the_list_fails_that_row_alone(
    pub: Publication, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A recipient whose message raises while it is made (a bad slot value): today's
    # run marks that row failed with the reason and sends the rest, once each.
    emails = [f"reader{n}@example.com" for n in range(9)]
    import_list(pub, emails)
    from newsletter.issue import publish

    values = publish.Personalizer.values

    def exploding(
        self: publish.Personalizer, email: str, name: str, attributes: str = ""
    ) -> object:
        if email == "reader4@example.com":
            raise UnicodeEncodeError("ascii", "ø", 0, 1, "a slot that cannot be encoded")
        return values(self, email, name, attributes)

    monkeypatch.setattr(publish.Personalizer, "values", exploding)
    result = send_all(pub)
    assert result.exit_code == 1
    assert "8 sent, 0 deferred, 1 failed" in result.stdout
    assert "reader4@example.com: cannot make the message: UnicodeEncodeError" in result.stderr
    assert smtp_server.handler.count_by_recipient() == {e: 1 for e in emails if e != emails[4]}
    assert invoke(pub, "resume", "1").exit_code == 1  # failed is final: nothing resent
    assert len(smtp_server.received) == 8


# --- a relay that answers after the final dot's timeout ---------------------------------


def test_a_reply_after_the_dot_timeout_leaves_the_message_in_doubt_not_resent(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    emails = [f"reader{n}@example.com" for n in range(5)]
    import_list(pub, emails)
    smtp_server.handler.answer_late = {emails[2]: 1.0}  # stored at the dot, 250 after 1 s
    # Three retries allowed: before, a late relay got the message once per try (4 copies).
    result = send_all(pub, NEWSLETTER_SMTP_DOT_TIMEOUT="0.3", NEWSLETTER_SMTP_RETRIES="3")
    assert result.exit_code == 1
    assert "4 sent, 0 deferred, 0 failed, 0 skipped, 0 pending, 1 in doubt [incomplete]" in (
        result.stdout
    )
    assert "no reply to the final dot within 0.3 s" in result.stderr
    assert "1 message(s) in doubt" in result.stderr
    assert smtp_server.handler.count_by_recipient() == {e: 1 for e in emails}
    # `status` says the same as the summary line.
    status = invoke(pub, "status").stdout
    assert "4/5 sent, 0 deferred, 0 failed, 0 skipped, 0 pending, 1 in doubt" in status
    # A resume treats it as a crash's in-doubt row: sent again, said so.
    smtp_server.handler.answer_late = {}
    again = invoke(pub, "resume", "1")
    assert again.exit_code == 0, again.output
    assert "1 message(s) were in doubt from an interrupted run and went out again" in again.stderr
    assert smtp_server.handler.count_by_recipient()[emails[2]] == 2


def test_an_in_doubt_row_whose_subscriber_left_is_skipped_and_the_campaign_ends(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    # The stuck campaign: a row left in doubt, then its address removed. Every resume
    # and run-due stopped on "1 pending [incomplete]" for good.
    import_list(pub, ["ann@example.com", "bob@example.com"])
    smtp_server.handler.answer_late = {"bob@example.com": 1.0}
    assert send_all(pub, NEWSLETTER_SMTP_DOT_TIMEOUT="0.3").exit_code == 1
    assert invoke(pub, "subscribers", "remove", "bob@example.com").exit_code == 0
    result = invoke(pub, "resume", "1")
    assert result.exit_code == 0, result.output
    assert "0 sent, 0 deferred, 0 failed, 1 skipped, 0 pending, 0 in doubt [done]" in result.stdout
    assert delivery_rows.counts(pub.store(), 1)[SKIPPED] == 1
    report = run_due(pub.store(), pub.config())
    assert report.sent == [] and report.ok


# --- closing a campaign, and run-due's retries ------------------------------------------


def stuck(pub: Publication, smtp_server: SmtpServer) -> None:
    """Campaign 1, incomplete: one address deferred on every try, one left in doubt."""
    import_list(pub, ["ann@example.com", "bob@example.com", "carol@example.com"])
    smtp_server.handler.rcpt_replies = {"bob@example.com": ["451 4.3.0 try later"] * 100}
    smtp_server.handler.answer_late = {"carol@example.com": 1.0}
    result = send_all(pub, NEWSLETTER_SMTP_DOT_TIMEOUT="0.3", NEWSLETTER_SMTP_RETRIES="0")
    assert "1 sent, 1 deferred, 0 failed, 0 skipped, 0 pending, 1 in doubt" in result.stdout


def test_close_gives_up_what_is_left_and_nothing_resends_it(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    stuck(pub, smtp_server)
    closed = invoke(pub, "close", "1")
    assert closed.exit_code == 0, closed.output
    assert closed.stdout == (
        "campaign 1 closed: 2 given up (1 deferred, 1 in doubt, 0 never tried)\n"
    )
    assert delivery_rows.counts(pub.store(), 1)[GIVEN_UP] == 2
    status = invoke(pub, "status", "1").stdout
    assert "[closed]" in status and "2 given up" in status
    resumed = invoke(pub, "resume", "1")
    assert resumed.exit_code == 1 and resumed.stderr == (
        "Error: campaign 1 is closed; nothing to send\n"
    )
    later = utcnow() + dt.timedelta(days=2)
    assert run_due(pub.store(), pub.config(), now=later).sent == []
    assert smtp_server.handler.count_by_recipient() == {
        "ann@example.com": 1,
        "carol@example.com": 1,
    }
    again = invoke(pub, "close", "1")
    assert again.exit_code == 1 and "campaign 1 is closed; nothing to close" in again.stderr


def test_close_refuses_a_campaign_that_is_sending_or_scheduled(pub: Publication) -> None:
    import_list(pub, ["ann@example.com"])
    store = pub.store()
    scheduled = invoke(pub, "schedule", str(pub.issue), "--at", "2999-01-01 09:00")
    assert scheduled.exit_code == 0, scheduled.output
    refused = invoke(pub, "close", "1")
    assert refused.exit_code == 1 and "schedule cancel 1" in refused.stderr
    with store.begin() as conn:  # a live process holds it
        conn.execute(
            campaigns.update().values(
                status=RUNNING, owner=lifecycle.owner_id(), heartbeat_at=utcnow()
            )
        )
    busy = invoke(pub, "close", "1")
    assert busy.exit_code == 1 and "is sending now" in busy.stderr


def incomplete_since(pub: Publication, ago: dt.timedelta) -> None:
    """Campaign 1 first stopped `ago`, and its next automatic retry is due now."""
    now = utcnow()
    with pub.store().begin() as conn:
        conn.execute(campaigns.update().values(incomplete_since=now - ago, resume_after=now))


def retry_in(pub: Publication) -> dt.timedelta:
    with pub.store().engine.connect() as conn:
        row = conn.execute(sa.select(campaigns.c.resume_after)).one()
    return row.resume_after - utcnow()


def test_run_due_retries_an_incomplete_campaign_less_and_less_often(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    stuck(pub, smtp_server)
    assert dt.timedelta(seconds=55) < retry_in(pub) <= dt.timedelta(minutes=1)  # the first
    for ago, wait in ((dt.timedelta(minutes=10), 5), (dt.timedelta(hours=5), 60)):
        incomplete_since(pub, ago)
        report = run_due(pub.store(), pub.config())
        assert [r["campaign_id"] for r in report.sent] == [1]  # tried again: bob is still deferred
        # Half the time since it first stopped (a little more: the run itself took time).
        assert dt.timedelta(minutes=wait - 0.5) < retry_in(pub) < dt.timedelta(minutes=wait + 0.5)


def test_run_due_gives_up_after_give_up_after_and_says_so_once(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    stuck(pub, smtp_server)
    incomplete_since(pub, dt.timedelta(hours=25))  # over the default 24 h
    report = run_due(pub.store(), pub.config())
    assert report.sent == [] and not report.ok
    [error] = report.errors
    assert "campaign 1: still incomplete 25.0 h after it first stopped" in error
    assert "`newsletter resume 1` tries again, `newsletter close 1` ends it" in error
    later = utcnow() + dt.timedelta(hours=3)
    quiet = run_due(pub.store(), pub.config(), now=later)
    assert quiet.errors == [] and quiet.sent == [] and quiet.ok  # not every minute
    assert "no more automatic retries" in invoke(pub, "status", "1").stdout
    # A person's resume tries again, and starts the clock afresh.
    smtp_server.handler.rcpt_replies = {}
    assert invoke(pub, "resume", "1").exit_code == 0
    with pub.store().engine.connect() as conn:
        row = conn.execute(sa.select(campaigns.c.status, campaigns.c.incomplete_since)).one()
    assert (row.status, row.incomplete_since) == (DONE, None)


def test_the_retry_interval_grows_from_a_minute_to_an_hour() -> None:
    start = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    now, waits = start, []
    while now - start < dt.timedelta(hours=24):
        after = lifecycle.stopped_incomplete(start, now)["resume_after"]
        waits.append(after - now)
        now = after
    assert waits[0] == waits[1] == dt.timedelta(minutes=1)
    assert waits == sorted(waits) and waits[-1] == dt.timedelta(hours=1)
    assert len(waits) < 40  # a relay down for a day costs tens of tries, not 1,440


# --- the stuck row no longer stalls the list --------------------------------------------


@pytest.fixture
def two_servers() -> Iterator[tuple[SmtpServer, SmtpServer]]:
    with running_smtp_server() as plain, running_smtp_server(smtputf8=True) as utf8:
        yield plain, utf8


def test_resume_after_a_relay_change_sends_only_what_failed_before(
    tmp_path: Path, database_url: str, two_servers: tuple[SmtpServer, SmtpServer]
) -> None:
    # The international address failed on a relay without SMTPUTF8; the rest went out.
    # Nothing is stuck in doubt or pending: the campaign is done, and the row says why.
    plain, _ = two_servers
    pub = make_publication(tmp_path, database_url, plain.port)
    import_list(pub, LIST)
    assert send_all(pub).exit_code == 1
    counts = delivery_rows.counts(pub.store(), 1)
    assert counts[SENDING] == 0 and counts["pending"] == 0 and counts["failed"] == 1
    with pub.store().engine.connect() as conn:
        error = conn.execute(
            sa.select(deliveries.c.last_error).where(deliveries.c.status == "failed")
        ).scalar_one()
    assert "needs SMTPUTF8 (RFC 6531)" in error


# --- the database locked by another process during a campaign ---------------------------


def test_a_database_locked_during_a_campaign_stops_it_in_one_line(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    db = tmp_path / "list.db"
    # The busy timeout from the URL, so that the test waits a third of a second, not 30.
    pub = make_publication(tmp_path, f"sqlite:///{db}?timeout=0.3", smtp_server.port)
    emails = [f"reader{n:02d}@example.com" for n in range(30)]
    import_list(pub, emails)
    smtp_server.handler.delay = 0.05
    proc = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "send", str(pub.issue), "--all", "--yes"],
        env=pub.subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while len(smtp_server.received) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    holder = sqlite3.connect(db, isolation_level=None, timeout=10)
    holder.execute("BEGIN EXCLUSIVE")  # another process (a backup, a second tool) holds it
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert proc.returncode == 1, (out, err)
    assert "Traceback" not in err, err
    assert "another process held it locked for over 0.3 s" in err
    assert err.strip().splitlines()[-1].startswith("Error: campaign 1 stopped")
    # Once it is free, resume sends the rest; only the one in doubt may come twice.
    again = invoke(pub, "resume", "1")
    assert again.exit_code == 0, again.output
    copies = smtp_server.handler.count_by_recipient()
    assert set(copies) == set(emails) and sum(copies.values()) - len(emails) <= 1


def test_a_heartbeat_that_cannot_be_recorded_is_a_warning_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "beat.db"
    store = Store.open(f"sqlite:///{db}?timeout=0.1")
    monkeypatch.setattr(lifecycle, "HEARTBEAT_EVERY", 0.05)
    crashed: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashed.append(args.exc_value))
    holder = sqlite3.connect(db, isolation_level=None, timeout=10)
    holder.execute("BEGIN EXCLUSIVE")
    done = threading.Event()
    beat = threading.Thread(target=lifecycle.heartbeat, args=(store, 1, "me", done))
    beat.start()
    time.sleep(0.5)
    done.set()
    beat.join()
    holder.execute("ROLLBACK")
    holder.close()
    assert crashed == []
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings and "heartbeat not recorded: database" in warnings[0]
    assert "another process held it locked" in warnings[0]


# --- one-line errors, and no secret in them ---------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://news:s3cret-pw@127.0.0.1:9/letters",  # nothing listens there
        "postgresql+nodriver://news:s3cret-pw@127.0.0.1/letters",  # no such driver
        "mysql+nodb://news:s3cret-pw@db.example/letters",
    ],
)
@pytest.mark.parametrize("command", [["subscribers", "count"], ["status"], ["doctor"]])
def test_the_database_password_is_never_printed(
    publication: Path, url: str, command: list[str]
) -> None:
    result = CliRunner().invoke(
        cli, ["--config", str(publication), *command], env={"NEWSLETTER_DATABASE_URL": url}
    )
    assert result.exit_code != 0
    assert "s3cret-pw" not in result.output
    assert "news:***@" in result.output
    assert "Traceback" not in result.output


def test_a_csv_field_over_the_csv_limit_is_a_one_line_error(
    pub: Publication, assert_user_error: object
) -> None:
    path = pub.root / "list.csv"
    path.write_text(
        "email,name\nann@example.com,Ann\nbob@example.com," + "x" * 200_000 + "\n",
        encoding="utf-8",
    )
    result = invoke(pub, "subscribers", "import", str(path))
    line = assert_user_error(result, f"{path}:3: a field is longer than 131,072 characters")
    assert line.startswith("Error: ")
    assert invoke(pub, "subscribers", "count").stdout.strip() == "0"  # nothing imported
