"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, a free port, with injectable faults."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    def parse(self) -> EmailMessage:
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class FaultyHandler:
    """Accepts mail, unless told otherwise.

    rcpt_replies / data_replies: address -> replies to give, one per attempt
    (e.g. ["451 4.3.0 try later"]); when the list is used up, the address is accepted.
    drop_at_data: message numbers (1-based, counted over DATA commands) at which
    the server closes the connection instead of answering the final dot (the client
    cannot know whether the message was taken: it is in doubt).
    drop_at_rcpt: RCPT numbers (1-based) at which the server closes the connection
    before any of that message went out (a plain dropped connection).
    delay: seconds to wait before answering DATA (to keep a campaign in flight).
    answer_late: address -> seconds to wait after taking its message (it is stored)
    before the 250, like a relay that queues at the dot and answers after the client
    gave up.
    smtputf8: advertise SMTPUTF8 (RFC 6531) and take UTF-8 addresses.
    """

    rcpt_replies: dict[str, list[str]] = field(default_factory=dict)
    data_replies: dict[str, list[str]] = field(default_factory=dict)
    drop_at_data: set[int] = field(default_factory=set)
    drop_at_rcpt: set[int] = field(default_factory=set)
    delay: float = 0.0
    answer_late: dict[str, float] = field(default_factory=dict)
    smtputf8: bool = False
    pipelining: bool = True  # advertise PIPELINING (aiosmtpd reads commands in order anyway)
    auth_ok: tuple[str, str] | None = None
    received: list[Received] = field(default_factory=list)
    ehlos: int = 0
    data_commands: int = 0
    rcpt_commands: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        with self.lock:
            self.ehlos += 1
        if self.pipelining:
            responses = [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        with self.lock:
            self.rcpt_commands += 1
            if self.rcpt_commands in self.drop_at_rcpt:
                server.transport.close()
                return "421 closing (test drop)"
            replies = self.rcpt_replies.get(address.lower())
            if replies:
                return replies.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.data_commands += 1
            n = self.data_commands
        if self.delay:
            await asyncio.sleep(self.delay)
        if n in self.drop_at_data:
            server.transport.close()
            return "421 closing (test drop)"
        rcpt = envelope.rcpt_tos[0].lower() if envelope.rcpt_tos else ""
        with self.lock:
            replies = self.data_replies.get(rcpt)
            if replies:
                return replies.pop(0)
            self.received.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
            )
        if rcpt in self.answer_late:
            await asyncio.sleep(self.answer_late[rcpt])
        return "250 2.0.0 Accepted"

    def count_by_recipient(self) -> Counter[str]:
        with self.lock:
            return Counter(r.rcpt_tos[0].lower() for r in self.received)


@dataclass
class SmtpServer:
    host: str
    port: int
    handler: FaultyHandler

    @property
    def received(self) -> list[Received]:
        return self.handler.received


@contextlib.contextmanager
def running_smtp_server(smtputf8: bool = False) -> Iterator[SmtpServer]:
    """An aiosmtpd server with a FaultyHandler on a free port of 127.0.0.1 (offering
    SMTPUTF8 when asked)."""
    handler = FaultyHandler(smtputf8=smtputf8)
    port = free_port()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        ready_timeout=10,
        enable_SMTPUTF8=smtputf8,
        decode_data=False,
    )
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", port, handler)
    finally:
        controller.stop()


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    with running_smtp_server() as server:
        yield server


@pytest.fixture
def utf8_smtp_server() -> Iterator[SmtpServer]:
    """The same server, offering SMTPUTF8 (RFC 6531)."""
    with running_smtp_server(smtputf8=True) as server:
        yield server


@pytest.fixture
def silent_server() -> Iterator[tuple[str, int]]:
    """A server that accepts connections and never sends its greeting."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
                held.append(conn)
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield ("127.0.0.1", int(sock.getsockname()[1]))
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        sock.close()
