"""The local web stack: Starlette on uvicorn, shared by the preview and later web pages.

What every page served by the newsletter gets from here:

- `Server`: uvicorn on a socket bound up front, so the URL is known before the
  first request and a taken port is one clear error; Ctrl-C ends it quietly,
  and tests can run it in a thread and stop it.
- `Broadcast`: wakes every open server-sent-events stream when something
  changed; `event_stream` is the response that carries it to a browser.
- `application`: a Starlette app with the security headers every response needs
  (the server adds the host check that fits the address it listens on).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import StreamingResponse
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Lifespan, Message, Receive, Scope, Send

from newsletter.errors import NewsletterError
from newsletter.hosts import is_loopback

# How long a stopping server waits for open responses before it cancels them.
GRACEFUL_SHUTDOWN_S = 2
# An idle event stream sends a comment this often, so proxies and browsers keep it open.
KEEPALIVE_S = 15.0

DEFAULT_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    # Only our own pages may frame what we serve (the send-test button is not clickjackable).
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


class _DefaultHeaders:
    """Adds DEFAULT_HEADERS to every response that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._defaults = [(k.encode(), v.encode()) for k, v in DEFAULT_HEADERS.items()]

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


def allowed_hosts(host: str) -> list[str]:
    """Host header values to accept.

    A loopback server answers only to loopback names, so a web page whose DNS
    name is pointed at 127.0.0.1 cannot read it (DNS rebinding).
    """
    if host in ("", "0.0.0.0", "::"):
        return ["*"]
    names = [host, f"[{host}]"] if ":" in host else [host]
    if is_loopback(host):
        names += ["localhost", "127.0.0.1", "[::1]"]
    return names


def application(
    routes: Sequence[BaseRoute], lifespan: Lifespan[Starlette] | None = None
) -> Starlette:
    """A Starlette app with the default headers every page needs."""
    return Starlette(routes=routes, middleware=[Middleware(_DefaultHeaders)], lifespan=lifespan)


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
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.ready.set()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn waits for open responses before it stops; the app's event streams
        # never end by themselves, so tell it to end them now.
        super().handle_exit(sig, frame)
        self._on_exit()


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
    ) -> None:
        """`extra_hosts`: Host header values to accept besides those `allowed_hosts` gives,
        e.g. the public name a reverse proxy passes on."""
        self._socket = _bind(host, port)
        self.host = host
        self.port = self._socket.getsockname()[1]
        self.url = url_for(host, self.port)
        self._on_exit = on_exit
        config = uvicorn.Config(
            TrustedHostMiddleware(app, allowed_hosts=[*allowed_hosts(host), *extra_hosts]),
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
