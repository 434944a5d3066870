"""The subscriber and sending commands, end to end: CLI -> SQLite file -> aiosmtpd."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from campaign_support import Publication, make_publication
from click.testing import CliRunner, Result
from smtp_fixtures import SmtpServer

from newsletter import tokens
from newsletter.cli import cli


@pytest.fixture
def pub(tmp_path: Path, smtp_server: SmtpServer) -> Publication:
    return make_publication(tmp_path, f"sqlite:///{tmp_path / 'list.db'}", smtp_server.port)


def invoke(pub: Publication, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(
        cli, ["--config", str(pub.config_path), *args], env=pub.env, input=input
    )


def write_csv(pub: Publication, text: str) -> Path:
    path = pub.root / "list.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_import_reports_bad_rows_by_line_and_keeps_the_good(pub: Publication) -> None:
    path = write_csv(
        pub,
        "email,name,city\n"
        "ann@example.com,Ann,Irvine\n"
        "not-an-address,Bad,Nowhere\n"
        "BOB@Example.com,Bob,LA\n"
        "carol@,Carol,SF\n",
    )
    result = invoke(pub, "subscribers", "import", str(path))
    assert result.exit_code == 0  # a partial import: the good rows are in (--strict: 1)
    assert f"{path}:3: 'not-an-address'" in result.stderr
    assert f"{path}:5: 'carol@'" in result.stderr
    assert "2 added, 0 updated, 2 rejected" in result.stdout
    listed = invoke(pub, "subscribers", "list").stdout.splitlines()
    # The local part as given (RFC 5321: it is the receiving system's business), the
    # domain lower-cased.
    assert listed == ["ann@example.com\tAnn\tactive", "BOB@example.com\tBob\tactive"]
    store = pub.store()
    assert json.loads(store.subscriber("ann@example.com")["attributes"]) == {"city": "Irvine"}


def test_reimport_is_idempotent_and_unsubscribed_stays_unsubscribed(pub: Publication) -> None:
    path = write_csv(pub, "email,name\nann@example.com,Ann\nbob@example.com,Bob\n")
    assert invoke(pub, "subscribers", "import", str(path)).exit_code == 0
    assert invoke(pub, "subscribers", "remove", "bob@example.com").exit_code == 0
    again = invoke(pub, "subscribers", "import", str(path))
    assert "0 added, 2 updated, 0 rejected" in again.stdout
    assert invoke(pub, "subscribers", "count").stdout.strip() == "1"
    assert invoke(pub, "subscribers", "list", "--status", "unsubscribed").stdout.startswith(
        "bob@example.com\t"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name,city\nAnn,Irvine\n", "no 'email' column"),
        ("", "the file is empty"),
        ("email,name\nann@example.com,Ann,extra\n", ":2: more fields than columns"),
    ],
)
def test_invalid_csv_is_a_one_line_error(pub: Publication, text: str, message: str) -> None:
    result = invoke(pub, "subscribers", "import", str(write_csv(pub, text)))
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_not_utf8_csv_names_the_file(pub: Publication) -> None:
    path = pub.root / "latin1.csv"
    path.write_bytes("email,name\nzoe@example.com,Zo\xeb\n".encode("latin-1"))
    result = invoke(pub, "subscribers", "import", str(path))
    assert result.exit_code == 1
    assert f"{path}:2: not UTF-8" in result.stderr


def test_add_validates_the_address(pub: Publication) -> None:
    result = invoke(pub, "subscribers", "add", "nobody")
    assert result.exit_code == 1 and "'nobody'" in result.stderr
    assert invoke(pub, "subscribers", "add", "Zed@Example.com", "--name", "Zed").exit_code == 0
    # Stored with the local part as given; the same address in another case is the
    # same subscriber.
    assert invoke(pub, "subscribers", "list").stdout == "Zed@example.com\tZed\tactive\n"
    again = invoke(pub, "subscribers", "add", "zed@EXAMPLE.com", "--name", "Zed Z")
    assert again.exit_code == 0
    assert again.stdout == "updated zed@EXAMPLE.com: name changed (still active)\n"
    assert invoke(pub, "subscribers", "list").stdout == "Zed@example.com\tZed Z\tactive\n"


def test_test_send_prefixes_subject_and_records_no_campaign(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    result = invoke(pub, "send", str(pub.issue), "--to", "editor@example.com")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "editor@example.com: sent"
    msg = smtp_server.received[0].parse()
    assert msg["Subject"].startswith("[TEST] What Motivated Biden")
    assert invoke(pub, "status", "--json").stdout and json.loads(
        invoke(pub, "status", "--json").stdout
    ) == {"campaigns": []}


def test_send_all_asks_for_confirmation_with_the_count(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    invoke(pub, "subscribers", "add", "ann@example.com")
    invoke(pub, "subscribers", "add", "bob@example.com")
    declined = invoke(pub, "send", str(pub.issue), "--all", input="n\n")
    assert declined.exit_code == 1
    assert "to 2 subscriber(s)?" in declined.stderr
    assert not smtp_server.received
    accepted = invoke(pub, "send", str(pub.issue), "--all", input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert (
        "2 sent, 0 deferred, 0 failed, 0 skipped, 0 pending, 0 in doubt [done]" in accepted.stdout
    )
    assert len(smtp_server.received) == 2


def test_send_all_json_and_exit_code_on_failure(pub: Publication, smtp_server: SmtpServer) -> None:
    invoke(pub, "subscribers", "add", "ann@example.com")
    invoke(pub, "subscribers", "add", "gone@example.com")
    smtp_server.handler.rcpt_replies["gone@example.com"] = ["550 5.1.1 unknown user"]
    result = invoke(pub, "send", str(pub.issue), "--all", "--yes", "--json")
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert (summary["sent"], summary["failed"], summary["status"]) == (1, 1, "done")


def test_dry_run_renders_every_message_and_sends_nothing(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    for n in range(3):
        invoke(pub, "subscribers", "add", f"r{n}@example.com")
    result = invoke(pub, "send", str(pub.issue), "--all", "--dry-run", "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["messages"] == 3 and report["bytes"] > 3 * 10_000
    assert not smtp_server.received
    assert json.loads(invoke(pub, "status", "--json").stdout) == {"campaigns": []}


def test_send_needs_a_target(pub: Publication) -> None:
    result = invoke(pub, "send", str(pub.issue))
    assert result.exit_code == 2 and "--to ADDRESS" in result.stderr


def test_send_refuses_a_bad_test_address(pub: Publication) -> None:
    result = invoke(pub, "send", str(pub.issue), "--to", "bad address")
    assert result.exit_code == 2 and "--to" in result.stderr


def test_unsubscribe_with_token_and_forged_token(pub: Publication) -> None:
    invoke(pub, "subscribers", "add", "ann@example.com")
    token = tokens.Signer(pub.env["NEWSLETTER_SECRET"].encode()).sign("ann@example.com")
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    bad = invoke(pub, "unsubscribe", forged)
    assert bad.exit_code == 1 and "not valid" in bad.stderr
    assert invoke(pub, "subscribers", "count").stdout.strip() == "1"
    good = invoke(pub, "unsubscribe", token)
    assert good.exit_code == 0 and "unsubscribed ann@example.com" in good.stdout
    assert invoke(pub, "subscribers", "count").stdout.strip() == "0"


def test_unsubscribe_link_in_a_received_message_works(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    invoke(pub, "subscribers", "add", "ann@example.com")
    assert invoke(pub, "send", str(pub.issue), "--all", "--yes").exit_code == 0
    header = str(smtp_server.received[0].parse()["List-Unsubscribe"])
    token = header.split("/unsubscribe/")[1].split(">")[0]
    assert invoke(pub, "unsubscribe", token).exit_code == 0
    assert invoke(pub, "subscribers", "count").stdout.strip() == "0"


def test_resume_of_unknown_campaign_is_a_clear_error(pub: Publication) -> None:
    result = invoke(pub, "resume", "42")
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: campaign 42: no such campaign"


# --- status --watch: one process looking again, on a clock the test holds ------------------


def _watched(
    pub: Publication, monkeypatch: pytest.MonkeyPatch, steps: list[str | None], *args: str
) -> tuple[Result, list[float]]:
    """`status ARGS --watch`, the campaign moved to each of `steps` between two looks
    (None: Ctrl-C instead)."""
    from newsletter.cli import sending
    from newsletter.ledger.tables import campaigns

    store = pub.store()
    paused: list[float] = []

    def pause(seconds: float) -> None:
        paused.append(seconds)
        step = steps[len(paused) - 1]
        if step is None:
            raise KeyboardInterrupt
        with store.begin() as conn:
            conn.execute(campaigns.update().values(status=step))

    monkeypatch.setattr(sending, "_pause", pause)
    return invoke(pub, "status", *args), paused


def _scheduled(pub: Publication) -> None:
    result = invoke(pub, "schedule", str(pub.issue), "--at", "2099-12-01 09:00")
    assert result.exit_code == 0, result.output


def test_status_watch_looks_until_the_campaign_is_done(
    pub: Publication, monkeypatch: pytest.MonkeyPatch
) -> None:
    _scheduled(pub)
    result, paused = _watched(pub, monkeypatch, ["sending", "done"], "1", "--watch", "0.5")
    assert result.exit_code == 0, result.output
    assert paused == [0.5, 0.5]
    states = [
        line.split("[")[1].split("]")[0] for line in result.stdout.splitlines() if "#1" in line
    ]
    assert states == ["scheduled", "sending", "done"]
    assert result.stdout.count("every 0.5 s (Ctrl-C to stop)") == 3


def test_status_watch_exits_1_when_the_run_stops_with_deliveries_left(
    pub: Publication, monkeypatch: pytest.MonkeyPatch
) -> None:
    _scheduled(pub)
    result, paused = _watched(pub, monkeypatch, ["sending", "incomplete"], "1", "--watch")
    assert result.exit_code == 1, result.output
    assert paused == [2.0, 2.0]  # --watch alone: every 2 s
    assert "[incomplete]" in result.stdout and "no more automatic retries" in result.stdout


def test_status_watch_json_is_a_line_a_look_and_ctrl_c_ends_it(
    pub: Publication, monkeypatch: pytest.MonkeyPatch
) -> None:
    _scheduled(pub)
    result, paused = _watched(pub, monkeypatch, ["sending", None], "--watch", "1", "--json")
    assert result.exit_code == 0, result.output  # without CAMPAIGN_ID: until Ctrl-C
    looks = [json.loads(line) for line in result.stdout.splitlines() if line]
    assert [[c["status"] for c in look["campaigns"]] for look in looks] == [
        ["scheduled"],
        ["sending"],
    ]
    assert all(look["at"].endswith("+00:00") for look in looks)


def test_status_watch_refuses_a_bad_interval_and_an_unknown_campaign(pub: Publication) -> None:
    result = invoke(pub, "status", "--watch", "0")
    assert result.exit_code == 2 and "--watch" in result.stderr
    missing = invoke(pub, "status", "9", "--watch")
    assert missing.exit_code == 1
    assert missing.stderr.strip() == "Error: campaign 9: no such campaign"


def test_status_watch_opens_the_store_once_where_it_cannot_read_directly(
    pub: Publication, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A URL the direct read leaves to the Store (another driver, say): every look then
    # reads through one Store, not a new one (and a schema check) a look.
    from newsletter.cli import sending
    from newsletter.ledger import campaign_status

    _scheduled(pub)
    opened: list[object] = []

    def open_store(state: object) -> object:
        store = pub.store()
        opened.append(store)
        return store

    monkeypatch.setattr(campaign_status, "status_at", lambda *_: None)
    monkeypatch.setattr(sending, "open_store", open_store)
    result, paused = _watched(pub, monkeypatch, ["sending", "done"], "1", "--watch", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("#1 ") == 3 and "[done]" in result.stdout
    assert len(opened) == 1
