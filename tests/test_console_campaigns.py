"""The console's campaigns over its real server: send now behind a confirmation that
states the count, one send at a time, the progress stream, resume and close as the CLI
does them, and the password that a console other machines reach needs."""

from __future__ import annotations

import html
import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result
from console_sending import SendingSetup, gated_smtp_server, sending_console, wait_for_sends
from console_support import make_console, running
from smtp_fixtures import SmtpServer

from newsletter.cli import cli
from newsletter.web.console import app as console_app
from newsletter.web.console import auth
from newsletter.web.console.context import Console

# A name that climbs out of the issues folder (a client may send anything).
UP_AND_OUT = str(Path("..") / "newsletter.toml")

ISSUE = "2024-11-25-motivated-biden-authorize-ukraines-use-atacms.md"
QUESTION = "Send 'Biden authorizes Ukraine's use of ATACMS' to 3 subscriber(s)?"


@pytest.fixture
def gated() -> Iterator[SmtpServer]:
    with gated_smtp_server() as server:
        yield server


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gated: SmtpServer) -> SendingSetup:
    return sending_console(tmp_path, monkeypatch, gated)


def newsletter(setup: SendingSetup, *args: str) -> Result:
    argv = ["--config", str(setup.publication.config_path), *args]
    return CliRunner().invoke(cli, argv, prog_name="newsletter")


def status(setup: SendingSetup) -> list[dict[str, object]]:
    result = newsletter(setup, "status", "--json")
    assert result.exit_code == 0, result.output
    return list(json.loads(result.stdout)["campaigns"])


def error_line(page: str) -> str:
    found = re.findall(r'role="alert" data-error>(.*?)</p>', page, re.S)
    assert len(found) == 1, page[-3000:]
    return html.unescape(found[0])


def question(page: str) -> str:
    [text] = re.findall(r"data-question>(.*?)</h2>", page)
    return html.unescape(text)


def test_send_now_asks_with_the_count_then_sends_as_send_all(setup: SendingSetup) -> None:
    with running(setup.console) as web:
        asked = web.get(f"/send?issue={ISSUE}")
        subject = question(asked.text)
        assert subject.startswith("Send '") and subject.endswith("' to 3 subscriber(s)?")
        assert 'name="count" value="3"' in asked.text
        assert "Send to 3 subscribers</button>" in asked.text
        assert status(setup) == []  # the question changed nothing
        sent = web.post("/send", {"issue": ISSUE, "count": "3"})
        assert sent.status_code == 303
        assert sent.headers["location"].startswith("/campaigns/1?notice=Sending+campaign+1")
        wait_for_sends(setup.console)
        page = web.get("/campaigns/1").text
        listing = web.get("/campaigns").text
    assert sorted(r.rcpt_tos[0] for r in setup.smtp.received) == [
        f"reader{i:05d}@example.com" for i in range(3)
    ]
    [row] = status(setup)
    assert (row["status"], row["sent"], row["total"]) == ("done", 3, 3)
    assert '<dd data-count="sent">3</dd>' in page and "data-final" in page
    assert '<span class="badge sent">Sent</span>' in listing and "3 / 3" in listing


def test_a_send_is_refused_when_the_count_moved_or_nobody_is_left(
    setup: SendingSetup,
) -> None:
    with running(setup.console) as web:
        moved = web.post("/send", {"issue": ISSUE, "count": "2"})
        assert moved.status_code == 409
        assert error_line(moved.text) == "the count changed to 3 since you looked: confirm again"
        assert status(setup) == []
        web.post("/send", {"issue": ISSUE, "count": "3"})
        wait_for_sends(setup.console)
        again = web.post("/send", {"issue": ISSUE, "count": "3"})
        assert again.status_code == 400
        assert "already sent as campaign 1" in error_line(again.text)
        asked = web.get(f"/send?issue={ISSUE}&repeat=new-only")
        assert "nobody left to send it to: all 3 active subscriber(s) have had it" in (
            error_line(asked.text)
        )
        unknown = web.get(f"/send?issue={UP_AND_OUT}")
        assert "not an issue file" in error_line(unknown.text)
    assert len(status(setup)) == 1


def test_no_subscribers_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gated: SmtpServer
) -> None:
    empty = sending_console(tmp_path, monkeypatch, gated, subscribers=0)
    with running(empty.console) as web:
        asked = web.get(f"/send?issue={ISSUE}")
    assert error_line(asked.text) == (
        "no active subscribers: import some with `newsletter subscribers import`"
    )
    assert "data-question" not in asked.text


def test_one_send_at_a_time_and_the_stream_follows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with gated_smtp_server(hold_after=1) as smtp:
        setup = sending_console(tmp_path, monkeypatch, smtp)
        with running(setup.console) as web:
            assert web.post("/send", {"issue": ISSUE, "count": "3"}).status_code == 303
            assert setup.handler.held.wait(10)  # one message is sent, the second is held
            second = web.post("/send", {"issue": ISSUE, "count": "3", "repeat": "again"})
            assert second.status_code == 409
            assert error_line(second.text) == (
                "a send from this console is running (campaign 1): one at a time;"
                " wait for it to end"
            )
            busy = web.post("/campaigns/1/resume", follow_redirects=True)
            assert "a send from this console is running (campaign 1)" in busy.text
            events: list[dict[str, object]] = []
            with httpx.stream("GET", web.url + "/campaigns/1/events", timeout=10) as stream:
                for line in stream.iter_lines():
                    if not line.startswith('data: {"'):
                        continue
                    events.append(json.loads(line[6:]))
                    if len(events) == 1:
                        assert events[0]["sent"] == 1 and events[0]["final"] is False
                        assert events[0]["label"] == "Sending"
                        setup.handler.gate.set()
                    if events[-1]["final"]:
                        break
            wait_for_sends(setup.console)
    last = events[-1]
    assert (last["sent"], last["pending"], last["status"]) == (3, 0, "done")
    assert [e["sent"] for e in events] == sorted(e["sent"] for e in events)  # type: ignore[type-var]
    assert len(status(setup)) == 1


def test_resume_and_close_as_the_cli_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gated: SmtpServer
) -> None:
    # One address is deferred (451) twice, and there are no retries in a run.
    gated.handler.rcpt_replies["reader00001@example.com"] = ["451 4.3.0 try later"] * 2
    setup = sending_console(tmp_path, monkeypatch, gated, NEWSLETTER_SMTP_RETRIES="0")
    with running(setup.console) as web:
        web.post("/send", {"issue": ISSUE, "count": "3"})
        wait_for_sends(setup.console)
        page = web.get("/campaigns/1").text
        assert '<dd data-count="deferred">1</dd>' in page
        assert "Resume: send what is left" in page and "Close: give up what is left" in page
        assert "451 4.3.0 try later" in page  # the recent errors
        resumed = web.post("/campaigns/1/resume", follow_redirects=True)
        assert "Resuming campaign 1" in resumed.text
        wait_for_sends(setup.console)
        assert status(setup)[0]["deferred"] == 1  # the second 451
        closed = web.post("/campaigns/1/close", follow_redirects=True)
        assert (
            "campaign 1 closed: 1 given up (1 deferred, 0 in doubt, 0 never tried)" in closed.text
        )
        again = web.post("/campaigns/1/close", follow_redirects=True)
        assert "campaign 1 is closed; nothing to close" in html.unescape(again.text)
    [row] = status(setup)
    assert (row["status"], row["sent"], row["given_up"]) == ("closed", 2, 1)


def test_gets_change_nothing_and_actions_need_the_token(setup: SendingSetup) -> None:
    with running(setup.console) as web:
        for path in ("/campaigns/1/resume", "/campaigns/1/close"):
            assert web.get(path).status_code == 405
        assert web.post("/send", {"issue": ISSUE, "count": "3", "token": "x"}).status_code == 403
        assert web.get("/campaigns/7").status_code == 404
        assert web.get("/campaigns/7/events").status_code == 404
        assert web.post("/campaigns/7/close").status_code == 404
    assert status(setup) == []
    assert setup.smtp.received == []


# --- the password of a console other machines reach -----------------------------------


@pytest.fixture
def guarded(publication: Path) -> Console:
    console = make_console(publication)
    console.password_hash = auth.hash_password("correct horse battery")
    return console


def test_pages_need_a_login_and_a_wrong_password_is_refused(guarded: Console) -> None:
    with running(guarded) as web:
        first = web.get("/calendar?view=month", follow_redirects=False)
        assert first.status_code == 303
        assert first.headers["location"] == "/login?next=%2Fcalendar%3Fview%3Dmonth"
        assert web.get("/campaigns/1/events").status_code in (303, 401)
        assert web.post("/calendar/cancel", {"ref": "1"}).status_code == 401
        assert web.get("/assets/console.css").status_code == 200
        login = web.get("/login?next=/calendar")
        assert login.status_code == 200 and 'type="password"' in login.text
        wrong = web.post("/login", {"password": "wrong horse", "next": "/calendar"})
        assert wrong.status_code == 403 and error_line(wrong.text) == "Wrong password."
        assert "set-cookie" not in wrong.headers
        no_token = web.post("/login", {"password": "correct horse battery", "token": ""})
        assert no_token.status_code == 403 and "set-cookie" not in no_token.headers
        right = web.post(
            "/login", {"password": "correct horse battery", "next": "/calendar?view=month"}
        )
        assert right.status_code == 303 and right.headers["location"] == "/calendar?view=month"
        cookie = right.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        session = {auth.COOKIE: right.cookies[auth.COOKIE]}
        page = httpx.get(web.url + "/calendar", cookies=session)
        assert page.status_code == 200 and "Log out" in page.text
        # The session is not the token: an action still needs the page's token.
        bare = httpx.post(web.url + "/calendar/cancel", data={"ref": "1"}, cookies=session)
        assert bare.status_code == 403
        elsewhere = web.post(
            "/login", {"password": "correct horse battery", "next": "//evil.example/"}
        )
        assert elsewhere.headers["location"] == "/calendar"
        out = httpx.post(web.url + "/logout", data={"token": guarded.token}, cookies=session)
        assert out.status_code == 303 and out.headers["location"] == "/login"
        after = httpx.get(web.url + "/calendar", cookies=session)
        assert after.status_code == 303


def test_a_console_other_machines_reach_needs_a_password(
    publication: Path,
    run_cli: Callable[..., Result],
    assert_user_error: Callable[..., str],
) -> None:
    result = run_cli("console", "--host", "0.0.0.0", "--allow-host", "console.lan", "--no-open")
    line = assert_user_error(result, "--host 0.0.0.0", "newsletter console --hash-password")
    assert result.exit_code == 2, line
    result = run_cli("console", "--host", "0.0.0.0", "--no-open")
    assert result.exit_code == 2 and "--allow-host" in result.stderr
    assert "the only Host the console answers" in result.stderr
    with pytest.raises(Exception, match="set a password first"):
        console_app.check_host("", "10.1.2.3", ["console.lan"])
    console_app.check_host(auth.hash_password("x" * 8), "10.1.2.3", ["console.lan"])


def test_hash_password_prints_the_line_to_paste(
    publication: Path, run_cli: Callable[..., Result], edit_file: Callable[..., None]
) -> None:
    made = CliRunner().invoke(
        cli, ["console", "--hash-password"], input="s3cret-enough\ns3cret-enough\n"
    )
    assert made.exit_code == 0, made.output
    line = made.stdout.strip().splitlines()[-1]
    assert line.startswith('password_hash = "$argon2id$')
    stored = line.split('"')[1]
    assert auth.password_matches(stored, "s3cret-enough")
    assert not auth.password_matches(stored, "s3cret-enougH")
    short = CliRunner().invoke(cli, ["console", "--hash-password"], input="short\nshort\n")
    assert short.exit_code == 2
    # Pasted into newsletter.toml, it loads; a password pasted instead is refused, unshown.
    text = publication.read_text(encoding="utf-8")
    publication.write_text(text + f"\n[console]\n{line}\n", encoding="utf-8")
    assert run_cli("schedule", "list").exit_code == 0
    publication.write_text(text + '\n[console]\npassword_hash = "hunter2"\n', encoding="utf-8")
    bad = run_cli("schedule", "list")
    assert bad.exit_code == 2 and "[console] password_hash: expected an argon2 hash" in bad.stderr
    assert "hunter2" not in bad.stderr


def test_a_session_ends_after_its_hours_and_at_logout() -> None:
    now = [1000.0]
    sessions = auth.Sessions(clock=lambda: now[0])
    first, second = sessions.start(), sessions.start()
    assert first != second and sessions.valid(first) and sessions.valid(second)
    assert not sessions.valid("") and not sessions.valid("made-up")
    sessions.end(second)
    assert not sessions.valid(second)
    now[0] += auth.SESSION_HOURS * 3600 + 1
    assert not sessions.valid(first)


def test_a_send_stops_with_the_console_and_resume_sends_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with gated_smtp_server(hold_after=1) as smtp:
        setup = sending_console(tmp_path, monkeypatch, smtp)
        console = setup.console

        def open_gate_when_stopping() -> None:
            # The reply to the message in flight comes once the console is stopping.
            console.stopping.wait(20)
            setup.handler.gate.set()

        opener = threading.Thread(target=open_gate_when_stopping, daemon=True)
        with running(console) as web:
            web.post("/send", {"issue": ISSUE, "count": "3"})
            assert setup.handler.held.wait(10)
            opener.start()
        opener.join(20)
        assert not any(t.is_alive() for t in console.senders)  # joined by the shutdown
        [row] = status(setup)
        assert row["status"] == "incomplete" and row["sent"] == 2 and row["pending"] == 1
        resumed = newsletter(setup, "resume", "1")
        assert resumed.exit_code == 0, resumed.output
    assert sorted(setup.handler.count_by_recipient().values()) == [1, 1, 1]
