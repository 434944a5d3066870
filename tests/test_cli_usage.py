"""Usage errors exit 2 with one line that names the value (issue 17, item 7), and
unknown NEWSLETTER_* variables are refused like unknown keys (item 8)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

FUTURE = "2031-12-01 09:00"


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--at", "tomorrow 9am"], ["--at 'tomorrow 9am'", "expected a local time"]),
        (["--at", "2031-12-01T09:00+02:00"], ["without an offset", "--tz"]),
        (["--at", FUTURE, "--tz", "PST"], ["--tz 'PST'", "unknown time zone"]),
        (["--at", "2031-03-09 02:30"], ["does not exist in America/Los_Angeles", "01:59"]),
        (["--at", "2031-11-02 01:30"], ["happens twice", "--fold 0"]),
    ],
)
def test_bad_time_or_zone_exits_2(
    run_cli: Callable[..., Result],
    sample_issue: Path,
    assert_user_error: Callable[..., str],
    args: list[str],
    needles: list[str],
) -> None:
    result = run_cli("schedule", sample_issue, *args)
    assert result.exit_code == 2, result.output
    assert_user_error(result, *needles)


def test_a_time_in_the_past_shows_dates_and_zone_and_exits_2(
    run_cli: Callable[..., Result], sample_issue: Path, assert_user_error: Callable[..., str]
) -> None:
    result = run_cli("schedule", sample_issue, "--at", "2020-01-01 09:00")
    assert result.exit_code == 2
    line = assert_user_error(result, "is in the past")
    # Both the time asked for and now carry a date and a zone.
    assert "2020-01-01 09:00:00 PST (America/Los_Angeles) = 2020-01-01 17:00:00 UTC" in line
    now = line.split("(now: ", 1)[1]
    assert now[:4].isdigit() and now[4] == "-" and "(America/Los_Angeles)" in now


def test_moving_into_the_past_is_a_usage_error(
    run_cli: Callable[..., Result], sample_issue: Path, assert_user_error: Callable[..., str]
) -> None:
    created = run_cli("schedule", sample_issue, "--at", FUTURE)
    assert created.exit_code == 0, created.output
    moved = run_cli("schedule", "move", "1", "--at", "2020-01-01 09:00")
    assert moved.exit_code == 2
    assert_user_error(moved, "2020-01-01 09:00:00 PST", "is in the past", "(now: ")


@pytest.mark.parametrize(
    ("expression", "needles"),
    [
        ("0 25 * * *", ["hour '25'", "25 is out of range", "allowed: 0-23"]),
        ("61 9 * * *", ["minute '61'", "allowed: 0-59"]),
        ("0 9 32 * *", ["day of month '32'", "allowed: 1-31"]),
        ("0 9 0 * *", ["day of month '0'", "0 is out of range"]),
        ("0 9 * 13 *", ["month '13'", "allowed: 1-12, or JAN-DEC"]),
        ("0 9 * JANX *", ["month 'JANX'", "'JANX' is not a number or a name"]),
        ("0 9 * * 8", ["day of week '8'", "allowed: 0-7, or SUN-SAT"]),
        ("0 9 * * funday", ["day of week 'funday'", "not a number or a name"]),
        ("x 9 * * *", ["minute 'x'", "'x' is not a number", "allowed: 0-59"]),
        ("*/0 9 * * *", ["minute '*/0'", "the step '0'"]),
        ("30-10 * * * *", ["minute '30-10'", "runs backwards"]),
        ("0 9 1- * *", ["day of month '1-'", "not a value, a range"]),
        ("0 9 * *", ["expected 5 fields"]),
        ("0 9 31 2 *", ["never fires"]),
    ],
)
def test_bad_cron_expression_exits_2_in_our_words(
    run_cli: Callable[..., Result],
    assert_user_error: Callable[..., str],
    expression: str,
    needles: list[str],
) -> None:
    result = run_cli("schedule", "--every", expression)
    assert result.exit_code == 2, result.output
    line = assert_user_error(result, f"--every {expression!r}", *needles)
    # Not APScheduler's wording.
    assert "Error validating" not in line and "higher than the maximum" not in line


@pytest.mark.parametrize(
    "expression",
    [
        "0 9 * * 7",
        "0 9 * * fri-sun",
        "*/15 9-17 * * MON-FRI",
        "0 9 1,15 JAN,jul *",
        "0 9 1 1-mar *",
        "0 9 1 JAN/2 *",
    ],
)
def test_good_cron_expressions_still_pass(run_cli: Callable[..., Result], expression: str) -> None:
    result = run_cli("schedule", "--every", expression)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (["build"], []),
        (["check"], []),
        (["preview"], ["--no-open"]),
        (["send"], ["--to", "me@example.com"]),
        (["schedule"], ["--at", FUTURE]),
        (["import"], []),
        (["subscribers", "import"], []),
    ],
)
def test_a_missing_input_file_exits_2(
    run_cli: Callable[..., Result],
    publication: Path,
    assert_user_error: Callable[..., str],
    before: list[str],
    after: list[str],
) -> None:
    missing = publication.parent / "issues" / "2031-01-01-nope.md"
    result = run_cli(*before, missing, *after)
    assert result.exit_code == 2, result.output
    assert_user_error(result, f"{missing}: no such file")
    folder = run_cli(*before, publication.parent, *after)
    assert folder.exit_code == 2
    assert_user_error(folder, f"{publication.parent}: is a folder, not a file")


def test_a_bad_recurring_reference_exits_2(
    run_cli: Callable[..., Result], assert_user_error: Callable[..., str]
) -> None:
    result = run_cli("schedule", "cancel", "soon")
    assert result.exit_code == 2
    assert_user_error(result, "'soon': expected a campaign id")


# --- NEWSLETTER_* variables (item 8) -------------------------------------------------------


def test_a_typo_in_an_override_variable_is_refused_with_a_suggestion(
    run_cli: Callable[..., Result],
    monkeypatch: pytest.MonkeyPatch,
    assert_user_error: Callable[..., str],
) -> None:
    monkeypatch.setenv("NEWSLETTER_SMTP_PROT", "1")
    result = run_cli("schedule", "list")
    assert result.exit_code == 2
    assert_user_error(
        result,
        "NEWSLETTER_SMTP_PROT is set but overrides no key",
        "did you mean NEWSLETTER_SMTP_PORT?",
    )


def test_an_unknown_variable_far_from_any_key_is_refused_without_a_guess(
    run_cli: Callable[..., Result],
    monkeypatch: pytest.MonkeyPatch,
    assert_user_error: Callable[..., str],
) -> None:
    monkeypatch.setenv("NEWSLETTER_ZZZ", "1")
    result = run_cli("subscribers", "count")
    assert result.exit_code == 2
    assert "did you mean" not in assert_user_error(result, "NEWSLETTER_ZZZ")


def test_an_override_of_a_table_the_file_lacks_is_refused(
    run_cli: Callable[..., Result],
    monkeypatch: pytest.MonkeyPatch,
    assert_user_error: Callable[..., str],
) -> None:
    monkeypatch.setenv("NEWSLETTER_SMTP_BACKUP_PORT", "587")  # no [smtp.backup]
    result = run_cli("subscribers", "count")
    assert result.exit_code == 2
    assert_user_error(result, "NEWSLETTER_SMTP_BACKUP_PORT")


def test_the_tools_own_variables_and_those_the_config_names_stay_allowed(
    run_cli: Callable[..., Result],
    publication: Path,
    monkeypatch: pytest.MonkeyPatch,
    edit_file: Callable[[Path, str, str], None],
) -> None:
    edit_file(publication, 'secret_env = "NEWSLETTER_SECRET"', 'secret_env = "NEWSLETTER_KEY"')
    text = publication.read_text(encoding="utf-8")
    publication.write_text(text + '\n[smtp.backup]\nhost = "backup.example"\n', encoding="utf-8")
    allowed = {
        "NEWSLETTER_CONFIG": str(publication),
        "NEWSLETTER_SECRET": "s",
        "NEWSLETTER_KEY": "a secret of at least some length",  # [publication] secret_env
        "NEWSLETTER_TEST_POSTGRES_URL": "postgresql+psycopg://x@127.0.0.1/none",
        "NEWSLETTER_CHROMIUM": "/usr/bin/chromium",
        "NEWSLETTER_DOVECOT": "/usr/sbin/dovecot",
        "NEWSLETTER_SMTP_PASSWORD_ENV": "NEWSLETTER_RELAY_PASSWORD",  # an override naming
        "NEWSLETTER_RELAY_PASSWORD": "hunter2",  # a variable: allowed as well
        "NEWSLETTER_SMTP_BACKUP_PORT": "2525",  # [smtp.backup] is in the file
        "NEWSLETTER_SPONSORS_HELLOSHUTTLE_PHONE": "+1 949 800 5678",
        "NEWSLETTER_SPONSORS_DEFAULT": "helloshuttle",
    }
    for name, value in allowed.items():
        monkeypatch.setenv(name, value)
    result = run_cli("subscribers", "count")
    assert result.exit_code == 0, result.output


def test_every_variable_the_repository_mentions_is_allowed() -> None:
    """The names in the README, Makefile, CI script, code and tests (grep), against the
    sample publication: each is an override of it or a variable of the tool's own."""
    import re

    from newsletter.config import load
    from newsletter.config.reading import OWN_VARIABLES, named_variables, override_names

    root = Path(__file__).resolve().parents[1]
    files = [root / "README.md", root / "Makefile", root / ".ci" / "run"]
    files += [*(root / "newsletter").rglob("*.py"), *(root / "tests").glob("*.py")]
    mentioned: set[str] = set()
    for path in files:
        # A name that ends in "_" is a prefix in a sentence or an f-string, not a variable.
        mentioned |= set(
            re.findall(r"(?<![A-Z_])NEWSLETTER_[A-Z0-9_]*[A-Z0-9]\b", path.read_text())
        )
    config = load(root / "newsletter.toml", {})
    known = override_names(config) | OWN_VARIABLES | named_variables(config)
    # Typos on purpose (this file, the README's example) and [smtp.backup], which the
    # tests that use it add to their copy of the file.
    meant = {
        "NEWSLETTER_SMTP_PROT",
        "NEWSLETTER_ZZZ",
        "NEWSLETTER_KEY",
        "NEWSLETTER_RELAY_PASSWORD",
    }
    meant |= {n for n in mentioned if n.startswith("NEWSLETTER_SMTP_BACKUP_")}
    # `init`'s config (setup/starter.py) has [sponsors.example] where the sample has
    # [sponsors.helloshuttle].
    meant |= {n for n in mentioned if n.startswith("NEWSLETTER_SPONSORS_EXAMPLE_")}
    # The README's rotation example names it in [publication] previous_secrets_env.
    meant.add("NEWSLETTER_OLD_SECRETS")
    assert len(mentioned) > 30
    assert sorted(mentioned - known - meant) == []


@pytest.mark.parametrize(
    ("expression", "months"),
    [
        ("0 9 1 feb-apr *", [2, 3, 4, 2]),
        ("0 9 1 JAN/5 *", [1, 6, 11, 1]),
        ("0 9 1 2-apr *", [2, 3, 4, 2]),
    ],
)
def test_month_names_in_ranges_and_steps_fire_as_cron_reads_them(
    expression: str, months: list[int]
) -> None:
    import datetime as dt

    from newsletter.schedule import cron

    at = dt.datetime(2026, 12, 15, tzinfo=dt.UTC)
    fired = []
    for _ in months:
        at = cron.next_tick(expression, "UTC", at)
        fired.append(at.month)
    assert fired == months
