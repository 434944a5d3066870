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

    GET  /             the page (?m=NAME picks an outbox message)
    GET  /events       server-sent events: "render" after every change
    GET  /frame/KEY    the HTML part, byte for byte (?images=off blocks images)
    GET  /text/KEY     the plain-text part
    GET  /page/ASSET   the page's own script and style sheet
    POST /send-test    with the page's token: send the issue to the test recipients

KEY is "issue", or the name of a message listed in the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import email.policy
import hmac
import os
import secrets
import threading
import time
import traceback
import webbrowser
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import parseaddr, parsedate_to_datetime
from importlib import resources
from pathlib import Path
from typing import Protocol

import anyio.to_thread
import jinja2
import lxml.html
import markupsafe
import watchfiles
from lxml.etree import ParserError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from newsletter import config as config_mod
from newsletter.errors import NewsletterError
from newsletter.issue import publish
from newsletter.issue.check import Finding
from newsletter.web import serving

ISSUE_KEY = "issue"
TOKEN_HEADER = "x-preview-token"
PAGE_ASSETS = {"preview.js": "text/javascript", "preview.css": "text/css"}

# A save is re-rendered once the files have been quiet for STEP_MS, at most DEBOUNCE_MS after
# the first change: an editor's burst of writes becomes one render, well under a second.
DEBOUNCE_MS = 300
STEP_MS = 30
# The watcher wakes this often even when nothing changed; its first wake-up says it is watching.
WAKE_MS = 200
READY_TIMEOUT_S = 10.0
OUTBOX_LIMIT = 200

# What the frames may load. The email's bytes are served untouched; these headers only keep
# its scripts from running and, with images blocked, keep images from loading (alt text shows).
_FRAME_CSP = (
    "default-src 'none'; img-src * data:; style-src * 'unsafe-inline'; font-src * data:;"
    " media-src *; frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
)
_FRAME_CSP_NO_IMAGES = _FRAME_CSP.replace("img-src * data:", "img-src 'none'")
_PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; frame-src 'self'; frame-ancestors 'none';"
    " base-uri 'none'; form-action 'none'"
)

Log = Callable[[str], None]
SendTest = Callable[[], str]


def _quiet(message: str) -> None:
    pass


# --- what the page shows -------------------------------------------------------------------


@dataclass(frozen=True)
class InboxRow:
    """The message as a mail client lists it."""

    sender: str
    address: str
    subject: str
    preheader: str
    date: str


@dataclass(frozen=True)
class Rendering:
    """One message as readers get it: both parts, its headers and, for an issue, the checks."""

    html: str
    text: str
    headers: tuple[tuple[str, str], ...]
    inbox: InboxRow
    findings: tuple[Finding, ...] | None  # None: not checked (a captured message)

    @property
    def errors(self) -> int:
        return sum(f.level == "error" for f in self.findings or ())

    @property
    def warnings(self) -> int:
        return sum(f.level != "error" for f in self.findings or ())

    @property
    def html_bytes(self) -> int:
        return len(self.html.encode("utf-8"))


@dataclass(frozen=True)
class Snapshot:
    """What a source shows now: the last good rendering, and the error if the latest failed."""

    rendering: Rendering | None = None
    error: str | None = None
    rendered_at: dt.datetime | None = None
    seconds: float = 0.0


def read_message(raw: bytes, html: str | None = None, text: str | None = None) -> Rendering:
    """A Rendering of an RFC 5322 message; `html`/`text` override the parts read from it."""
    msg = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    if html is None:
        html = _part(msg, "html")
    if text is None:
        text = _part(msg, "plain")
    headers = tuple((name, " ".join(str(value).split())) for name, value in msg.items())
    name, address = parseaddr(str(msg.get("From", "")))
    inbox = InboxRow(
        sender=name or address,
        address=address,
        subject=str(msg.get("Subject", "")),
        preheader=preview_text(html) or " ".join(text.split())[:140],
        date=_short_date(str(msg.get("Date", ""))),
    )
    return Rendering(html=html, text=text, headers=headers, inbox=inbox, findings=None)


def _part(msg: EmailMessage, subtype: str) -> str:
    part = msg.get_body(preferencelist=(subtype,))
    if part is None:
        return ""
    content = part.get_content()
    if isinstance(content, bytes):
        content = content.decode("utf-8", "replace")
    # Serialised messages carry CRLF; the parts are shown (and built) with LF.
    return str(content).replace("\r\n", "\n")


def preview_text(html: str, limit: int = 140) -> str:
    """The text a mail client shows after the subject: the first text of the body.

    That is the preheader when the template starts with one, and whatever follows
    it when it is short, as in a real inbox.
    """
    if not html.strip():
        return ""
    try:
        doc = lxml.html.document_fromstring(html)
    except (ParserError, ValueError):
        return ""
    for element in doc.xpath("//head|//style|//script|//title"):
        element.drop_tree()
    text = " ".join(doc.text_content().replace("\u200c", "").replace("\u034f", "").split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def _short_date(value: str) -> str:
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return value
    return f"{when:%b} {when.day}, {when:%H:%M}"


# --- sources: an issue, or an outbox of captured messages ----------------------------------


@dataclass(frozen=True)
class WatchTargets:
    """Folders to watch (each on its own, not recursively) and which changes in them count."""

    folders: frozenset[str]
    files: frozenset[str] = frozenset()  # these files count
    trees: frozenset[str] = frozenset()  # any file in these folders counts

    def accepts(self, change: watchfiles.Change, path: str) -> bool:
        if path in self.files:
            return True
        return os.path.dirname(path) in self.trees and _DEFAULT_FILTER(change, path)


_DEFAULT_FILTER = watchfiles.DefaultFilter()


class Source(Protocol):
    mode: str
    label: str

    def refresh(self) -> bool:
        """Re-read what changed; True if the page needs to update."""
        ...

    def watch_targets(self) -> WatchTargets: ...

    def keys(self) -> list[str]: ...

    def snapshot(self, key: str | None) -> Snapshot: ...


class IssueSource:
    """One issue file, rendered as `build` renders it, with the config re-read on every save."""

    mode = "issue"

    def __init__(self, config_path: Path, issue_path: Path, log: Log = _quiet) -> None:
        self.config_path = config_path.resolve()
        self.issue_path = issue_path.resolve()
        try:  # issues/<name>.md reads better than a long absolute path
            self.label = str(self.issue_path.relative_to(self.config_path.parent))
        except ValueError:
            self.label = str(issue_path)
        self._log = log
        self._templates_dir: Path | None = None
        with contextlib.suppress(NewsletterError):  # else the first refresh reports it
            self._templates_dir = config_mod.load(self.config_path).templates_dir.resolve()
        self._snapshot = Snapshot()

    def refresh(self) -> bool:
        start = time.perf_counter()
        try:
            cfg = config_mod.load(self.config_path)
            self._templates_dir = cfg.templates_dir.resolve()
            built = publish.build_issue(cfg, publish.load_issue(self.issue_path))
            filled = publish.sample(cfg, built)
            findings = publish.check_built(cfg, built, filled)
            rendering = dataclasses.replace(
                read_message(filled.message, html=filled.html, text=filled.text),
                findings=tuple(findings),
            )
        except NewsletterError as exc:
            error = str(exc)
        except Exception as exc:  # a bug must not take the preview down: show it, log it
            error = f"unexpected error: {type(exc).__name__}: {exc}"
            self._log(traceback.format_exc().rstrip())
        else:
            seconds = time.perf_counter() - start
            self._snapshot = Snapshot(rendering, None, dt.datetime.now(), seconds)
            summary = f"{rendering.errors} error(s), {rendering.warnings} warning(s)"
            self._log(f"rendered {self.label} in {seconds * 1000:.0f} ms: {summary}")
            return True
        previous = self._snapshot
        self._snapshot = Snapshot(previous.rendering, error, dt.datetime.now(), 0.0)
        self._log(f"error: {error}")
        return True

    def watch_targets(self) -> WatchTargets:
        files = {str(self.issue_path), str(self.config_path)}
        folders = {str(self.issue_path.parent), str(self.config_path.parent)}
        trees: set[str] = set()
        if self._templates_dir is not None and self._templates_dir.is_dir():
            for folder, subfolders, _ in os.walk(self._templates_dir):
                subfolders[:] = [d for d in subfolders if not d.startswith(".")]
                trees.add(folder)
        return WatchTargets(frozenset(folders | trees), frozenset(files), frozenset(trees))

    def keys(self) -> list[str]:
        return [ISSUE_KEY]

    def snapshot(self, key: str | None) -> Snapshot:
        if key != ISSUE_KEY:
            return Snapshot(error=f"no such message: {key}")
        return self._snapshot


@dataclass(frozen=True)
class OutboxEntry:
    name: str
    subject: str
    to: str
    date: str
    mtime: float


def _stamps(seen: dict[str, tuple[tuple[int, int], OutboxEntry]]) -> dict[str, tuple[int, int]]:
    return {name: stamp for name, (stamp, _) in seen.items()}


class OutboxSource:
    """A folder of captured .eml files (what `newsletter smtpd` received), newest first."""

    mode = "outbox"

    def __init__(self, folder: Path, log: Log = _quiet) -> None:
        self.folder = folder.resolve()
        self.label = str(folder)
        self._log = log
        self._entries: list[OutboxEntry] = []
        self._seen: dict[str, tuple[tuple[int, int], OutboxEntry]] = {}
        self._rendered: dict[str, tuple[tuple[int, int], Snapshot]] = {}
        self._lock = threading.Lock()

    def refresh(self) -> bool:
        entries: list[OutboxEntry] = []
        seen: dict[str, tuple[tuple[int, int], OutboxEntry]] = {}
        for path in self._files():
            try:
                stat = path.stat()
            except OSError:
                continue
            stamp = (stat.st_mtime_ns, stat.st_size)
            cached = self._seen.get(path.name)
            entry = (
                cached[1] if cached and cached[0] == stamp else self._entry(path, stat.st_mtime)
            )
            seen[path.name] = (stamp, entry)
            entries.append(entry)
        entries.sort(key=lambda e: (-e.mtime, e.name))
        entries = entries[:OUTBOX_LIMIT]
        changed = _stamps(seen) != _stamps(self._seen)
        self._entries, self._seen = entries, seen
        with self._lock:  # forget renderings of messages that are gone
            self._rendered = {k: v for k, v in self._rendered.items() if k in seen}
        return changed

    def _files(self) -> list[Path]:
        try:
            names = os.listdir(self.folder)
        except OSError as exc:
            self._log(f"{self.folder}: cannot list: {exc.strerror}")
            return []
        paths = [self.folder / n for n in names if n.endswith(".eml") and not n.startswith(".")]
        # A symlink to a file elsewhere is not part of the outbox.
        return [p for p in paths if p.resolve().parent == self.folder]

    def _entry(self, path: Path, mtime: float) -> OutboxEntry:
        try:
            with path.open("rb") as fh:
                msg = BytesParser(policy=email.policy.default).parse(fh, headersonly=True)
            subject, to = str(msg.get("Subject", "")), str(msg.get("To", ""))
            date = _short_date(str(msg.get("Date", "")))
        except Exception as exc:  # a half-written or odd file is listed, not fatal
            subject, to, date = f"(cannot read: {exc})", "", ""
        return OutboxEntry(name=path.name, subject=subject, to=to, date=date, mtime=mtime)

    def entries(self) -> list[OutboxEntry]:
        return self._entries

    def watch_targets(self) -> WatchTargets:
        folder = str(self.folder)
        return WatchTargets(frozenset({folder}), trees=frozenset({folder}))

    def keys(self) -> list[str]:
        return [e.name for e in self._entries]

    def path(self, key: str) -> Path | None:
        """The file behind a listed name; None for anything else, whatever it looks like."""
        if key not in self.keys():
            return None
        path = self.folder / key
        # A listed name may still be a symlink to a file elsewhere: refuse to follow it out.
        if path.resolve().parent != self.folder or not path.is_file():
            return None
        return path

    def snapshot(self, key: str | None) -> Snapshot:
        if key is None:
            return Snapshot()
        path = self.path(key)
        if path is None:
            return Snapshot(error=f"no such message in {self.label}: {key}")
        try:
            stat = path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            with self._lock:
                cached = self._rendered.get(key)
            if cached and cached[0] == stamp:
                return cached[1]
            start = time.perf_counter()
            rendering = read_message(path.read_bytes())
            snap = Snapshot(rendering, None, dt.datetime.now(), time.perf_counter() - start)
        except Exception as exc:  # show a broken capture on the page, keep serving
            return Snapshot(error=f"{path}: cannot read: {exc}")
        with self._lock:
            self._rendered[key] = (stamp, snap)
        return snap


# --- watching files ------------------------------------------------------------------------


class Watcher:
    """Refreshes a source in its own thread whenever one of its files changes.

    `ready` is set once the folders are watched and the first render is done, so
    nothing saved after the server has started can be missed.
    """

    def __init__(self, source: Source, on_change: Callable[[], None], log: Log = _quiet) -> None:
        self._source = source
        self._on_change = on_change
        self._log = log
        self._stop = threading.Event()
        self.ready = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="newsletter-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        failure = ""
        while not self._stop.is_set():
            targets = self._source.watch_targets()
            first = True
            try:
                for changes in watchfiles.watch(
                    *sorted(targets.folders),
                    watch_filter=targets.accepts,
                    recursive=False,
                    debounce=DEBOUNCE_MS,
                    step=STEP_MS,
                    rust_timeout=WAKE_MS,
                    yield_on_timeout=True,
                    stop_event=self._stop,
                    raise_interrupt=False,
                ):
                    # The first wake-up means the folders are watched: render now, so that a
                    # save made while the watch was being set up is not lost.
                    if not (first or changes):
                        continue
                    first = False
                    if self._source.refresh():
                        self._on_change()
                    self.ready.set()
                    if self._source.watch_targets() != targets:
                        break  # e.g. [paths] templates now names another folder
            except (OSError, RuntimeError) as exc:  # a watched folder went away: retry shortly
                if str(exc) != failure:
                    failure = str(exc)
                    self._log(f"cannot watch the files ({exc}); retrying")
                if not self.ready.is_set():  # serve what there is all the same
                    if self._source.refresh():
                        self._on_change()
                    self.ready.set()
                self._stop.wait(0.5)


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
        log: Log = _quiet,
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

    def page(self, request: Request) -> Response:
        key = self._selected(request)
        version = self.broadcast.version
        snap = self.source.snapshot(key)
        outbox = self.source.entries() if isinstance(self.source, OutboxSource) else []
        html = self._page.render(
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
        rendering, error = self._rendering(request.path_params["key"])
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
        rendering, error = self._rendering(request.path_params["key"])
        if rendering is None:
            return PlainTextResponse(error, status_code=404 if error is None else 503)
        return Response(rendering.text.encode("utf-8"), media_type="text/plain; charset=utf-8")

    def _rendering(self, key: str) -> tuple[Rendering | None, str | None]:
        """The rendering for a key, or (None, None) for an unknown key: 404 says nothing more."""
        if key not in self.source.keys():
            return None, None
        snap = self.source.snapshot(key)
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
    log: Log = _quiet,
) -> Preview:
    """The preview of one issue; `send_test`, when given, backs a "Send test" button."""
    return Preview(IssueSource(config_path, issue, log), send_test, log)


def outbox_preview(folder: Path, log: Log = _quiet) -> Preview:
    """The preview of the .eml files captured in `folder`."""
    return Preview(OutboxSource(folder, log), None, log)


def server(preview: Preview, host: str = "127.0.0.1", port: int = 0) -> serving.Server:
    """A server for the preview, bound already: its `url` is known, `run` or `start` it."""
    return serving.Server(preview, host, port, on_exit=preview.close)


def serve(
    preview: Preview,
    host: str = "127.0.0.1",
    port: int = 8025,
    open_browser: bool = False,
    announce: Log = print,
    log: Log = _quiet,
) -> None:
    """Serve until Ctrl-C: announce the URL, optionally open it in a browser."""
    srv = server(preview, host, port)
    announce(srv.url)
    log(f"previewing {preview.source.label}; Ctrl-C to stop")
    if host not in ("127.0.0.1", "localhost", "::1"):
        log(f"listening on {host}: other machines can see this preview")
    if open_browser:
        # Some browsers block until closed; the server must not wait for that.
        threading.Thread(target=webbrowser.open, args=(srv.url,), daemon=True).start()
    srv.run()
