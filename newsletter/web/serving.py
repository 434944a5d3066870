"""The local web stack: Starlette on uvicorn, shared by the preview and later web pages.

What every page served by the newsletter gets from here:

- `Server`: uvicorn on a socket bound up front, so the URL is known before the
  first request and a taken port is one clear error; Ctrl-C ends it quietly,
  and tests can run it in a thread and stop it.
- `Broadcast`: wakes every open server-sent-events stream when something
  changed; `event_stream` is the response that carries it to a browser.
- `application`: a Starlette app whose unknown paths get a 404, or a redirect built
  from the publication's address when only a trailing slash differs.
- `SecurityHeaders`: the headers every response carries (nosniff, no referrer, no
  framing by other sites, a Content-Security-Policy), outside everything else: the
  `Server` puts it around the host check, so a 400 for a bad Host, a 404 and a 500
  carry them as well as the pages do.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import FrameType
from typing import Any
from urllib.parse import quote

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import RedirectResponse, StreamingResponse
from starlette.routing import BaseRoute, Match, Router
from starlette.types import ASGIApp, Lifespan, Message, Receive, Scope, Send

from newsletter.errors import NewsletterError
from newsletter.hosts import is_loopback

# How long a stopping server waits for open responses before it cancels them.
GRACEFUL_SHUTDOWN_S = 2
# An idle event stream sends a comment this often, so proxies and browsers keep it open.
KEEPALIVE_S = 15.0

Headers = Mapping[str, str]

# The preview's: only its own page may frame what it serves (the send-test button is not
# clickjackable). A response that sets one of these itself keeps its own.
DEFAULT_HEADERS: Headers = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "SAMEORIGIN",
    "cache-control": "no-store",
    "content-security-policy": "default-src 'self'; frame-ancestors 'self'",
}


class Broadcast:
    """A change counter that event streams wait on; `publish` may be called from any thread."""

    def __init__(self) -> None:
        self.version = 0
        self.closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the server's event loop (from the app's lifespan)."""
        self._loop = loop
        self._changed = asyncio.Event()

    def publish(self) -> None:
        """Something changed: wake every stream. Safe from any thread, and before `bind`."""
        self._call(self._bump)

    def close(self) -> None:
        """End every stream, so that a stopping server does not wait for browsers to go."""
        self.closed = True
        self._call(self._bump)

    def _call(self, func: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            func()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            func()
        else:
            loop.call_soon_threadsafe(func)

    def _bump(self) -> None:
        self.version += 1
        changed, self._changed = self._changed, asyncio.Event() if self._loop else None
        if changed is not None:
            changed.set()

    async def wait(self, seen: int, timeout: float) -> int:
        """The version after it moves past `seen`, or the same one after `timeout` seconds."""
        changed = self._changed
        if self.version == seen and not self.closed and changed is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout)
        return self.version


def event_stream(
    broadcast: Broadcast,
    event: str,
    payload: Callable[[], dict[str, Any]],
    keepalive: float = KEEPALIVE_S,
) -> StreamingResponse:
    """Server-sent events: `event` with the JSON `payload()` now and after every change."""

    async def stream() -> AsyncIterator[str]:
        # A browser reconnects by itself after this many milliseconds if the server went away.
        yield "retry: 1000\n\n"
        seen = None
        while not broadcast.closed:
            version = broadcast.version
            if version != seen:
                seen = version
                yield f"event: {event}\ndata: {json.dumps(payload())}\n\n"
            else:
                yield ": keep-alive\n\n"
            await broadcast.wait(version, keepalive)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


class SecurityHeaders:
    """Adds `headers` to every response that does not set them itself."""

    def __init__(self, app: ASGIApp, headers: Headers = DEFAULT_HEADERS) -> None:
        self.app = app
        self._defaults = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in self._defaults if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


WILDCARD_BINDS = ("", "0.0.0.0", "::")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def allowed_hosts(host: str, names: Sequence[str] | None = None) -> list[str]:
    """Host header values to accept from a server bound to `host`.

    A loopback server answers only to loopback names, so a web page whose DNS
    name is pointed at 127.0.0.1 cannot read it (DNS rebinding). With `names` (the
    names its users type), only those, the loopback names and the address it is bound
    to: never any Host, even on 0.0.0.0. Without, a wildcard bind takes any Host.
    """
    literal = [] if host in WILDCARD_BINDS else [f"[{host}]" if ":" in host else host]
    if names is not None:
        return [*dict.fromkeys([*names, *literal, *LOOPBACK_NAMES])]
    if host in WILDCARD_BINDS:
        return ["*"]
    if is_loopback(host):
        literal += LOOPBACK_NAMES
    return literal


def application(
    routes: Sequence[BaseRoute],
    lifespan: Lifespan[Starlette] | None = None,
    headers: Headers = DEFAULT_HEADERS,
    base_url: str = "",
) -> Starlette:
    """A Starlette app with the security headers every response needs.

    With `base_url`, a path that matches a route but for a trailing slash is redirected
    to base_url + that route's path: Starlette's own redirect is built from the request's
    Host, which a client chooses."""
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders, headers=headers)],
        lifespan=lifespan,
    )
    if base_url:
        app.router.redirect_slashes = False
        app.router.default = _SlashRedirect(app.router, base_url.rstrip("/"))
    return app


class _SlashRedirect:
    """The router's answer for a path no route matches: a redirect to base_url when the
    path with or without its trailing slash matches one, else the router's 404."""

    def __init__(self, router: Router, base: str) -> None:
        self._router = router
        self._fallback = router.default
        self._base = base

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path not in ("", "/"):
            other = path[:-1] if path.endswith("/") else f"{path}/"
            moved = {**scope, "path": other}
            if any(r.matches(moved)[0] != Match.NONE for r in self._router.routes):
                query = scope.get("query_string", b"").decode("latin-1")
                url = self._base + quote(other) + (f"?{query}" if query else "")
                await RedirectResponse(url)(scope, receive, send)
                return
        await self._fallback(scope, receive, send)


def url_for(host: str, port: int) -> str:
    """The address a browser on this machine opens for a server bound to host:port."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


class _Uvicorn(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit
        self._loop: asyncio.AbstractEventLoop | None = None
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.started:
            self.ready.set()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn waits for open responses before it stops; the app's event streams
        # never end by themselves, so tell it to end them now. From the event loop, not
        # from here: a signal handler runs between any two bytecodes of the loop's own
        # code, and waking the streams there could fall inside an asyncio.Event.wait()
        # between its look at the flag and its wait, leaving a stream asleep for its
        # keep-alive (15 s), past the graceful shutdown (2 s).
        super().handle_exit(sig, frame)
        loop = self._loop
        if loop is None or loop.is_closed():
            self._on_exit()
            return
        with contextlib.suppress(RuntimeError):  # the loop closed in between
            loop.call_soon_threadsafe(self._on_exit)


class Server:
    """uvicorn serving one app on host:port (0 picks a free port).

    The socket is bound here, so `url` is known at once and a port in use is a
    NewsletterError. `run` blocks until Ctrl-C (or SIGTERM) and returns normally;
    `start`/`stop` run it in a thread, for tests.
    """

    def __init__(
        self,
        app: ASGIApp,
        host: str = "127.0.0.1",
        port: int = 0,
        on_exit: Callable[[], None] = lambda: None,
        extra_hosts: Sequence[str] = (),
        headers: Headers = DEFAULT_HEADERS,
        hosts: Sequence[str] | None = None,
    ) -> None:
        """`extra_hosts`: Host header values to accept besides those `allowed_hosts` gives,
        e.g. the public name a reverse proxy passes on; `hosts`: the only names to accept
        (with the loopback ones), whatever the address (`allowed_hosts`). `headers` go on
        every response, the host check's 400 included; `app` is the whole stack."""
        self._socket = _bind(host, port)
        self.host = host
        self.port = self._socket.getsockname()[1]
        self.url = url_for(host, self.port)
        self._on_exit = on_exit
        accepted = [*allowed_hosts(host, hosts), *extra_hosts]
        self.app: ASGIApp = SecurityHeaders(
            TrustedHostMiddleware(app, allowed_hosts=accepted), headers
        )
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            # uvicorn would take the client from X-Forwarded-For of any loopback peer (or of
            # anyone, with FORWARDED_ALLOW_IPS=*): the signup limits read it themselves, and
            # only from [signup] trusted_proxies (web/limits.py).
            proxy_headers=False,
        )
        self._server = _Uvicorn(config, on_exit)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def run(self) -> None:
        """Serve until Ctrl-C or SIGTERM; both end it quietly."""
        try:
            self._server.run(sockets=[self._socket])
        except KeyboardInterrupt:
            # uvicorn re-raises the SIGINT it handled once it has shut down cleanly.
            pass
        finally:
            self._socket.close()
        if not self._server.started:
            raise NewsletterError(f"{self.url}: the server did not start")

    def start(self, timeout: float = 15.0) -> None:
        """Serve in a background thread; returns once the app has started."""

        def target() -> None:
            try:
                self._server.run(sockets=[self._socket])
            except BaseException as exc:  # noqa: BLE001 - reported by start()
                self._error = exc

        self._thread = threading.Thread(target=target, name="newsletter-web", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.ready.wait(0.05):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise NewsletterError(f"{self.url}: the server did not start ({self._error!r})")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop a server started with `start`, waiting for it to shut down."""
        self._on_exit()
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise NewsletterError(f"{self.url}: the server did not stop in {timeout} s")
        self._socket.close()

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise NewsletterError(f"{host}: cannot listen here: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        hint = " (try another --port)" if exc.errno == errno.EADDRINUSE else ""
        raise NewsletterError(f"{host}:{port}: cannot listen: {exc.strerror}{hint}") from None
    sock.set_inheritable(True)
    return sock
