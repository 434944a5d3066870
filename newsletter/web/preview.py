"""The local preview server: see exactly what readers will see, live.

`newsletter preview ISSUE` renders the issue the way `build` does
(publish.build_issue + publish.sample, filled for the sample subscriber) and
serves one page with the HTML in a desktop and a phone frame, the plain text,
the sample message's headers and the check results. Every save of the issue,
a template, the CSS or newsletter.toml re-renders it and the page follows
(server-sent events). A render that fails shows its one-line error on the page
and the last good version stays in the frames until the next good save.
`newsletter preview --outbox DIR` shows captured .eml files the same way.

What is served, and nothing else; no URL is ever turned into a file path:

    GET  /             the page (?m=NAME picks an outbox message; ?subscriber=ADDRESS
                       fills an issue for that subscriber, with their stored attributes)
    GET  /events       server-sent events: "render" after every change
    GET  /frame/KEY    the HTML part, byte for byte (?images=off blocks images;
                       ?subscriber=ADDRESS as for the page)
    GET  /text/KEY     the plain-text part (?subscriber=ADDRESS too)
    GET  /page/ASSET   the page's own script and style sheet
    POST /send-test    with the page's token: send the issue to the test recipients

KEY is "issue", or the name of a message listed in the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
import threading
import webbrowser
from collections.abc import AsyncIterator, Callable, Sequence
from importlib import resources
from pathlib import Path
from urllib.parse import urlencode

import anyio.to_thread
import jinja2
import markupsafe
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from newsletter.errors import NewsletterError, UsageError
from newsletter.hosts import is_loopback
from newsletter.mail.eml import Rendering
from newsletter.web import serving
from newsletter.web.preview_sources import (
    ISSUE_KEY,
    IssueSource,
    Log,
    OutboxSource,
    Snapshot,
    Source,
    Watcher,
    quiet,
)

TOKEN_HEADER = "x-preview-token"
PAGE_ASSETS = {"preview.js": "text/javascript", "preview.css": "text/css"}

READY_TIMEOUT_S = 10.0

# What the frames may load. The email's bytes are served untouched; these headers only keep
# its scripts from running and, with images blocked, keep images from loading (alt text shows).
_FRAME_CSP = (
    "default-src 'none'; img-src * data:; style-src * 'unsafe-inline'; font-src * data:;"
    " media-src *; frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
)
_FRAME_CSP_NO_IMAGES = _FRAME_CSP.replace("img-src * data:", "img-src 'none'")
# The page's one form (which subscriber to fill the issue for) is a GET to the page itself.
_PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; frame-src 'self'; frame-ancestors 'none';"
    " base-uri 'none'; form-action 'self'"
)

SendTest = Callable[[], str]


# --- the web app ---------------------------------------------------------------------------


def _page_environment() -> jinja2.Environment:
    folder = resources.files("newsletter.web").joinpath("preview_page")
    return jinja2.Environment(
        loader=jinja2.DictLoader({"index.html": folder.joinpath("index.html").read_text("utf-8")}),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _page_assets() -> dict[str, bytes]:
    folder = resources.files("newsletter.web").joinpath("preview_page")
    return {name: folder.joinpath(name).read_bytes() for name in PAGE_ASSETS}


class Preview:
    """The preview of one source as an ASGI app; `close` ends its streams and its watcher."""

    def __init__(
        self,
        source: Source,
        send_test: SendTest | None = None,
        log: Log = quiet,
    ) -> None:
        self.source = source
        self.token = secrets.token_urlsafe(32)
        self.broadcast = serving.Broadcast()
        self._send_test = send_test if source.mode == "issue" else None
        self._sending = threading.Lock()
        self._log = log
        self._watcher = Watcher(source, self.broadcast.publish, log)
        self._page = _page_environment().get_template("index.html")
        self._assets = _page_assets()
        routes = [
            Route("/", self.page),
            Route("/events", self.events),
            Route("/frame/{key}", self.frame),
            Route("/text/{key}", self.text),
            Route("/page/{asset}", self.asset),
        ]
        if self._send_test is not None:
            routes.append(Route("/send-test", self.send_test, methods=["POST"]))
        self.app: Starlette = serving.application(routes, lifespan=self._lifespan)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.broadcast.bind(asyncio.get_running_loop())
        self._watcher.start()
        ready = await anyio.to_thread.run_sync(self._watcher.ready.wait, READY_TIMEOUT_S)
        if not ready:
            self._log(f"still not watching files after {READY_TIMEOUT_S:.0f} s; serving anyway")
        try:
            yield
        finally:
            self.close()
            await anyio.to_thread.run_sync(self._watcher.join)

    def close(self) -> None:
        """End the event streams and the file watcher (the server is stopping)."""
        self._watcher.stop()
        self.broadcast.close()

    # -- routes

    def _selected(self, request: Request) -> str | None:
        if self.source.mode == "issue":
            return ISSUE_KEY
        wanted = request.query_params.get("m")
        keys = self.source.keys()
        if wanted is not None:
            return wanted
        return keys[0] if keys else None

    def _subscriber(self, request: Request) -> str:
        """The subscriber the issue is filled for (?subscriber=), "" for the sample."""
        if not isinstance(self.source, IssueSource):
            return ""
        return request.query_params.get("subscriber", "").strip()[:320]

    def _snapshot(self, request: Request, key: str | None) -> Snapshot:
        subscriber = self._subscriber(request)
        if subscriber and key == ISSUE_KEY and isinstance(self.source, IssueSource):
            return self.source.for_subscriber(subscriber)
        return self.source.snapshot(key)

    def page(self, request: Request) -> Response:
        key = self._selected(request)
        version = self.broadcast.version
        snap = self._snapshot(request, key)
        outbox = self.source.entries() if isinstance(self.source, OutboxSource) else []
        subscriber = self._subscriber(request)
        html = self._page.render(
            subscriber=subscriber,
            # The frames and the text link fill the issue for the same subscriber.
            query=f"?{urlencode({'subscriber': subscriber})}" if subscriber else "",
            addresses=self.source.addresses() if isinstance(self.source, IssueSource) else [],
            mode=self.source.mode,
            label=self.source.label,
            key=key,
            version=version,
            snap=snap,
            rendering=snap.rendering,
            outbox=outbox,
            token=self.token,
            send_test=self._send_test is not None,
        )
        return HTMLResponse(html, headers={"content-security-policy": _PAGE_CSP})

    async def events(self, request: Request) -> Response:
        return serving.event_stream(
            self.broadcast, "render", lambda: {"version": self.broadcast.version}
        )

    def frame(self, request: Request) -> Response:
        rendering, error = self._rendering(request, request.path_params["key"])
        if rendering is None:
            return PlainTextResponse(error, status_code=404 if error is None else 503)
        html = rendering.html
        if not html:  # a captured message without an HTML part: show its text
            html = f"<!DOCTYPE html><pre>{markupsafe.escape(rendering.text)}</pre>"
        images_off = request.query_params.get("images") == "off"
        return Response(
            html.encode("utf-8"),
            media_type="text/html; charset=utf-8",
            headers={
                "content-security-policy": _FRAME_CSP_NO_IMAGES if images_off else _FRAME_CSP
            },
        )

    def text(self, request: Request) -> Response:
        rendering, error = self._rendering(request, request.path_params["key"])
        if rendering is None:
            return PlainTextResponse(error, status_code=404 if error is None else 503)
        return Response(rendering.text.encode("utf-8"), media_type="text/plain; charset=utf-8")

    def _rendering(self, request: Request, key: str) -> tuple[Rendering | None, str | None]:
        """The rendering for a key, or (None, None) for an unknown key: 404 says nothing more."""
        if key not in self.source.keys():
            return None, None
        snap = self._snapshot(request, key)
        if snap.rendering is None:
            return None, f"not rendered: {snap.error}"
        return snap.rendering, None

    async def asset(self, request: Request) -> Response:
        name = request.path_params["asset"]
        if name not in self._assets:
            return PlainTextResponse("Not Found", status_code=404)
        return Response(self._assets[name], media_type=PAGE_ASSETS[name])

    async def send_test(self, request: Request) -> Response:
        given = request.headers.get(TOKEN_HEADER, "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, self.token.encode()):
            return JSONResponse({"error": "missing or wrong preview token"}, status_code=403)
        snap = self.source.snapshot(ISSUE_KEY)
        if snap.error is not None or snap.rendering is None:
            return JSONResponse(
                {"error": f"the issue does not build: {snap.error}"}, status_code=409
            )
        if not self._sending.acquire(blocking=False):
            return JSONResponse({"error": "a test send is already running"}, status_code=409)
        try:
            assert self._send_test is not None
            message = await anyio.to_thread.run_sync(self._send_test)
        except NewsletterError as exc:
            self._log(f"test send failed: {exc}")
            return JSONResponse({"error": str(exc)}, status_code=502)
        finally:
            self._sending.release()
        self._log(f"test send: {message}")
        return JSONResponse({"message": message})


# --- entry points --------------------------------------------------------------------------


def issue_preview(
    config_path: Path,
    issue: Path,
    send_test: SendTest | None = None,
    log: Log = quiet,
) -> Preview:
    """The preview of one issue; `send_test`, when given, backs a "Send test" button."""
    return Preview(IssueSource(config_path, issue, log), send_test, log)


def outbox_preview(folder: Path, log: Log = quiet) -> Preview:
    """The preview of the .eml files captured in `folder`."""
    return Preview(OutboxSource(folder, log), None, log)


def server(
    preview: Preview, host: str = "127.0.0.1", port: int = 0, allow_hosts: Sequence[str] = ()
) -> serving.Server:
    """A server for the preview, bound already: its `url` is known, `run` or `start` it.

    On an address other machines reach, `allow_hosts` (the Host names its browsers use)
    is required, and only those names and the loopback ones are answered: a web page
    whose DNS name points at the preview (DNS rebinding) must not read the page, whose
    token presses "Send test". A UsageError otherwise, before anything is bound."""
    check_allowed_hosts(host, allow_hosts)
    hosts = list(allow_hosts) if allow_hosts else None
    return serving.Server(preview, host, port, on_exit=preview.close, hosts=hosts)


def check_allowed_hosts(host: str, allow_hosts: Sequence[str], what: str = "preview") -> None:
    """The UsageError of `server` for these arguments, if any (`what`: the server's name in
    the message, "preview" or "console")."""
    for name in allow_hosts:
        if not name or "*" in name or any(c in name for c in "/ @"):
            raise UsageError(f"--allow-host {name!r}: expected a host name such as preview.lan")
    if not is_loopback(host) and not allow_hosts:
        raise UsageError(
            f"--host {host or '0.0.0.0'}: other machines reach this address; name the host"
            " names their browsers use with --allow-host NAME (each is the only Host the"
            f" {what} answers, besides localhost), or keep the default 127.0.0.1"
        )


def serve(
    preview: Preview,
    host: str = "127.0.0.1",
    port: int = 8025,
    open_browser: bool = False,
    announce: Log = print,
    log: Log = quiet,
    allow_hosts: Sequence[str] = (),
) -> None:
    """Serve until Ctrl-C: announce the URL, optionally open it in a browser."""
    srv = server(preview, host, port, allow_hosts)
    announce(srv.url)
    log(f"previewing {preview.source.label}; Ctrl-C to stop")
    if not is_loopback(host):
        names = ", ".join(allow_hosts)
        log(f"listening on {host}: other machines can see this preview (as {names})")
    if open_browser:
        # Some browsers block until closed; the server must not wait for that.
        threading.Thread(target=webbrowser.open, args=(srv.url,), daemon=True).start()
    srv.run()
