"""The console's Starlette app and its server.

GET  /                 the calendar (a redirect)
GET  /assets/NAME      console.css, console.js
GET|POST /login, POST /logout   with a [console] password (auth.py)
...                    every page module's routes (PAGES, each `routes(console)`)
"""

from __future__ import annotations

import contextlib
import importlib
import threading
import webbrowser
from collections.abc import AsyncIterator, Callable, Sequence

import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from newsletter.errors import UsageError
from newsletter.hosts import is_loopback
from newsletter.web import serving
from newsletter.web.console import auth
from newsletter.web.console.context import Console, asset

# The page modules of this package, each with `routes(console) -> list[BaseRoute]`.
PAGES: tuple[str, ...] = ("calendar", "campaigns", "issues", "sponsors", "subscribers")

# How long a stopping server waits for a send it started to finish its messages in flight.
SENDER_JOIN_S = 30.0

ASSETS = {"console.css": "text/css", "console.js": "text/javascript"}


def console_app(console: Console) -> Starlette:
    """The whole console as one ASGI app (what `server` serves and tests call)."""
    assets = {name: asset(name) for name in ASSETS}

    async def home(request: Request) -> Response:
        return RedirectResponse("/calendar", status_code=303)

    async def assets_route(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in assets:
            return PlainTextResponse("Not Found", status_code=404)
        return Response(assets[name], media_type=ASSETS[name])

    routes: list[BaseRoute] = [
        Route("/", home),
        Route("/assets/{name}", assets_route),
        *auth.routes(console),
    ]
    for name in PAGES:
        module = importlib.import_module(f"newsletter.web.console.{name}")
        routes += module.routes(console)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        console.stopping.clear()
        try:
            yield
        finally:
            # A send started here stops after its messages in flight (their replies are
            # recorded); `newsletter resume` or the console sends the rest.
            console.stopping.set()
            for thread in list(console.senders):
                await anyio.to_thread.run_sync(thread.join, SENDER_JOIN_S)

    app = serving.application(routes, lifespan=lifespan)
    app.add_middleware(auth.RequireLogin, console=console)
    return app


def server(
    console: Console, host: str = "127.0.0.1", port: int = 0, allow_hosts: Sequence[str] = ()
) -> serving.Server:
    """A server for the console, bound already: its `url` is known, `run` or `start` it.

    Other machines reach a non-loopback `host`: it needs `allow_hosts` (the preview's
    rule) and a password (`console.password_hash`); a UsageError otherwise, before
    anything is bound."""
    check_host(console.password_hash, host, allow_hosts)
    hosts = list(allow_hosts) if allow_hosts else None
    return serving.Server(
        console_app(console), host, port, on_exit=console.stopping.set, hosts=hosts
    )


def check_host(password_hash: str, host: str, allow_hosts: Sequence[str]) -> None:
    """The UsageError of `server` for these arguments, if any."""
    from newsletter.web import preview

    preview.check_allowed_hosts(host, allow_hosts, what="console")
    if not is_loopback(host) and not password_hash:
        raise UsageError(
            f"--host {host or '0.0.0.0'}: other machines reach this address; set a password"
            " first: `newsletter console --hash-password` prints the [console] password_hash"
            " line for newsletter.toml"
        )


def serve(
    console: Console,
    host: str = "127.0.0.1",
    port: int = 8030,
    open_browser: bool = False,
    announce: Callable[[str], None] = print,
    allow_hosts: Sequence[str] = (),
) -> None:
    """Serve until Ctrl-C: announce the URL, optionally open it in a browser."""
    srv = server(console, host, port, allow_hosts)
    announce(srv.url)
    if not is_loopback(host):
        console.log(f"listening on {host}: other machines can reach this console")
    if open_browser:
        # Some browsers block until closed; the server must not wait for that.
        threading.Thread(target=webbrowser.open, args=(srv.url,), daemon=True).start()
    srv.run()
