"""The signup form against floods (issue 18): per client address (behind a trusted proxy
only, its header), per mailbox, per hour in all, and a bounded confirmation queue. Over
any limit the visitor gets the same page as a success, and nothing is sent: each test
counts what reached the real aiosmtpd server. Then [signup]'s new keys as the
configuration reads them, and the client address and windows on their own."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import ipaddress
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from campaign_support import Publication, add_subscribers, make_publication
from click.testing import CliRunner
from site_support import Running, running
from smtp_fixtures import FaultyHandler, SmtpServer, free_port

from newsletter import config
from newsletter.cli import cli
from newsletter.errors import ConfigError
from newsletter.web import limits

VICTIM = "victim@example.com"
NEUTRAL = "Check your inbox"


class Clock:
    """The site's clock, moved by the test: an hour passes without a sleep."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


@pytest.fixture
def pub(tmp_path: Path, database_url: str, smtp_server: SmtpServer) -> Publication:
    return make_publication(tmp_path, database_url, smtp_server.port)


def post_all(
    site: Running, forms: list[dict[str, str]], forwarded: list[str] | None = None
) -> list[tuple[int, str]]:
    """POST each form to /subscribe on one keep-alive connection (as a flooding script
    would), X-Forwarded-For the given address for each; wait for the mail thread."""
    pages = []
    with httpx.Client(base_url=site.url, timeout=10) as client:
        for n, form in enumerate(forms):
            headers = {"X-Forwarded-For": forwarded[n]} if forwarded else {}
            response = client.post("/subscribe", data=form, headers=headers)
            pages.append((response.status_code, response.text))
    site.wait_for_mail()
    return pages


def reached(smtp_server: SmtpServer) -> list[str]:
    """The recipients of the messages the SMTP server took, in order."""
    return [r.rcpt_tos[0] for r in smtp_server.received]


def variants(n: int) -> list[dict[str, str]]:
    """The flood of issue 18: victim+1@, victim+2@ ..., each a new address to the ledger."""
    return [{"email": f"victim+{i}@example.com", "name": "", "website": ""} for i in range(n)]


def others(n: int) -> list[dict[str, str]]:
    return [{"email": f"person{i}@example.com", "name": "", "website": ""} for i in range(n)]


# --- floods ----------------------------------------------------------------------------


def test_the_flood_of_issue_18_sends_one_confirmation(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    """300 POSTs for victim+N@ variants from one client, with the default [signup]: one
    message reaches the victim (once per [signup] throttle, 10 minutes), not 300."""
    with running(pub.config()) as site:
        pages = post_all(site, variants(300))
    assert reached(smtp_server) == ["victim+0@example.com"]
    # Every answer is the one a successful signup gets.
    assert pages[0][0] == 200 and NEUTRAL in pages[0][1]
    assert all(page == pages[0] for page in pages)
    # Nothing is stored for what was refused: the ledger holds the one address.
    assert pub.store().count_subscribers(None) == 1


def test_a_flood_from_many_clients_still_reaches_a_mailbox_once(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    """The same flood spread over 300 client addresses (behind a trusted proxy): the
    variants of one mailbox are one mailbox."""
    cfg = pub.config(NEWSLETTER_SIGNUP_TRUSTED_PROXIES='["127.0.0.1"]')
    with running(cfg) as site:
        clients = [f"198.51.100.{i % 250}" if i < 250 else f"2001:db8:{i}::1" for i in range(300)]
        pages = post_all(site, variants(300), clients)
    assert reached(smtp_server) == ["victim+0@example.com"]
    assert all(page == pages[0] for page in pages)


def test_one_client_gets_client_per_hour_signups(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    clock = Clock()
    with running(pub.config(NEWSLETTER_SIGNUP_CLIENT_PER_HOUR="3"), clock=clock) as site:
        pages = post_all(site, others(6))
        assert reached(smtp_server) == [f"person{i}@example.com" for i in range(3)]
        assert all(page == pages[0] for page in pages)
        clock.advance(minutes=59)
        post_all(site, others(7)[6:])
        assert len(reached(smtp_server)) == 3  # the hour is not over
        clock.advance(minutes=2)
        post_all(site, others(8)[7:])
        assert reached(smtp_server)[3:] == ["person7@example.com"]


def test_the_site_sends_per_hour_confirmations_in_all(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    clock = Clock()
    cfg = pub.config(
        NEWSLETTER_SIGNUP_PER_HOUR="4", NEWSLETTER_SIGNUP_TRUSTED_PROXIES='["127.0.0.1"]'
    )
    with running(cfg, clock=clock) as site:
        # Ten clients, ten mailboxes: each within its own limits, the site not.
        pages = post_all(site, others(10), [f"203.0.113.{i}" for i in range(10)])
        assert len(reached(smtp_server)) == 4
        assert all(page == pages[0] for page in pages)
        # What was refused was not stored: once the hour has passed, a second try sends.
        clock.advance(minutes=61)
        post_all(site, others(10)[4:6], ["203.0.113.4", "203.0.113.5"])
        assert reached(smtp_server)[4:] == ["person4@example.com", "person5@example.com"]


def test_a_signup_that_sends_nothing_takes_nothing_from_the_hour(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    """A subscribed address sends nothing, so it counts against its client (every request
    does) but not against the site's per_hour."""
    add_subscribers(pub.store(), 1)
    active = {"email": "reader00000@example.com", "name": "", "website": ""}
    cfg = pub.config(
        NEWSLETTER_SIGNUP_PER_HOUR="2", NEWSLETTER_SIGNUP_TRUSTED_PROXIES='["127.0.0.1"]'
    )
    with running(cfg) as site:
        post_all(site, others(1), ["203.0.113.1"])
        post_all(site, [active] * 5, [f"203.0.113.{i}" for i in range(2, 7)])
        post_all(site, others(2)[1:], ["203.0.113.9"])
    assert reached(smtp_server) == ["person0@example.com", "person1@example.com"]


# --- who the client is -----------------------------------------------------------------


def test_the_proxy_header_is_believed_only_from_a_trusted_proxy(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    forms = others(4)
    spoofed = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"]
    logged: list[str] = []
    # The proxies trusted are elsewhere: the header is anyone's, the client is the peer.
    elsewhere = pub.config(
        NEWSLETTER_SIGNUP_CLIENT_PER_HOUR="2", NEWSLETTER_SIGNUP_TRUSTED_PROXIES='["10.0.0.0/8"]'
    )
    with running(elsewhere, log=logged.append) as site:
        post_all(site, forms, spoofed)
    assert len(reached(smtp_server)) == 2
    warnings = [line for line in logged if "trusted_proxies" in line]
    assert warnings == [
        "signup: a request from 127.0.0.1 carries X-Forwarded-For, and 127.0.0.1 is not in"
        " [signup] trusted_proxies: the header is ignored (behind a proxy, every visitor"
        " counts as the proxy)"
    ]

    smtp_server.received.clear()
    forms = others(8)[4:]
    # No proxy trusted (the default): the same.
    with running(pub.config(NEWSLETTER_SIGNUP_CLIENT_PER_HOUR="2")) as site:
        post_all(site, forms, spoofed)
    assert len(reached(smtp_server)) == 2

    smtp_server.received.clear()
    forms = others(12)[8:]
    # The peer is a trusted proxy: each named client has a budget of its own.
    trusted = pub.config(
        NEWSLETTER_SIGNUP_CLIENT_PER_HOUR="2", NEWSLETTER_SIGNUP_TRUSTED_PROXIES="127.0.0.1"
    )
    with running(trusted) as site:
        post_all(site, forms, spoofed)
    assert len(reached(smtp_server)) == 4


def test_a_client_cannot_spoof_its_way_past_the_proxy(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    """What the client wrote into the header comes first; the proxy appends the address it
    saw: only that counts."""
    cfg = pub.config(
        NEWSLETTER_SIGNUP_CLIENT_PER_HOUR="1", NEWSLETTER_SIGNUP_TRUSTED_PROXIES='["127.0.0.1"]'
    )
    with running(cfg) as site:
        post_all(site, others(3), [f"192.0.2.{i}, 203.0.113.7" for i in range(3)])
    assert len(reached(smtp_server)) == 1


@pytest.mark.parametrize(
    ("peer", "header", "trusted", "expected"),
    [
        ("203.0.113.7", [], [], "203.0.113.7"),
        ("203.0.113.7", ["192.0.2.1"], [], "203.0.113.7"),  # not a proxy: header ignored
        ("127.0.0.1", ["192.0.2.1"], ["127.0.0.1"], "192.0.2.1"),
        ("127.0.0.1", ["192.0.2.1, 198.51.100.2"], ["127.0.0.1"], "198.51.100.2"),
        # Two proxies in a row (nginx behind a load balancer), each trusted: past both.
        ("127.0.0.1", ["192.0.2.1, 198.51.100.2, 10.1.2.3"], ["127.0.0.1", "10.0.0.0/8"],
         "198.51.100.2"),
        # Several header lines are one list, in order.
        ("127.0.0.1", ["192.0.2.1", "198.51.100.2"], ["127.0.0.1"], "198.51.100.2"),
        ("127.0.0.1", ["[2001:db8::7]:4431"], ["127.0.0.1"], "2001:db8::7"),
        ("127.0.0.1", ["198.51.100.2:8080"], ["127.0.0.1"], "198.51.100.2"),
        ("::ffff:127.0.0.1", ["192.0.2.1"], ["127.0.0.1"], "192.0.2.1"),
        # Not an address where the proxy's entry should be: the proxy is the client.
        ("127.0.0.1", ["unknown"], ["127.0.0.1"], "127.0.0.1"),
        ("127.0.0.1", [], ["127.0.0.1"], "127.0.0.1"),
        # Every hop trusted: the first is as far as we can see.
        ("127.0.0.1", ["10.0.0.1"], ["127.0.0.1", "10.0.0.0/8"], "10.0.0.1"),
    ],
)  # fmt: skip
def test_the_client_address(
    peer: str, header: list[str], trusted: list[str], expected: str
) -> None:
    found = limits.client_address(peer, header, limits.networks(trusted))
    assert found == ipaddress.ip_address(expected)


def test_an_ipv6_client_counts_by_its_64() -> None:
    one = limits.client_key(ipaddress.ip_address("2001:db8:1:2::1"))
    assert one == limits.client_key(ipaddress.ip_address("2001:db8:1:2:ffff::9"))
    assert one != limits.client_key(ipaddress.ip_address("2001:db8:1:3::1"))
    assert limits.client_key(ipaddress.ip_address("192.0.2.1")) == "192.0.2.1"
    assert limits.client_key(None) == limits.UNKNOWN


def test_a_window_slides_gives_back_and_stays_bounded() -> None:
    window = limits.Window(limit=2, seconds=60, max_keys=2)
    assert window.take("a", 0) and window.take("a", 10)
    assert not window.take("a", 59)
    assert window.take("a", 60.5)  # the first has left the window
    window.give_back("a", 60.5)
    assert window.take("a", 61)
    assert window.take("b", 61)
    assert not window.take("c", 62)  # two keys busy: no room for a third
    assert window.take("c", 200)  # both idle now: swept


# --- the queue -------------------------------------------------------------------------


@dataclasses.dataclass
class HeldHandler(FaultyHandler):
    """Takes each message only once `release` is set: messages stay in flight."""

    release: threading.Event = dataclasses.field(default_factory=threading.Event)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def held_server() -> Iterator[SmtpServer]:
    handler = HeldHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, ready_timeout=10)
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", port, handler)
    finally:
        handler.release.set()
        controller.stop()


def test_a_full_queue_drops_the_confirmation_and_says_the_same(
    tmp_path: Path, database_url: str, held_server: SmtpServer
) -> None:
    pub = make_publication(tmp_path, database_url, held_server.port)
    handler = held_server.handler
    assert isinstance(handler, HeldHandler)
    logged: list[str] = []
    cfg = pub.config(NEWSLETTER_SIGNUP_QUEUE_SIZE="2", NEWSLETTER_SIGNUP_CLIENT_PER_HOUR="20")
    with running(cfg, log=logged.append) as site:
        with httpx.Client(base_url=site.url, timeout=10) as client:
            pages = [client.post("/subscribe", data=form).text for form in others(5)]
        assert all(page == pages[0] for page in pages) and NEUTRAL in pages[0]
        dropped = [line for line in logged if "[signup] queue_size" in line]
        assert dropped == [
            f"signup: nothing sent to person{i}@example.com: 2 confirmations are waiting"
            " already ([signup] queue_size)"
            for i in (2, 3, 4)
        ]
        handler.release.set()
        site.wait_for_mail()
        assert reached(held_server) == ["person0@example.com", "person1@example.com"]
        # A dropped signup lifted its throttle: trying again sends.
        post_all(site, others(3)[2:])
    assert reached(held_server)[2:] == ["person2@example.com"]


# --- the configuration -----------------------------------------------------------------


def load_error(path: Path, environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        config.load(path, environ=environ)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_the_defaults_and_an_override(publication: Path) -> None:
    signup = config.load(publication, environ={}).signup
    assert (signup.client_per_hour, signup.per_hour, signup.queue_size) == (5, 100, 100)
    assert signup.trusted_proxies == () and signup.client_header == "X-Forwarded-For"
    env = {
        "NEWSLETTER_SIGNUP_TRUSTED_PROXIES": '["127.0.0.1", "::1", "10.0.0.0/8"]',
        "NEWSLETTER_SIGNUP_CLIENT_HEADER": "X-Real-IP",
    }
    signup = config.load(publication, environ=env).signup
    assert signup.trusted_proxies == ("127.0.0.1", "::1", "10.0.0.0/8")
    assert signup.client_header == "X-Real-IP"


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ("client_per_hour = 0", "[signup] client_per_hour: must be at least 1, got 0"),
        ("per_hour = -5", "[signup] per_hour: must be at least 1, got -5"),
        ("queue_size = 0", "[signup] queue_size: must be at least 1, got 0"),
        ('per_hour = "100"', "[signup] per_hour: expected an integer, got a string '100'"),
        ("client_per_hour = 2.5", "[signup] client_per_hour: expected an integer, got"),
        ('trusted_proxies = ["proxy.local"]',
         "[signup] trusted_proxies: expected IP addresses or networks like 127.0.0.1 or"
         " 10.0.0.0/8, got 'proxy.local'"),
        ('trusted_proxies = ["10.0.0.1/8"]', "got '10.0.0.1/8'"),  # host bits set: a slip
        ("trusted_proxies = [1]", "[signup] trusted_proxies: expected a list of strings"),
        ('client_header = "X Forwarded For"',
         "[signup] client_header: expected a header name like X-Forwarded-For, got"
         " 'X Forwarded For'"),
        ('client_header = ""\ntrusted_proxies = ["127.0.0.1"]',
         "[signup] client_header: required with trusted_proxies"),
        ('trusted_proxy = ["127.0.0.1"]',
         "unknown key 'trusted_proxy' in [signup] (did you mean 'trusted_proxies'?)"),
        ("client_per_houre = 5",
         "unknown key 'client_per_houre' in [signup] (did you mean 'client_per_hour'?)"),
    ],
)  # fmt: skip
def test_a_bad_signup_key_is_one_line_naming_it(
    publication: Path, lines: str, expected: str
) -> None:
    with publication.open("a", encoding="utf-8") as fh:
        fh.write(f"\n[signup]\n{lines}\n")
    message = load_error(publication, {})
    assert message.startswith(f"{publication}: ")
    assert expected in message


def test_a_bad_override_names_the_variable(publication: Path) -> None:
    message = load_error(publication, {"NEWSLETTER_SIGNUP_TRUSTED_PROXIES": "localhost"})
    assert "[signup] trusted_proxies: expected IP addresses" in message
    assert "got 'localhost'" in message
    message = load_error(publication, {"NEWSLETTER_SIGNUP_QUEUE_SIZE": "lots"})
    assert "NEWSLETTER_SIGNUP_QUEUE_SIZE (overriding [signup] queue_size)" in message


def test_serve_refuses_a_bad_key_in_one_line_with_exit_2(
    publication: Path, assert_user_error: Callable[..., str]
) -> None:
    with publication.open("a", encoding="utf-8") as fh:
        fh.write('\n[signup]\ntrusted_proxies = ["my-proxy"]\n')
    result = CliRunner().invoke(cli, ["--config", str(publication), "serve"])
    assert result.exit_code == 2
    assert_user_error(result, "[signup] trusted_proxies", "'my-proxy'")
