"""`newsletter preview` without ISSUE opens the newest issue in issues/ (issue 17,
polish): by the date in the file name, else in the front matter."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from newsletter.cli import cli
from newsletter.issue.content import newest_issue

ISSUE = "---\ntitle: {title}\nsubject: {title}\n{date}---\n\nA paragraph.\n"


def write_issue(folder: Path, name: str, title: str, date: str = "") -> Path:
    path = folder / name
    front = f"date: {date}\n" if date else ""
    path.write_text(ISSUE.format(title=title, date=front), encoding="utf-8")
    return path


def test_the_newest_is_by_date_in_the_name_else_in_the_front_matter(tmp_path: Path) -> None:
    assert newest_issue(tmp_path / "none") is None
    write_issue(tmp_path, "2026-01-05-january.md", "January")
    assert newest_issue(tmp_path).name == "2026-01-05-january.md"  # type: ignore[union-attr]
    # No date in the name: the front matter's counts, though "welcome" sorts last.
    write_issue(tmp_path, "welcome.md", "Welcome", "2025-12-01")
    assert newest_issue(tmp_path).name == "2026-01-05-january.md"  # type: ignore[union-attr]
    later = write_issue(tmp_path, "a-later-one.md", "Later", "2026-02-01")
    assert newest_issue(tmp_path) == later
    (tmp_path / "broken.md").write_text("no front matter", encoding="utf-8")
    assert newest_issue(tmp_path) == later


def test_preview_without_an_issue_takes_the_newest(publication: Path) -> None:
    issues = publication.parent / "issues"
    newest = write_issue(issues, "zz-undated.md", "The newest one", "2030-05-01")
    with socket.socket() as taken:  # the command stops at listening: nothing blocks
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            cli, ["--config", str(publication), "preview", "--port", str(port), "--no-open"]
        )
    assert result.stderr.splitlines()[0] == f"no ISSUE given: previewing the newest, {newest}"
    assert f"127.0.0.1:{port}: cannot listen" in result.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT")
def test_the_real_command_serves_the_newest_issue(publication: Path) -> None:
    write_issue(publication.parent / "issues", "2030-05-01-newest.md", "The newest one")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["NEWSLETTER_SECRET"] = "test-secret-not-for-production-0123456789"
    proc = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "preview", "--port", "0", "--no-open"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=publication.parent,  # newsletter.toml is found here, like git
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the command printed no URL in 30 s"
        url = proc.stdout.readline().strip()
        page = httpx.get(url, timeout=10).text
        assert "The newest one" in page and "What Motivated Biden" not in page
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "2030-05-01-newest.md" in err.splitlines()[0]
