"""The list's side of bounces and privacy, through the CLI on a real database (a SQLite
file and PostgreSQL): suppression holds on import, add, remove and signup; counts per
status; `subscribers export` (every record about a person) and `subscribers erase`
(their data gone, the campaigns' statistics kept, the address refused afterwards)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from campaign_support import Publication, make_publication
from click.testing import CliRunner, Result
from site_support import confirm_link, running
from smtp_fixtures import SmtpServer

from newsletter.cli import cli
from newsletter.config import Tracking
from newsletter.issue import publish
from newsletter.ledger import bounces, clicks
from newsletter.ledger.store import Store
from newsletter.ledger.tables import bounces as bounce_rows
from newsletter.ledger.tables import clicks as click_rows
from newsletter.ledger.tables import deliveries, erased, subscribers, utcnow
from newsletter.send import tracking

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


def send_to_all(pub: Publication) -> int:
    """Send the sample issue to every active subscriber through the SMTP fixture, with
    its sponsor links tracked; the campaign's id."""
    ok(pub, "send", str(pub.issue), "--all", "--yes")
    [campaign] = json.loads(ok(pub, "status", "--json"))["campaigns"]
    built = publish.build_issue(pub.config(), publish.load_issue(pub.issue))
    links = tracking.rewrite(built.html.source, built.text.source, "sponsor").links
    tracking.save_links(pub.store(), campaign["id"], links)
    return int(campaign["id"])


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
    assert again == (
        f"kept {ANN} suppressed (bounced); name updated: only a confirmed signup brings it back\n"
    )
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
        # Asked for, not yet confirmed: still suppressed, and opening the link (as a mail
        # scanner does) changes nothing; only its button does.
        assert status_of(pub, ANN) == "bounced"
        assert ok(pub, "subscribers", "count") == "0\n"
        [received] = [r for r in smtp_server.received if r.rcpt_tos == [ANN]]
        link = confirm_link(received.parse().get_body(("plain",)).get_content())
        assert site.get(link).status_code == 200
        assert status_of(pub, ANN) == "bounced"
        assert site.post(link).status_code == 200
    assert status_of(pub, ANN) == "active"
    assert ok(pub, "subscribers", "count") == "1\n"


# --- 3. erase ---------------------------------------------------------------------------


def test_erase_removes_the_person_and_keeps_the_campaign_counts(
    pub: Publication, assert_user_error: Callable[..., str]
) -> None:
    write_csv(pub, "email,name,city\nAnn@Example.com,Ann,Irvine\nbob@example.com,Bob,LA\n")
    ok(pub, "subscribers", "import", str(pub.root / "list.csv"))
    cid = send_to_all(pub)
    store = pub.store()
    ann_id = store.subscriber(ANN)["id"]
    later = utcnow() + dt.timedelta(hours=1)
    for _ in range(2):
        clicks.record(store, cid, ann_id, 0, head=False, rules=Tracking(), now=later)
    report(store, bounces.SOFT, "Ann@example.com", "dsn-1", cid, "452 <Ann@example.com> full")
    before = json.loads(ok(pub, "status", "--json"))["campaigns"][0]

    done = ok(pub, "subscribers", "erase", "ANN@example.com", "--yes")
    assert done == (
        "erased Ann@example.com: name, attributes, 2 click(s) and the address in 1 bounce"
        f" report(s) removed; 1 delivery(ies) kept as erased-{ann_id}@invalid\n"
    )
    assert store.subscriber(ANN) is None
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(subscribers).where(subscribers.c.id == ann_id)).one()
        assert (row.email, row.email_key, row.name, row.attributes, row.status) == (
            f"erased-{ann_id}@invalid",
            f"erased-{ann_id}@invalid",
            "",
            "{}",
            "unsubscribed",
        )
        left = sa.select(click_rows).where(click_rows.c.subscriber_id == ann_id)
        assert conn.execute(left).all() == []
        [bounce] = conn.execute(sa.select(bounce_rows)).all()
        assert (bounce.email, bounce.diagnostic, bounce.kind) == (
            f"erased-{ann_id}@invalid",
            None,
            "soft",
        )
        [kept] = conn.execute(
            sa.select(deliveries).where(deliveries.c.subscriber_id == ann_id)
        ).all()
        assert kept.status == "sent" and kept.campaign_id == cid
        [(digest, erased_at)] = conn.execute(sa.select(erased)).all()
        assert digest == hashlib.sha256(ANN.encode()).hexdigest()
        # Nothing left anywhere that spells the address.
        for table in (subscribers, bounce_rows):
            for values in conn.execute(sa.select(table)).all():
                assert "ann@example.com" not in repr(values).lower()
    after = json.loads(ok(pub, "status", "--json"))["campaigns"][0]
    assert (after["total"], after["sent"]) == (before["total"], before["sent"]) == (2, 2)
    # The anonymous row stays on the list, off it for sending: unsubscribed.
    assert ok(pub, "subscribers", "list") == (
        f"erased-{ann_id}@invalid\t\tunsubscribed\n{BOB}\tBob\tactive\n"
    )

    # Erasing again finds nothing more to erase, and says when it was.
    again = ok(pub, "subscribers", "erase", ANN, "--yes")
    assert again == (
        f"{ANN}: erased already on {erased_at:%Y-%m-%d};"
        " 0 bounce report(s) cleared of the address\n"
    )
    unknown = invoke(pub, "subscribers", "erase", "nobody@example.com", "--yes")
    assert unknown.exit_code == 1
    assert_user_error(unknown, "nobody@example.com: not on the list, nothing to erase")


def test_an_erased_address_is_refused_by_import_and_add_unless_asked(
    pub: Publication, assert_user_error: Callable[..., str]
) -> None:
    ok(pub, "subscribers", "add", ANN, "--name", "Ann")
    ok(pub, "subscribers", "erase", ANN, "--yes")
    today = utcnow().date().isoformat()

    # The same address in another case, from a list made before the erasure.
    path = write_csv(pub, "email,name\nANN@Example.COM,Ann\ncarol@example.com,Carol\n")
    result = invoke(pub, "subscribers", "import", str(path))
    assert result.exit_code == 0  # partial: carol is imported
    assert result.stderr == (
        f"skipped: {path}:2: ANN@example.com: erased on {today} at the person's request;"
        " `newsletter subscribers add --again-after-erasure ANN@example.com` adds it anyway\n"
    )
    assert result.stdout == "1 added, 0 updated, 1 rejected\n"
    assert ok(pub, "subscribers", "list", "--status", "active") == (
        "carol@example.com\tCarol\tactive\n"
    )

    refused = invoke(pub, "subscribers", "add", "Ann@example.com")
    assert refused.exit_code == 1
    assert_user_error(refused, f"Ann@example.com: erased on {today} at the person's request")
    assert pub.store().subscriber(ANN) is None

    # They asked to come back: added, and the list knows they were erased once.
    back = ok(pub, "subscribers", "add", "Ann@example.com", "--again-after-erasure")
    assert back == "added Ann@example.com\n"
    assert status_of(pub, ANN) == "active"
    exported = json.loads(ok(pub, "subscribers", "export", ANN, "--json"))
    assert exported["erased_at"].startswith(today)
    assert exported["subscriber"]["email"] == "Ann@example.com"


def test_erase_asks_on_a_terminal_and_refuses_without_one(
    pub: Publication, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok(pub, "subscribers", "add", ANN)
    blind = invoke(pub, "subscribers", "erase", ANN)
    assert blind.exit_code == 2 and blind.stdout == ""
    assert f"Error: erasing {ANN} cannot be undone: confirm it with --yes" in blind.stderr
    monkeypatch.setattr("newsletter.cli.audience._stdin_is_terminal", lambda: True)
    declined = invoke(pub, "subscribers", "erase", ANN, input="n\n")
    assert declined.exit_code == 1 and "Aborted" in declined.stderr
    assert status_of(pub, ANN) == "active"
    accepted = invoke(pub, "subscribers", "erase", ANN, input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert f"Erase {ANN}'s data for good?" in accepted.stderr
    assert accepted.stdout.startswith(f"erased {ANN}: ")
    assert status_of(pub, ANN) is None


# --- 4. export --------------------------------------------------------------------------


def test_export_lists_every_record_about_the_person(
    pub: Publication, assert_user_error: Callable[..., str]
) -> None:
    write_csv(pub, "email,name,city\nAnn@Example.com,Ann,Irvine\nbob@example.com,Bob,LA\n")
    ok(pub, "subscribers", "import", str(pub.root / "list.csv"))
    cid = send_to_all(pub)
    store = pub.store()
    ann_id = store.subscriber(ANN)["id"]
    later = utcnow() + dt.timedelta(hours=1)
    clicks.record(store, cid, ann_id, 0, head=False, rules=Tracking(), now=later)
    clicks.record(store, cid, store.subscriber(BOB)["id"], 0, head=False, rules=Tracking())
    report(store, bounces.SOFT, "Ann@example.com", "dsn-1", cid, "452 4.2.2 mailbox full")
    report(store, bounces.COMPLAINT, "Ann@example.com", "arf-1", cid)
    report(store, bounces.HARD, BOB, "dsn-2", cid)

    data = json.loads(ok(pub, "subscribers", "export", "ann@EXAMPLE.com", "--json"))
    assert data["email"] == "Ann@example.com" and data["erased_at"] is None
    subscriber = data["subscriber"]
    assert {k: subscriber[k] for k in ("email", "name", "attributes", "status")} == {
        "email": "Ann@example.com",
        "name": "Ann",
        "attributes": {"city": "Irvine"},
        "status": "complained",
    }
    assert dt.datetime.fromisoformat(subscriber["created_at"]) <= utcnow()
    assert subscriber["unsubscribed_at"] is not None  # when the complaint came
    [delivery] = data["deliveries"]
    built = publish.build_issue(pub.config(), publish.load_issue(pub.issue))
    assert (delivery["campaign_id"], delivery["issue"], delivery["status"]) == (
        cid,
        built.issue.slug,
        "sent",
    )
    assert dt.datetime.fromisoformat(delivery["sent_at"]) <= utcnow()
    [click] = data["clicks"]
    assert click["campaign_id"] == cid
    assert click["url"].startswith("https://www.helloshuttle.com/")
    assert dt.datetime.fromisoformat(click["clicked_at"]) == later
    assert [(b["kind"], b["diagnostic"], b["campaign_id"]) for b in data["bounces"]] == [
        ("soft", "452 4.2.2 mailbox full", cid),
        ("complaint", None, cid),
    ]

    plain = ok(pub, "subscribers", "export", ANN).splitlines()
    assert plain[0].startswith("subscriber: Ann@example.com\tAnn\tcomplained\tsince ")
    assert "attribute: city=Irvine" in plain
    assert [line.split(":")[0] for line in plain[2:]] == ["delivery", "click", "soft", "complaint"]

    unknown = invoke(pub, "subscribers", "export", "nobody@example.com", "--json")
    assert unknown.exit_code == 1 and unknown.stdout == ""
    assert_user_error(unknown, "nobody@example.com: not on the list, and no record of it")

    ok(pub, "subscribers", "erase", ANN, "--yes")
    gone = json.loads(ok(pub, "subscribers", "export", ANN, "--json"))
    assert gone["subscriber"] is None and gone["erased_at"] is not None
    assert (gone["deliveries"], gone["clicks"], gone["bounces"]) == ([], [], [])
    assert ok(pub, "subscribers", "export", ANN).startswith(
        f"erased: {ANN}: erased on {gone['erased_at'][:10]} at the person's request;"
    )


def test_a_bounce_that_comes_after_the_erasure_does_not_name_the_person_again(
    pub: Publication,
) -> None:
    write_csv(pub, "email,name\nann@example.com,Ann\n")
    ok(pub, "subscribers", "import", str(pub.root / "list.csv"))
    cid = send_to_all(pub)
    store = pub.store()
    ann_id = store.subscriber(ANN)["id"]
    ok(pub, "subscribers", "erase", ANN, "--yes")
    # The DSN of the message sent before the erasure: its VERP address names the row.
    late = bounces.Bounce(
        kind=bounces.HARD,
        email="ann@example.com",
        source="dsn",
        event_key="dsn:late",
        diagnostic="550 5.1.1 <ann@example.com> no such user",
        campaign_id=cid,
        subscriber_id=ann_id,
    )
    assert bounces.record(store, late, 3, 30).new
    with store.engine.connect() as conn:
        row = conn.execute(
            sa.select(bounce_rows.c.email, bounce_rows.c.diagnostic).where(
                bounce_rows.c.event_key == "dsn:late"
            )
        ).one()
    assert (row.email, row.diagnostic) == (f"erased-{ann_id}@invalid", None)
