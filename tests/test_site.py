"""`newsletter serve` over real HTTP: one-click unsubscribe (RFC 8058), the host check behind
a proxy, and the command itself. A real database (SQLite file, and PostgreSQL in CI) and a
real SMTP server (aiosmtpd) for the campaign that is running while someone unsubscribes."""

from __future__ import annotations

import hashlib
import hmac
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from campaign_support import Publication, add_subscribers, make_publication
from site_support import BASE_URL, Running, running
from smtp_fixtures import SmtpServer

from newsletter import tokens
from newsletter.issue import publish
from newsletter.ledger import delivery_rows, lifecycle
from newsletter.ledger.store import Store
from newsletter.ledger.tables import ACTIVE, SKIPPED, UNSUBSCRIBED
from newsletter.send import campaign, runner

SECRET = b"test-secret-not-for-production-0123456789"
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


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


def unsubscribe_url(address: str) -> str:
    """The URL in the List-Unsubscribe header of a message to `address`."""
    return f"{BASE_URL}/unsubscribe/{tokens.Signer(SECRET).sign(address)}"


def status_of(store: Store, address: str) -> str:
    row = store.subscriber(address)
    assert row is not None
    return str(row["status"])


def test_one_click_post_without_cookies_unsubscribes(site: Running, store: Store) -> None:
    add_subscribers(store, 2)
    leaving, staying = "reader00000@example.com", "reader00001@example.com"
    # What a mailbox provider sends (RFC 8058): a POST, the one key/value pair, no cookies.
    response = site.post(unsubscribe_url(leaving), data=ONE_CLICK)
    assert response.status_code == 200
    assert "set-cookie" not in response.headers
    assert status_of(store, leaving) == UNSUBSCRIBED
    assert status_of(store, staying) == ACTIVE
    assert store.count_subscribers() == 1
    # Again: still 200, still unsubscribed.
    assert site.post(unsubscribe_url(leaving), data=ONE_CLICK).status_code == 200
    assert status_of(store, leaving) == UNSUBSCRIBED


def test_one_click_post_as_multipart_also_unsubscribes(site: Running, store: Store) -> None:
    add_subscribers(store, 1)
    address = "reader00000@example.com"
    # RFC 8058 prefers multipart/form-data; the token is what counts, the body is not read.
    response = site.post(unsubscribe_url(address), files={"List-Unsubscribe": (None, "One-Click")})
    assert response.status_code == 200
    assert status_of(store, address) == UNSUBSCRIBED


def test_get_shows_a_button_and_does_not_unsubscribe(site: Running, store: Store) -> None:
    add_subscribers(store, 1)
    address = "reader00000@example.com"
    url = unsubscribe_url(address)
    for _ in range(3):  # link scanners and previews open links, sometimes more than once
        page = site.get(url)
        assert page.status_code == 200
        assert status_of(store, address) == ACTIVE
    assert address in page.text
    assert '<form method="post">' in page.text
    assert '<input type="hidden" name="List-Unsubscribe" value="One-Click">' in page.text
    assert page.headers["x-robots-tag"] == "noindex"
    assert page.headers["cache-control"] == "no-store"
    assert "set-cookie" not in page.headers
    # The page's own form: a browser posts it to the page's URL, form-encoded.
    done = site.post(url, data={"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200 and "You are unsubscribed" in done.text
    assert status_of(store, address) == UNSUBSCRIBED


def test_head_does_not_unsubscribe(site: Running, store: Store) -> None:
    add_subscribers(store, 1)
    address = "reader00000@example.com"
    response = httpx.head(site.local(unsubscribe_url(address)), timeout=10)
    assert response.status_code == 200
    assert status_of(store, address) == ACTIVE


def forged_tokens(address: str) -> list[str]:
    good = tokens.Signer(SECRET).sign(address)
    other = tokens.Signer(SECRET).sign("someone-else@example.com")
    legacy = legacy_token(address)
    head, _, sig = legacy.partition(".")
    return [
        tokens.Signer(b"another secret").sign(address),  # signed with another secret
        good[:-2],  # cut short
        good[:-6] + other[-6:],  # another address's end
        "A" * len(good),  # made up
        tokens.Signer(SECRET, tokens.CONFIRM).sign(address),  # a token for another purpose
        f"{legacy_token('someone-else@example.com').partition('.')[0]}.{sig}",
        f"{head}.{sig[:-2]}",  # an old token cut short
        f"{head}.{'A' * len(sig)}",  # an old token's signature altered
        head,  # an old token's address without its signature
        "%%%not-base64%%%",
    ]


def test_forged_or_altered_tokens_are_refused_and_change_nothing(
    site: Running, store: Store
) -> None:
    add_subscribers(store, 2)
    address = "reader00000@example.com"
    for token in forged_tokens(address):
        url = f"{BASE_URL}/unsubscribe/{token}"
        posted = site.post(url, data=ONE_CLICK)
        assert 400 <= posted.status_code < 500, (token, posted.status_code)
        assert 400 <= site.get(url).status_code < 500, token
    assert status_of(store, address) == ACTIVE
    assert store.count_subscribers() == 2


def legacy_token(address: str, secret: bytes = SECRET) -> str:
    """An unsubscribe token as issues sent before sealed tokens carried it: the address in
    base64, then the HMAC of "unsubscribe:" + address."""
    mac = hmac.new(secret, b"unsubscribe:" + address.encode(), hashlib.sha256).digest()[:16]
    return tokens.b64encode(address.encode()) + "." + tokens.b64encode(mac)


def test_tokens_made_before_sealed_tokens_still_work(site: Running, store: Store) -> None:
    """Links already in mailboxes keep working; new links never take their form."""
    add_subscribers(store, 2)
    address = "reader00001@example.com"
    old = legacy_token(address)
    assert tokens.Signer(SECRET).verify(old) == address
    assert tokens.Signer(SECRET, tokens.CONFIRM).verify(old) is None
    assert tokens.Signer(SECRET).sign(address) != old
    assert site.post(f"{BASE_URL}/unsubscribe/{old}", data=ONE_CLICK).status_code == 200
    assert status_of(store, address) == UNSUBSCRIBED
    assert status_of(store, "reader00000@example.com") == ACTIVE


def test_unsubscribe_during_campaign_stops_later_messages(
    pub: Publication, store: Store, site: Running, smtp_server: SmtpServer
) -> None:
    config = pub.config()
    # More than one batch (delivery_rows.BATCH): the second is read after the unsubscribe.
    emails = add_subscribers(store, delivery_rows.BATCH + 20)
    leaving = emails[-1]
    built = publish.build_issue(config, publish.load_issue(pub.issue))
    cid = lifecycle.create(store, built)
    answers: list[int] = []

    def progress(result: runner.RunResult) -> None:
        if result.sent == 1 and not answers:
            # The reader presses "Unsubscribe" in their mail client while the campaign runs.
            answers.append(site.post(unsubscribe_url(leaving), data=ONE_CLICK).status_code)

    result = campaign.run(store, config, cid, progress=progress)
    assert answers == [200]
    assert result.ok and result.skipped == 1
    received = smtp_server.handler.count_by_recipient()
    assert leaving not in received
    assert len(received) == len(emails) - 1
    assert delivery_rows.counts(store, cid)[SKIPPED] == 1


def test_the_link_in_a_sent_message_is_the_one_that_works(
    pub: Publication, store: Store, site: Running, smtp_server: SmtpServer
) -> None:
    config = pub.config()
    add_subscribers(store, 1)
    built = publish.build_issue(config, publish.load_issue(pub.issue))
    campaign.run(store, config, lifecycle.create(store, built))
    msg = smtp_server.received[0].parse()
    header = str(msg["List-Unsubscribe"])
    url = header.split("<", 1)[1].split(">", 1)[0]
    assert url.startswith(f"{BASE_URL}/unsubscribe/")
    assert site.post(url, data=ONE_CLICK).status_code == 200
    assert status_of(store, "reader00000@example.com") == UNSUBSCRIBED


def test_how_to_unsubscribe_page(site: Running) -> None:
    page = site.get("/unsubscribe")
    assert page.status_code == 200
    assert "How to unsubscribe" in page.text
    assert "editor@helloshuttle.com" in page.text


def test_the_public_host_name_is_accepted_and_others_are_not(site: Running) -> None:
    # A reverse proxy that passes the public Host on (nginx `proxy_set_header Host $host`).
    assert site.get("/unsubscribe", headers={"host": "news.helloshuttle.com"}).status_code == 200
    assert site.get("/unsubscribe", headers={"host": "evil.example"}).status_code == 400


def test_no_page_sets_a_cookie_or_allows_framing(site: Running, store: Store) -> None:
    add_subscribers(store, 1)
    for path in ("/", "/subscribe", "/unsubscribe", "/feed.xml", "/site.css"):
        response = site.get(path)
        assert response.status_code == 200, path
        assert "set-cookie" not in response.headers, path
        if path in ("/", "/subscribe", "/unsubscribe"):
            assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


def test_serve_command_answers_and_stops_on_sigterm(pub: Publication) -> None:
    """`newsletter serve --port 0` in a process of its own: it prints its URL, serves, and
    a SIGTERM ends it with exit code 0."""
    env = pub.subprocess_env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "serve", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("http://127.0.0.1:"), (line, proc.stderr and proc.stderr.read())
        # The socket listens before the URL is printed: the first request gets through.
        response = httpx.get(line.split()[0] + "unsubscribe", timeout=10)
        assert response.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
