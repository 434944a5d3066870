"""The console's password, for a console other machines reach (`--host`).

`[console] password_hash` holds an argon2id hash (`newsletter console --hash-password`
makes one); the password itself is never stored. With a hash set, every page but the
login page and the assets needs a session: a random id kept in this process's memory
(a restart logs everyone out), in a cookie that scripts cannot read (HttpOnly) and that
no other site's page sends along (SameSite=Strict). Actions still need the page's token.

    GET  /login     the form (?next=PATH: where to go after)
    POST /login     with the token and the password: a session, then `next`
    POST /logout    with the token: the session ends
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import quote

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from newsletter.web.console.context import Console

COOKIE = "newsletter_console"
SESSION_HOURS = 12
# Paths that answer without a session: the login page itself and the style sheet it uses.
OPEN_PATHS = ("/login", "/assets/")


def hash_password(password: str) -> str:
    """The argon2id hash of a password (argon2-cffi's defaults: RFC 9106's second
    recommended option, 64 MiB and 3 passes)."""
    return PasswordHasher().hash(password)


def password_matches(password_hash: str, password: str) -> bool:
    try:
        return PasswordHasher().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


class Sessions:
    """The logged-in sessions: random ids, each good for SESSION_HOURS."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def start(self) -> str:
        session = secrets.token_urlsafe(32)
        with self._lock:
            self._until[session] = self._clock() + SESSION_HOURS * 3600
        return session

    def valid(self, session: str | None) -> bool:
        if not session:
            return False
        with self._lock:
            until = self._until.get(session)
            if until is None:
                return False
            if until < self._clock():
                del self._until[session]
                return False
            return True

    def end(self, session: str | None) -> None:
        with self._lock:
            self._until.pop(session or "", None)


class RequireLogin:
    """Every request without a live session goes to the login page (a page GET), or is
    refused (anything else: an action, the event streams)."""

    def __init__(self, app: ASGIApp, console: Console) -> None:
        self.app = app
        self.console = console

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.console.password_hash:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        path = request.url.path
        if path.startswith(OPEN_PATHS) or self.console.sessions.valid(request.cookies.get(COOKIE)):
            await self.app(scope, receive, send)
            return
        streaming = "text/event-stream" in request.headers.get("accept", "")
        if request.method == "GET" and not streaming:
            target = path + (f"?{request.url.query}" if request.url.query else "")
            response: Response = RedirectResponse(
                f"/login?next={quote(target, safe='')}", status_code=303
            )
        else:
            response = Response("log in first: /login", status_code=401, media_type="text/plain")
        await response(scope, receive, send)


def _next_path(value: object) -> str:
    """Where to go after logging in: a path of this console, never another site."""
    text = value if isinstance(value, str) else ""
    if not text.startswith("/") or text.startswith("//") or "\\" in text:
        return "/calendar"
    return text


def routes(console: Console) -> list[BaseRoute]:
    async def login_page(request: Request) -> Response:
        return console.render(
            request, "login.html", {"next": _next_path(request.query_params.get("next"))}
        )

    async def login(request: Request) -> Response:
        form = await console.form(request)
        target = _next_path(form.get("next"))
        password = form.get("password")
        ok = bool(console.password_hash) and isinstance(password, str)
        if ok:
            ok = await console.run(password_matches, console.password_hash, password)
        if not ok:
            console.log("console: a login with a wrong password was refused")
            return console.render(
                request,
                "login.html",
                {"next": target, "login_error": "Wrong password."},
                status_code=403,
            )
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            console.sessions.start(),
            max_age=SESSION_HOURS * 3600,
            httponly=True,
            samesite="strict",
            path="/",
        )
        return response

    async def logout(request: Request) -> Response:
        await console.form(request)
        console.sessions.end(request.cookies.get(COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    return [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]
