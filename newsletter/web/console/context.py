"""What every console page shares: the publication's config and ledger, the session's
token that every action (a POST) must carry, and the page templates."""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import jinja2
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse

from newsletter.web.console.auth import Sessions

if TYPE_CHECKING:
    from newsletter.config import Config
    from newsletter.ledger.store import Store

TOKEN_FIELD = "token"
TOKEN_HEADER = "x-console-token"

# The pages' navigation: (path, label), in the order the bar shows them.
NAV = (
    ("/calendar", "Calendar"),
    ("/campaigns", "Campaigns"),
    ("/issues", "Issues"),
    ("/sponsors", "Sponsors"),
    ("/subscribers", "Subscribers"),
)

# Pages: scripts and styles from the console itself, no framing by anyone.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none';"
    " form-action 'self'"
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("newsletter.web.console", "pages"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


def asset(name: str) -> bytes:
    """One of the console's own files in pages/ (its script and style sheet)."""
    return resources.files("newsletter.web.console").joinpath("pages", name).read_bytes()


@dataclass
class Console:
    """One running console: built once by `app.console_app`, shared by every request.

    `clock` is the time the pages and actions use (tests inject theirs); `log` gets one
    line per action taken, as the CLI would print it. `password_hash` (the `[console]`
    one, given by the CLI) makes every page ask for a login (auth.py). `sending` is held
    while a campaign sends from this console (one at a time); `stopping` is set when the
    server stops, and ends the sends and the event streams."""

    config_path: Path
    config: Config
    store: Store
    clock: Callable[[], dt.datetime] = utcnow
    log: Callable[[str], None] = lambda _line: None
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    templates: jinja2.Environment = field(default_factory=_environment)
    password_hash: str = ""
    sessions: Sessions = field(default_factory=Sessions)
    sending: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)
    # The background sends started here (campaigns.py), joined when the server stops.
    senders: list[threading.Thread] = field(default_factory=list)
    # Why a background send of a campaign stopped before it began (it was busy elsewhere,
    # say): shown on the campaign's page.
    send_errors: dict[int, str] = field(default_factory=dict)

    def render(
        self,
        request: Request,
        name: str,
        context: Mapping[str, Any] | None = None,
        status_code: int = 200,
    ) -> HTMLResponse:
        """A page from pages/, with what base.html needs: the token, the navigation,
        the publication's name and time zone, and `notice` (?notice=... after an action)."""
        page = self.templates.get_template(name)
        html = page.render(
            token=self.token,
            nav=NAV,
            path=request.url.path,
            publication=self.config.publication.name,
            timezone=self.config.publication.timezone,
            notice=request.query_params.get("notice", "")[:300],
            error=request.query_params.get("error", "")[:300],
            logged_in=bool(self.password_hash),
            **(context or {}),
        )
        return HTMLResponse(
            html, status_code=status_code, headers={"content-security-policy": PAGE_CSP}
        )

    async def form(self, request: Request) -> FormData:
        """The POSTed form, after checking the session's token (a 403 otherwise): a page
        of another site cannot make the browser act here."""
        form = await request.form()
        given = form.get(TOKEN_FIELD) or request.headers.get(TOKEN_HEADER, "")
        if not isinstance(given, str) or not hmac.compare_digest(
            given.encode("utf-8", "replace"), self.token.encode()
        ):
            raise HTTPException(403, "missing or wrong console token: reload the page")
        return form

    def check_token(self, request: Request) -> None:
        """The token check of `form` for a POST without a form body (the header)."""
        given = request.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(given.encode("utf-8", "replace"), self.token.encode()):
            raise HTTPException(403, "missing or wrong console token: reload the page")

    async def run(self, func: Callable[..., Any], *args: Any) -> Any:
        """A library call (blocking: the database, SMTP) off the event loop."""
        return await anyio.to_thread.run_sync(lambda: func(*args))
