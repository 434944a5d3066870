"""Shared setup for the console's tests: a publication's console
served on a free port of 127.0.0.1, and an HTTP client for it."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from starlette.routing import BaseRoute

from newsletter import config as config_mod
from newsletter.ledger.store import Store
from newsletter.web import serving
from newsletter.web.console import app as console_app
from newsletter.web.console.context import Console


def make_console(config_path: Path, clock: Callable[[], dt.datetime] | None = None) -> Console:
    """A console for the publication of `config_path` (the `publication` fixture's copy of
    the sample, or campaign_support.make_publication's), on its own database."""
    config = config_mod.load(config_path)
    console = Console(config.path, config, Store.open(config.database_url))
    if clock is not None:
        console.clock = clock
    return console


@dataclass
class Running:
    console: Console
    server: serving.Server

    @property
    def url(self) -> str:
        return self.server.url.rstrip("/")

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kwargs)  # type: ignore[arg-type]

    def post(
        self, path: str, data: dict[str, str] | None = None, **kwargs: object
    ) -> httpx.Response:
        """A POST of a form carrying the session's token (unless `data` has one)."""
        form = {"token": self.console.token, **(data or {})}
        return httpx.post(self.url + path, data=form, timeout=10, **kwargs)  # type: ignore[arg-type]


@contextlib.contextmanager
def running(console: Console, extra_routes: list[BaseRoute] | None = None) -> Iterator[Running]:
    """The console served on a free port of 127.0.0.1 (with `extra_routes`, for tests of
    the frame itself)."""
    app = console_app.console_app(console)
    app.router.routes.extend(extra_routes or [])
    server = serving.Server(app, "127.0.0.1", 0)
    server.start()
    try:
        yield Running(console, server)
    finally:
        server.stop()
