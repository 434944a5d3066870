"""Sending from the console in tests: a publication on a real SQLite ledger whose [smtp]
is a real aiosmtpd server that can hold messages at a gate the test opens, so a campaign
stays in flight as long as the test needs, without sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from campaign_support import Publication, add_subscribers, make_publication
from console_support import make_console
from smtp_fixtures import FaultyHandler, SmtpServer, free_port

from newsletter.web.console.context import Console

GATE_TIMEOUT_S = 20.0


@dataclass
class GatedHandler(FaultyHandler):
    """Takes messages up to `hold_after`, then holds each DATA until `gate` is set (or
    GATE_TIMEOUT_S passes, so that a failed test cannot hang)."""

    hold_after: int = 10**9
    gate: threading.Event = field(default_factory=threading.Event)
    held: threading.Event = field(default_factory=threading.Event)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            waiting = self.data_commands >= self.hold_after
        if waiting and not self.gate.is_set():
            self.held.set()
            await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, GATE_TIMEOUT_S)
        return await super().handle_DATA(server, session, envelope)


@contextlib.contextmanager
def gated_smtp_server(hold_after: int = 10**9) -> Iterator[SmtpServer]:
    handler = GatedHandler(hold_after=hold_after)
    port = free_port()
    controller = Controller(
        handler, hostname="127.0.0.1", port=port, ready_timeout=10, decode_data=False
    )
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", port, handler)
    finally:
        handler.gate.set()
        controller.stop()


@dataclass
class SendingSetup:
    publication: Publication
    console: Console
    smtp: SmtpServer

    @property
    def handler(self) -> GatedHandler:
        assert isinstance(self.smtp.handler, GatedHandler)
        return self.smtp.handler


def sending_console(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    smtp: SmtpServer,
    subscribers: int = 3,
    **env: str,
) -> SendingSetup:
    """A publication sending to `smtp`, its NEWSLETTER_* overrides in the environment (the
    CLI run in the same test reads them too), `subscribers` on its list, and its console."""
    publication = make_publication(tmp_path, f"sqlite:///{tmp_path / 'console.db'}", smtp.port)
    for name, value in {**publication.env, **env}.items():
        monkeypatch.setenv(name, value)
    console = make_console(publication.config_path)
    add_subscribers(console.store, subscribers)
    return SendingSetup(publication, console, smtp)


def wait_for_sends(console: Console, timeout: float = 30.0) -> None:
    """Join the console's background sends (the test's own view of "it has finished")."""
    for thread in list(console.senders):
        thread.join(timeout)
        assert not thread.is_alive(), f"{thread.name} still sending after {timeout} s"
