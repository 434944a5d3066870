"""The preview server over real HTTP: uvicorn on a free port on 127.0.0.1, real files, real events.

Every test works on its own copy of the sample publication (newsletter.toml,
templates/, issues/) in tmp_path, so it can break and fix files freely.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import re
import select
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from html import escape as escape_html
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import httpx
import pytest
from click.testing import CliRunner
from smtp_fixtures import SmtpServer

from newsletter import config
from newsletter.cli import cli
from newsletter.errors import NewsletterError
from newsletter.issue import publish, tracked_links
from newsletter.mail import capture
from newsletter.send import trial
from newsletter.web import preview

REPO = Path(__file__).resolve().parents[1]
SAMPLE_ISSUE = "2024-11-25-motivated-biden-authorize-ukraines-use-atacms.md"
SECRET = "preview-test-secret-0123456789abcdefghij"
WAIT_S = 5.0  # the longest any test waits for the server to notice a save


@dataclass
class Site:
    """A copy of the sample publication that a test may edit."""

    root: Path
    config: Path
    issue: Path
    templates: Path

    def edit(self, path: Path, old: str, new: str) -> str:
        """Replace the first match of `old` (a regular expression) by `new`; returns the text
        before. Saved the way editors save: a new file renamed over the old one."""
        before = path.read_text(encoding="utf-8")
        after, count = re.subn(old, lambda _: new, before, count=1, flags=re.MULTILINE)
        assert count, f"{old!r} not in {path}"
        save(path, after)
        return before

    def break_front_matter(self) -> str:
        return self.edit(self.issue, r"^---$", "---\nbroken: [not closed")


def save(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.saving")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    root = tmp_path / "site"
    root.mkdir()
    shutil.copy(REPO / "newsletter.toml", root / "newsletter.toml")
    shutil.copytree(REPO / "templates", root / "templates")
    shutil.copytree(REPO / "issues", root / "issues")
    monkeypatch.setenv("NEWSLETTER_SECRET", SECRET)
    monkeypatch.delenv("NEWSLETTER_CONFIG", raising=False)
    return Site(
        root=root,
        config=root / "newsletter.toml",
        issue=root / "issues" / SAMPLE_ISSUE,
        templates=root / "templates",
    )


Start = Callable[[preview.Preview], str]


@pytest.fixture
def start() -> Iterator[Start]:
    """Start a preview on a free port; every server started is stopped after the test."""
    servers = []

    def _start(shown: preview.Preview) -> str:
        srv = preview.server(shown, "127.0.0.1", 0)
        srv.start()
        servers.append(srv)
        return srv.url

    yield _start
    for srv in servers:
        srv.stop()


@dataclass
class Events:
    """Reads the server-sent events of a preview in a thread; `next` waits for one."""

    url: str
    versions: queue.Queue[int] = field(default_factory=queue.Queue)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        # No read timeout here: the stream ends when the server stops; `next` bounds the wait.
        timeout = httpx.Timeout(5.0, read=None)
        with contextlib.suppress(httpx.TransportError):  # a server being stopped may cut it
            with httpx.stream("GET", self.url + "events", timeout=timeout) as response:
                if not response.headers["content-type"].startswith("text/event-stream"):
                    return  # `next` then reports that no event came
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.versions.put(json.loads(line.removeprefix("data: "))["version"])

    def next(self, timeout: float = WAIT_S) -> int:
        try:
            return self.versions.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event from the preview in {timeout:.1f} s") from None

    def wait_for(self, check: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
        """Wait until `check()` holds, re-checking after every event, for at most `timeout`."""
        deadline = time.monotonic() + timeout
        while not check():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"not seen within {timeout:.1f} s: {what}")
            try:
                self.versions.get(timeout=remaining)
            except queue.Empty:
                pass


def get(url: str, path: str = "", **kwargs: object) -> httpx.Response:
    return httpx.get(url + path.lstrip("/"), timeout=5.0, **kwargs)  # type: ignore[arg-type]


def page(url: str) -> str:
    response = get(url)
    assert response.status_code == 200
    return response.text


def raw_get(url: str, target: str) -> tuple[int, bytes]:
    """A request with the target exactly as written: no client-side normalising of '..'."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=5)
    try:
        conn.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", parts.netloc)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class FakeSender:
    """Stands in for the SMTP test sender: records each call."""

    def __init__(self, fail: str | None = None) -> None:
        self.calls = 0
        self.fail = fail

    def __call__(self) -> str:
        self.calls += 1
        if self.fail:
            raise NewsletterError(self.fail)
        return "sent to 2 test recipients"


# --- the page ------------------------------------------------------------------------------


def test_page_shows_inbox_row_frames_text_headers_and_checks(site: Site, start: Start) -> None:
    url = start(preview.issue_preview(site.config, site.issue))
    response = get(url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    html = response.text
    # The inbox row: From, subject, preheader.
    assert 'class="inbox-from" title="news@helloshuttle.com">Hello Shuttle News<' in html
    assert "What Motivated Biden to Authorize Ukraine’s Use of ATACMS Against Russia?" in html
    assert "The evolving battlefield dynamics and President-elect" in html
    # Both frames, the plain text, the headers of the sample message, the checks.
    assert 'data-frame="desktop"' in html and 'data-frame="phone"' in html
    assert 'width="700"' in html and 'width="375"' in html
    assert "Hi Alex," in html  # the text part, filled for the sample subscriber
    assert '<th scope="row">List-Unsubscribe</th>' in html
    assert '<th scope="row">To</th><td>Alex &lt;reader@example.com&gt;</td>' in html
    assert "0 errors" in html and "No problems found" in html
    assert 'name="preview-token"' in html
    # The page's own assets are served, and only those.
    assert get(url, "/page/preview.js").status_code == 200
    assert get(url, "/page/preview.css").headers["content-type"].startswith("text/css")
    assert get(url, "/page/index.html").status_code == 404


def test_check_results_list_errors_first(site: Site, start: Start) -> None:
    # No postal address and a long subject: an error and a warning.
    site.edit(site.config, r"^postal_address = .*$", 'postal_address = ""')
    site.edit(site.issue, r"^subject: .*$", "subject: " + "A very long subject " * 5)
    html = page(start(preview.issue_preview(site.config, site.issue)))
    assert "finding-error" in html and "finding-warning" in html
    assert html.index("finding-error") < html.index("finding-warning")
    assert "no postal address configured" in html
    assert 'data-code="subject-long"' in html


def test_frames_are_the_bytes_build_writes(site: Site, start: Start, tmp_path: Path) -> None:
    url = start(preview.issue_preview(site.config, site.issue))
    outputs, _ = publish.write_build(config.load(site.config), site.issue, tmp_path / "build")

    frame = get(url, "/frame/issue")
    assert frame.status_code == 200
    assert frame.headers["content-type"] == "text/html; charset=utf-8"
    # build's bytes, with each tracked link's destination as its title (shown on hover).
    cfg = config.load(site.config)
    filled = publish.sample(cfg, publish.build_issue(cfg, publish.load_issue(site.issue)))
    assert filled.destinations
    built_html = outputs.html.read_text(encoding="utf-8")
    assert frame.text == tracked_links.with_titles(built_html, filled.destinations)
    for tracked, destination in filled.destinations.items():
        assert f'href="{tracked}" title="{escape_html(destination)}"' in frame.text
    assert "script-src" not in frame.headers["content-security-policy"]  # default-src 'none'
    text = get(url, "/text/issue")
    assert text.headers["content-type"] == "text/plain; charset=utf-8"
    assert text.content == outputs.text.read_bytes()

    # Images blocked: the same bytes, under a policy that keeps images from loading.
    blocked = get(url, "/frame/issue?images=off")
    assert blocked.content == frame.content
    assert "img-src 'none'" in blocked.headers["content-security-policy"]
    assert "img-src 'none'" not in frame.headers["content-security-policy"]


# --- live reload ---------------------------------------------------------------------------


def test_a_saved_issue_is_re_rendered_and_announced_within_a_second(
    site: Site, start: Start
) -> None:
    url = start(preview.issue_preview(site.config, site.issue))
    events = Events(url)
    first = events.next()

    saved = time.monotonic()
    site.edit(site.issue, r"\Z", "\n\nFresh paragraph 4711.\n")
    assert events.next() > first
    assert time.monotonic() - saved < 1.0
    events.wait_for(lambda: b"Fresh paragraph 4711." in get(url, "/frame/issue").content, "edit")
    assert "Fresh paragraph 4711." in get(url, "/text/issue").text
    assert "Fresh paragraph 4711." in page(url)


def test_templates_css_and_config_are_watched(site: Site, start: Start) -> None:
    url = start(preview.issue_preview(site.config, site.issue))
    events = Events(url)
    events.next()

    site.edit(site.templates / "email.html", "</body>", "<p>Read it on the web</p></body>")
    events.wait_for(lambda: b"Read it on the web" in get(url, "/frame/issue").content, "template")

    site.edit(site.templates / "style.css", r"\Z", "\nbody { border-top: 7px solid #abcdef; }\n")
    events.wait_for(lambda: b"#abcdef" in get(url, "/frame/issue").content, "style.css")

    site.edit(site.config, r"^name = .*$", 'name = "Renamed Briefing 42"')  # [publication]
    events.wait_for(lambda: b"Renamed Briefing 42" in get(url, "/frame/issue").content, "config")

    # A template in a new subfolder is watched too once it is included.
    (site.templates / "parts").mkdir()
    save(site.templates / "parts" / "note.html", "<p>Note one</p>\n")
    site.edit(site.templates / "email.html", "</body>", '{% include "parts/note.html" %}</body>')
    events.wait_for(lambda: b"Note one" in get(url, "/frame/issue").content, "include")
    site.edit(site.templates / "parts" / "note.html", "Note one", "Note two")
    events.wait_for(lambda: b"Note two" in get(url, "/frame/issue").content, "subfolder")


def test_broken_template_shows_file_and_line_then_recovers(site: Site, start: Start) -> None:
    url = start(preview.issue_preview(site.config, site.issue))
    events = Events(url)
    events.next()
    good = get(url, "/frame/issue").content
    template = site.templates / "email.html"

    before = site.edit(template, r"^<body>$", "<body>\n{% if %}")
    line = before[: before.index("<body>")].count("\n") + 2
    where = f"{template}:{line}: template syntax error"
    events.wait_for(lambda: where in page(url), "the template error")
    html = page(url)
    assert 'data-state="error"' in html and 'role="alert"' in html
    assert "The frames show the last version that built" in html
    # The server kept running and still serves the last good rendering.
    assert get(url, "/frame/issue").content == good

    save(template, before)
    events.wait_for(lambda: 'data-state="ok"' in page(url), "recovery")
    assert "template syntax error" not in page(url)
    assert get(url, "/frame/issue").status_code == 200


def test_broken_front_matter_and_config_show_their_error(site: Site, start: Start) -> None:
    url = start(preview.issue_preview(site.config, site.issue))
    events = Events(url)
    events.next()

    before = site.break_front_matter()
    events.wait_for(lambda: "malformed front matter" in page(url), "front matter error")
    assert f"{site.issue}:" in page(url)
    save(site.issue, before)
    events.wait_for(lambda: 'data-state="ok"' in page(url), "recovery from front matter")

    before = site.edit(site.config, r"\Z", "\nthis is not TOML\n")
    events.wait_for(lambda: "invalid TOML" in page(url), "config error")
    assert str(site.config) in page(url)
    save(site.config, before)
    events.wait_for(lambda: 'data-state="ok"' in page(url), "recovery from config")


def test_an_issue_broken_from_the_start_is_served_and_recovers(site: Site, start: Start) -> None:
    template = site.templates / "email.html"
    before = site.edit(template, "</body>", "{{ issue.no_such_thing }}</body>")
    url = start(preview.issue_preview(site.config, site.issue))
    events = Events(url)
    events.next()
    assert "undefined variable" in page(url)
    assert str(template) in page(url)
    assert get(url, "/frame/issue").status_code == 503

    save(template, before)
    events.wait_for(lambda: get(url, "/frame/issue").status_code == 200, "first good render")


# --- what is served ------------------------------------------------------------------------


TRAVERSALS = [
    "/frame/../../newsletter.toml",
    "/frame/..%2F..%2Fnewsletter.toml",
    "/frame/..%2f..%2fnewsletter.toml",
    "/frame/%2e%2e/%2e%2e/newsletter.toml",
    "/frame/%2e%2e%2f%2e%2e%2fnewsletter.toml",
    "/frame/%252e%252e%252fnewsletter.toml",
    "/frame/..%5c..%5cnewsletter.toml",
    "/frame/issue/../../newsletter.toml",
    "/text/..%2F..%2Fnewsletter.toml",
    "/page/..%2F..%2Fnewsletter.toml",
    "/page/..%2Fpreview.py",
    "/page/../preview.py",
    "/../newsletter.toml",
    "/newsletter.toml",
    "/.newsletter-secret",
    "/templates/email.html",
    f"/issues/{SAMPLE_ISSUE}",
    "//etc/passwd",
    "/frame//etc/passwd",
    "/frame/%2Fetc%2Fpasswd",
]


def test_no_file_outside_the_rendered_issue_is_served(site: Site, start: Start) -> None:
    url = start(preview.issue_preview(site.config, site.issue))
    for target in TRAVERSALS:
        status, body = raw_get(url, target)
        assert status in (400, 404), (target, status)
        assert b"[publication]" not in body and b"root:" not in body, target
        assert SECRET.encode() not in body and b"{% " not in body, target


def test_a_foreign_host_name_is_refused(site: Site, start: Start) -> None:
    # A web page whose name resolves to 127.0.0.1 (DNS rebinding) cannot read the preview.
    url = start(preview.issue_preview(site.config, site.issue))
    assert get(url, headers={"host": "attacker.example"}).status_code == 400
    assert get(url, headers={"host": "localhost"}).status_code == 200


def test_rendering_makes_no_network_requests(
    site: Site, start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    site.edit(
        site.templates / "email.html",
        "</head>",
        '<link rel="stylesheet" href="https://fonts.example.com/x.css">\n</head>',
    )
    site.edit(
        site.templates / "email.html",
        "</body>",
        '<img src="https://cdn.example.com/shuttle.png" alt="A shuttle" width="200">\n</body>',
    )
    attempts: list[object] = []
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: object) -> None:
        if not (isinstance(address, tuple) and address[0] in ("127.0.0.1", "::1")):
            attempts.append(address)
            raise OSError("network access in a test")
        real_connect(self, address)

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        if host not in ("127.0.0.1", "::1", "localhost", None):
            attempts.append(host)
            raise OSError("name lookup in a test")
        return real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    url = start(preview.issue_preview(site.config, site.issue))
    frame = get(url, "/frame/issue")
    assert frame.status_code == 200
    assert b"https://cdn.example.com/shuttle.png" in frame.content
    assert attempts == []


# --- send test -----------------------------------------------------------------------------


def test_without_a_sender_there_is_no_send_test_button(site: Site, start: Start) -> None:
    url = start(preview.issue_preview(site.config, site.issue))
    assert 'data-action="send-test"' not in page(url)
    assert httpx.post(url + "send-test", timeout=5).status_code in (404, 405)


def test_send_test_needs_the_page_token(site: Site, start: Start) -> None:
    sender = FakeSender()
    shown = preview.issue_preview(site.config, site.issue, send_test=sender)
    url = start(shown)
    html = page(url)
    assert 'data-action="send-test"' in html
    assert f'name="preview-token" content="{shown.token}"' in html

    refused = httpx.post(url + "send-test", timeout=5)
    assert refused.status_code == 403
    wrong = httpx.post(url + "send-test", headers={"x-preview-token": "guess"}, timeout=5)
    assert wrong.status_code == 403
    assert sender.calls == 0

    sent = httpx.post(url + "send-test", headers={"x-preview-token": shown.token}, timeout=5)
    assert sent.status_code == 200
    assert sent.json() == {"message": "sent to 2 test recipients"}
    assert sender.calls == 1


def test_send_test_reports_a_failed_send_and_refuses_a_broken_issue(
    site: Site, start: Start
) -> None:
    sender = FakeSender(fail="127.0.0.1:1025: connection refused")
    shown = preview.issue_preview(site.config, site.issue, send_test=sender)
    url = start(shown)
    headers = {"x-preview-token": shown.token}
    failed = httpx.post(url + "send-test", headers=headers, timeout=5)
    assert failed.status_code == 502
    assert failed.json() == {"error": "127.0.0.1:1025: connection refused"}

    events = Events(url)
    events.next()
    site.break_front_matter()
    events.wait_for(lambda: 'data-state="error"' in page(url), "the broken issue")
    refused = httpx.post(url + "send-test", headers=headers, timeout=5)
    assert refused.status_code == 409
    assert "does not build" in refused.json()["error"]
    assert sender.calls == 1


# --- the outbox ----------------------------------------------------------------------------


def _plain_message() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Someone <someone@example.com>"
    msg["To"] = "reader@example.com"
    msg["Subject"] = "Plain and simple"
    msg["Date"] = "Mon, 25 Nov 2024 08:00:00 +0000"
    msg.set_content("Only text here.\n")
    return bytes(msg)


def test_outbox_lists_captured_messages_and_shows_them(site: Site, start: Start) -> None:
    outbox = site.root / "outbox"
    outbox.mkdir()
    cfg = config.load(site.config)
    filled = publish.sample(cfg, publish.build_issue(cfg, publish.load_issue(site.issue)))
    (outbox / "1-issue.eml").write_bytes(filled.message)
    (outbox / "0-plain.eml").write_bytes(_plain_message())
    os.utime(outbox / "0-plain.eml", (1_000_000_000, 1_000_000_000))  # the older one
    (site.root / "outside.eml").write_bytes(_plain_message().replace(b"simple", b"SECRET"))
    (outbox / "link.eml").symlink_to(site.root / "outside.eml")
    os.utime(outbox / "link.eml", (900_000_000, 900_000_000), follow_symlinks=False)

    url = start(preview.outbox_preview(outbox))
    html = page(url)
    assert "1-issue.eml" in html and "0-plain.eml" in html
    # The newest is shown, the same way as an issue: inbox row, frames, text, headers.
    selected = html.index('aria-current="true"')
    assert html.index('href="/?m=1-issue.eml"', selected) < html.index("</li>", selected)
    assert "What Motivated Biden" in html and "Hi Alex," in html
    assert "Checks run on issues" in html
    assert get(url, "/frame/1-issue.eml").content == filled.html.encode("utf-8")
    assert get(url, "/text/1-issue.eml").text == filled.text

    plain = page(url + "?m=0-plain.eml")
    assert "Plain and simple" in plain and "Only text here." in plain
    assert get(url, "/frame/0-plain.eml").status_code == 200  # its text, as HTML

    # Nothing outside the folder: not by name, not through a symlink.
    for target in (
        "/frame/..%2Foutside.eml",
        "/frame/../outside.eml",
        "/frame/link.eml",
        "/text/link.eml",
        "/frame/..%2Fnewsletter.toml",
        "/?m=..%2Foutside.eml",
        "/?m=link.eml",
    ):
        status, body = raw_get(url, target)
        assert b"SECRET" not in body and b"[publication]" not in body, target
        if not target.startswith("/?"):
            assert status == 404, target

    # A message captured while the page is open shows up in the list.
    events = Events(url)
    events.next()
    (outbox / "2-new.eml").write_bytes(_plain_message().replace(b"simple", b"brand new"))
    events.wait_for(lambda: "Plain and brand new" in page(url), "the new message")


def test_outbox_shows_what_newsletter_smtpd_captured(site: Site, start: Start) -> None:
    outbox = site.root / "outbox"
    outbox.mkdir()
    url = start(preview.outbox_preview(outbox))
    events = Events(url)
    events.next()
    assert "Nothing captured yet" in page(url)

    cfg = config.load(site.config)
    filled = publish.sample(cfg, publish.build_issue(cfg, publish.load_issue(site.issue)))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = capture.start(outbox, "127.0.0.1", port)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
            client.sendmail(cfg.publication.from_addr, [cfg.sample.email], filled.message)
    finally:
        server.stop()

    events.wait_for(lambda: "1 message<" in page(url), "the captured message")
    (name,) = [p.name for p in outbox.glob("*.eml")]
    assert get(url, f"/frame/{name}").content == filled.html.encode("utf-8")
    assert get(url, f"/text/{name}").text == filled.text


# --- the command ---------------------------------------------------------------------------


def _first_line(stream: IO[str] | None, timeout: float) -> str:
    assert stream is not None
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"the command printed nothing in {timeout} s"
    return stream.readline()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT")
def test_command_prints_its_url_serves_and_exits_0_on_ctrl_c(site: Site) -> None:
    env = {**os.environ, "NEWSLETTER_SECRET": SECRET}
    command = [sys.executable, "-m", "newsletter", "--config", str(site.config), "preview"]
    proc = subprocess.Popen(
        [*command, str(site.issue), "--port", "0", "--no-open"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=site.root,
    )
    try:
        url = _first_line(proc.stdout, 20).strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        assert "What Motivated Biden" in page(url)
        events = Events(url)  # an open event stream must not keep the server from stopping
        events.next()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_command_needs_an_issue_or_an_outbox(site: Site) -> None:
    # Without ISSUE the newest in issues/ is previewed (tests/test_preview_newest.py);
    # with none there, the command says what to give.
    for issue in (site.root / "issues").glob("*.md"):
        issue.unlink()
    runner = CliRunner()
    result = runner.invoke(cli, ["--config", str(site.config), "preview", "--no-open"])
    assert result.exit_code == 2
    assert "give an ISSUE or --outbox DIR" in result.output
    both = runner.invoke(
        cli, ["--config", str(site.config), "preview", str(site.root), "--outbox", str(site.root)]
    )
    assert both.exit_code == 2


def test_command_reports_a_port_in_use_in_one_line(site: Site) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            cli,
            ["--config", str(site.config), "preview", str(site.issue), "--port", str(port)],
        )
    assert result.exit_code == 1
    assert f"127.0.0.1:{port}: cannot listen" in result.output
    assert "Traceback" not in result.output


def test_send_test_button_reaches_the_smtp_server(
    site: Site, start: Start, smtp_server: SmtpServer
) -> None:
    text = site.config.read_text(encoding="utf-8")
    text = text.replace("test_recipients = []", 'test_recipients = ["editor@example.com"]')
    site.config.write_text(text.replace("port = 1025", f"port = {smtp_server.port}"))
    sender = trial.test_sender(site.config, site.issue)
    assert sender is not None
    shown = preview.issue_preview(site.config, site.issue, send_test=sender)
    url = start(shown)
    refused = httpx.post(url + "send-test", timeout=5)
    assert refused.status_code == 403 and not smtp_server.received
    sent = httpx.post(url + "send-test", headers={"x-preview-token": shown.token}, timeout=10)
    assert sent.status_code == 200, sent.text
    assert sent.json() == {"message": "editor@example.com: sent"}
    [received] = smtp_server.received
    assert received.rcpt_tos == ["editor@example.com"]
    assert received.parse()["Subject"].startswith("[TEST] ")


def test_no_test_recipients_means_no_sender(site: Site) -> None:
    assert trial.test_sender(site.config, site.issue) is None
