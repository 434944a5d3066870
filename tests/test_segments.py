"""Tags and segments: the expression language, its SQL on SQLite and PostgreSQL, the
commands that tag and count, and campaigns sent (now or on a schedule) to a segment
through the real SMTP server."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from campaign_support import Publication, make_publication
from click.testing import CliRunner, Result
from smtp_fixtures import SmtpServer

from newsletter import segments
from newsletter.cli import cli
from newsletter.errors import ConfigError
from newsletter.ledger import campaign_status, once, privacy
from newsletter.ledger import tags as ledger_tags
from newsletter.ledger.store import Store, SubscriberRow
from newsletter.schedule import plans
from newsletter.schedule.due import run_due
from newsletter.segments import And, Attr, Not, Or, SegmentError, Tag

UTC = dt.UTC


# --- the language ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("tag:vip", Tag("vip")),
        ("TAG:VIP", Tag("vip")),  # tags are folded; the prefix too
        ("tag:vip and not tag:churned", And((Tag("vip"), Not(Tag("churned"))))),
        ('attr:city = "Irvine"', Attr("city", "Irvine")),
        ("attr:city=Irvine", Attr("city", "Irvine")),
        ('attr:plan != "free"', Attr("plan", "free", negated=True)),
        ('attr:"First Name" = "Ann"', Attr("first name", "Ann")),
        (r'attr:note = "say \"hi\""', Attr("note", 'say "hi"')),
        ('attr:city = "and"', Attr("city", "and")),  # a quoted keyword is a value
        # not binds tighter than and, and tighter than or: a or (b and (not c))
        ("tag:a or tag:b and not tag:c", Or((Tag("a"), And((Tag("b"), Not(Tag("c"))))))),
        ("tag:a and tag:b or tag:c", Or((And((Tag("a"), Tag("b"))), Tag("c")))),
        ("(tag:a or tag:b) and tag:c", And((Or((Tag("a"), Tag("b"))), Tag("c")))),
        ("not (tag:a OR tag:b)", Not(Or((Tag("a"), Tag("b"))))),
        ("not not tag:a", Not(Not(Tag("a")))),
        ("tag:a and tag:b and tag:c", And((Tag("a"), Tag("b"), Tag("c")))),
        ("  tag:beta-2.0  ", Tag("beta-2.0")),
    ],
)
def test_good_expressions_parse_to_their_tree(text: str, tree: segments.Node) -> None:
    assert segments.parse(text) == tree


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("", 1, "empty"),
        ("tag:vip and", 12, "unexpected end"),
        ("tag:vip tag:new", 9, "expected 'and', 'or' or the end"),
        ("(tag:vip or tag:new", 20, "expected ')' to close the '(' at column 1"),
        ("tag:vip)", 8, "')' without its '('"),
        ("tag:", 1, "tag ''"),
        ("not tag:_vip", 5, "tag '_vip': a tag is letters, digits"),
        ("tag:v!p", 6, "unexpected '!'"),
        ("vip and tag:new", 1, "unknown 'vip'"),
        ("attr:city", 10, "expected '=' or '!='"),
        ("attr:city =", 12, "expected a value"),
        ('attr:city = "Irvine', 13, "a quoted value is not closed"),
        ("attr:city = Irvine or", 22, "unexpected end"),
        ("and tag:vip", 1, "'and' needs a condition before it"),
        ("tag:a or or tag:b", 10, "'or' needs a condition before it"),
        ("city:Irvine", 1, "unknown 'city:Irvine'"),
        ("(" * 60 + "tag:a" + ")" * 60, 51, "nested more than 50 deep"),
    ],
)
def test_a_bad_expression_is_one_line_with_its_column(text: str, column: int, message: str):
    with pytest.raises(SegmentError) as caught:
        segments.parse(text)
    said = str(caught.value)
    assert f"column {column}: " in said and message in said
    assert "\n" not in said
    assert caught.value.exit_code == 2


def test_a_name_from_segments_stands_for_its_expression() -> None:
    named = {"vip": "tag:vip and not tag:churned"}
    chosen = segments.resolve("vip", named)
    assert chosen.tree == And((Tag("vip"), Not(Tag("churned"))))
    assert chosen.describe() == "vip (tag:vip and not tag:churned)"
    assert segments.resolve("tag:vip", named).name is None
    with pytest.raises(SegmentError, match=r"'vpi': no such name in \[segments\] \(did you"):
        segments.resolve("vpi", named)
    with pytest.raises(SegmentError, match=r"no such name in \[segments\] \(none set\)"):
        segments.resolve("vip", {})


# --- the SQL, on both databases -------------------------------------------------------

PEOPLE = {
    # email: (attributes, tags)
    "ann@example.com": ({"city": "Irvine", "plan": "pro"}, ["vip"]),
    "bob@example.com": ({"city": "Irvine", "plan": "free"}, ["vip", "churned"]),
    "cid@example.com": ({"city": "Oslo"}, ["beta"]),
    "dee@example.com": ({}, []),
    "eve@example.com": ({"city": "Irvine's", "plan": "free"}, ["vip"]),
}


@pytest.fixture
def people(database_url: str) -> Store:
    store = Store.open(database_url)
    store.upsert_subscribers(
        [SubscriberRow(e, e[:3].title(), attrs) for e, (attrs, _) in PEOPLE.items()]
    )
    for email, (_, names) in PEOPLE.items():
        ledger_tags.apply(store, [email], add=names)
    return store


def members(store: Store, text: str) -> list[str]:
    chosen = segments.resolve(text, {})
    found = [row.email[:3] for row in once.audience(store, "any-issue", None, chosen)]
    assert ledger_tags.count(store, chosen) == len(found)
    return found


@pytest.mark.parametrize(
    ("text", "who"),
    [
        ("tag:vip", ["ann", "bob", "eve"]),
        ("tag:vip and not tag:churned", ["ann", "eve"]),
        ('attr:city = "Irvine"', ["ann", "bob"]),  # exact: not "Irvine's"
        ('attr:city = "irvine"', []),  # values compare exactly
        # Without the attribute: no match for =, a match for != (it is `not =`).
        ('attr:plan != "free"', ["ann", "cid", "dee"]),
        ('not attr:plan = "free"', ["ann", "cid", "dee"]),
        ("not tag:vip", ["cid", "dee"]),
        ("tag:beta or attr:plan = pro", ["ann", "cid"]),
        ('(tag:vip or tag:beta) and attr:city != "Oslo"', ["ann", "bob", "eve"]),
        ("tag:vip and tag:churned or tag:beta", ["bob", "cid"]),
        ("tag:nobody", []),
        ('attr:city = "Irvine\'s"', ["eve"]),
        ('attr:city = "x\' OR 1=1 --"', []),  # a value is a bound parameter, never SQL
    ],
)
def test_segments_select_the_subscribers_they_say(people: Store, text: str, who: list[str]):
    assert members(people, text) == who


def test_only_active_subscribers_are_in_a_campaigns_segment(people: Store) -> None:
    people.set_subscriber_status("ann@example.com", "unsubscribed")
    assert members(people, "tag:vip") == ["bob", "eve"]
    chosen = segments.resolve("tag:vip", {})
    assert ledger_tags.count(people, chosen, status=None) == 3


def test_an_access_request_shows_the_tags(people: Store) -> None:
    assert privacy.export(people, "bob@example.com").subscriber.tags == ("churned", "vip")
    assert privacy.export(people, "dee@example.com").as_dict()["subscriber"]["tags"] == []


def test_erasure_takes_the_tags_too(people: Store) -> None:
    done = privacy.erase(people, "ann@example.com")
    assert done.placeholder is not None
    assert ledger_tags.tags_of(people, done.placeholder) == []
    assert members(people, "tag:vip") == ["bob", "eve"]
    assert ledger_tags.count(people, segments.resolve("tag:vip", {}), status=None) == 2


# --- the commands -----------------------------------------------------------------------


@pytest.fixture
def pub(tmp_path: Path, smtp_server: SmtpServer) -> Publication:
    return make_publication(tmp_path, f"sqlite:///{tmp_path / 'list.db'}", smtp_server.port)


def invoke(pub: Publication, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(
        cli, ["--config", str(pub.config_path), *args], env=pub.env, input=input
    )


def with_segments(pub: Publication, text: str) -> None:
    with pub.config_path.open("a", encoding="utf-8") as f:
        f.write(f"\n[segments]\n{text}\n")


def import_people(pub: Publication, *tag_options: str) -> Result:
    path = pub.root / "people.csv"
    path.write_text(
        "email,name,city\n"
        "ann@example.com,Ann,Irvine\n"
        "bob@example.com,Bob,Irvine\n"
        "cid@example.com,Cid,Oslo\n"
        "not-an-address,Bad,Nowhere\n",
        encoding="utf-8",
    )
    return invoke(pub, "subscribers", "import", str(path), *tag_options)


def test_tag_adds_and_removes_and_names_unknown_addresses(pub: Publication, assert_user_error):
    import_people(pub)
    done = invoke(
        pub, "subscribers", "tag", "ann@example.com", "BOB@example.com", "--add", "VIP",
        "--add", "beta",
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert done.stdout == "2 subscriber(s): 4 tag(s) added, 0 removed\n"
    again = invoke(pub, "subscribers", "tag", "ann@example.com", "--add", "vip")
    assert again.stdout == "1 subscriber(s): 0 tag(s) added, 0 removed\n"
    # An unknown address is named on one line and changes nothing; the others are tagged.
    mixed = invoke(
        pub, "subscribers", "tag", "who@example.com", "cid@example.com", "x@example.org",
        "--add", "vip", "--remove", "beta",
    )  # fmt: skip
    assert mixed.exit_code == 1
    assert assert_user_error(mixed) == "Error: not on the list: who@example.com, x@example.org"
    assert mixed.stdout == "1 subscriber(s): 1 tag(s) added, 0 removed\n"
    removed = invoke(pub, "subscribers", "tag", "bob@example.com", "--remove", "BETA")
    assert removed.stdout == "1 subscriber(s): 0 tag(s) added, 1 removed\n"
    store = pub.store()
    assert ledger_tags.tags_of(store, "ann@example.com") == ["beta", "vip"]
    assert ledger_tags.tags_of(store, "bob@example.com") == ["vip"]
    assert ledger_tags.tags_of(store, "cid@example.com") == ["vip"]
    assert ledger_tags.tags_of(store, "who@example.com") == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["ann@example.com"], "--add TAG and/or --remove TAG"),
        (["ann@example.com", "--add", "vip", "--remove", "VIP"], "both name vip"),
        (["ann@example.com", "--add", "two words"], "'two words': a tag is letters"),
        (["ann@example.com", "--add", "x" * 65], "at most 64 characters"),
        (["--add", "vip"], "Missing argument 'EMAIL...'"),
    ],
)
def test_tag_usage_errors_exit_2(pub: Publication, args: list[str], needle: str) -> None:
    import_people(pub)
    result = invoke(pub, "subscribers", "tag", *args)
    assert result.exit_code == 2 and needle in result.stderr, result.output
    assert ledger_tags.tags_of(pub.store(), "ann@example.com") == []


def test_import_tags_every_imported_row(pub: Publication) -> None:
    invoke(pub, "subscribers", "add", "bob@example.com")
    invoke(pub, "subscribers", "tag", "bob@example.com", "--add", "old")
    result = import_people(pub, "--tag", "Spring-2026", "--tag", "imported")
    assert result.exit_code == 0, result.output
    assert "2 added, 1 updated, 1 rejected" in result.stdout
    store = pub.store()
    assert ledger_tags.tags_of(store, "ann@example.com") == ["imported", "spring-2026"]
    assert ledger_tags.tags_of(store, "bob@example.com") == ["imported", "old", "spring-2026"]
    assert invoke(pub, "subscribers", "count", "--segment", "tag:imported").stdout == "3\n"
    bad = import_people(pub, "--tag", "no good")
    assert bad.exit_code == 2 and "'no good'" in bad.stderr


def test_count_segment_by_expression_and_by_name(pub: Publication, assert_user_error) -> None:
    import_people(pub)
    invoke(pub, "subscribers", "tag", "ann@example.com", "bob@example.com", "--add", "vip")
    invoke(pub, "subscribers", "tag", "bob@example.com", "--add", "churned")
    with_segments(pub, 'vip = "tag:vip and not tag:churned"\nirvine = \'attr:city = "Irvine"\'')

    def count(*args: str) -> str:
        result = invoke(pub, "subscribers", "count", *args)
        assert result.exit_code == 0, result.output
        return result.stdout.strip()

    assert count("--segment", "vip") == "1"
    assert count("--segment", "irvine") == "2"
    assert count("--segment", "tag:vip") == "2"
    assert count("--segment", 'attr:city != "Irvine"') == "1"
    invoke(pub, "subscribers", "remove", "ann@example.com")
    assert count("--segment", "tag:vip") == "1"
    assert count("--segment", "tag:vip", "--status", "unsubscribed") == "1"
    bad = invoke(pub, "subscribers", "count", "--segment", "tag:vip and (tag:a or")
    assert bad.exit_code == 2
    assert_user_error(bad, "segment 'tag:vip and (tag:a or': column 22: unexpected end")
    unknown = invoke(pub, "subscribers", "count", "--segment", "vips")
    assert unknown.exit_code == 2
    assert_user_error(unknown, "'vips': no such name in [segments] (did you mean 'vip'?)")
    both = invoke(pub, "subscribers", "count", "--json", "--segment", "vip")
    assert both.exit_code == 2 and "leave out --segment" in both.stderr


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ('vip = "tag:vip and"', "[segments] vip: segment 'tag:vip and': column 12: unexpected"),
        ("vip = 3", "[segments] vip: expected a string"),
        ('"v i p" = "tag:vip"', "[segments] v i p: a segment name is letters"),
        ('and = "tag:vip"', "[segments] and: a segment name"),
    ],
)
def test_a_bad_segments_entry_is_a_config_error_naming_the_key(
    pub: Publication, entry: str, needle: str
) -> None:
    with_segments(pub, entry)
    with pytest.raises(ConfigError) as caught:
        pub.config()
    assert str(caught.value).startswith(f"{pub.config_path}: ")
    assert needle in str(caught.value)
    result = invoke(pub, "subscribers", "count")
    assert result.exit_code == 2 and needle in result.stderr


# --- a campaign to a segment, through the real SMTP server ---------------------------


def recipients(smtp_server: SmtpServer) -> list[str]:
    return sorted(r.rcpt_tos[0] for r in smtp_server.received)


def test_send_all_to_a_segment_reaches_its_members_only(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    import_people(pub)
    invoke(pub, "subscribers", "tag", "ann@example.com", "bob@example.com", "--add", "vip")
    invoke(pub, "subscribers", "tag", "bob@example.com", "--add", "churned")
    invoke(pub, "subscribers", "tag", "cid@example.com", "--add", "vip")
    with_segments(pub, 'vip = "tag:vip and not tag:churned"')

    declined = invoke(
        pub, "send", str(pub.issue), "--all", "--segment", "vip and attr:city = Irvine",
        input="n\n",
    )  # fmt: skip
    assert declined.exit_code == 2 and "no such name" not in declined.stderr
    asked = invoke(pub, "send", str(pub.issue), "--all", "--segment", "vip", input="n\n")
    assert asked.exit_code == 1
    assert "to the 2 subscriber(s) of segment vip (tag:vip and not tag:churned)?" in asked.stderr
    dry = invoke(pub, "send", str(pub.issue), "--all", "--segment", "vip", "--dry-run", "--json")
    assert json.loads(dry.stdout)["messages"] == 2
    assert not smtp_server.received

    sent = invoke(pub, "send", str(pub.issue), "--all", "--segment", "vip", "--yes")
    assert sent.exit_code == 0, sent.output
    assert "2 sent, 0 deferred" in sent.stdout
    assert recipients(smtp_server) == ["ann@example.com", "cid@example.com"]
    [report] = campaign_status.status(pub.store())
    assert (report.segment, report.segment_size, report.total) == (
        "tag:vip and not tag:churned",
        2,
        2,
    )
    shown = invoke(pub, "status").stdout
    assert "segment: tag:vip and not tag:churned (2 subscriber(s)" in shown
    assert json.loads(invoke(pub, "status", "--json").stdout)["campaigns"][0]["segment_size"] == 2

    # One issue once holds across segments: the rest of Irvine gets it with --new-only.
    rest = invoke(
        pub, "send", str(pub.issue), "--all", "--segment", 'attr:city = "Irvine"', "--new-only",
        "--yes",
    )  # fmt: skip
    assert rest.exit_code == 0, rest.output
    assert recipients(smtp_server) == ["ann@example.com", "bob@example.com", "cid@example.com"]
    newest = campaign_status.status(pub.store())[0]
    assert (newest.segment_size, newest.total) == (2, 1)  # Irvine has 2; 1 had not had it


def test_a_segment_nobody_is_in_makes_no_campaign(
    pub: Publication, smtp_server: SmtpServer, assert_user_error
) -> None:
    import_people(pub)
    result = invoke(pub, "send", str(pub.issue), "--all", "--segment", "tag:nobody", "--yes")
    assert result.exit_code == 1
    assert_user_error(result, "segment tag:nobody: no active subscriber in it; no campaign made")
    assert campaign_status.status(pub.store()) == []
    test = invoke(pub, "send", str(pub.issue), "--to", "me@example.com", "--segment", "tag:x")
    assert test.exit_code == 2 and "--segment goes with --all" in test.stderr
    assert not smtp_server.received


def test_a_scheduled_segment_is_evaluated_at_the_send_time(
    tmp_path: Path, database_url: str, smtp_server: SmtpServer
) -> None:
    pub = make_publication(tmp_path, database_url, smtp_server.port)
    store = pub.store()
    store.upsert_subscribers(
        [SubscriberRow(f"{n}@example.com", n.title()) for n in ("ann", "bob", "cid")]
    )
    ledger_tags.apply(store, ["ann@example.com"], add=["vip"])
    cid, _, _ = plans.schedule_issue(
        store,
        pub.config(),
        pub.issue,
        "2026-12-01 09:00",
        "America/Los_Angeles",
        now=dt.datetime(2026, 11, 25, tzinfo=UTC),
        segment=segments.resolve("tag:vip", {}),
    )
    [waiting] = campaign_status.status(store, cid)
    assert (waiting.segment, waiting.segment_size, waiting.total) == ("tag:vip", None, 0)
    # Tagged after scheduling, before the send: in; untagged: out.
    ledger_tags.apply(store, ["bob@example.com"], add=["vip"])
    ledger_tags.apply(store, ["ann@example.com"], remove=["vip"])
    early = run_due(store, pub.config(), now=dt.datetime(2026, 12, 1, 16, 59, tzinfo=UTC))
    assert early.sent == [] and not smtp_server.received
    due = run_due(store, pub.config(), now=dt.datetime(2026, 12, 1, 17, 0, 1, tzinfo=UTC))
    assert [r["campaign_id"] for r in due.sent] == [cid] and due.ok
    assert recipients(smtp_server) == ["bob@example.com"]
    [done] = campaign_status.status(store, cid)
    assert (done.segment_size, done.total, done.sent) == (1, 1, 1)


def test_schedule_cli_takes_a_segment_by_name(pub: Publication) -> None:
    with_segments(pub, 'vip = "tag:vip"')
    made = invoke(pub, "schedule", str(pub.issue), "--at", "2030-12-03 09:00", "--segment", "vip")
    assert made.exit_code == 0, made.output
    assert "to segment vip (tag:vip), as it is at the send time" in made.stdout
    shown = invoke(pub, "status").stdout
    assert "segment: tag:vip (its size is counted at the send time)" in shown
    assert invoke(pub, "schedule", "list").stdout.rstrip().endswith("segment: tag:vip")
    listed = json.loads(invoke(pub, "schedule", "list", "--json").stdout)["schedules"]
    assert [r["segment"] for r in listed] == ["tag:vip"]
    bad = invoke(pub, "schedule", str(pub.issue), "--at", "2030-12-03 09:00", "--segment", "tag:")
    assert bad.exit_code == 2 and "column 1" in bad.stderr
    every = invoke(pub, "schedule", "--every", "0 9 * * TUE", "--segment", "vip")
    assert every.exit_code == 2 and "no --segment" in every.stderr
