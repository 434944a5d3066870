"""Bounces on the sending side, and the suppression rules: VERP envelope senders, a 5xx
at RCPT suppressing the address, Feedback-ID, and what the ledger does with each
report. The real aiosmtpd server and a real database (SQLite, and PostgreSQL in CI)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from campaign_support import Publication, make_publication
from click.testing import CliRunner, Result
from site_support import running
from smtp_fixtures import SmtpServer

from newsletter import tokens
from newsletter.cli import cli
from newsletter.ledger import bounces
from newsletter.ledger.store import Store
from newsletter.ledger.tables import ACTIVE, BOUNCED, COMPLAINED

SECRET = b"test-secret-not-for-production-0123456789"
BOUNCES = "bounces@news.example.org"


@pytest.fixture
def pub(tmp_path: Path, database_url: str, smtp_server: SmtpServer) -> Publication:
    pub = make_publication(tmp_path, database_url, smtp_server.port)
    pub.env["NEWSLETTER_BOUNCES_ADDRESS"] = BOUNCES
    return pub


def invoke(pub: Publication, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(pub.config_path), *args], env=pub.env)


def import_list(pub: Publication, emails: list[str]) -> None:
    path = pub.root / "list.csv"
    path.write_text("email\n" + "\n".join(emails) + "\n", encoding="utf-8")
    assert invoke(pub, "subscribers", "import", str(path)).exit_code == 0


def status_of(store: Store, email: str) -> str:
    row = store.subscriber(email)
    assert row is not None
    return str(row["status"])


# --- the envelope sender ----------------------------------------------------------------


def test_each_campaign_message_goes_out_from_its_own_verp_address(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    import_list(pub, ["ann@example.com", "bob@example.com"])
    assert invoke(pub, "send", str(pub.issue), "--all", "--yes").exit_code == 0
    store = pub.store()
    for received in smtp_server.received:
        cid, sid = tokens.read_verp(received.mail_from, SECRET) or (0, 0)
        assert received.mail_from.startswith("bounces+c1-s") and cid == 1
        row = store.subscriber(received.rcpt_tos[0])
        assert row is not None and row["id"] == sid
        message = received.parse()
        assert message["Feedback-ID"] == "1:motivated-biden-authorize-ukraines-use-atacms" + (
            f":newsletter:{pub.config().publication.list_id}"
        )
        assert message["From"].addresses[0].addr_spec != received.mail_from  # From unchanged


def test_without_a_bounce_address_the_from_address_is_the_envelope_sender(
    tmp_path: Path, database_url: str, smtp_server: SmtpServer
) -> None:
    pub = make_publication(tmp_path, database_url, smtp_server.port)
    import_list(pub, ["ann@example.com"])
    assert invoke(pub, "send", str(pub.issue), "--all", "--yes").exit_code == 0
    from_address = pub.config().publication.from_addr.rpartition("<")[2].rstrip(">")
    assert [r.mail_from for r in smtp_server.received] == [from_address]


def test_test_sends_and_confirmations_use_the_bounce_address(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    assert invoke(pub, "send", str(pub.issue), "--to", "me@example.com").exit_code == 0
    with running(pub.config()) as site:
        site.post("/subscribe", data={"email": "new@example.com"})
        site.wait_for_mail()
    assert [r.mail_from for r in smtp_server.received] == [BOUNCES, BOUNCES]


# --- a 5xx at RCPT ----------------------------------------------------------------------


def test_a_5xx_at_rcpt_suppresses_the_address_and_the_next_campaign_skips_it(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    import_list(pub, ["ann@example.com", "gone@example.com", "late@example.com"])
    smtp_server.handler.rcpt_replies = {
        "gone@example.com": ["550 5.1.1 <gone@example.com>: no such user"],
        "late@example.com": ["452 4.2.2 mailbox full"],  # temporary: not a bounce
    }
    first = invoke(pub, "send", str(pub.issue), "--all", "--yes")
    assert "2 sent, 0 deferred, 1 failed" in first.stdout, first.output
    store = pub.store()
    assert status_of(store, "gone@example.com") == BOUNCED
    assert status_of(store, "late@example.com") == ACTIVE
    report = json.loads(invoke(pub, "status", "1", "--json").stdout)["campaigns"][0]
    assert (report["bounced"], report["complaints"]) == (1, 0)
    assert "1 bounced" in invoke(pub, "status", "1").stdout

    # A re-import does not bring the address back, and the next campaign leaves it out.
    import_list(pub, ["GONE@example.com", "new@example.com"])
    assert status_of(store, "gone@example.com") == BOUNCED
    smtp_server.handler.received.clear()
    again = invoke(pub, "send", str(pub.issue), "--all", "--yes", "--new-only")
    assert again.exit_code == 0, again.output
    assert smtp_server.handler.count_by_recipient() == {"new@example.com": 1}


# --- the rules ----------------------------------------------------------------------------


NOW = dt.datetime(2026, 11, 29, 12, tzinfo=dt.UTC)


def report(kind: str, key: str, email: str = "ann@example.com") -> bounces.Bounce:
    return bounces.Bounce(kind=kind, email=email, source="dsn", event_key=key)


def test_soft_bounces_suppress_after_the_limit_within_the_days(pub: Publication) -> None:
    import_list(pub, ["ann@example.com"])
    store = pub.store()
    days = [45, 20, 10]  # three soft bounces, the first outside the 30 days
    for n, ago in enumerate(days):
        done = bounces.record(store, report(bounces.SOFT, f"k{n}"), 3, 30, NOW - dt.timedelta(ago))
        assert done.new and done.suppressed is None
    assert status_of(store, "ann@example.com") == ACTIVE
    third = bounces.record(store, report(bounces.SOFT, "k3"), 3, 30, NOW)
    assert third.suppressed == BOUNCED and status_of(store, "ann@example.com") == BOUNCED


def test_a_report_counts_once_and_a_complaint_outranks_a_bounce(pub: Publication) -> None:
    import_list(pub, ["ann@example.com"])
    store = pub.store()
    assert bounces.record(store, report(bounces.HARD, "dsn:1"), 3, 30).suppressed == BOUNCED
    assert not bounces.record(store, report(bounces.HARD, "dsn:1"), 3, 30).new
    complaint = bounces.record(store, report(bounces.COMPLAINT, "arf:1"), 3, 30)
    assert complaint.suppressed == COMPLAINED
    later = bounces.record(store, report(bounces.HARD, "dsn:2"), 3, 30)
    assert later.new and later.suppressed is None  # a complaint stays one
    assert status_of(store, "ann@example.com") == COMPLAINED


def test_a_report_about_an_address_not_on_the_list_is_kept(pub: Publication) -> None:
    store = pub.store()
    done = bounces.record(store, report(bounces.HARD, "dsn:x", "stranger@example.com"), 3, 30)
    assert done.new and done.subscriber_id is None and done.suppressed is None


# --- the whole way round: send, bounces come back, the next campaign --------------------


def dsn(to: str, recipient: str, status: str, action: str, message_id: str) -> bytes:
    """A delivery status notification (RFC 3464) as Postfix writes one, to `to`."""
    return f"""Return-Path: <>
Delivered-To: {to}
From: MAILER-DAEMON@mx.example.net (Mail Delivery System)
To: {to}
Subject: Undelivered Mail Returned to Sender
Auto-Submitted: auto-replied
Message-Id: <{message_id}>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain; charset=us-ascii

I'm sorry to have to inform you that your message could not be delivered.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; {recipient}
Action: {action}
Status: {status}
Diagnostic-Code: smtp; 550 {status} <{recipient}>: Recipient address rejected

--B--
""".replace("\n", "\r\n").encode()


def arf(to: str, recipient: str, message_id: str) -> bytes:
    """A feedback-loop complaint (RFC 5965 ARF) about the message sent to `recipient`."""
    return f"""From: fbl@isp.example.net
To: {to}
Subject: FW: abuse report
Message-Id: <{message_id}>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="F"

--F
Content-Type: text/plain

This is an email abuse report.

--F
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: isp-fbl/1.0
Version: 1
Original-Rcpt-To: {recipient}

--F
Content-Type: message/rfc822

Return-Path: <{to}>
From: news@helloshuttle.com
To: {recipient}
Subject: the issue

body
--F--
""".replace("\n", "\r\n").encode()


def vacation(to: str, sender: str) -> bytes:
    return f"""From: {sender}
To: {to}
Subject: Out of office: the issue
Auto-Submitted: auto-replied
Message-Id: <ooo-1@example.com>

I am away until Monday.
""".replace("\n", "\r\n").encode()


def test_a_campaign_with_bounces_complaints_and_auto_replies_ends_as_they_say(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    people = ["ann@example.com", "gone@example.com", "later@example.com", "angry@example.com",
              "away@example.com"]  # fmt: skip
    import_list(pub, people)
    smtp_server.handler.rcpt_replies = {"gone@example.com": ["550 5.1.1 no such user"]}
    first = invoke(pub, "send", str(pub.issue), "--all", "--yes")
    assert "4 sent, 0 deferred, 1 failed" in first.stdout, first.output
    sender_of = {r.rcpt_tos[0]: r.mail_from for r in smtp_server.received}

    # What came back to the VERP addresses, fed in as a mail server's pipe does.
    returned = [
        dsn(sender_of["later@example.com"], "later@example.com", "5.1.1", "failed", "d1@mx"),
        arf(sender_of["angry@example.com"], "angry@example.com", "a1@isp"),
        vacation(sender_of["away@example.com"], "away@example.com"),
    ]
    for message in returned:
        ingested = CliRunner().invoke(
            cli,
            ["--config", str(pub.config_path), "bounces", "ingest", "-"],
            env=pub.env,
            input=message,
        )
        assert ingested.exit_code == 0, ingested.output
    store = pub.store()
    assert {p: status_of(store, p) for p in people} == {
        "ann@example.com": ACTIVE,
        "gone@example.com": BOUNCED,  # 5xx at RCPT
        "later@example.com": BOUNCED,  # the DSN
        "angry@example.com": COMPLAINED,  # the complaint
        "away@example.com": ACTIVE,  # an auto-reply counts for nothing
    }
    report = json.loads(invoke(pub, "status", "1", "--json").stdout)["campaigns"][0]
    assert (report["bounced"], report["complaints"]) == (2, 1)

    # A re-import brings none of them back; the next campaign leaves them out.
    import_list(pub, [p.upper() for p in people])
    assert status_of(store, "later@example.com") == BOUNCED
    assert status_of(store, "angry@example.com") == COMPLAINED
    smtp_server.handler.received.clear()
    again = invoke(pub, "send", str(pub.issue), "--all", "--yes", "--again")
    assert again.exit_code == 0, again.output
    assert smtp_server.handler.count_by_recipient() == {
        "ann@example.com": 1,
        "away@example.com": 1,
    }
