"""Campaigns against a real SMTP server (aiosmtpd) and a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from campaign_support import Publication, add_subscribers, make_publication
from smtp_fixtures import SmtpServer

from newsletter.errors import NewsletterError
from newsletter.issue import publish
from newsletter.ledger import campaign_status, delivery_rows, lifecycle
from newsletter.ledger.store import Store
from newsletter.ledger.tables import DONE, FAILED, INCOMPLETE, READY, SENDING, SENT, SKIPPED
from newsletter.mail.message import MessageTemplate
from newsletter.mail.transport import SmtpError
from newsletter.send import campaign, runner


@pytest.fixture
def pub(tmp_path: Path, database_url: str, smtp_server: SmtpServer) -> Publication:
    return make_publication(tmp_path, database_url, smtp_server.port)


def start_campaign(pub: Publication, n: int, **config_env: str) -> tuple[Store, int, list[str]]:
    config = pub.config(**config_env)
    store = Store.open(config.database_url)
    emails = add_subscribers(store, n)
    built = publish.build_issue(config, publish.load_issue(pub.issue))
    return store, lifecycle.create(store, built), emails


def run(pub: Publication, store: Store, campaign_id: int, **config_env: str) -> runner.RunResult:
    return campaign.run(store, pub.config(**config_env), campaign_id)


def test_every_subscriber_gets_exactly_one_copy(pub: Publication, smtp_server: SmtpServer) -> None:
    store, cid, emails = start_campaign(pub, 40)
    result = run(pub, store, cid, NEWSLETTER_SMTP_CONCURRENCY="3")
    assert result.ok and result.status == DONE
    assert result.sent == 40
    assert smtp_server.handler.count_by_recipient() == {e: 1 for e in emails}
    # Connections are reused: one per worker, not one per message.
    assert smtp_server.handler.ehlos <= 3


def test_messages_carry_the_required_headers(pub: Publication, smtp_server: SmtpServer) -> None:
    store, cid, emails = start_campaign(pub, 3)
    run(pub, store, cid)
    ids = set()
    for received in smtp_server.received:
        msg = received.parse()
        assert not msg.defects
        for header in ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "List-Id"):
            assert msg[header], header
        assert msg["To"].addresses[0].addr_spec == received.rcpt_tos[0]
        unsubscribe = str(msg["List-Unsubscribe"])
        assert "<https://news.helloshuttle.com/unsubscribe/" in unsubscribe
        assert "<mailto:" in unsubscribe
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert msg.get_content_type() == "multipart/alternative"
        text = msg.get_body(("plain",)).get_content()
        html = msg.get_body(("html",)).get_content()
        assert received.rcpt_tos[0] in text and received.rcpt_tos[0] in html
        assert "Hello Shuttle" in text and "Hello Shuttle" in html
        ids.add(msg["Message-ID"])
    assert len(ids) == 3


def test_temporary_rcpt_failure_is_retried_to_one_copy(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    store, cid, emails = start_campaign(pub, 10)
    for address in emails[:3]:
        smtp_server.handler.rcpt_replies[address] = ["451 4.7.1 greylisted", "452 4.2.2 full"]
    result = run(pub, store, cid)
    assert result.ok, result
    assert smtp_server.handler.count_by_recipient() == {e: 1 for e in emails}


def test_permanent_failure_is_recorded_not_retried(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    store, cid, emails = start_campaign(pub, 6)
    bad = emails[2]
    smtp_server.handler.rcpt_replies[bad] = ["550 5.1.1 no such user", "550 5.1.1 no such user"]
    result = run(pub, store, cid)
    assert result.failed == 1 and result.sent == 5 and not result.ok
    assert result.status == DONE  # nothing left to send: the failure is permanent
    assert bad not in smtp_server.handler.count_by_recipient()
    assert len(smtp_server.handler.rcpt_replies[bad]) == 1  # asked once, not retried
    row = campaign_status.status(store, cid)[0]
    assert row.failed == 1
    assert "550" in row.recent_errors[0].error
    # A resume does not retry a permanent failure either.
    again = run(pub, store, cid)
    assert again.sent == 0 and len(smtp_server.handler.rcpt_replies[bad]) == 1


def test_temporary_failure_beyond_retries_is_left_deferred_for_resume(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    store, cid, emails = start_campaign(pub, 4)
    smtp_server.handler.data_replies[emails[0]] = ["451 4.3.0 try later"] * 3
    result = run(pub, store, cid, NEWSLETTER_SMTP_RETRIES="1")
    assert result.deferred == 1 and result.status == INCOMPLETE and not result.ok
    again = run(pub, store, cid, NEWSLETTER_SMTP_RETRIES="1")
    assert again.ok
    assert smtp_server.handler.count_by_recipient() == {e: 1 for e in emails}


def test_dropped_connection_reconnects_without_duplicates(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    store, cid, emails = start_campaign(pub, 12)
    smtp_server.handler.drop_at_rcpt = {4, 9}
    result = run(pub, store, cid)
    assert result.ok, result
    assert smtp_server.handler.count_by_recipient() == {e: 1 for e in emails}
    assert smtp_server.handler.ehlos == 3


def test_server_that_never_greets_times_out(
    tmp_path: Path,
    database_url: str,
    silent_server: tuple[str, int],
) -> None:
    pub = make_publication(tmp_path, database_url, silent_server[1])
    store, cid, _ = start_campaign(pub, 3)
    started = time.monotonic()
    result = run(pub, store, cid, NEWSLETTER_SMTP_GREETING_TIMEOUT="0.5")
    assert time.monotonic() - started < 10
    assert "no greeting within 0.5 s" in result.error
    assert result.status == INCOMPLETE and result.pending == 3
    assert delivery_rows.counts(store, cid)[FAILED] == 0


def test_unsubscribe_during_campaign_stops_later_messages(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    config = pub.config()
    store, cid, emails = start_campaign(pub, 1200)
    leaving = emails[-1]

    def progress(result: runner.RunResult) -> None:
        if result.sent == 1:
            store.set_subscriber_status(leaving, "unsubscribed")

    result = campaign.run(store, config, cid, progress=progress)
    assert result.ok and result.skipped == 1
    assert leaving not in smtp_server.handler.count_by_recipient()
    assert delivery_rows.counts(store, cid)[SKIPPED] == 1


def test_unsubscribe_before_a_retry_skips_the_deferred_message(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    config = pub.config()
    store, cid, emails = start_campaign(pub, 5)
    leaving = emails[1]
    smtp_server.handler.rcpt_replies[leaving] = ["451 4.7.1 greylisted"]

    def progress(result: runner.RunResult) -> None:
        if result.errors and leaving in result.errors[-1]:  # just deferred
            store.set_subscriber_status(leaving, "unsubscribed")

    result = campaign.run(store, config, cid, progress=progress)
    assert result.ok and result.skipped == 1, result
    assert smtp_server.handler.count_by_recipient() == {e: 1 for e in emails if e != leaving}
    assert smtp_server.handler.rcpt_replies[leaving] == []  # asked once, never again
    assert delivery_rows.counts(store, cid)[SKIPPED] == 1


def test_a_row_skipped_after_its_envelope_went_ahead_gets_no_message(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    # The next row's MAIL/RCPT/DATA follow each message in the same write; its content
    # only after it is marked `sending`. Here that mark fails (the row was skipped in
    # between): the transaction the server opened ends without a message.
    config = pub.config(NEWSLETTER_SMTP_RETRY_DELAY="0")  # both retries due at once
    store, cid, emails = start_campaign(pub, 4)
    for address in emails[:3]:  # deferred in this order, then retried together
        smtp_server.handler.rcpt_replies[address] = ["451 4.7.1 greylisted"]

    leaving = emails[1]

    def progress(result: runner.RunResult) -> None:
        if result.errors and leaving in result.errors[-1]:  # just deferred
            store.set_subscriber_status(leaving, "unsubscribed")

    result = campaign.run(store, config, cid, progress=progress)
    assert result.ok and result.skipped == 1, result
    received = smtp_server.handler.count_by_recipient()
    assert received == {e: 1 for e in emails if e != leaving}  # no empty message either
    # It hung up in the DATA opened for the leaver, and sent the third on a new connection.
    assert smtp_server.handler.ehlos == 2


def test_a_stop_during_the_wait_for_a_retry_ends_the_run_soon(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    # Ctrl-C (or a worker shutting down) sets `stop`; a sender napping until a retry
    # is due notices it within a fraction of a second, not after the retry delay.
    store, cid, emails = start_campaign(pub, 4)
    smtp_server.handler.rcpt_replies[emails[0]] = ["451 4.7.1 greylisted"]
    stop = threading.Event()

    def progress(result: runner.RunResult) -> None:
        if result.sent == 3:  # only the 30 s retry is left: stop while waiting for it
            threading.Timer(0.3, stop.set).start()

    started = time.monotonic()
    config = pub.config(NEWSLETTER_SMTP_RETRY_DELAY="30")
    result = campaign.run(store, config, cid, progress=progress, stop=stop)
    assert time.monotonic() - started < 10
    assert result.status == INCOMPLETE and result.deferred == 1 and result.sent == 3
    assert delivery_rows.counts(store, cid)[SENDING] == 0
    again = run(pub, store, cid)
    assert again.ok and again.sent == 1
    assert smtp_server.handler.count_by_recipient() == {e: 1 for e in emails}


def test_resume_sends_only_what_is_not_sent(pub: Publication, smtp_server: SmtpServer) -> None:
    store, cid, emails = start_campaign(pub, 8)
    # Simulate a crash: half recorded sent, one in doubt, the rest pending.
    from newsletter.ledger.tables import deliveries

    with store.begin() as conn:
        conn.execute(
            deliveries.update().where(deliveries.c.id <= 4).values(status=SENT, attempts=1)
        )
        conn.execute(deliveries.update().where(deliveries.c.id == 5).values(status=SENDING))
    result = run(pub, store, cid)
    assert result.in_doubt_before == 1 and result.sent == 4 and result.ok
    assert sorted(smtp_server.handler.count_by_recipient()) == emails[4:]


def test_rows_are_fetched_in_windows_across_gaps_each_once(
    pub: Publication, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each fetch looks at a bounded span of ids (so a long list costs no more per row);
    # small windows and batches here, a resumed campaign with a long run already sent.
    from newsletter.ledger.tables import deliveries

    monkeypatch.setattr(delivery_rows.Rows, "BATCH", 4)
    monkeypatch.setattr(delivery_rows.Rows, "WINDOW", 3)
    store, cid, emails = start_campaign(pub, 30)
    with store.begin() as conn:
        first = conn.execute(sa.select(sa.func.min(deliveries.c.id))).scalar_one()
        conn.execute(
            deliveries.update()
            .where(deliveries.c.id.between(first + 5, first + 20))
            .values(status=SENT, attempts=1)
        )
    store.set_subscriber_status(emails[25], "unsubscribed")
    result = run(pub, store, cid)
    assert result.ok and result.sent == 13 and result.skipped == 1, result
    expected = {e: 1 for e in emails[:5] + emails[21:] if e != emails[25]}
    assert smtp_server.handler.count_by_recipient() == expected


def test_login_failure_stops_the_campaign_and_marks_nobody_failed(
    tmp_path: Path,
    database_url: str,
) -> None:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult
    from smtp_fixtures import FaultyHandler, free_port

    handler = FaultyHandler()
    port = free_port()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        auth_require_tls=False,
        authenticator=lambda *a: AuthResult(success=False, handled=False),
    )
    controller.start()
    try:
        pub = make_publication(tmp_path, database_url, port)
        env = {"NEWSLETTER_SMTP_USERNAME": "news", "NEWSLETTER_SMTP_PASSWORD_ENV": "SMTP_PW"}
        os.environ["SMTP_PW"] = "wrong"
        try:
            store, cid, _ = start_campaign(pub, 5, **env)
            result = run(pub, store, cid, **env)
        finally:
            del os.environ["SMTP_PW"]
    finally:
        controller.stop()
    assert "login as 'news' refused" in result.error and "535" in result.error
    assert "wrong" not in result.error  # the password is never shown
    c = delivery_rows.counts(store, cid)
    assert c[FAILED] == 0 and c["pending"] == 5 and c[SENDING] == 0
    assert not handler.received


def test_starttls_required_but_not_offered_is_an_error(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    store, cid, _ = start_campaign(pub, 2)
    result = run(pub, store, cid, NEWSLETTER_SMTP_SECURITY="starttls")
    assert "does not offer STARTTLS" in result.error
    assert not smtp_server.received  # never fell back to plain text


def test_crlf_in_subscriber_name_adds_no_header(pub: Publication, smtp_server: SmtpServer) -> None:
    config = pub.config()
    store = Store.open(config.database_url)
    from newsletter.ledger.store import SubscriberRow

    store.upsert_subscribers(
        [SubscriberRow("evil@example.com", "Eve\r\nBcc: victim@example.com\r\nX-Injected: 1")]
    )
    built = publish.build_issue(config, publish.load_issue(pub.issue))
    campaign.run(store, config, lifecycle.create(store, built))
    msg = smtp_server.received[0].parse()
    assert msg["Bcc"] is None and msg["X-Injected"] is None
    assert [r.rcpt_tos for r in smtp_server.received] == [["evil@example.com"]]


def test_second_runner_on_a_live_campaign_is_refused(pub: Publication) -> None:
    store, cid, _ = start_campaign(pub, 2)
    # Claimed by this (live) process.
    lifecycle.claim(store, cid, lifecycle.owner_id(), (READY,))
    with pytest.raises(lifecycle.CampaignBusy, match="not sending it twice"):
        run(pub, store, cid)


def test_status_json_has_integer_counts(pub: Publication, smtp_server: SmtpServer) -> None:
    store, cid, _ = start_campaign(pub, 3)
    run(pub, store, cid)
    from click.testing import CliRunner

    from newsletter.cli import cli

    out = CliRunner().invoke(
        cli, ["--config", str(pub.config_path), "status", "--json"], env=pub.env
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    row = data["campaigns"][0]
    assert row["id"] == cid and row["issue"] == publish.load_issue(pub.issue).slug
    assert row["status"] == "done"
    for key in ("sent", "failed", "deferred", "pending", "in_doubt", "given_up"):
        assert type(row[key]) is int
    assert row["sent"] == 3
    assert row["recent_errors"] == [] and row["retry_at"] is None


# --- real processes ---------------------------------------------------------------------


def newsletter_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "newsletter", *args]


def test_kill_9_mid_campaign_then_resume_loses_nobody(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    store = pub.store()
    emails = add_subscribers(store, 150)
    smtp_server.handler.delay = 0.01
    env = {**pub.subprocess_env(), "NEWSLETTER_SMTP_CONCURRENCY": "2"}
    proc = subprocess.Popen(
        newsletter_cmd("send", str(pub.issue), "--all", "--yes"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while len(smtp_server.received) < 40 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert 40 <= len(smtp_server.received) < 150
    smtp_server.handler.delay = 0
    resumed = subprocess.run(
        newsletter_cmd("resume", "1", "--json"), env=env, capture_output=True, timeout=60
    )
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    counts = smtp_server.handler.count_by_recipient()
    assert set(counts) == set(emails)  # nobody lost
    duplicates = sum(n - 1 for n in counts.values())
    assert duplicates <= 2  # at most the messages in flight (concurrency)
    assert duplicates <= result["in_doubt_before"] <= 2


def test_two_processes_never_both_send(pub: Publication, smtp_server: SmtpServer) -> None:
    config = pub.config()
    store = pub.store()
    emails = add_subscribers(store, 60)
    built = publish.build_issue(config, publish.load_issue(pub.issue))
    cid = lifecycle.create(store, built)
    smtp_server.handler.delay = 0.005
    env = pub.subprocess_env()
    procs = [
        subprocess.Popen(
            newsletter_cmd("resume", str(cid)),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outcomes = [(p.wait(timeout=60), p.communicate()[1].decode()) for p in procs]
    # The second either found it busy (exit 1, a clear message) or, if it came
    # late, found nothing left to send (exit 0). Never both sending.
    assert 0 in [code for code, _ in outcomes], outcomes
    for code, err in outcomes:
        assert "Traceback" not in err
        if code != 0:
            assert code == 1 and "not sending it twice" in err, err
    assert smtp_server.handler.count_by_recipient() == {e: 1 for e in emails}


def test_claim_of_unknown_campaign_is_an_error(pub: Publication) -> None:
    with pytest.raises(NewsletterError, match="no such campaign"):
        campaign.run(pub.store(), pub.config(), 999)


def test_smtp_error_type_is_a_newsletter_error() -> None:
    assert issubclass(SmtpError, NewsletterError)


def test_high_concurrency_does_not_exhaust_the_connection_pool(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    store, cid, emails = start_campaign(pub, 60)
    result = run(pub, store, cid, NEWSLETTER_SMTP_CONCURRENCY="20")
    assert result.ok and result.sent == 60
    assert smtp_server.handler.count_by_recipient() == {e: 1 for e in emails}


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_message_that_cannot_be_made_fails_its_row_alone(
    pub: Publication, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch, pipelining: bool
) -> None:
    # The message of the third row is made while the server answers the second (its
    # envelope already went ahead with PIPELINING): that row fails with the reason, no
    # empty message goes out, and everybody else gets exactly one copy.
    smtp_server.handler.pipelining = pipelining
    store, cid, emails = start_campaign(pub, 6)
    render = MessageTemplate.render

    def failing(self: MessageTemplate, to_email: str, *args: Any, **kwargs: Any) -> bytes:
        if to_email == emails[2]:
            raise RuntimeError("template exploded")
        return render(self, to_email, *args, **kwargs)

    monkeypatch.setattr(MessageTemplate, "render", failing)
    result = run(pub, store, cid)
    assert result.status == DONE and result.failed == 1 and result.sent == 5
    assert result.error == "" and not result.ok
    assert smtp_server.handler.count_by_recipient() == {e: 1 for e in emails if e != emails[2]}
    with store.engine.connect() as conn:
        failed = conn.execute(
            sa.text("SELECT last_error FROM deliveries WHERE status = 'failed'")
        ).scalar_one()
    assert failed == "cannot make the message: RuntimeError: template exploded"


def test_many_faults_in_a_row_stop_the_run_and_leave_the_rows_pending(
    pub: Publication, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A broken template fails every message: that is not the addresses' fault, so the
    # run stops after FAULTS_IN_A_ROW and nobody is marked failed for good.
    store, cid, emails = start_campaign(pub, runner.FAULTS_IN_A_ROW + 5)

    def broken(self: MessageTemplate, *args: Any, **kwargs: Any) -> bytes:
        raise KeyError("a slot the template does not have")

    monkeypatch.setattr(MessageTemplate, "render", broken)
    result = run(pub, store, cid)
    assert result.status == INCOMPLETE and not result.ok
    assert f"{runner.FAULTS_IN_A_ROW} messages in a row could not be made" in result.error
    counts = delivery_rows.counts(store, cid)
    assert counts[FAILED] == 0 and counts[SENT] == 0
    assert counts["pending"] == len(emails)
    assert smtp_server.received == []
