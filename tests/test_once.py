"""One issue goes to one subscriber once, across campaigns, unless the user says otherwise.

End to end: the CLI (send, schedule), a real database (SQLite and PostgreSQL) and a real
SMTP server (aiosmtpd); run-due with an injected clock.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from campaign_support import SECRET, Publication, make_publication
from click.testing import CliRunner, Result
from smtp_fixtures import SmtpServer

from newsletter.cli import cli
from newsletter.config import Tracking
from newsletter.issue import publish
from newsletter.ledger import delivery_rows, lifecycle, once, sponsorship
from newsletter.ledger.tables import deliveries
from newsletter.schedule.due import run_due
from newsletter.send import tracking

UTC = dt.UTC
ANN, BOB, CAROL, DAN = (f"{n}@example.com" for n in ("ann", "bob", "carol", "dan"))


@pytest.fixture
def pub(tmp_path: Path, database_url: str, smtp_server: SmtpServer) -> Publication:
    return make_publication(tmp_path, database_url, smtp_server.port)


def invoke(pub: Publication, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(
        cli, ["--config", str(pub.config_path), *args], env=pub.env, input=input
    )


def subscribe(pub: Publication, *emails: str) -> None:
    for email in emails:
        assert invoke(pub, "subscribers", "add", email).exit_code == 0


def send(pub: Publication, *flags: str, input: str | None = None) -> Result:
    return invoke(pub, "send", str(pub.issue), "--all", *flags, input=input)


def campaigns(pub: Publication) -> list[dict[str, object]]:
    rows = json.loads(invoke(pub, "status", "--json").stdout)["campaigns"]
    return sorted(rows, key=lambda r: r["id"])


def started_on(pub: Publication, campaign_id: int) -> str:
    row = next(r for r in campaigns(pub) if r["id"] == campaign_id)
    return str(row["started_at"])[:10]


def sent_once_to_ann_and_bob(pub: Publication, smtp_server: SmtpServer) -> None:
    subscribe(pub, ANN, BOB)
    first = send(pub, "--yes")
    assert first.exit_code == 0, first.output
    assert smtp_server.handler.count_by_recipient() == {ANN: 1, BOB: 1}


# --- send --all -------------------------------------------------------------------------


def test_a_second_send_of_an_issue_is_refused_and_sends_nothing(
    pub: Publication, smtp_server: SmtpServer, assert_user_error: Callable[..., str]
) -> None:
    sent_once_to_ann_and_bob(pub, smtp_server)
    again = send(pub, "--yes")
    assert again.exit_code == 1
    assert_user_error(
        again,
        f"{pub.issue}: already sent as campaign 1 on {started_on(pub, 1)} to 2 subscribers;",
        "--new-only sends it to those who have not had it, --again to everyone",
    )
    # A dry run says the same: it shows what the real send would do.
    dry = send(pub, "--dry-run")
    assert_user_error(dry, "already sent as campaign 1")
    assert smtp_server.handler.count_by_recipient() == {ANN: 1, BOB: 1}
    assert [r["id"] for r in campaigns(pub)] == [1]


def test_again_sends_everyone_a_second_copy(pub: Publication, smtp_server: SmtpServer) -> None:
    sent_once_to_ann_and_bob(pub, smtp_server)
    subscribe(pub, CAROL)
    again = send(pub, "--again", "--yes")
    assert again.exit_code == 0, again.output
    assert "campaign 2: 3 sent" in again.stdout
    assert smtp_server.handler.count_by_recipient() == {ANN: 2, BOB: 2, CAROL: 1}


def test_new_only_sends_to_the_newcomer_then_finds_nobody_left(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    sent_once_to_ann_and_bob(pub, smtp_server)
    subscribe(pub, CAROL)
    newcomers = send(pub, "--new-only", "--yes")
    assert newcomers.exit_code == 0, newcomers.output
    assert "campaign 2: 1 sent" in newcomers.stdout
    assert smtp_server.handler.count_by_recipient() == {ANN: 1, BOB: 1, CAROL: 1}

    # Nobody left: a script that runs this after each signup batch is not failing.
    nobody = send(pub, "--new-only", "--yes")
    assert nobody.exit_code == 0, nobody.output
    assert nobody.stdout.count("\n") == 1 and "nobody left to send it to" in nobody.stdout
    as_json = json.loads(send(pub, "--new-only", "--yes", "--json").stdout)
    assert as_json == {"campaign_id": None, "sent": 0, "status": "nobody left"}
    assert [r["id"] for r in campaigns(pub)] == [1, 2]  # no campaign without deliveries
    assert len(smtp_server.received) == 3

    # The refusal names the first campaign and counts the later one; so does the question.
    refused = send(pub, "--yes")
    assert refused.exit_code == 1
    assert "campaign 1" in refused.stderr and "(and in 1 later campaign(s))" in refused.stderr
    asked = send(pub, "--again", input="n\n")
    assert "(and 1 later campaign(s); 3 subscribers have it); send it again to all 3?" in (
        asked.stderr
    )
    assert len(smtp_server.received) == 3


def test_new_only_dry_run_renders_only_the_newcomers(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    sent_once_to_ann_and_bob(pub, smtp_server)
    subscribe(pub, CAROL)
    dry = send(pub, "--new-only", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["messages"] == 1
    assert len(smtp_server.received) == 2


def test_a_failed_or_skipped_delivery_is_not_having_had_it(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    subscribe(pub, ANN, BOB)
    # Refused at the end of DATA (the content, not the address: no bounce that
    # suppresses Bob; a 5xx at RCPT would, see test_suppression.py).
    smtp_server.handler.data_replies[BOB] = ["554 5.7.1 message refused"]
    first = send(pub, "--yes")
    assert first.exit_code == 1 and "1 sent" in first.stdout and "1 failed" in first.stdout
    later = send(pub, "--new-only", "--yes")
    assert later.exit_code == 0, later.output
    assert smtp_server.handler.count_by_recipient() == {ANN: 1, BOB: 1}


def test_the_two_flags_exclude_each_other(pub: Publication) -> None:
    both = send(pub, "--again", "--new-only", "--yes")
    assert both.exit_code == 2 and "--again and --new-only exclude each other" in both.stderr
    test = invoke(pub, "send", str(pub.issue), "--to", ANN, "--again")
    assert test.exit_code == 2 and "go with --all" in test.stderr
    at = "2031-12-01 09:00"
    scheduled = invoke(pub, "schedule", str(pub.issue), "--at", at, "--again", "--new-only")
    assert scheduled.exit_code == 2 and "exclude each other" in scheduled.stderr


def test_the_question_says_what_went_out_before(pub: Publication, smtp_server: SmtpServer) -> None:
    sent_once_to_ann_and_bob(pub, smtp_server)
    subscribe(pub, CAROL)
    on = started_on(pub, 1)
    declined = send(pub, "--new-only", input="n\n")
    assert declined.exit_code == 1
    assert (
        f"This issue was already sent as campaign 1 on {on} to 2 subscribers;"
        " send to 1 who have not had it?"
    ) in declined.stderr
    declined = send(pub, "--again", input="n\n")
    assert "to 2 subscribers; send it again to all 3?" in declined.stderr
    assert len(smtp_server.received) == 2
    accepted = send(pub, "--new-only", input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert smtp_server.handler.count_by_recipient() == {ANN: 1, BOB: 1, CAROL: 1}


def test_rows_still_to_send_in_another_campaign_count_as_having_it(pub: Publication) -> None:
    """A campaign that has not sent yet will: a second one is refused, and --new-only
    leaves out the subscribers it holds rows for."""
    subscribe(pub, ANN, BOB)
    store = pub.store()
    built = publish.build_issue(pub.config(), publish.load_issue(pub.issue))
    first = lifecycle.create(store, built, repeat=once.Repeat.REFUSE)  # ready, not run
    with pytest.raises(once.IssueAlreadySent, match=r"on its way as campaign 1 \(ready, 2 to"):
        lifecycle.create(store, built, repeat=once.Repeat.REFUSE)
    with pytest.raises(once.NobodyLeft, match="nobody left"):
        lifecycle.create(store, built, repeat=once.Repeat.NEW_ONLY)
    subscribe(pub, CAROL)
    second = lifecycle.create(store, built, repeat=once.Repeat.NEW_ONLY)
    assert delivery_rows.counts(store, second)["pending"] == 1
    assert delivery_rows.counts(store, first)["pending"] == 2


# --- schedule ---------------------------------------------------------------------------


def test_schedule_refuses_an_issue_that_went_out(
    pub: Publication, smtp_server: SmtpServer, assert_user_error: Callable[..., str]
) -> None:
    sent_once_to_ann_and_bob(pub, smtp_server)
    refused = invoke(pub, "schedule", str(pub.issue), "--at", "2031-12-01 09:00")
    assert refused.exit_code == 1
    assert_user_error(refused, f"{pub.issue}: already sent as campaign 1", "--again to everyone")
    assert [r["id"] for r in campaigns(pub)] == [1]


def test_a_scheduled_issue_counts_for_send(
    pub: Publication, smtp_server: SmtpServer, assert_user_error: Callable[..., str]
) -> None:
    subscribe(pub, ANN)
    assert invoke(pub, "schedule", str(pub.issue), "--at", "2031-12-01 09:00").exit_code == 0
    refused = send(pub, "--yes")
    assert refused.exit_code == 1
    assert_user_error(
        refused,
        "already scheduled as campaign 1 for 2031-12-01 17:00 UTC;",
        "`newsletter schedule cancel 1` cancels campaign 1, --again sends it anyway",
    )
    # Its audience is made when it is claimed: everyone then, so --new-only now would
    # reach them twice.
    new_only = send(pub, "--new-only", "--yes")
    assert new_only.exit_code == 1
    assert "--new-only would reach them twice" in new_only.stderr
    assert not smtp_server.received
    assert invoke(pub, "schedule", "cancel", "1").exit_code == 0
    assert send(pub, "--yes").exit_code == 0
    assert smtp_server.handler.count_by_recipient() == {ANN: 1}


def test_schedule_new_only_sends_to_the_newcomers_of_the_send_time(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    sent_once_to_ann_and_bob(pub, smtp_server)
    subscribe(pub, CAROL)
    result = invoke(pub, "schedule", str(pub.issue), "--at", "2031-12-01 09:00", "--new-only")
    assert result.exit_code == 0, result.output
    assert "who have not had this issue by then" in result.stdout
    subscribe(pub, DAN)  # joins after it was scheduled, before it is due
    report = run_due(
        pub.store(), pub.config(), now=dt.datetime(2031, 12, 1, 17, 0, 30, tzinfo=UTC)
    )
    assert report.ok and [r["sent"] for r in report.sent] == [2]
    assert smtp_server.handler.count_by_recipient() == {ANN: 1, BOB: 1, CAROL: 1, DAN: 1}


def test_schedule_again_sends_everyone_a_second_copy(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    sent_once_to_ann_and_bob(pub, smtp_server)
    result = invoke(pub, "schedule", str(pub.issue), "--at", "2031-12-01 09:00", "--again")
    assert result.exit_code == 0, result.output
    run_due(pub.store(), pub.config(), now=dt.datetime(2031, 12, 1, 17, 1, tzinfo=UTC))
    assert smtp_server.handler.count_by_recipient() == {ANN: 2, BOB: 2}


# --- a test send's dry run --------------------------------------------------------------


def test_dry_run_of_a_test_send_sends_nothing(pub: Publication, smtp_server: SmtpServer) -> None:
    result = invoke(pub, "send", str(pub.issue), "--to", "editor@example.com", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "editor@example.com: would get '[TEST] What Motivated" in result.stdout
    assert "nothing sent" in result.stdout
    as_json = invoke(pub, "send", str(pub.issue), "--to", ANN, "--dry-run", "--json")
    [message] = json.loads(as_json.stdout)["messages"]
    assert message["to"] == ANN and message["bytes"] > 10_000
    assert not smtp_server.received and smtp_server.handler.ehlos == 0
    assert campaigns(pub) == []
    # Without --dry-run the same command does send: the check above can fail.
    assert invoke(pub, "send", str(pub.issue), "--to", ANN).exit_code == 0
    assert len(smtp_server.received) == 1


# --- the sponsor's report: one placement per issue --------------------------------------


def test_two_campaigns_of_an_issue_are_one_placement(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    sent_once_to_ann_and_bob(pub, smtp_server)
    subscribe(pub, CAROL)
    assert send(pub, "--new-only", "--yes").exit_code == 0
    store = pub.store()
    with store.begin() as conn:  # delivered an hour ago: clicks now are not scanners
        conn.execute(
            deliveries.update().values(sent_at=dt.datetime.now(UTC) - dt.timedelta(hours=1))
        )
    signer = tracking.ClickSigner(SECRET.encode())
    for campaign_id, subscriber_id in ((1, 1), (1, 1), (2, 3), (1, 2)):
        token = signer.sign(campaign_id, subscriber_id, 0)
        assert tracking.record_click(
            store, signer, token, head=False, user_agent="", rules=Tracking()
        )

    rep = sponsorship.report(pub.config(), store, "helloshuttle")
    [line] = rep.issues
    assert line.campaigns == [1, 2] and line.campaign == 1
    assert line.delivered == 3
    # Ann's second click on the link within the hour is hers again: counted once.
    assert line.counts == sponsorship.Counts(
        human_unique_clickers=3, human_clicks=3, bot_clicks=0, raw_clicks=4
    )
    assert line.links[0].counts == line.counts
    assert rep.totals["issues"] == 1 and rep.totals["delivered"] == 3
    csv_lines = sponsorship.report_csv(rep).splitlines()
    assert csv_lines[1].startswith("1 2,") and len(csv_lines) == 3
