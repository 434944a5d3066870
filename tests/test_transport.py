"""SMTP transport: rate, credentials, TLS verification against a real aiosmtpd server."""

from __future__ import annotations

from pathlib import Path

import pytest
import tls_fixtures
from campaign_support import make_publication
from smtp_fixtures import FaultyHandler, SmtpServer

from newsletter.mail import ratelimit, transport

MESSAGE = (
    b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\n.leading dot\r\nbody\r\n"
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_rate_limiter_spaces_messages_evenly() -> None:
    clock = FakeClock()
    limiter = ratelimit.RateLimiter(4.0, clock=clock, sleep=clock.sleep)
    for _ in range(9):
        limiter.acquire()
    assert clock.slept == [0.25] * 8
    assert clock.now == pytest.approx(102.0)


def test_rate_limiter_does_not_bank_idle_time_into_a_burst() -> None:
    clock = FakeClock()
    limiter = ratelimit.RateLimiter(2.0, clock=clock, sleep=clock.sleep)
    limiter.acquire()
    clock.now += 60  # idle for a minute
    limiter.acquire()
    limiter.acquire()
    assert clock.slept == [0.5]


def test_rate_zero_is_unlimited() -> None:
    clock = FakeClock()
    limiter = ratelimit.RateLimiter(0, clock=clock, sleep=clock.sleep)
    for _ in range(100):
        limiter.acquire()
    assert clock.slept == []


def settings(port: int, **kw: object) -> transport.SmtpSettings:
    base: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "username": "",
        "password": "",
        "timeout": 5.0,
    }
    return transport.SmtpSettings(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("pipelining", [True, False])
def test_dot_stuffing_and_reuse(smtp_server: SmtpServer, pipelining: bool) -> None:
    smtp_server.handler.pipelining = pipelining
    conn = transport.SmtpConnection(settings(smtp_server.port))
    try:
        for n in range(3):
            result = conn.send("a@example.com", f"b{n}@example.com", MESSAGE)
            assert result.status == transport.SENT and result.code == 250
    finally:
        conn.close()
    assert conn.connects == 1
    assert b"\r\n.leading dot\r\n" in smtp_server.received[0].data


@pytest.mark.parametrize("pipelining", [True, False])
def test_meanwhile_runs_after_the_message_is_written_before_its_reply(
    smtp_server: SmtpServer, pipelining: bool
) -> None:
    handler = smtp_server.handler
    handler.pipelining = pipelining
    handler.delay = 0.3  # the server holds its reply to each message this long
    handler.rcpt_replies = {"perm@example.com": ["550 5.1.1 no such user"]}
    accepted_meanwhile: list[int] = []  # messages the server had accepted when it ran

    def meanwhile() -> None:
        accepted_meanwhile.append(len(handler.received))

    conn = transport.SmtpConnection(settings(smtp_server.port))
    try:
        first = conn.send("a@example.com", "b@example.com", MESSAGE, meanwhile)
        second = conn.send("a@example.com", "c@example.com", MESSAGE, meanwhile)
        refused = conn.send("a@example.com", "perm@example.com", MESSAGE, meanwhile)
    finally:
        conn.close()
    assert first.status == second.status == transport.SENT and refused.status == transport.FAILED
    # Each time, the message being sent was not accepted yet: it ran before the reply.
    # The refused recipient's message never went out, so nothing ran for it.
    assert accepted_meanwhile == [0, 1]
    assert len(handler.received) == 2


@pytest.mark.parametrize("pipelining", [True, False])
def test_the_next_envelope_goes_ahead_of_its_message(
    smtp_server: SmtpServer, pipelining: bool
) -> None:
    handler = smtp_server.handler
    handler.pipelining = pipelining
    handler.rcpt_replies = {"perm@example.com": ["550 5.1.1 no such user"]}
    conn = transport.SmtpConnection(settings(smtp_server.port))
    try:
        sent = [
            conn.send(
                "a@example.com", "b@example.com", MESSAGE, then=("a@example.com", "c@example.com")
            )
        ]
        sent.append(
            conn.send(
                "a@example.com",
                "c@example.com",
                MESSAGE,
                then=("a@example.com", "perm@example.com"),
            )
        )
        # No message went out for perm, so d's envelope does not go ahead of one.
        refused = conn.send(
            "a@example.com", "perm@example.com", MESSAGE, then=("a@example.com", "d@example.com")
        )
        sent.append(
            conn.send(
                "a@example.com", "d@example.com", MESSAGE, then=("a@example.com", "x@example.com")
            )
        )
        conn.abandon_ahead()  # x's envelope went ahead (with PIPELINING); no message for it
        sent.append(conn.send("a@example.com", "e@example.com", MESSAGE))
    finally:
        conn.close()
    assert [r.status for r in sent] == [transport.SENT] * 4
    assert (refused.status, refused.code) == (transport.FAILED, 550)
    assert handler.count_by_recipient() == {f"{r}@example.com": 1 for r in "bcde"}
    assert all(r.data.endswith(b"body\r\n") for r in handler.received)  # no empty one
    # perm's refusal came back on the same connection; abandoning the DATA opened for
    # x hangs up (only a final dot would end it), so e needed a new one.
    assert conn.connects == (2 if pipelining else 1)


@pytest.mark.parametrize("pipelining", [True, False])
def test_reply_codes_are_classified(smtp_server: SmtpServer, pipelining: bool) -> None:
    smtp_server.handler.pipelining = pipelining
    smtp_server.handler.rcpt_replies = {
        "temp@example.com": ["450 4.2.1 mailbox busy"],
        "perm@example.com": ["550 5.1.1 no such user"],
        "bye@example.com": ["421 4.3.2 shutting down"],
    }
    conn = transport.SmtpConnection(settings(smtp_server.port))
    try:
        temp = conn.send("a@example.com", "temp@example.com", MESSAGE)
        perm = conn.send("a@example.com", "perm@example.com", MESSAGE)
        bye = conn.send("a@example.com", "bye@example.com", MESSAGE)
        after = conn.send("a@example.com", "ok@example.com", MESSAGE)
    finally:
        conn.close()
    assert (temp.status, temp.code) == (transport.DEFERRED, 450)
    assert (perm.status, perm.code) == (transport.FAILED, 550)
    assert perm.error == "550 5.1.1 no such user"
    assert (bye.status, bye.dropped) == (transport.DEFERRED, True)
    assert after.status == transport.SENT
    assert conn.connects == 2  # reconnected after the 421


def test_password_comes_from_the_named_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pub = make_publication(tmp_path, "sqlite:///x.db", 25)
    env = {"NEWSLETTER_SMTP_USERNAME": "news", "NEWSLETTER_SMTP_PASSWORD_ENV": "RELAY_PW"}
    monkeypatch.delenv("RELAY_PW", raising=False)
    with pytest.raises(transport.SmtpError, match="environment variable RELAY_PW is not set"):
        transport.SmtpSettings.from_config(pub.config(**env))
    monkeypatch.setenv("RELAY_PW", "s3cret")
    assert transport.SmtpSettings.from_config(pub.config(**env)).password == "s3cret"
    with pytest.raises(transport.SmtpError, match="password_env"):
        transport.SmtpSettings.from_config(pub.config(NEWSLETTER_SMTP_USERNAME="news"))


# --- TLS ------------------------------------------------------------------------------


# The certificate and the STARTTLS server live in tls_fixtures.py (test_doctor uses them too).
self_signed = tls_fixtures.self_signed
starttls_server = tls_fixtures.starttls_server


def test_starttls_verifies_the_certificate(starttls_server: tuple[int, FaultyHandler]) -> None:
    port, handler = starttls_server
    conn = transport.SmtpConnection(settings(port, security="starttls"))
    with pytest.raises(transport.SmtpError, match="TLS failed: CERTIFICATE_VERIFY_FAILED"):
        conn.send("a@example.com", "b@example.com", MESSAGE)
    assert not handler.received  # no fallback to plain text


def test_starttls_with_the_named_ca_sends(
    starttls_server: tuple[int, FaultyHandler], self_signed: tuple[Path, Path]
) -> None:
    port, handler = starttls_server
    conn = transport.SmtpConnection(
        settings(port, security="starttls", ca_file=str(self_signed[0]))
    )
    try:
        assert conn.send("a@example.com", "b@example.com", MESSAGE).status == transport.SENT
    finally:
        conn.close()
    assert len(handler.received) == 1


def test_a_server_refusing_the_session_is_an_error_not_a_failed_recipient(
    starttls_server: tuple[int, FaultyHandler],
) -> None:
    port, handler = starttls_server
    conn = transport.SmtpConnection(settings(port))
    try:
        with pytest.raises(
            transport.SmtpError, match="refused to take mail from a@example.com: 530"
        ):
            conn.send("a@example.com", "b@example.com", MESSAGE)
    finally:
        conn.close()
    assert not handler.received


# --- the waits of RFC 5321 section 4.5.3.2, and what a late reply means -----------------


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_reply_to_the_final_dot_after_the_timeout_is_in_doubt(
    smtp_server: SmtpServer, pipelining: bool
) -> None:
    # The server takes the message at the dot and answers after the client gave up:
    # the message is out, so it must be in doubt, never deferred (which retries it).
    handler = smtp_server.handler
    handler.pipelining = pipelining
    handler.answer_late = {"slow@example.com": 1.0}
    conn = transport.SmtpConnection(settings(smtp_server.port, dot_timeout=0.3, rcpt_timeout=5))
    try:
        late = conn.send(
            "a@example.com", "slow@example.com", MESSAGE, then=("a@example.com", "b@example.com")
        )
        after = conn.send("a@example.com", "b@example.com", MESSAGE)
    finally:
        conn.close()
    assert late.status == transport.IN_DOUBT and late.dropped
    assert "no reply to the final dot within 0.3 s" in late.error
    assert after.status == transport.SENT  # on a new connection; b's envelope was not lost
    assert handler.count_by_recipient() == {"slow@example.com": 1, "b@example.com": 1}
    assert conn.connects == 2


def test_a_connection_lost_after_the_final_dot_is_in_doubt(smtp_server: SmtpServer) -> None:
    smtp_server.handler.drop_at_data = {1}  # closes instead of answering the final dot
    conn = transport.SmtpConnection(settings(smtp_server.port))
    try:
        result = conn.send("a@example.com", "b@example.com", MESSAGE)
    finally:
        conn.close()
    assert result.status == transport.IN_DOUBT
    assert "the connection broke after the final dot" in result.error


def test_a_connection_lost_before_the_message_is_deferred(smtp_server: SmtpServer) -> None:
    smtp_server.handler.drop_at_rcpt = {1}
    conn = transport.SmtpConnection(settings(smtp_server.port))
    try:
        result = conn.send("a@example.com", "b@example.com", MESSAGE)
        again = conn.send("a@example.com", "b@example.com", MESSAGE)
    finally:
        conn.close()
    assert result.status == transport.DEFERRED and result.dropped
    assert again.status == transport.SENT and len(smtp_server.received) == 1


def test_each_wait_has_its_own_timeout(smtp_server: SmtpServer) -> None:
    # DATA's reply (after the content) is held 0.5 s: a 0.2 s dot timeout gives up,
    # while the other waits (2 s) are not what limits it.
    smtp_server.handler.delay = 0.5
    quick = settings(smtp_server.port, dot_timeout=0.2, mail_timeout=2, rcpt_timeout=2)
    patient = settings(smtp_server.port, dot_timeout=2, mail_timeout=0.2, rcpt_timeout=0.2)
    results = []
    for waits in (quick, patient):
        conn = transport.SmtpConnection(waits)
        try:
            results.append(conn.send("a@example.com", "b@example.com", MESSAGE).status)
        finally:
            conn.close()
    assert results == [transport.IN_DOUBT, transport.SENT]


def test_no_greeting_within_the_greeting_timeout(silent_server: tuple[str, int]) -> None:
    conn = transport.SmtpConnection(settings(silent_server[1], greeting_timeout=0.3))
    with pytest.raises(transport.SmtpError, match=r"no greeting within 0.3 s"):
        conn.connect()


def test_the_settings_take_every_wait_from_the_config(tmp_path: Path) -> None:
    pub = make_publication(tmp_path, "sqlite://", 2525)
    waits = ("greeting", "mail", "rcpt", "data", "block", "dot")
    env = {f"NEWSLETTER_SMTP_{w.upper()}_TIMEOUT": str(n + 1) for n, w in enumerate(waits)}
    s = transport.SmtpSettings.from_config(pub.config(**env))
    assert [getattr(s, f"{w}_timeout") for w in waits] == [1, 2, 3, 4, 5, 6]


# --- international addresses (RFC 6531) -------------------------------------------------


def test_an_international_domain_goes_out_as_its_a_label(smtp_server: SmtpServer) -> None:
    # Stored before domains were kept in ASCII, or typed on the command line.
    conn = transport.SmtpConnection(settings(smtp_server.port))
    try:
        result = conn.send("a@example.com", "user@bücher.example", MESSAGE)
    finally:
        conn.close()
    assert result.status == transport.SENT
    assert smtp_server.received[0].rcpt_tos == ["user@xn--bcher-kva.example"]


def test_a_local_part_that_is_not_ascii_fails_alone_without_smtputf8(
    smtp_server: SmtpServer,
) -> None:
    conn = transport.SmtpConnection(settings(smtp_server.port))
    try:
        refused = conn.send(
            "a@example.com", "zoë@example.com", MESSAGE, then=("a@example.com", "b@example.com")
        )
        after = conn.send("a@example.com", "b@example.com", MESSAGE)
    finally:
        conn.close()
    assert refused.status == transport.FAILED
    assert "needs SMTPUTF8 (RFC 6531)" in refused.error and "does not offer" in refused.error
    assert after.status == transport.SENT and conn.connects == 1
    assert smtp_server.handler.count_by_recipient() == {"b@example.com": 1}


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_local_part_that_is_not_ascii_goes_out_with_smtputf8(
    utf8_smtp_server: SmtpServer, pipelining: bool
) -> None:
    utf8_smtp_server.handler.pipelining = pipelining
    conn = transport.SmtpConnection(settings(utf8_smtp_server.port))
    try:
        sent = [
            conn.send(
                "a@example.com",
                "b@example.com",
                MESSAGE,
                then=("a@example.com", "zoë@bücher.example"),
            ),
            conn.send(
                "a@example.com",
                "zoë@bücher.example",
                MESSAGE,
                then=("a@example.com", "c@example.com"),
            ),
            conn.send("a@example.com", "c@example.com", MESSAGE),
        ]
    finally:
        conn.close()
    assert [r.status for r in sent] == [transport.SENT] * 3
    assert [r.rcpt_tos for r in utf8_smtp_server.received] == [
        ["b@example.com"],
        ["zoë@xn--bcher-kva.example"],
        ["c@example.com"],
    ]
