"""The README's quick start, tour and `init` walkthrough run as written.

Each shell block is run line by line in a throwaway copy of the repository, the way a
reader types it, with the installed `newsletter` on PATH. Only three things differ from
a reader's terminal, and all keep the traffic on 127.0.0.1: the servers get free ports
(the capture server the port newsletter.toml's SMTP host is pointed at through
NEWSLETTER_SMTP_PORT), doctor's DNS lookups and web checks answer "unreachable" (a
sitecustomize in tests/offline_site), and `send --all` is answered "y".
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from smtp_fixtures import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
VENV_BIN = Path(sys.executable).parent  # not resolved: the venv's bin, with `newsletter`
SITE_DIR = Path(__file__).resolve().parent / "offline_site"
# What the tour needs of the repository: the sample publication, its list and article.
COPIED = ["newsletter.toml", "templates", "issues", "examples", "subscribers.csv", "Makefile"]
COPIED_FOR_MAKE = ["pyproject.toml", "README.md"]
SERVERS = ("smtpd", "preview", "serve")
WAIT_SECONDS = 30.0


def section(heading: str) -> str:
    """The README text from `heading` (a `## ` line) to the next `## ` heading."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def shell_lines(text: str) -> list[str]:
    """The commands of every ```sh block in `text`: continuations joined, comments and
    blank lines left out."""
    lines: list[str] = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M):
        pending = ""
        for raw in block.splitlines():
            line = pending + raw
            if line.rstrip().endswith("\\"):
                pending = line.rstrip()[:-1] + " "
                continue
            pending = ""
            command = strip_comment(line).strip()
            if command:
                lines.append(command)
    return lines


def strip_comment(line: str) -> str:
    """`line` without a trailing `# comment`: a # outside quotes, after a blank."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


@dataclass
class Terminal:
    """A reader's shell session: a current folder, an environment and background jobs."""

    cwd: Path
    env: dict[str, str]
    smtp_port: int
    jobs: list[subprocess.Popen[str]] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def run(self, line: str) -> None:
        if line.startswith("kill %"):
            self.stop_jobs()
            return
        if line.endswith("&"):
            self.start(line[:-1].strip())
            return
        marker = "__cwd__"
        script = f'{line}\nrc=$?\necho "{marker}$(pwd)"\nexit $rc\n'
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=self.cwd,
            env=self.env,
            input="y\n",
            capture_output=True,
            text=True,
            timeout=180,
        )
        out, _, where = done.stdout.rpartition(marker)
        self.log.append(f"$ {line}\n{out}{done.stderr}")
        assert done.returncode == 0, f"`{line}` exited {done.returncode}:\n{out}{done.stderr}"
        self.cwd = Path(where.strip())

    def start(self, line: str) -> None:
        """A `&` line: started in the background and waited for until it answers."""
        words = shlex.split(line)
        server = words[1] if len(words) > 1 and words[0] == "newsletter" else ""
        if server in SERVERS and "--port" not in words:
            port = self.smtp_port if server == "smtpd" else 0
            words += ["--port", str(port)]
        if server == "preview":
            words.append("--no-open")
        job = subprocess.Popen(
            words,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.jobs.append(job)
        if server == "smtpd":
            wait_for_port(self.smtp_port, job)
        else:
            self.log.append(f"$ {line} &\n{self.wait_for_line(job, line, server)}")

    def wait_for_line(self, job: subprocess.Popen[str], line: str, server: str) -> str:
        """The first line that shows a background job is up: a server's URL (then
        fetched), or the worker's "started". The job's output is read in a thread, so a
        job that says nothing fails the test after WAIT_SECONDS instead of hanging it."""
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=pump, args=(job, lines), daemon=True).start()
        deadline = time.monotonic() + WAIT_SECONDS
        seen = ""
        while (left := deadline - time.monotonic()) > 0:
            try:
                text = lines.get(timeout=left)
            except queue.Empty:
                break
            if not text:
                raise AssertionError(f"`{line}` stopped at once:\n{seen}")
            seen += text
            url = re.match(r"(http://127\.0\.0\.1:\d+/)", text)
            if url:
                with urllib.request.urlopen(url.group(1), timeout=WAIT_SECONDS) as page:
                    assert page.status == 200, f"`{line}`: {url.group(1)} answered {page.status}"
                self.urls.append(url.group(1))
                return seen
            if server not in SERVERS and "started" in text:
                return seen
        raise AssertionError(f"`{line}` did not come up in {WAIT_SECONDS:.0f} s:\n{seen}")

    def stop_jobs(self) -> None:
        for job in self.jobs:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGTERM)
        for job in self.jobs:
            try:
                job.wait(timeout=WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(job.pid, signal.SIGKILL)
                job.wait()
            if job.stdout is not None:
                job.stdout.close()
        self.jobs.clear()


def pump(job: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
    """Hands each line a job prints to `lines`; "" when it has closed its output."""
    assert job.stdout is not None
    for text in job.stdout:
        lines.put(text)
    lines.put("")


def wait_for_port(port: int, job: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        assert job.poll() is None, f"the server for port {port} stopped at once"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing answered on port {port} in {WAIT_SECONDS:.0f} s")


def copy_repository(target: Path, names: list[str]) -> None:
    for name in names:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name)
        else:
            shutil.copy(source, target / name)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    """A shell in a copy of the repository, with no NEWSLETTER_* of the test's own."""
    work = tmp_path / "newsletter"
    work.mkdir()
    copy_repository(work, COPIED)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    smtp_port = free_port()
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(SITE_DIR),
        NEWSLETTER_SMTP_PORT=str(smtp_port),
        BROWSER="true",
        HOME=str(tmp_path / "home"),
    )
    env.pop("VIRTUAL_ENV", None)
    session = Terminal(cwd=work, env=env, smtp_port=smtp_port)
    try:
        yield session
    finally:
        session.stop_jobs()


def test_the_tour_runs_as_written(terminal: Terminal) -> None:
    lines = shell_lines(section("## A tour"))
    assert len(lines) >= 20, lines
    for line in lines:
        terminal.run(line)
    work = terminal.cwd
    # What the tour promises it made: the issue, the build, the sent messages, the
    # archive, the key; and the servers answered while they ran.
    assert (work / "issues" / "2024-12-02-tour.md").is_file()
    assert {p.suffix for p in (work / "build").glob("tour.*")} == {".html", ".txt", ".eml"}
    sent = sorted((work / "outbox").glob("*.eml"))
    subscribers = len((work / "subscribers.csv").read_text().splitlines()) - 1
    assert len(sent) == 1 + subscribers + 1  # the test copy, the list, and ann
    assert (work / "public" / "index.html").is_file()
    assert (work / "dkim-s1.pem").is_file()
    assert len(terminal.urls) == 2  # preview and serve
    assert terminal.jobs == []  # `kill` stopped them all


def test_the_init_walkthrough_runs_as_written(tmp_path: Path, terminal: Terminal) -> None:
    lines = shell_lines(section("## Start a publication: `newsletter init`"))
    assert lines[:2] == ["mkdir my-letter && cd my-letter", "newsletter init"], lines
    terminal.cwd = tmp_path / "readers-folder"
    terminal.cwd.mkdir()
    for line in lines:
        terminal.run(line)
    # `newsletter init` without a terminal took the defaults; the flags made The Weekly,
    # which then built and sent its welcome issue through the capture server.
    mine = (tmp_path / "readers-folder" / "my-letter" / "newsletter.toml").read_text()
    assert 'name = "My Newsletter"' in mine
    weekly = terminal.cwd
    assert weekly.name == "the-weekly"
    config = (weekly / "newsletter.toml").read_text()
    assert 'name = "The Weekly"' in config
    assert 'base_url = "https://news.weekly.example.org"' in config
    assert {p.name for p in (weekly / "build").iterdir()} == {
        "welcome.html",
        "welcome.txt",
        "welcome.eml",
    }
    sent = list((weekly / "outbox").glob("*.eml"))
    assert len(sent) == 1
    assert b"[TEST]" in sent[0].read_bytes()
    assert terminal.jobs == []


def test_the_tour_line_reader_joins_and_strips() -> None:
    text = '```sh\nnewsletter a "x # y" # note\nnewsletter b \\\n    --c d  # more\n# gone\n```\n'
    assert shell_lines(text) == ['newsletter a "x # y"', "newsletter b      --c d"]


def test_the_quick_start_demo_runs_as_written(tmp_path: Path) -> None:
    quick_start = README.read_text(encoding="utf-8").split("\n## ")[0]
    lines = shell_lines(quick_start)
    assert [line.split()[:2] for line in lines] == [["make", "demo"], ["make", "test"]]
    work = tmp_path / "newsletter"
    work.mkdir()
    copy_repository(work, COPIED + COPIED_FOR_MAKE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update(PYTHONPATH=str(SITE_DIR), HOME=str(tmp_path / "home"))
    venv = VENV_BIN.parent
    # The checkout's venv stands in for the one `make` would create (-o: never rebuilt);
    # `make test` is what runs this test, so only the demo runs here.
    done = subprocess.run(
        [
            "make",
            "-o",
            f"{venv}/bin/newsletter",
            "demo",
            f"VENV={venv}",
            f"DEMO_PORT={free_port()}",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    subscribers = len((work / "subscribers.csv").read_text().splitlines()) - 1
    assert len(list((work / "build" / "outbox").glob("*.eml"))) == subscribers
    assert f"{subscribers}/{subscribers} sent" in done.stdout
