"""[database] mark_ahead = N: a sender marks up to N rows `sending` in one statement and
records their replies together. Real aiosmtpd, a real SQLite file and PostgreSQL."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from campaign_support import Publication, add_subscribers, check_counts, make_publication
from click.testing import CliRunner
from services import REDIS
from smtp_fixtures import SmtpServer

from newsletter.cli import cli
from newsletter.errors import ConfigError
from newsletter.issue import publish
from newsletter.ledger import campaign_status, lifecycle
from newsletter.ledger.delivery_rows import Ledger, counts
from newsletter.ledger.lifecycle import WORKERS
from newsletter.ledger.store import Store
from newsletter.ledger.tables import (
    DONE,
    INCOMPLETE,
    PENDING,
    READY,
    SENDING,
    SENT,
    deliveries,
)
from newsletter.send import campaign, workers


@pytest.fixture
def pub(tmp_path: Path, database_url: str, smtp_server: SmtpServer) -> Publication:
    return make_publication(tmp_path, database_url, smtp_server.port)


def start(pub: Publication, n: int) -> tuple[Store, int, list[str]]:
    store = pub.store()
    emails = add_subscribers(store, n)
    built = publish.build_issue(pub.config(), publish.load_issue(pub.issue))
    return store, lifecycle.create(store, built), emails


def ahead(n: int, **more: str) -> dict[str, str]:
    return {"NEWSLETTER_DATABASE_MARK_AHEAD": str(n), **more}


def statuses(store: Store, cid: int) -> dict[str, tuple[str, int]]:
    """Each row's status and attempts, by the subscriber's address."""
    from newsletter.ledger.tables import subscribers

    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(subscribers.c.email, deliveries.c.status, deliveries.c.attempts)
            .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
            .where(deliveries.c.campaign_id == cid)
        )
        return {r.email: (r.status, r.attempts) for r in rows}


@pytest.mark.parametrize("n", [4, 8])
def test_every_subscriber_gets_exactly_one_copy(
    pub: Publication, smtp_server: SmtpServer, n: int
) -> None:
    store, cid, emails = start(pub, 75)
    result = campaign.run(store, pub.config(**ahead(n, NEWSLETTER_SMTP_CONCURRENCY="3")), cid)
    assert result.ok and result.status == DONE and result.sent == 75
    assert smtp_server.handler.count_by_recipient() == {e: 1 for e in emails}
    assert counts(store, cid)[SENT] == 75
    assert smtp_server.handler.ehlos <= 3
    check_counts(store, cid)  # PostgreSQL's kept counts follow the group writes


def writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows each group write of the ledger marks (a spy: the writes still happen)."""
    from newsletter.ledger.marked_groups import GroupLedger

    marks: list[int] = []
    original = GroupLedger.commit_group

    def spy(self: GroupLedger, records, mark, mark_ids, give_back):  # type: ignore[no-untyped-def]
        marks.append(len(mark_ids))
        return original(self, records, mark, mark_ids, give_back)

    monkeypatch.setattr(GroupLedger, "commit_group", spy)
    return marks


def test_one_write_marks_a_group_and_records_the_last(
    pub: Publication, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    marks = writes(monkeypatch)
    store, cid, emails = start(pub, 40)
    result = campaign.run(store, pub.config(**ahead(8)), cid)
    assert result.ok and result.sent == 40
    # Five groups of eight, each marked in the write that records the group before it,
    # and the last group's replies recorded alone: six writes for forty messages.
    assert marks == [8, 8, 8, 8, 8, 0]
    assert smtp_server.handler.count_by_recipient() == {e: 1 for e in emails}


def test_the_default_marks_one_row_a_message_through_the_ledger_as_before(
    pub: Publication, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    marks = writes(monkeypatch)
    commits: list[bool] = []
    original = Ledger.commit

    def spy(self: Ledger, record, mark):  # type: ignore[no-untyped-def]
        commits.append(mark is not None)
        return original(self, record, mark)

    monkeypatch.setattr(Ledger, "commit", spy)
    store, cid, _ = start(pub, 10)
    assert pub.config().database.mark_ahead == 1
    assert campaign.run(store, pub.config(), cid).sent == 10
    assert marks == []  # no group write: one commit a message (Ledger.commit), as ever
    assert commits == [True] * 10 + [False]


def stop_at_message(smtp_server: SmtpServer, n: int, stop: threading.Event) -> None:
    """The server sets `stop` when it takes message n (before it answers): the sender
    stops in the middle of a group, the rows after n marked and not tried."""
    handler = smtp_server.handler
    original = handler.handle_DATA

    async def handle_data(server, session, envelope):  # type: ignore[no-untyped-def]
        reply = await original(server, session, envelope)
        if len(handler.received) == n:
            stop.set()
        return reply

    handler.handle_DATA = handle_data  # type: ignore[method-assign]


def test_a_stop_in_the_middle_of_a_group_gives_its_rows_back(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    store, cid, emails = start(pub, 30)
    stop = threading.Event()
    stop_at_message(smtp_server, 3, stop)
    result = campaign.run(store, pub.config(**ahead(8)), cid, stop=stop)
    assert result.status == INCOMPLETE and result.sent == 3 and result.in_doubt == 0
    rows = statuses(store, cid)
    assert [rows[e] for e in emails[:3]] == [(SENT, 1)] * 3
    # The five rows marked with them and never tried are pending again, untouched.
    assert [rows[e] for e in emails[3:]] == [(PENDING, 0)] * 27
    again = campaign.run(store, pub.config(**ahead(8)), cid)
    assert again.status == DONE and again.in_doubt_before == 0 and again.sent == 27
    assert smtp_server.handler.count_by_recipient() == {e: 1 for e in emails}


def test_a_deferral_and_a_failure_inside_a_group_are_recorded_as_ever(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    store, cid, emails = start(pub, 20)
    smtp_server.handler.rcpt_replies[emails[2]] = ["451 4.7.1 greylisted, try later"]
    smtp_server.handler.data_replies[emails[5]] = ["550 5.7.1 rejected"]
    result = campaign.run(store, pub.config(**ahead(8)), cid)
    assert result.status == DONE and result.sent == 19 and result.failed == 1
    assert result.in_doubt == 0
    rows = statuses(store, cid)
    assert rows[emails[2]] == (SENT, 2)  # deferred once, sent by the retry
    assert rows[emails[5]][0] == "failed"
    assert {e for e, (s, _) in rows.items() if s == SENDING} == set()
    counted = smtp_server.handler.count_by_recipient()
    assert counted == {e: 1 for e in emails if e != emails[5]}


def test_a_refused_session_in_the_middle_of_a_group_gives_back_each_status_it_had(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    store, cid, emails = start(pub, 12)
    # Before this run: one row deferred by an earlier one, one left in doubt by a crash.
    with store.begin() as conn:
        for email, status in ((emails[4], "deferred"), (emails[5], SENDING)):
            conn.execute(
                deliveries.update()
                .where(
                    deliveries.c.campaign_id == cid,
                    deliveries.c.subscriber_id
                    == sa.select(sa.text("id"))
                    .select_from(sa.text("subscribers"))
                    .where(sa.text("email = :e"))
                    .params(e=email)
                    .scalar_subquery(),
                )
                .values(status=status)
            )
    # A session code at RCPT (RFC 4954 section 6: 530) says the server refuses us.
    smtp_server.handler.rcpt_replies[emails[2]] = ["530 5.7.0 Authentication required"]
    result = campaign.run(store, pub.config(**ahead(8)), cid)
    assert result.status == INCOMPLETE and "refused the session" in result.error
    assert result.sent == 2
    rows = statuses(store, cid)
    assert [rows[e] for e in emails[:2]] == [(SENT, 1)] * 2
    # The refused row and the rows marked after it are back as they were, not in doubt.
    assert rows[emails[2]] == (PENDING, 0) and rows[emails[3]] == (PENDING, 0)
    assert rows[emails[4]] == ("deferred", 0) and rows[emails[5]] == (SENDING, 0)
    assert [rows[e] for e in emails[6:]] == [(PENDING, 0)] * 6
    again = campaign.run(store, pub.config(**ahead(8)), cid)
    assert again.status == DONE and again.in_doubt_before == 1 and again.sent == 10
    check_counts(store, cid)
    assert smtp_server.handler.count_by_recipient() == {e: 1 for e in emails}


def test_a_send_with_mark_ahead_prints_the_bound(
    pub: Publication, smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    store, cid, _ = start(pub, 3)
    with caplog.at_level(logging.WARNING, logger="newsletter.campaign"):
        campaign.run(store, pub.config(), cid)
    assert "mark_ahead" not in caplog.text
    store, cid2, _ = start(pub, 0)
    with caplog.at_level(logging.WARNING, logger="newsletter.campaign"):
        campaign.run(store, pub.config(**ahead(8)), cid2)
    assert (
        "[database] mark_ahead = 8: up to 8 messages per connection may be in doubt"
        " after a crash" in caplog.text
    )


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("0", "[database] mark_ahead: expected a number of rows from 1 to 1000, got 0"),
        ("1001", "[database] mark_ahead: expected a number of rows from 1 to 1000, got 1001"),
        ("eight", "mark_ahead"),
    ],
)
def test_a_bad_mark_ahead_is_a_one_line_error_naming_the_key(
    pub: Publication, value: str, error: str
) -> None:
    with pytest.raises(ConfigError, match=None) as raised:
        pub.config(NEWSLETTER_DATABASE_MARK_AHEAD=value)
    assert error in str(raised.value) and "\n" not in str(raised.value)


def test_a_bad_mark_ahead_in_the_file_stops_the_command_in_one_line(pub: Publication) -> None:
    text = pub.config_path.read_text()
    assert "\n[database]\n" in text
    pub.config_path.write_text(text.replace("\n[database]\n", "\n[database]\nmark_ahead = -2\n"))
    result = CliRunner().invoke(
        cli, ["--config", str(pub.config_path), "status"], env=pub.env, prog_name="newsletter"
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"Error: {pub.config_path}: [database] mark_ahead: expected a number of rows from"
        " 1 to 1000, got -2"
    ]


# --- a worker's batch (the task's function, in this process) ---------------------------


def hand_to_workers(store: Store, cid: int, status: str = READY) -> None:
    """What `send` does with [workers] broker, less the broker: the workers own it."""
    lifecycle.claim(store, cid, WORKERS, (status,))
    lifecycle.new_round(store, cid)


def test_a_workers_batches_mark_groups_and_send_each_once(
    pub: Publication, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    marks = writes(monkeypatch)
    store, cid, emails = start(pub, 50)
    hand_to_workers(store, cid, READY)
    config = pub.config(**ahead(4, NEWSLETTER_WORKERS_BATCH_SIZE="20"))
    queued: list[float] = []
    results = [workers.send_batch(store, config, cid, queued.append) for _ in range(3)]
    assert [r.sent for r in results] == [20, 20, 10]
    assert results[-1].status == DONE
    assert smtp_server.handler.count_by_recipient() == {e: 1 for e in emails}
    # Groups of four within each batch: five, five and three, each batch's last
    # replies recorded alone.
    assert marks == [4] * 5 + [0] + [4] * 5 + [0] + [4, 4, 2, 0]


def test_a_batch_refused_mid_group_gives_its_rows_back_and_a_resume_sends_them(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    store, cid, emails = start(pub, 30)
    hand_to_workers(store, cid, READY)
    config = pub.config(**ahead(8, NEWSLETTER_WORKERS_BATCH_SIZE="30"))
    smtp_server.handler.rcpt_replies[emails[5]] = ["530 5.7.0 Authentication required"]
    first = workers.send_batch(store, config, cid, [].append)
    assert first.sent == 5 and "refused the session" in first.error
    rows = statuses(store, cid)
    assert [rows[e] for e in emails[:5]] == [(SENT, 1)] * 5
    assert [rows[e] for e in emails[5:]] == [(PENDING, 0)] * 25  # none left in doubt
    with store.engine.connect() as conn:
        leased = conn.execute(
            sa.select(sa.func.count()).where(
                deliveries.c.status == PENDING, deliveries.c.lease_until.is_not(None)
            )
        ).scalar()
    assert leased == 0  # the batch let go of them
    hand_to_workers(store, cid, INCOMPLETE)  # resume
    second = workers.send_batch(store, config, cid, [].append)
    assert second.sent == 25 and second.status == DONE
    assert smtp_server.handler.count_by_recipient() == {e: 1 for e in emails}


# --- a real process, killed -------------------------------------------------------------


def newsletter_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "newsletter", *args]


def test_kill_9_mid_group_leaves_at_most_n_a_connection_in_doubt_and_resume_reports_them(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    store = pub.store()
    emails = add_subscribers(store, 200)
    smtp_server.handler.delay = 0.01  # each reply waits: the kill finds messages in flight
    env = {**pub.subprocess_env(), **ahead(8, NEWSLETTER_SMTP_CONCURRENCY="2")}
    proc = subprocess.Popen(
        newsletter_cmd("send", str(pub.issue), "--all", "--yes"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while len(smtp_server.received) < 45 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert b"[database] mark_ahead = 8: up to 8 messages per connection may be in doubt" in err
    assert 45 <= len(smtp_server.received) < 200
    left = counts(store, 1)[SENDING]
    assert left <= 2 * 8  # at most a group per connection
    smtp_server.handler.delay = 0
    resumed = subprocess.run(
        newsletter_cmd("resume", "1", "--json"), env=env, capture_output=True, timeout=60
    )
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["in_doubt_before"] == left  # every row left marked is reported
    got = smtp_server.handler.count_by_recipient()
    assert set(got) == set(emails)  # nobody lost
    duplicates = sum(n - 1 for n in got.values())
    assert duplicates <= left  # only rows reported in doubt went out twice


# --- a real worker process, killed ------------------------------------------------------

REDIS_DB = 11  # this file's Redis database; the test removes only its own queue's keys


def purge_queue(queue: str) -> None:
    """The queue and what kombu keeps for it (its unacknowledged messages)."""
    import redis

    client = redis.Redis(host=REDIS[0], port=REDIS[1], db=REDIS_DB)
    try:
        for tag, payload in client.hgetall("unacked").items():
            if json.loads(payload)[2] == queue:  # [message, exchange, routing key]
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        for key in client.scan_iter(match=f"{queue}\x06\x16*"):
            client.delete(key)
    finally:
        client.close()


@pytest.mark.celery
@pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_a_worker_killed_mid_group_leaves_at_most_n_in_doubt_and_nobody_is_lost(
    pub: Publication, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    queue = f"newsletter-test-{uuid.uuid4().hex[:10]}"
    pub.env.update(
        NEWSLETTER_WORKERS_BROKER=f"redis://{REDIS[0]}:{REDIS[1]}/{REDIS_DB}",
        NEWSLETTER_WORKERS_QUEUE=queue,
        NEWSLETTER_WORKERS_BATCH_SIZE="50",
        NEWSLETTER_WORKERS_LEASE="3",
        **ahead(8),
    )
    store, cid, emails = start(pub, 200)
    smtp_server.handler.delay = 0.01  # each reply waits: the kill finds messages in flight
    procs: list[subprocess.Popen[bytes]] = []

    def worker(n: int) -> Path:
        log = tmp_path / f"worker{n}.log"
        with log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    newsletter_cmd("workers", "start"),
                    env=pub.subprocess_env(),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + 60
        while b" ready." not in log.read_bytes():
            assert procs[-1].poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        return log

    try:
        first = worker(0)
        campaign.run(store, pub.config(), cid, wait=False)
        deadline = time.monotonic() + 60
        while len(smtp_server.received) < 30:
            assert time.monotonic() < deadline, first.read_text()
            time.sleep(0.01)
        os.killpg(procs[0].pid, signal.SIGKILL)  # mid-batch, mid-group
        # The worker states its own bound, as `send` does.
        assert b"mark_ahead = 8: up to 8 messages per connection may be in doubt" in (
            first.read_bytes()
        )
        procs[0].wait()
        left = counts(store, cid)[SENDING]
        assert left <= 8  # one connection: at most one group
        smtp_server.handler.delay = 0
        second = worker(1)
        deadline = time.monotonic() + 90
        while campaign_status.status(store, cid)[0].status != DONE:
            assert time.monotonic() < deadline, second.read_text()
            time.sleep(0.1)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        purge_queue(queue)
    got = smtp_server.handler.count_by_recipient()
    assert set(got) == set(emails)  # nobody lost
    assert sum(n - 1 for n in got.values()) <= left  # only the rows left marked went twice
    assert counts(store, cid)[SENT] == 200
