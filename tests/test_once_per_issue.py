"""One issue goes to one subscriber once, across campaigns, unless the user says otherwise.

End to end: the CLI (send, schedule), a real database (SQLite and PostgreSQL) and a real
SMTP server (aiosmtpd); run-due with an injected clock.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from campaign_support import Publication, make_publication
from click.testing import CliRunner, Result
from smtp_fixtures import SmtpServer

from newsletter import campaign, publish
from newsletter.cli import cli

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


# --- the ledger -------------------------------------------------------------------------


def test_rows_still_to_send_in_another_campaign_count_as_having_it(pub: Publication) -> None:
    """A campaign that has not sent yet will: a second one is refused, and --new-only
    leaves out the subscribers it holds rows for."""
    subscribe(pub, ANN, BOB)
    store = pub.store()
    built = publish.build_issue(pub.config(), publish.load_issue(pub.issue))
    first = campaign.create(store, built, repeat=campaign.Repeat.REFUSE)  # ready, not run
    with pytest.raises(campaign.IssueAlreadySent, match=r"on its way as campaign 1 \(ready, 2 to"):
        campaign.create(store, built, repeat=campaign.Repeat.REFUSE)
    with pytest.raises(campaign.NobodyLeft, match="nobody left"):
        campaign.create(store, built, repeat=campaign.Repeat.NEW_ONLY)
    subscribe(pub, CAROL)
    second = campaign.create(store, built, repeat=campaign.Repeat.NEW_ONLY)
    assert campaign.counts(store, second)["pending"] == 1
    assert campaign.counts(store, first)["pending"] == 2


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
