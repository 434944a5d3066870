"""/issues: every issue file with its `check` result, whether and when it went out, its
rendering, and "Send test".

    GET  /issues                  the list: check findings, campaigns, actions
    GET  /issues/NAME/view        the issue as the sample subscriber gets it, framed
    GET  /issues/NAME/frame       its HTML, byte for byte, under the preview's frame CSP
    POST /issues/NAME/send-test   with the token: send it to [preview] test_recipients

NAME is an issue file's name without ".md", looked up among the files listed: no URL is
ever made a path. The check is `newsletter check`'s (publish.check_issue, with the list
for the merge fields), the frame `newsletter build`'s HTML (publish.build_issue +
publish.sample), the test send the preview's button (send/trial.test_sender).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from newsletter.config import Config
from newsletter.errors import NewsletterError
from newsletter.issue import publish
from newsletter.issue.check import Finding
from newsletter.issue.content import Issue, issue_files, read_issue
from newsletter.ledger import issue_campaigns
from newsletter.ledger.tables import ACTIVE, CANCELLED, DONE, MISSED, RUNNING, SCHEDULED
from newsletter.schedule.timing import zone
from newsletter.send import trial
from newsletter.web.console.context import Console

# What the frame may load: the preview's frame policy (web/preview.py). The email's bytes
# are served untouched; no script of it runs, and only the console may frame it.
FRAME_CSP = (
    "default-src 'none'; img-src * data:; style-src * 'unsafe-inline'; font-src * data:;"
    " media-src *; frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
)
# How each campaign status reads in "went out".
WENT_OUT = {
    DONE: "sent",
    RUNNING: "sending",
    SCHEDULED: "scheduled",
    CANCELLED: "cancelled",
    MISSED: "missed",
}


@dataclass
class IssueRow:
    """One issue file as the list shows it."""

    name: str  # the file name without .md: the URL's NAME
    path: Path
    issue: Issue | None = None
    error: str = ""  # the file cannot be read or built: check's one line
    findings: list[Finding] = field(default_factory=list)
    campaigns: list[CampaignLine] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(f.level == "error" for f in self.findings) + bool(self.error)

    @property
    def warnings(self) -> int:
        return sum(f.level == "warning" for f in self.findings)


@dataclass(frozen=True)
class CampaignLine:
    id: int
    status: str  # as "went out" says it: sent, sending, scheduled...
    when: str  # local time in the publication's zone, "" if none
    total: int


class CheckCache:
    """Each file's check, kept while nothing it depends on changed: the issue files (a
    booking's rotation reads them all), newsletter.toml and the templates, by their
    sizes and times; and for at most FRESH_S, because the merge fields' warnings count
    the list, which changes without a file changing. A check costs a build: forty
    issues' page is some 45 times faster once kept (bench/console_issues_bench.py)."""

    FRESH_S = 60.0

    def __init__(self) -> None:
        self._kept: dict[Path, tuple[tuple[object, ...], float, list[Finding] | str]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def state(config: Config) -> tuple[object, ...]:
        def stats(paths: list[Path]) -> tuple[tuple[str, int, int], ...]:
            out = []
            for path in paths:
                with contextlib.suppress(OSError):
                    st = path.stat()
                    out.append((str(path), st.st_mtime_ns, st.st_size))
            return tuple(out)

        templates = sorted(p for p in config.templates_dir.rglob("*") if p.is_file())
        return (stats(issue_files(config.issues_dir)), stats([config.path, *templates]))

    def findings(
        self, path: Path, state: tuple[object, ...], check: Callable[[], list[Finding]]
    ) -> list[Finding]:
        """The file's findings; a NewsletterError (the file does not read or build) again
        as it was raised."""
        now = time.monotonic()
        with self._lock:
            kept = self._kept.get(path)
        if kept is None or kept[0] != state or now - kept[1] > self.FRESH_S:
            try:
                found: list[Finding] | str = check()
            except NewsletterError as exc:
                found = str(exc)
            kept = (state, now, found)
            with self._lock:
                self._kept[path] = kept
        if isinstance(kept[2], str):
            raise NewsletterError(kept[2])
        return kept[2]


def routes(console: Console) -> list[BaseRoute]:
    sending = threading.Lock()
    checks = CheckCache()

    def files() -> dict[str, Path]:
        return {path.stem: path for path in issue_files(console.config.issues_dir)}

    def lookup(name: str) -> Path:
        path = files().get(name)
        if path is None:
            raise HTTPException(404, f"no issue file {name}.md in {console.config.issues_dir}")
        return path

    def rows() -> list[IssueRow]:
        config = console.config
        sent = issue_campaigns.by_issue(console.store)
        state = checks.state(config)
        out = []
        for name, path in files().items():
            row = IssueRow(name, path)

            def check(path: Path = path) -> list[Finding]:
                return publish.check_issue(
                    config, path, audience=lambda: console.store.iter_subscribers(ACTIVE)
                )

            try:
                row.issue = read_issue(path)
                row.findings = checks.findings(path, state, check)
            except NewsletterError as exc:
                row.error = str(exc)
            if row.issue is not None:
                row.campaigns = [_line(c, config.publication.timezone) for c in
                                 sent.get(row.issue.slug, [])]  # fmt: skip
            out.append(row)
        # A file that does not read first (it needs fixing), then the newest first: the
        # one being worked on is at the top.
        out.sort(
            key=lambda r: (r.issue is None, r.issue.date if r.issue else dt.date.min, r.name),
            reverse=True,
        )
        return out

    async def listing(request: Request) -> Response:
        listed = await console.run(rows)
        recipients = console.config.preview.test_recipients
        return console.render(
            request,
            "issues.html",
            {
                "rows": listed,
                "folder": console.config.issues_dir,
                "recipients": recipients,
                "shown": lambda path: _shown(path, console.config.root),
            },
        )

    async def view(request: Request) -> Response:
        path = lookup(request.path_params["name"])
        try:
            issue = await console.run(read_issue, path)
            problem = ""
        except NewsletterError as exc:
            issue, problem = None, str(exc)
        return console.render(
            request,
            "issue_view.html",
            {
                "name": path.stem,
                "file": _shown(path, console.config.root),
                "issue": issue,
                "problem": problem,
                "recipients": console.config.preview.test_recipients,
            },
        )

    async def frame(request: Request) -> Response:
        path = lookup(request.path_params["name"])

        def build() -> str:
            config = console.config
            built = publish.build_issue(config, publish.load_issue(path))
            return publish.sample(config, built).html

        try:
            html = await console.run(build)
        except NewsletterError as exc:
            return Response(
                f"the issue does not build: {exc}", status_code=503, media_type="text/plain"
            )
        return Response(
            html.encode("utf-8"),
            media_type="text/html; charset=utf-8",
            headers={"content-security-policy": FRAME_CSP},
        )

    async def send_test(request: Request) -> Response:
        form = await console.form(request)
        path = lookup(request.path_params["name"])
        # Back to the page the button was on: the list, or the issue's own page.
        back = f"/issues#issue-{quote(path.stem)}"
        if form.get("from") == "view":
            back = f"/issues/{quote(path.stem)}/view"
        sender = trial.test_sender(console.config_path, path)
        if sender is None:
            return _back(back, error="no test recipients: set [preview] test_recipients")
        if not sending.acquire(blocking=False):
            return _back(back, error="a test send is already running")
        try:
            outcome = await console.run(sender)
        except NewsletterError as exc:
            console.log(f"test send of {path.name} failed: {exc}")
            return _back(back, error=f"test send of {path.name} failed: {exc}")
        finally:
            sending.release()
        console.log(f"test send of {path.name}: {outcome}")
        return _back(back, notice=f"test send of {path.name}: {outcome}")

    return [
        Route("/issues", listing),
        Route("/issues/{name}/view", view),
        Route("/issues/{name}/frame", frame),
        Route("/issues/{name}/send-test", send_test, methods=["POST"]),
    ]


def _line(campaign: issue_campaigns.IssueCampaign, timezone: str) -> CampaignLine:
    when = campaign.when
    local = f"{when.astimezone(zone(timezone)):%Y-%m-%d %H:%M %Z}" if when else ""
    return CampaignLine(
        campaign.id, WENT_OUT.get(campaign.status, campaign.status), local, campaign.total
    )


def _shown(path: Path, root: Path) -> str:
    """The path as the commands take it: relative to the publication when inside it."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _back(target: str, notice: str = "", error: str = "") -> Response:
    """After an action: back to the page (a GET), the outcome in one line."""
    path, _, anchor = target.partition("#")
    query = urlencode({"notice": notice} if notice else {"error": error})
    return RedirectResponse(f"{path}?{query}" + (f"#{anchor}" if anchor else ""), 303)
