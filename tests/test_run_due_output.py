"""run-due and the worker tell each event once, on one stream, and nothing when nothing
happens (issue 17, item 9): a cron line `>> run-due.log 2>&1` gets each line once."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from campaign_support import Publication, add_subscribers, make_publication
from click.testing import CliRunner, Result
from smtp_fixtures import SmtpServer

from newsletter.cli import cli
from newsletter.cli.root import configure_logging
from newsletter.ledger import campaign_status, once, schedules
from newsletter.ledger.tables import utcnow
from newsletter.schedule import plans
from newsletter.schedule.worker import Worker

UTC = dt.UTC
LA_NOW = "%Y-%m-%d %H:%M:%S"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def pub(tmp_path: Path, smtp_server: SmtpServer) -> Publication:
    return make_publication(tmp_path, f"sqlite:///{tmp_path / 'n.db'}", smtp_server.port)


def run(pub: Publication, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(pub.config_path), *args], env=pub.env)


def schedule_due(
    pub: Publication, seconds_ago: int, repeat: once.Repeat = once.Repeat.REFUSE
) -> int:
    """A campaign whose time came `seconds_ago` (real time: run-due reads the clock)."""
    local = (utcnow() - dt.timedelta(seconds=seconds_ago)).astimezone(UTC)
    cid, _, _ = plans.schedule_issue(
        pub.store(),
        pub.config(),
        pub.issue,
        local.strftime(LA_NOW),
        "UTC",
        now=dt.datetime(2020, 1, 1, tzinfo=UTC),
        repeat=repeat,
    )
    return cid


def empty_recurring_rule(pub: Publication) -> int:
    """A recurring rule whose tick has come, with no issue left to send."""
    for issue in (pub.root / "issues").glob("*.md"):
        issue.unlink()
    tick = utcnow() - dt.timedelta(seconds=5)
    return schedules.add_rule(pub.store(), "* * * * *", "UTC", tick)


def events(stderr: str) -> list[str]:
    """The log lines without their time stamps, but those of the test's SMTP server
    (aiosmtpd's "mail.log"), which runs in this process."""
    lines = [re.sub(r"^\S+ \S+ ", "", line) for line in stderr.splitlines()]
    return [line for line in lines if not line.startswith("INFO mail.log: ")]


def test_a_sent_campaign_is_one_line_on_stderr_and_nothing_on_stdout(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    add_subscribers(pub.store(), 3)
    cid = schedule_due(pub, 20)
    result = run(pub, "run-due")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    lines = events(result.stderr)
    assert lines == [
        f"INFO newsletter.schedule: campaign {cid}: 3 sent, 0 deferred, 0 failed,"
        " 0 pending, 0 in doubt [done]"
    ]
    assert len(smtp_server.received) == 3


def test_a_recurring_tick_with_nothing_to_send_logs_nothing(pub: Publication) -> None:
    rid = empty_recurring_rule(pub)
    result = run(pub, "run-due")
    assert result.exit_code == 0, result.output
    assert (result.stdout, result.stderr) == ("", "")
    # The tick did run: its note is in the schedule list.
    listed = json.loads(run(pub, "schedule", "list", "--json").stdout)["schedules"]
    assert "nothing sent" in {r["id"]: r for r in listed}[f"r{rid}"]["note"]


def test_quiet_keeps_only_the_errors(pub: Publication, smtp_server: SmtpServer) -> None:
    add_subscribers(pub.store(), 2)
    sent = schedule_due(pub, 20)
    missed = schedule_due(pub, 7 * 3600, once.Repeat.AGAIN)  # over [schedule] max_late (6 h)
    result = run(pub, "run-due", "-q")
    assert result.exit_code == 1
    assert result.stdout == ""
    (line,) = events(result.stderr)
    assert line.startswith(f"ERROR newsletter.schedule: campaign {missed} missed")
    assert campaign_status.status(pub.store(), sent)[0].sent == 2


def test_json_goes_to_stdout_and_stderr_has_only_errors(pub: Publication) -> None:
    add_subscribers(pub.store(), 1)
    cid = schedule_due(pub, 20)
    result = run(pub, "run-due", "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert [s["campaign_id"] for s in json.loads(result.stdout)["sent"]] == [cid]


def test_the_worker_logs_each_event_once_and_nothing_for_an_empty_tick(
    pub: Publication, capsys: pytest.CaptureFixture[str]
) -> None:
    add_subscribers(pub.store(), 2)
    cid = schedule_due(pub, 10)
    empty_recurring_rule(pub)
    configure_logging(0, daemon=True)
    worker = Worker(pub.store(), pub.config(), poll_seconds=0.05)
    until = threading.Event()
    thread = threading.Thread(target=worker.run, args=(until,))
    thread.start()

    def finished() -> bool:
        rule = schedules.listed(pub.store())[1][0]
        return bool(rule.last_note) and campaign_status.status(pub.store(), cid)[0].sent == 2

    try:
        deadline = time.monotonic() + 20
        # Many polls run meanwhile: each must stay silent once the campaign is done.
        while not finished() and time.monotonic() < deadline:
            time.sleep(0.02)
        polls = 0
        while polls < 10 and time.monotonic() < deadline:
            polls += 1
            time.sleep(0.05)
    finally:
        until.set()
        thread.join(timeout=30)
    assert finished()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert events(captured.err) == [
        "INFO newsletter.schedule: worker started; polling for due campaigns every second",
        f"INFO newsletter.schedule: campaign {cid}: 2 sent, 0 deferred, 0 failed,"
        " 0 pending, 0 in doubt [done]",
        "INFO newsletter.schedule: stopping: finishing the messages in flight",
        "INFO newsletter.schedule: worker stopped",
    ]
