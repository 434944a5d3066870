"""The list's side of bounces and privacy, through the CLI on a real database (a SQLite
file and PostgreSQL): suppression holds on import, add, remove and signup; counts per
status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from campaign_support import Publication, make_publication
from click.testing import CliRunner, Result
from site_support import confirm_link, running
from smtp_fixtures import SmtpServer

from newsletter.cli import cli
from newsletter.ledger import bounces
from newsletter.ledger.store import Store

ANN = "ann@example.com"
BOB = "bob@example.com"


@pytest.fixture
def pub(tmp_path: Path, database_url: str, smtp_server: SmtpServer) -> Publication:
    return make_publication(tmp_path, database_url, smtp_server.port)


def invoke(pub: Publication, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(
        cli, ["--config", str(pub.config_path), *args], env=pub.env, input=input
    )


def ok(pub: Publication, *args: str) -> str:
    result = invoke(pub, *args)
    assert result.exit_code == 0, result.output
    return result.stdout


def write_csv(pub: Publication, text: str) -> Path:
    path = pub.root / "list.csv"
    path.write_text(text, encoding="utf-8")
    return path


def report(
    store: Store,
    kind: str,
    email: str,
    key: str,
    campaign_id: int | None = None,
    diagnostic: str = "",
) -> None:
    done = bounces.record(
        store,
        bounces.Bounce(
            kind=kind,
            email=email,
            source="dsn" if kind != bounces.COMPLAINT else "arf",
            event_key=key,
            status_code="5.1.1" if kind == bounces.HARD else "",
            diagnostic=diagnostic,
            campaign_id=campaign_id,
        ),
        soft_limit=3,
        soft_days=7,
    )
    assert done.new


def status_of(pub: Publication, email: str) -> str | None:
    row = pub.store().subscriber(email)
    return None if row is None else str(row["status"])


# --- 1. suppression holds ---------------------------------------------------------------


def test_import_add_and_remove_keep_a_suppressed_address_suppressed(pub: Publication) -> None:
    for address in (ANN, BOB, "carol@example.com"):
        ok(pub, "subscribers", "add", address)
    store = pub.store()
    report(store, bounces.HARD, ANN, "dsn-1")
    report(store, bounces.COMPLAINT, BOB, "arf-1")

    path = write_csv(
        pub,
        "email,name\nAnn@Example.com,Ann\nbob@example.com,Bob\ncarol@example.com,Carol\n"
        "dave@example.com,Dave\n",
    )
    result = invoke(pub, "subscribers", "import", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout == "1 added, 1 updated, 2 kept suppressed, 0 rejected\n"
    assert (status_of(pub, ANN), status_of(pub, BOB)) == ("bounced", "complained")
    assert store.subscriber(ANN)["name"] == "Ann"  # the name is the list's to keep up

    again = ok(pub, "subscribers", "add", ANN, "--name", "Ann Lee")
    assert again == f"kept {ANN} suppressed (bounced): only a confirmed signup brings it back\n"
    assert status_of(pub, ANN) == "bounced"
    # Unsubscribing changes nothing a complaint said: it stays the stronger status.
    assert ok(pub, "subscribers", "remove", BOB) == f"unsubscribed {BOB}\n"
    assert status_of(pub, BOB) == "complained"

    assert ok(pub, "subscribers", "list", "--status", "bounced") == f"{ANN}\tAnn Lee\tbounced\n"
    assert ok(pub, "subscribers", "list", "--status", "complained") == f"{BOB}\tBob\tcomplained\n"
    assert ok(pub, "subscribers", "count") == "2\n"


def test_count_json_after_a_bounce_and_a_complaint(pub: Publication) -> None:
    for address in (ANN, BOB, "carol@example.com", "dan@example.com", "eve@example.com"):
        ok(pub, "subscribers", "add", address)
    ok(pub, "subscribers", "remove", "eve@example.com")
    store = pub.store()
    report(store, bounces.HARD, ANN, "dsn-1")
    report(store, bounces.COMPLAINT, BOB, "arf-1")

    assert json.loads(ok(pub, "subscribers", "count", "--json")) == {
        "active": 2,
        "pending": 0,
        "unsubscribed": 1,
        "bounced": 1,
        "complained": 1,
    }
    assert ok(pub, "subscribers", "count") == "2\n"  # the plain count is as it was
    assert ok(pub, "subscribers", "count", "--status", "bounced") == "1\n"
    mixed = invoke(pub, "subscribers", "count", "--json", "--status", "bounced")
    assert mixed.exit_code == 2 and mixed.stdout == ""
    assert "Error: --json counts every status: leave out --status" in mixed.stderr


def test_a_suppressed_address_comes_back_only_by_confirming_a_signup(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    ok(pub, "subscribers", "add", ANN)
    report(pub.store(), bounces.HARD, ANN, "dsn-1")
    with running(pub.config()) as site:
        response = site.post("/subscribe", data={"email": ANN, "name": "Ann", "website": ""})
        site.wait_for_mail()
        assert response.status_code == 200
        # Asked for, not yet confirmed: still off the list.
        assert status_of(pub, ANN) == "pending"
        assert ok(pub, "subscribers", "count") == "0\n"
        [received] = [r for r in smtp_server.received if r.rcpt_tos == [ANN]]
        link = confirm_link(received.parse().get_body(("plain",)).get_content())
        assert site.get(link).status_code == 200
    assert status_of(pub, ANN) == "active"
    assert ok(pub, "subscribers", "count") == "1\n"
