"""`check --spam`: SpamAssassin (local rules) scores the built message, rule by rule.

The tests marked `spamassassin` run the machine's real SpamAssassin on the message
`build` writes. The failure paths use small stand-in programs: a real SpamAssassin
cannot be made to crash or hang on demand.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import lxml.html
import pytest

from newsletter import config
from newsletter.issue import publish, spam

SPAMMY = """\
---
title: FREE MONEY!!! ACT NOW!!!
subject: FREE MONEY!!! CLAIM YOUR CASH PRIZE NOW!!!
preheader: 100% FREE! Risk free! Double your income!
date: 2024-12-01
---

DEAR FRIEND, YOU HAVE BEEN SELECTED TO RECEIVE FREE MONEY!!!

Earn extra cash from home. Make money fast with no experience. 100% guaranteed,
risk free, no credit check.

Click here to claim your cash prize now! This is a one-time offer, act now before it
expires. Get out of debt today!

Your credit card will not be charged. Order now and double your income. Million
dollars guaranteed!
"""

# What the template hid the preheader with before issue 16: text coloured like the
# background, which SpamAssassin reads as hidden spam text.
COLOUR_TRICK = "mso-hide: all; font-size: 1px; line-height: 1px; color: #f2f4f7; opacity: 0; }"


def sample_message(publication: Path, issue: Path) -> bytes:
    cfg = config.load(publication)
    built = publish.build_issue(cfg, publish.load_issue(issue))
    return publish.sample(cfg, built).message


def program(folder: Path, script: str) -> Path:
    """A stand-in `spamassassin` in `folder`: a shell script."""
    path = folder / "spamassassin"
    path.write_text("#!/bin/sh\n" + script, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# --- the sample issue -----------------------------------------------------------------


@pytest.mark.spamassassin
def test_the_sample_issue_scores_zero_or_less_with_no_rule_adding_points(
    publication, sample_issue
):
    result = spam.score(sample_message(publication, sample_issue))
    assert result.total <= 0, result
    assert [r.name for r in result.rules if r.counts] == []
    # SpamAssassin did run its rules: it says the message is HTML.
    assert "HTML_MESSAGE" in [r.name for r in result.rules]


@pytest.mark.spamassassin
def test_check_spam_on_the_sample_lists_the_rules_then_the_total(
    run_cli, sample_issue, publication
):
    result = run_cli("check", "--spam", sample_issue)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[-1].endswith(": 0 error(s), 0 warning(s)")
    assert lines[-2].startswith("info: SpamAssassin scores the message 0.0 (at most 2.0")
    rules = [line for line in lines if line.startswith("info: SpamAssassin HTML_MESSAGE")]
    assert rules == [
        "info: SpamAssassin HTML_MESSAGE +0.0: BODY: HTML included in message [message]"
    ]


@pytest.mark.spamassassin
def test_the_old_colour_trick_is_what_scored_low_contrast(publication, sample_issue, edit_file):
    """The score issue 16 started from: 0.7 points, all of them the preheader's colour."""
    style = publication.parent / "templates" / "style.css"
    edit_file(style, "mso-hide: all; }", COLOUR_TRICK)
    result = spam.score(sample_message(publication, sample_issue))
    assert [(r.name, round(r.points, 1)) for r in result.rules if r.counts] == [
        ("HTML_FONT_LOW_CONTRAST", 0.7)
    ]
    # The description runs over two lines of SpamAssassin's report.
    (rule,) = [r for r in result.rules if r.counts]
    assert rule.description == "BODY: HTML font color similar or identical to background"
    assert result.total == 0.7


def test_the_preheader_stays_hidden_after_inlining(publication, sample_issue):
    """Hidden without a colour: display none, no height, and Outlook's mso-hide."""
    cfg = config.load(publication)
    built = publish.build_issue(cfg, publish.load_issue(sample_issue))
    html = publish.sample(cfg, built).html
    (div,) = lxml.html.document_fromstring(html).find_class("preheader")
    assert div.text_content() == built.issue.preheader
    style = {
        name.strip(): value.strip()
        for name, _, value in (d.partition(":") for d in div.get("style", "").split(";"))
    }
    assert style == {
        "display": "none",
        "max-height": "0",
        "overflow": "hidden",
        "mso-hide": "all",
    }
    # The preheader is the first thing in the body, before any visible text.
    assert div.getparent().tag == "body" and div.getprevious() is None


# --- an issue written to look like spam -----------------------------------------------


@pytest.fixture
def spammy_issue(publication: Path) -> Path:
    path = publication.parent / "issues" / "2024-12-01-free-money.md"
    path.write_text(SPAMMY, encoding="utf-8")
    return path


@pytest.mark.spamassassin
def test_a_spammy_issue_is_an_error_naming_the_rules(run_cli, spammy_issue):
    result = run_cli("check", "--spam", spammy_issue)
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    warned = [line for line in lines if line.startswith("warning: SpamAssassin ")]
    assert any(" SUBJ_ALL_CAPS +" in line for line in warned), warned
    assert any(" GUARANTEED_100_PERCENT +" in line for line in warned), warned
    assert lines[-2].startswith("error: SpamAssassin scores the message ")
    assert "over 2.0 ([check] spam_max)" in lines[-2]
    assert lines[-1].endswith(f": 1 error(s), {len(warned)} warning(s)")


@pytest.mark.spamassassin
def test_a_spammy_issue_in_json(run_cli, spammy_issue, publication):
    result = run_cli("check", "--spam", "--json", spammy_issue)
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    *rules, total = [f for f in data["findings"] if f["code"].startswith("spam-")]
    assert (total["code"], total["level"]) == ("spam-score", "error")
    assert data["errors"] == 1
    assert data["warnings"] == sum(r["level"] == "warning" for r in rules) >= 2
    assert {(r["code"], r["where"]) for r in rules} == {("spam-rule", "message")}
    # The total shown is SpamAssassin's score of the message `build` writes.
    scored = spam.score(sample_message(publication, spammy_issue))
    assert scored.total > config.load(publication).check.spam_max
    assert f"scores the message {scored.total:.1f}," in total["message"]


@pytest.mark.spamassassin
def test_spam_max_is_read_from_the_config(run_cli, spammy_issue, publication):
    with publication.open("a", encoding="utf-8") as f:
        f.write("\n[check]\nspam_max = 100.0\n")
    result = run_cli("check", "--spam", spammy_issue)
    assert result.exit_code == 0, result.output
    assert "(at most 100.0, [check] spam_max)" in result.stdout


def test_without_spam_check_does_not_run_spamassassin(run_cli, spammy_issue, monkeypatch):
    monkeypatch.setenv("PATH", "")
    result = run_cli("check", spammy_issue)
    assert result.exit_code == 0, result.output
    assert "SpamAssassin" not in result.output


# --- SpamAssassin missing, failing, hanging -------------------------------------------


def test_without_spamassassin_check_spam_says_how_to_install_it(
    run_cli, sample_issue, tmp_path, monkeypatch, assert_user_error
):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    result = run_cli("check", "--spam", sample_issue)
    assert result.exit_code == 1
    line = assert_user_error(
        result, "SpamAssassin is not installed", "apt-get install spamassassin"
    )
    assert result.stdout == "", line


def test_a_program_that_is_not_there_is_missing(tmp_path):
    with pytest.raises(spam.SpamAssassinMissing, match="no such program"):
        spam.score(b"", executable=str(tmp_path / "spamassassin"))


def test_a_failing_spamassassin_is_one_line(
    run_cli, sample_issue, tmp_path, monkeypatch, assert_user_error
):
    fake = program(
        tmp_path,
        "echo \"config: no rules were found!  Do you need to run 'sa-update'?"
        ' at /usr/bin/spamassassin line 426." >&2\n'
        "echo 'second line' >&2\nexit 255\n",
    )
    monkeypatch.setenv("PATH", str(fake.parent))
    result = run_cli("check", "--spam", sample_issue)
    assert result.exit_code == 1
    line = assert_user_error(result, "failed (exit 255)", "no rules were found!")
    assert line.endswith("Do you need to run 'sa-update'?"), line


def test_a_hanging_spamassassin_is_stopped(tmp_path):
    fake = program(tmp_path, "exec /bin/sleep 30\n")
    with pytest.raises(spam.SpamAssassinFailed, match=r"no score after 0\.5 s") as caught:
        spam.score(b"Subject: x\r\n\r\nx\r\n", executable=str(fake), timeout=0.5)
    assert "\n" not in str(caught.value)


def test_output_without_a_score_is_a_failure(tmp_path):
    fake = program(tmp_path, "cat\n")
    with pytest.raises(spam.SpamAssassinFailed, match="its output has no score"):
        spam.score(b"Subject: x\r\n\r\nx\r\n", executable=str(fake))


# --- what becomes of a score ----------------------------------------------------------


def test_informational_rules_are_info_and_the_total_decides_the_error():
    result = spam.Score(
        total=2.1,
        rules=(
            spam.Rule("BIG", 2.1, "BODY: big"),
            spam.Rule("HTML_MESSAGE", 0.001, ""),
            spam.Rule("NO_RELAYS", -0.001, "Informational"),
        ),
    )
    found = spam.findings(result, spam_max=2.0)
    assert [(f.level, f.code) for f in found] == [
        ("warning", "spam-rule"),
        ("info", "spam-rule"),
        ("info", "spam-rule"),
        ("error", "spam-score"),
    ]
    assert found[0].message == "SpamAssassin BIG +2.1: BODY: big"
    assert found[1].message == "SpamAssassin HTML_MESSAGE +0.0"
    assert spam.findings(result, spam_max=2.1)[-1].level == "info"
