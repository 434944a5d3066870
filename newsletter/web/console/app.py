"""The console's Starlette app and its server.

GET  /                 the calendar (a redirect)
GET  /assets/NAME      console.css, console.js
...                    every page module's routes (PAGES, each `routes(console)`)
"""

from __future__ import annotations

import importlib
import threading
import webbrowser
from collections.abc import Callable, Sequence

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from newsletter.hosts import is_loopback
from newsletter.web import serving
from newsletter.web.console.context import Console, asset

# The page modules of this package, each with `routes(console) -> list[BaseRoute]`.
PAGES: tuple[str, ...] = ("issues", "sponsors", "subscribers")

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
    ]
    for name in PAGES:
        module = importlib.import_module(f"newsletter.web.console.{name}")
        routes += module.routes(console)
    return serving.application(routes)


def server(
    console: Console, host: str = "127.0.0.1", port: int = 0, allow_hosts: Sequence[str] = ()
) -> serving.Server:
    """A server for the console, bound already: its `url` is known, `run` or `start` it."""
    hosts = list(allow_hosts) if allow_hosts else None
    return serving.Server(console_app(console), host, port, hosts=hosts)


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
