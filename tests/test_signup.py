"""Signup with double opt-in over real HTTP: the form, the confirmation message as the
aiosmtpd fixture receives it, its link (opening it changes nothing, its button confirms),
what the open form must never change (an existing subscriber's name and status), and
what must not give anything away (an active address, the throttle, the honeypot). Real
database: a SQLite file, and PostgreSQL in CI. The limits against floods:
test_signup_limits.py."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from campaign_support import Publication, add_subscribers, make_publication
from click.testing import CliRunner
from site_support import BASE_URL, Running, confirm_link, running
from smtp_fixtures import SmtpServer

from newsletter import tokens
from newsletter.cli import cli
from newsletter.issue import publish
from newsletter.ledger import bounces, lifecycle, signups
from newsletter.ledger.store import Store
from newsletter.ledger.tables import (
    ACTIVE,
    BOUNCED,
    COMPLAINED,
    PENDING_CONFIRMATION,
    UNSUBSCRIBED,
)
from newsletter.send import campaign
from newsletter.web import signup

SECRET = b"test-secret-not-for-production-0123456789"
ANN = "ann@example.com"


@pytest.fixture
def pub(tmp_path: Path, database_url: str, smtp_server: SmtpServer) -> Publication:
    return make_publication(tmp_path, database_url, smtp_server.port)


@pytest.fixture
def store(pub: Publication) -> Store:
    return pub.store()


@pytest.fixture
def site(pub: Publication, store: Store) -> Iterator[Running]:
    with running(pub.config()) as served:
        yield served


def sign_up(site: Running, email: str, name: str = "", website: str = "") -> tuple[int, str]:
    response = site.post("/subscribe", data={"email": email, "name": name, "website": website})
    site.wait_for_mail()
    return response.status_code, response.text


def mail_to(smtp_server: SmtpServer, address: str) -> list[str]:
    """The plain-text parts of the messages the fixture received for `address`."""
    return [
        r.parse().get_body(("plain",)).get_content()
        for r in smtp_server.received
        if r.rcpt_tos == [address]
    ]


def status_of(store: Store, address: str) -> str | None:
    row = store.subscriber(address)
    return None if row is None else str(row["status"])


def row_of(store: Store, address: str) -> dict[str, object]:
    """Every column of the subscriber's row: what must not change."""
    row = store.subscriber(address)
    assert row is not None
    return dict(row)


class Clock:
    """The site's clock, moved by the test (the throttle and the limits need no sleep)."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


def test_signup_sends_a_confirmation_whose_link_shows_a_button_that_confirms(
    site: Running, store: Store, smtp_server: SmtpServer
) -> None:
    form = site.get("/subscribe")
    assert form.status_code == 200
    assert 'name="email"' in form.text and 'name="website"' in form.text

    status, page = sign_up(site, "Ann@Example.com", name="Ann McDonald")
    assert status == 200 and "Check your inbox" in page
    assert status_of(store, ANN) == PENDING_CONFIRMATION
    assert store.subscriber(ANN)["name"] == ""  # the name comes with the confirmation
    assert store.count_subscribers() == 0  # pending is not on the list yet

    [received] = smtp_server.received
    msg = received.parse()
    assert received.rcpt_tos == ["Ann@example.com"]  # the local part as typed
    assert msg["Subject"] == "Confirm your subscription to Hello Shuttle News Briefing"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["List-Unsubscribe"] is None  # not a list message
    html = msg.get_body(("html",)).get_content()
    link = confirm_link(msg.get_body(("plain",)).get_content())
    assert link.startswith(f"{BASE_URL}/confirm/") and link in html

    opened = site.get(link)
    assert opened.status_code == 200 and '<form method="post">' in opened.text
    assert ANN in opened.text and "Ann McDonald" in opened.text
    assert opened.headers["cache-control"] == "no-store"
    assert opened.headers["x-robots-tag"] == "noindex"
    assert status_of(store, ANN) == PENDING_CONFIRMATION

    confirmed = site.post(link)
    assert confirmed.status_code == 200 and "You are subscribed" in confirmed.text
    assert status_of(store, ANN) == ACTIVE
    assert store.subscriber(ANN)["name"] == "Ann McDonald"  # its case kept through the token
    assert store.count_subscribers() == 1
    # Pressing it again, or opening the link again, is fine and changes nothing.
    assert "You are subscribed" in site.post(link).text
    assert "You are subscribed" in site.get(link).text
    assert status_of(store, ANN) == ACTIVE


def test_scanners_that_open_the_link_confirm_nothing(
    site: Running, store: Store, smtp_server: SmtpServer
) -> None:
    """Issue 18: mail scanners fetch every link (GET and HEAD); only the button confirms."""
    sign_up(site, ANN, name="Ann")
    link = confirm_link(mail_to(smtp_server, ANN)[0])
    before = row_of(store, ANN)
    for _ in range(3):
        assert site.get(link).status_code == 200
        head = httpx.head(site.local(link), timeout=10)
        assert head.status_code == 200 and head.content == b""
    assert row_of(store, ANN) == before
    assert store.count_subscribers(None) == 1

    assert site.post(link).status_code == 200
    assert status_of(store, ANN) == ACTIVE


def test_a_pending_address_gets_no_issue(
    pub: Publication, site: Running, store: Store, smtp_server: SmtpServer
) -> None:
    add_subscribers(store, 2)
    sign_up(site, ANN)
    config = pub.config()
    built = publish.build_issue(config, publish.load_issue(pub.issue))
    result = campaign.run(store, config, lifecycle.create(store, built))
    assert result.sent == 2
    assert len(mail_to(smtp_server, ANN)) == 1  # the confirmation, no issue


def test_an_active_address_gets_the_same_answer_and_nothing_is_sent(
    site: Running, store: Store, smtp_server: SmtpServer
) -> None:
    add_subscribers(store, 1)
    active = "reader00000@example.com"
    new = sign_up(site, "new@example.com")
    again = sign_up(site, active, name="Someone Else")
    assert again == new  # same status, byte for byte the same page
    assert mail_to(smtp_server, active) == []
    assert status_of(store, active) == ACTIVE
    assert store.subscriber(active)["name"] == "Reader 0"  # the form changed nothing


def test_repeated_signups_are_throttled_across_processes(
    pub: Publication, store: Store, smtp_server: SmtpServer
) -> None:
    clock = Clock()
    with running(pub.config(), clock=clock) as site:
        first = sign_up(site, ANN)
        assert len(mail_to(smtp_server, ANN)) == 1
        assert sign_up(site, ANN) == first
        # A second server with its own connections and its own memory, as another process
        # has, knows of it too: the time is in the database.
        with running(pub.config(), clock=clock) as other:
            assert sign_up(other, ANN) == first
        assert len(mail_to(smtp_server, ANN)) == 1
        # Once [signup] throttle (10 minutes) has passed, the next signup sends again.
        clock.advance(minutes=11)
        assert sign_up(site, ANN) == first
        assert len(mail_to(smtp_server, ANN)) == 2


def test_concurrent_signups_of_one_address_claim_one_confirmation(pub: Publication) -> None:
    stores = [pub.store() for _ in range(6)]  # one each, as separate processes would have
    start = threading.Barrier(len(stores))
    outcomes: list[str] = []
    now = dt.datetime.now(dt.UTC)

    def one(store: Store) -> None:
        start.wait()
        outcomes.append(signups.claim(store, ANN, now, throttle=600))

    threads = [threading.Thread(target=one, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == [signups.SEND] + [signups.THROTTLED] * (len(stores) - 1)


def test_the_honeypot_drops_bots_silently(
    site: Running, store: Store, smtp_server: SmtpServer
) -> None:
    person = sign_up(site, "person@example.com")
    bot = sign_up(site, "bot@example.com", name="Bot", website="http://spam.example")
    assert bot == person
    assert mail_to(smtp_server, "bot@example.com") == []
    assert status_of(store, "bot@example.com") is None


def test_a_bad_address_is_shown_again_with_the_problem(site: Running, store: Store) -> None:
    response = site.post("/subscribe", data={"email": "not an address", "name": "<b>x</b>"})
    assert response.status_code == 400
    assert "not an email address" in response.text
    assert 'value="not an address"' in response.text
    assert "<b>x</b>" not in response.text  # escaped
    assert store.count_subscribers(None) == 0


def test_only_form_posts_of_reasonable_size_are_read(site: Running, store: Store) -> None:
    as_json = site.post("/subscribe", json={"email": ANN})
    assert as_json.status_code == 415
    huge = site.post("/subscribe", data={"email": ANN, "name": "x" * 20000})
    assert huge.status_code == 413
    assert status_of(store, ANN) is None


def leave(store: Store, address: str, status: str) -> None:
    """The address leaves the list the way `status` says."""
    if status == UNSUBSCRIBED:
        assert store.set_subscriber_status(address, UNSUBSCRIBED)
        return
    kind = bounces.HARD if status == BOUNCED else bounces.COMPLAINT
    done = bounces.record(store, bounces.Bounce(kind, address, "dsn", f"{kind}-{address}"), 3, 30)
    assert done.suppressed == status


@pytest.mark.parametrize("left_as", [UNSUBSCRIBED, BOUNCED, COMPLAINED])
def test_a_stranger_cannot_bring_back_an_address_that_left_or_rename_it(
    site: Running, store: Store, smtp_server: SmtpServer, left_as: str
) -> None:
    """Issue 18: a stranger signs up an address that left, with a name of their own; a
    scanner opens the link. Nothing changes until the mailbox's owner presses the button."""
    add_subscribers(store, 1)
    address = "reader00000@example.com"
    leave(store, address, left_as)
    before = row_of(store, address)

    assert sign_up(site, address, name="Mallory")[0] == 200
    [text] = mail_to(smtp_server, address)
    link = confirm_link(text)
    assert "Mallory" in site.get(link).text  # the owner sees what the button would do
    httpx.head(site.local(link), timeout=10)
    after = row_of(store, address)
    assert after["status"] == left_as and after["name"] == "Reader 0"
    assert {k: v for k, v in after.items() if k != "confirm_sent_at"} == {
        k: v for k, v in before.items() if k != "confirm_sent_at"
    }
    assert store.count_subscribers() == 0

    assert site.post(link).status_code == 200  # the owner confirms: back, as asked
    assert status_of(store, address) == ACTIVE
    assert store.subscriber(address)["name"] == "Mallory"


def test_a_signup_without_a_name_keeps_the_name_on_record(
    site: Running, store: Store, smtp_server: SmtpServer
) -> None:
    add_subscribers(store, 1)
    address = "reader00000@example.com"
    store.set_subscriber_status(address, UNSUBSCRIBED)
    sign_up(site, address)
    assert site.post(confirm_link(mail_to(smtp_server, address)[0])).status_code == 200
    assert row_of(store, address)["name"] == "Reader 0"
    assert status_of(store, address) == ACTIVE


def test_a_link_from_before_an_unsubscribe_does_not_bring_the_address_back(
    site: Running, store: Store, smtp_server: SmtpServer
) -> None:
    sign_up(site, ANN)
    link = confirm_link(mail_to(smtp_server, ANN)[0])
    assert site.post(link).status_code == 200
    unsubscribe = f"{BASE_URL}/unsubscribe/{tokens.Signer(SECRET).sign(ANN)}"
    assert site.post(unsubscribe, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    for stale in (site.get(link), site.post(link)):
        assert stale.status_code == 400 and "Sign up again" in stale.text
    assert status_of(store, ANN) == UNSUBSCRIBED


def test_an_old_link_has_expired(pub: Publication, site: Running, store: Store) -> None:
    sign_up(site, ANN)
    confirm = tokens.Signer(SECRET, tokens.CONFIRM)
    week_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=7, minutes=1)
    old = f"{BASE_URL}/confirm/{signup.make_token(confirm, ANN, week_ago)}"
    for response in (site.get(old), site.post(old)):
        assert response.status_code == 400 and "expired" in response.text
    assert status_of(store, ANN) == PENDING_CONFIRMATION


def test_a_link_mailed_before_names_were_carried_still_confirms(
    site: Running, store: Store
) -> None:
    """A link without a name is what the release before this one mailed: it still works."""
    sign_up(site, ANN)
    confirm = tokens.Signer(SECRET, tokens.CONFIRM)
    now = dt.datetime.now(dt.UTC)
    old_format = confirm.sign(f"{ANN}\n{int(now.timestamp())}")
    assert site.post(f"{BASE_URL}/confirm/{old_format}").status_code == 200
    assert status_of(store, ANN) == ACTIVE and store.subscriber(ANN)["name"] == ""


def test_forged_confirmation_links_are_refused(site: Running, store: Store) -> None:
    sign_up(site, ANN)
    now = dt.datetime.now(dt.UTC)
    for token in (
        signup.make_token(tokens.Signer(b"another secret", tokens.CONFIRM), ANN, now),
        tokens.Signer(SECRET).sign(ANN),  # an unsubscribe token confirms nothing
        tokens.Signer(SECRET, tokens.CONFIRM).sign(ANN),  # no time in it
        "nonsense",
    ):
        assert site.get(f"{BASE_URL}/confirm/{token}").status_code == 400, token
        assert site.post(f"{BASE_URL}/confirm/{token}").status_code == 400, token
    assert status_of(store, ANN) == PENDING_CONFIRMATION


def test_a_failed_send_lifts_the_throttle(
    site: Running, store: Store, smtp_server: SmtpServer
) -> None:
    smtp_server.handler.rcpt_replies[ANN] = ["451 4.3.0 try again later"]
    first = sign_up(site, ANN)
    assert mail_to(smtp_server, ANN) == []
    assert sign_up(site, ANN) == first  # right away: nothing was sent, so nothing throttles
    assert len(mail_to(smtp_server, ANN)) == 1


def test_signup_can_be_turned_off(pub: Publication) -> None:
    with running(pub.config(NEWSLETTER_SIGNUP_ENABLED="false")) as site:
        assert site.get("/subscribe").status_code == 404
        assert site.post("/subscribe", data={"email": ANN}).status_code == 404
        assert 'action="/subscribe"' not in site.get("/").text


def test_pending_addresses_are_listed_and_counted_by_status(
    pub: Publication, site: Running, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_subscribers(store, 1)
    sign_up(site, ANN)
    for name, value in pub.env.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    listed = runner.invoke(cli, ["--config", str(pub.config_path), "subscribers", "list",
                                 "--status", "pending"])  # fmt: skip
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.splitlines() == [f"{ANN}\t\tpending"]
    counted = runner.invoke(cli, ["--config", str(pub.config_path), "subscribers", "count"])
    assert counted.stdout.strip() == "1"
