"""`newsletter serve`: the publication's public pages, behind a reverse proxy at base_url.

The links and headers every message carries land here:

    GET  /                     the archive: sent issues, newest first (archive.py)
    GET  /issues/SLUG          an issue's web version: the "View in browser" link
    GET  /feed.xml             the archive as an Atom feed
    GET  /site.css             the pages' style sheet
    GET  /subscribe            the signup form ([signup] enabled)
    POST /subscribe            ask for a confirmation message (signup.py)
    GET  /confirm/TOKEN        the confirmation link: a page with a button; opening it
                               changes nothing (mail scanners open every link)
    POST /confirm/TOKEN        the button: activates the address
    GET  /unsubscribe/TOKEN    a page with a button; opening it changes nothing
    POST /unsubscribe/TOKEN    one-click unsubscribe (RFC 8058): no cookies, answers 200
    GET  /unsubscribe          how to unsubscribe (the web version's footer link)
    POST /webhooks/PROVIDER    a mail provider's bounces and complaints (webhooks.py)

Every absolute link is made from [publication] base_url, never from the request, so
the pages are the same whatever Host a proxy passes on, and the archive pages are
byte for byte what `newsletter archive export` writes. No page sets a cookie.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from types import FrameType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from newsletter import tokens
from newsletter.config import Config
from newsletter.ledger import signups
from newsletter.ledger.store import Store
from newsletter.ledger.tables import UNSUBSCRIBED, utcnow
from newsletter.send import tracking
from newsletter.web import archive, serving, signup, webhooks

MAX_FORM_BYTES = 8192
FORM_TYPE = "application/x-www-form-urlencoded"

# The archive changes only when a campaign finishes: proxies and browsers may keep it a while.
PUBLIC_CACHE = "public, max-age=300"
_PAGE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self';"
    " frame-ancestors 'none'; base-uri 'none'"
)
# An issue is an email: inline styles, images from anywhere, no scripts, no forms.
_ISSUE_CSP = (
    "default-src 'none'; img-src * data:; style-src 'unsafe-inline'; font-src * data:;"
    " frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
# On every response, the ones that set nothing themselves (the feed, redirects, a 400 for
# a bad Host, webhooks' answers): nothing to run, nothing to frame, no Referer for the
# next site (the path holds a token).
SITE_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
    "content-security-policy": (
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
}
_HTML = "text/html; charset=utf-8"
# Pages behind tokens: not for search engines, not for caches.
_PRIVATE = {"x-robots-tag": "noindex", "cache-control": "no-store"}

Log = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


class Site:
    """The public pages as an ASGI app; `close` releases the database and the mail thread."""

    def __init__(
        self,
        config: Config,
        log: Log = _quiet,
        fetch: webhooks.Fetch | None = None,
        clock: signup.Clock = utcnow,
    ) -> None:
        """`fetch` gets an https URL for the SES webhook (sns.fetch_https by default);
        `clock` tells the signups and the clicks the time (limits, links, the dedupe
        window)."""
        archive.require_base_url(config)
        self.config = config
        self._log = log
        self._clock = clock
        self.store = Store.open(config.database_url)
        try:
            self.pages = archive.Pages(config)
            self.archive = archive.Archive(self.store, config, self.pages)
            secret = tokens.load_secret(config)
            previous = tokens.previous_secrets(config)
            self._unsubscribe = tokens.Signer(secret, tokens.UNSUBSCRIBE, previous)
            self._confirm = tokens.Signer(secret, tokens.CONFIRM, previous)
            self._clicks = tracking.ClickSigner(secret, previous)
            self.signups = (
                signup.Desk(self.store, config, self._confirm, log, clock)
                if config.signup.enabled
                else None
            )
            self.outbox = self.signups.outbox if self.signups is not None else None
            self.webhooks = webhooks.Webhooks(self.store, config, secret, fetch, log)
        except BaseException:
            self.store.close()
            raise
        routes = [
            Route("/", self.index),
            Route("/issues/{slug}", self.issue),
            Route("/issues/{slug}/", self.issue),
            Route("/feed.xml", self.feed),
            Route(f"/{archive.STYLESHEET}", self.stylesheet),
            Route("/unsubscribe", self.how_to_unsubscribe),
            Route("/unsubscribe/{token}", self.unsubscribe, methods=["GET", "POST"]),
            Route("/c/{token}", self.click, methods=["GET", "HEAD"]),
            Route("/webhooks/{provider}", self.webhook, methods=["POST"]),
            Route(tokens.HEALTH_PATH, self.health, methods=["GET", "HEAD"]),
        ]
        if self.outbox is not None:
            routes += [
                Route("/subscribe", self.subscribe, methods=["GET", "POST"]),
                Route("/confirm/{token}", self.confirm, methods=["GET", "POST"]),
            ]
        self.app: Starlette = serving.application(
            routes, self._lifespan, SITE_HEADERS, base_url=config.publication.base_url
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        if self.outbox is not None:
            self.outbox.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(self.close)

    def close(self) -> None:
        """Send the confirmations still queued, then close the database."""
        if self.outbox is not None:
            self.outbox.close()
        self.store.close()

    # -- pages

    def _page(self, template: str, status: int = 200, **context: Any) -> Response:
        return Response(
            self.pages.render(template, **context),
            status_code=status,
            media_type=_HTML,
            headers={"content-security-policy": _PAGE_CSP, **_PRIVATE},
        )

    def _notice(
        self,
        heading: str,
        *paragraphs: str,
        status: int = 200,
        action: tuple[str, str] | None = None,
    ) -> Response:
        link = {"label": action[0], "href": action[1]} if action else None
        return self._page(
            "notice.html", status, heading=heading, paragraphs=paragraphs, action=link
        )

    def _not_found(self) -> Response:
        return self._notice(
            "Not found",
            "There is no such page here.",
            status=404,
            action=("Past issues", f"{self.pages.root}/"),
        )

    def health(self, request: Request) -> Response:
        """That `serve` answers at base_url (`doctor` asks when clicks are tracked)."""
        return Response(
            tokens.HEALTH_ANSWER + "\n",
            media_type="text/plain; charset=utf-8",
            headers={"cache-control": "no-store"},
        )

    # -- the archive

    def index(self, request: Request) -> Response:
        return self._archive_page(self.archive.index())

    def issue(self, request: Request) -> Response:
        page = self.archive.web_version(request.path_params["slug"])
        if page is None:
            return self._not_found()
        return Response(
            page,
            media_type=_HTML,
            headers={"content-security-policy": _ISSUE_CSP, "cache-control": PUBLIC_CACHE},
        )

    def feed(self, request: Request) -> Response:
        return Response(
            self.archive.feed(),
            media_type="application/atom+xml; charset=utf-8",
            headers={"cache-control": PUBLIC_CACHE},
        )

    def stylesheet(self, request: Request) -> Response:
        return Response(
            self.pages.stylesheet,
            media_type="text/css; charset=utf-8",
            headers={"cache-control": PUBLIC_CACHE},
        )

    def _archive_page(self, page: bytes) -> Response:
        return Response(
            page,
            media_type=_HTML,
            headers={"content-security-policy": _PAGE_CSP, "cache-control": PUBLIC_CACHE},
        )

    # -- click tracking

    async def click(self, request: Request) -> Response:
        """Record a tracked click and redirect to the link's own URL (UTM kept).

        The URL comes from the campaign's link table, never from the request: a
        forged or altered token is a 404 without a Location, never an open redirect.
        Every request is recorded; HEAD requests, crawlers and mail scanners (by user
        agent) and clicks right after delivery are bots', and a reader's clicks on the
        link count once per [tracking] dedupe_window (send/tracking.record_click).
        """
        found = await anyio.to_thread.run_sync(
            functools.partial(
                tracking.record_click,
                self.store,
                self._clicks,
                request.path_params["token"],
                head=request.method == "HEAD",
                user_agent=request.headers.get("user-agent", ""),
                rules=self.config.tracking,
                now=self._clock(),
            )
        )
        if found is None:
            return self._not_found()
        return RedirectResponse(found.url, status_code=302)

    # -- unsubscribing

    async def unsubscribe(self, request: Request) -> Response:
        email = self._unsubscribe.verify(request.path_params["token"])
        if email is None:
            return self._bad_link("unsubscribe")
        if request.method != "POST":
            # Link checkers and previews open links: a GET only shows the button.
            return self._page("unsubscribe.html", email=email)
        # RFC 8058: the token in the URL is the authority; the body (List-Unsubscribe=
        # One-Click, form-encoded or multipart) and cookies are not needed, so not read.
        known = await anyio.to_thread.run_sync(
            self.store.set_subscriber_status, email, UNSUBSCRIBED
        )
        self._log(f"unsubscribed {email}" if known else f"unsubscribe: {email} is not on the list")
        return self._notice(
            "You are unsubscribed",
            f"{email} will get no more issues of {self.config.publication.name}.",
            "Changed your mind? You can subscribe again at any time.",
            action=("Past issues", f"{self.pages.root}/"),
        )

    def how_to_unsubscribe(self, request: Request) -> Response:
        pub = self.config.publication
        contact = pub.reply_to or pub.from_addr
        return self._notice(
            "How to unsubscribe",
            f"Every issue of {pub.name} ends with an Unsubscribe link made for the address it"
            " was sent to: follow it and press the button, and no more issues come.",
            f"Cannot find it? Reply to any issue, or write to {contact}.",
        )

    def _bad_link(self, what: str) -> Response:
        return self._notice(
            "This link does not work",
            f"This {what} link is not valid: it may have been cut short or changed."
            " Open it again from the message, or copy the whole link into the address bar.",
            status=400,
        )

    # -- bounce webhooks

    async def webhook(self, request: Request) -> Response:
        """A provider's report: verified, recorded once, answered in a word (webhooks.py)."""
        provider = request.path_params["provider"]
        if provider not in self.webhooks.providers:
            answer = webhooks.NOT_FOUND
        else:
            body = await _read_body(request, webhooks.MAX_BODY_BYTES)
            if body is None:
                answer = webhooks.TOO_LARGE
            else:
                answer = await anyio.to_thread.run_sync(
                    self.webhooks.receive, provider, body, request.headers
                )
        return Response(
            answer.text, status_code=answer.status, media_type="text/plain", headers=answer.headers
        )

    # -- signing up

    async def subscribe(self, request: Request) -> Response:
        if request.method != "POST":
            return self._page("subscribe.html", problem="", email="", name="")
        form = await _read_form(request)
        if isinstance(form, Response):
            return form
        desk = self.signups
        assert desk is not None
        peer = request.client.host if request.client else None
        client = desk.client(peer, request.headers.getlist(desk.client_header))
        result = await anyio.to_thread.run_sync(
            functools.partial(
                desk.ask,
                client,
                form.get("email", ""),
                form.get("name", ""),
                form.get("website", ""),
            )
        )
        if result.outcome == signup.INVALID:
            return self._page(
                "subscribe.html",
                status=400,
                problem=f"That is not an email address we can send to: {result.problem}",
                email=form.get("email", ""),
                name=form.get("name", ""),
            )
        # The same answer whatever became of it (sent, throttled, over a limit, subscribed
        # already): the page tells nobody who is subscribed.
        return self._notice(
            "Check your inbox",
            "A message with a link to confirm the subscription is on its way to the address"
            " you gave. Nothing more is sent until the link is followed.",
            "Subscribed already? Then there is nothing to do: the issues keep coming.",
        )

    async def confirm(self, request: Request) -> Response:
        desk = self.signups
        assert desk is not None
        token = request.path_params["token"]
        # Mail scanners and previews open (GET, HEAD) every link: only the button confirms.
        follow = desk.confirm if request.method == "POST" else desk.look
        result = await anyio.to_thread.run_sync(follow, token)
        name = self.config.publication.name
        past = ("Past issues", f"{self.pages.root}/")
        again = ("Sign up again", f"{self.pages.root}/subscribe")
        if result.outcome == signups.READY:
            return self._page("confirm.html", email=result.email, name=result.name)
        if result.outcome in (signups.CONFIRMED, signups.ALREADY_CONFIRMED):
            return self._notice(
                "You are subscribed",
                f"The next issue of {name} will reach {result.email}.",
                "Every issue ends with a link to unsubscribe in one click.",
                action=past,
            )
        if result.outcome == signup.FORGED:
            return self._bad_link("confirmation")
        what = "has expired" if result.outcome == signup.EXPIRED else "is no longer valid"
        return self._notice(
            "This link has run out",
            f"This confirmation link {what}. Sign up again to get a new one.",
            status=400,
            action=again,
        )


async def _read_form(request: Request) -> dict[str, str] | Response:
    """The fields of a small form-encoded body (the first value of each name)."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != FORM_TYPE:
        return Response(f"expected {FORM_TYPE}", status_code=415, media_type="text/plain")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return Response("form too large", status_code=413, media_type="text/plain")
    try:
        pairs = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=20
        )
    except (UnicodeDecodeError, ValueError):
        return Response("cannot read the form", status_code=400, media_type="text/plain")
    fields: dict[str, str] = {}
    for name, value in pairs:
        fields.setdefault(name, value)
    return fields


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None when it is longer than `limit` bytes (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


# --- entry points ---------------------------------------------------------------------------


def public_hosts(config: Config) -> list[str]:
    """The Host names a reverse proxy may pass on: base_url's."""
    host = urlsplit(config.publication.base_url).hostname
    return [host] if host else []


def server(site: Site, host: str = "127.0.0.1", port: int = 0) -> serving.Server:
    """A server for the site, bound already: its `url` is known, `run` or `start` it."""
    return serving.Server(
        site, host, port, extra_hosts=public_hosts(site.config), headers=SITE_HEADERS
    )


def serve(
    config: Config,
    host: str = "127.0.0.1",
    port: int = 8080,
    announce: Log = print,
    log: Log = _quiet,
) -> None:
    """Serve until Ctrl-C or SIGTERM."""
    site = Site(config, log)
    try:
        srv = server(site, host, port)
        announce(f"{srv.url} (public address: {config.publication.base_url})")
        if not config.signup.enabled:
            log("signup is off ([signup] enabled = false): /subscribe is not served")
        with _sigterm_as_interrupt():
            srv.run()
    finally:
        site.close()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """uvicorn stops on SIGTERM, then raises it again with the handler it found; make that
    handler end the process like Ctrl-C does: quietly, exit code 0 (systemd's stop)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
