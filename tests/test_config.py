"""newsletter.toml: read once, every key checked, every error names the file and the key."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys
import typing
import unicodedata

import pytest

from newsletter import config
from newsletter.errors import ConfigError


def load_error(path, environ=None) -> str:
    with pytest.raises(ConfigError) as info:
        config.load(path, environ={} if environ is None else environ)
    message = str(info.value)
    assert "\n" not in message
    return message


def line_of(path, text: str) -> int:
    lines = path.read_text(encoding="utf-8").split("\n")
    return next(n for n, line in enumerate(lines, start=1) if text in line)


def test_sample_config_loads_into_frozen_objects(publication):
    cfg = config.load(publication, environ={})
    assert cfg.publication.name == "Hello Shuttle News Briefing"
    assert cfg.publication.from_addr == "Hello Shuttle News <news@helloshuttle.com>"
    assert cfg.smtp.port == 1025
    assert cfg.smtp.timeout == 30.0
    assert cfg.default_sponsor == "helloshuttle"
    hello = cfg.sponsor("helloshuttle")
    assert hello.phone == "(949) 800-5678"
    assert hello.places[0] == "LAX" and len(hello.places) == 7
    # Relative paths are relative to the file, not to the working directory.
    assert cfg.templates_dir == publication.parent / "templates"
    assert cfg.database_url == f"sqlite:///{publication.parent / 'newsletter.db'}"
    with pytest.raises(AttributeError):
        cfg.smtp.port = 25  # type: ignore[misc]


def test_malformed_toml_names_the_file_and_line(publication, edit_file):
    edit_file(publication, "port = 1025", "port = 1025 oops")
    message = load_error(publication)
    assert str(publication) in message
    assert f"line {line_of(publication, 'port = 1025 oops')}" in message


@pytest.mark.parametrize(
    ("old", "new", "key", "expected"),
    [
        ("port = 1025", 'port = "abc"', "[smtp] port", "expected an integer"),
        ("port = 1025", "port = true", "[smtp] port", "expected an integer"),
        ("timeout = 30 ", 'timeout = "slow" ', "[smtp] timeout", "expected a number"),
        ("enabled = true ", 'enabled = "yes" ', "[utm] enabled", "expected true or false"),
        ('name = "Hello Shuttle"', "name = 7", "[sponsors.helloshuttle] name", "a string"),
        ('call_to_action = "Book a ride"', "call_to_action = []", "call_to_action", "a string"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_key(publication, edit_file, old, new, key, expected):
    edit_file(publication, old, new)
    message = load_error(publication)
    assert str(publication) in message
    assert key in message
    assert expected in message


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("port = 1025", "prot = 1025", "unknown key 'prot' in [smtp] (did you mean 'port'?)"),
        ("[utm]", "[utms]", "unknown section [utms] (did you mean 'utm'?)"),
        ("reply_to =", "replyto =", "in [publication] (did you mean 'reply_to'?)"),
        ('phone = "(949)', 'phnoe = "(949)', "(did you mean 'phone'?)"),
        ('default = "helloshuttle"', 'default = "heloshuttle"', "did you mean 'helloshuttle'?"),
    ],
)
def test_unknown_keys_suggest_the_nearest(publication, edit_file, old, new, expected):
    edit_file(publication, old, new)
    message = load_error(publication)
    assert str(publication) in message
    assert expected in message


@pytest.mark.parametrize("key", ["from", "reply_to", "name", "list_id"])
@pytest.mark.parametrize(("brk", "code"), [("\\r\\n", "000D"), ("\\n", "000A"), ("\\r", "000D")])
def test_a_line_break_in_a_header_value_is_refused(publication, edit_file, key, brk, code):
    text = publication.read_text(encoding="utf-8")
    line = next(x for x in text.split("\n") if x.startswith(f"{key} = "))
    edit_file(publication, line, line[:-1] + brk + 'Bcc: victim@example.com"')
    message = load_error(publication)
    assert f"[publication] {key}: must not contain a line break (U+{code})" in message
    assert message.startswith(f"{publication}: ")


# Every Cc (C0, DEL, C1), Zl and Zp character is refused; one of each kind here, the whole
# class in test_the_header_rule_is_exactly_controls_and_separators.
HEADER_REFUSED = {
    "\t": "a control character (U+0009)",
    "\x00": "a control character (U+0000)",
    "\x0b": "a control character (U+000B)",
    "\x0c": "a control character (U+000C)",
    "\x1c": "a control character (U+001C)",
    "\x1d": "a control character (U+001D)",
    "\x1e": "a control character (U+001E)",
    "\x7f": "a control character (U+007F)",
    "\x85": "a control character (U+0085)",
    "\x9f": "a control character (U+009F)",
    "\u2028": "a line separator (U+2028)",
    "\u2029": "a paragraph separator (U+2029)",
}


def test_the_header_rule_is_exactly_controls_and_separators():
    everything = "".join(map(chr, range(sys.maxunicode + 1)))
    expected = [c for c in everything if unicodedata.category(c) in ("Cc", "Zl", "Zp")]
    assert config.HEADER_FORBIDDEN.findall(everything) == expected
    assert len(expected) == 65 + 2


@pytest.mark.parametrize(("char", "reason"), HEADER_REFUSED.items())
def test_header_value_problem_names_the_character(char, reason):
    assert config.header_value_problem(f"News{char}Bcc: x@example.com") == (
        f"must not contain {reason}"
    )


@pytest.mark.parametrize("value", ["", "Hello Shuttle", "Zoë Ångström — 東京 🚐", "a\u00a0b"])
def test_header_value_problem_passes_ordinary_text(value):
    assert config.header_value_problem(value) is None


@pytest.mark.parametrize("key", ["from", "reply_to", "name", "list_id"])
@pytest.mark.parametrize(("char", "reason"), HEADER_REFUSED.items())
def test_a_control_character_in_a_header_value_is_refused(
    publication, edit_file, key, char, reason
):
    text = publication.read_text(encoding="utf-8")
    line = next(x for x in text.split("\n") if x.startswith(f"{key} = "))
    # A TOML escape: a raw control character is not even valid TOML.
    edit_file(publication, line, f'{line[:-1]}\\u{ord(char):04X}x"')
    message = load_error(publication)
    assert message == f"{publication}: [publication] {key}: must not contain {reason}"


def test_a_control_character_from_the_environment_is_refused(publication):
    message = load_error(publication, {"NEWSLETTER_PUBLICATION_NAME": "Night\x85Edition"})
    assert message == (
        f"{publication}: [publication] name: must not contain a control character (U+0085)"
    )


def test_cli_reports_a_control_character_in_one_line(
    publication, sample_issue, run_cli, edit_file, assert_user_error
):
    edit_file(publication, "news@helloshuttle.com>", "news@helloshuttle.com>\\u000B")
    out = publication.parent / "out"
    result = run_cli("build", sample_issue, "-o", out)
    assert_user_error(
        result,
        f"{publication.name}: [publication] from: must not contain a control character (U+000B)",
        out_dir=out,
    )
    assert result.exit_code == 2


def test_environment_overrides_a_key(publication, monkeypatch):
    monkeypatch.setenv("NEWSLETTER_SMTP_PORT", "2525")
    monkeypatch.setenv("NEWSLETTER_UTM_ENABLED", "false")
    monkeypatch.setenv("NEWSLETTER_SPONSORS_HELLOSHUTTLE_PHONE", "+1 555 0100")
    monkeypatch.setenv("NEWSLETTER_PUBLICATION_NAME", "Night Edition")
    cfg = config.load(publication)  # the default environ is os.environ
    assert cfg.smtp.port == 2525
    assert cfg.utm.enabled is False
    assert cfg.sponsor("helloshuttle").phone == "+1 555 0100"
    assert cfg.publication.name == "Night Edition"
    # Keys without an override keep the file's value.
    assert cfg.smtp.host == "127.0.0.1"


@pytest.mark.parametrize("value", ["abc", "2525x", '"2525"', ""])
def test_an_environment_override_of_the_wrong_type_is_a_clear_error(publication, value):
    message = load_error(publication, {"NEWSLETTER_SMTP_PORT": value})
    assert "NEWSLETTER_SMTP_PORT" in message
    assert "[smtp] port" in message
    assert "expected an integer" in message


def test_a_list_can_be_overridden_as_a_toml_array(publication):
    env = {"NEWSLETTER_SPONSORS_HELLOSHUTTLE_PLACES": '["SNA", "LGB"]'}
    assert config.load(publication, environ=env).sponsor("helloshuttle").places == ("SNA", "LGB")
    message = load_error(publication, {"NEWSLETTER_SPONSORS_HELLOSHUTTLE_PLACES": "3"})
    assert "(overriding [sponsors.helloshuttle] places): expected a list of strings" in message


def test_an_override_is_validated_like_the_file(publication):
    message = load_error(publication, {"NEWSLETTER_SMTP_PORT": "70000"})
    assert "[smtp] port: out of range" in message
    message = load_error(publication, {"NEWSLETTER_PUBLICATION_FROM": "a@b.c\r\nBcc: x@y.z"})
    assert "[publication] from: must not contain a line break (U+000D)" in message


GROUP = "a group ('name: addresses;') cannot be the sender; expected one address"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a@x.org, b@y.org", "expected one address, got 2"),
        ("News <n@x.org>, Editor <e@x.org>", "expected one address, got 2"),
        ("Friends: a@x.org, b@y.org;", GROUP),
        ("Friends: a@x.org;", GROUP),
        ("Undisclosed recipients:;", GROUP),
        ("nobody", "not an email address"),
        ("", "not an email address"),
        ("a@", "not an email address"),
        ("a@b@c", "not an email address"),
        ("News <n@x.org> junk", "not an email address"),
        ("News <n@x.org", "not an email address"),
    ],
)
def test_from_is_exactly_one_mailbox(publication, edit_file, value, expected):
    edit_file(
        publication,
        'from = "Hello Shuttle News <news@helloshuttle.com>"',
        f"from = {json.dumps(value)}",
    )
    message = load_error(publication)
    assert message == f"{publication}: [publication] from: {expected}: {value!r}"


@pytest.mark.parametrize(
    "value",
    [
        "news@x.org",
        "<news@x.org>",
        '"News, Weekly" <news@x.org>',
        "John Q. Public <news@x.org>",
        "Zoë <news@x.org>",
        "news@[192.0.2.1]",
    ],
)
def test_from_accepts_one_mailbox(publication, value):
    cfg = config.load(publication, environ={"NEWSLETTER_PUBLICATION_FROM": value})
    assert cfg.publication.from_addr == value


def test_cli_reports_two_senders_in_one_line(
    publication, sample_issue, run_cli, monkeypatch, assert_user_error
):
    monkeypatch.setenv("NEWSLETTER_PUBLICATION_FROM", "a@x.org, b@y.org")
    result = run_cli("check", sample_issue)
    assert_user_error(result, "[publication] from: expected one address, got 2")
    assert result.exit_code == 2


def float_keys() -> list[tuple[str, str]]:
    """Every (section, key) whose value is a number: nan and inf must be refused for each."""
    return [
        (section, f.metadata.get("key", f.name))
        for section, cls in config.SECTIONS.items()
        for f in dataclasses.fields(cls)
        if typing.get_type_hints(cls)[f.name] is float
    ]


def test_the_float_keys_include_the_known_ones():
    keys = float_keys()
    assert {("smtp", "timeout"), ("smtp", "rate"), ("workers", "lease")} <= set(keys)


@pytest.mark.parametrize(("section", "key"), float_keys())
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "+inf", "-nan"])
def test_every_float_key_from_the_environment_is_finite(publication, section, key, value):
    env = f"NEWSLETTER_{section.upper()}_{key.upper()}"
    message = load_error(publication, {env: value})
    assert message.startswith(f"{publication}: {env} (overriding [{section}] {key}): ")
    assert message.endswith(f"expected a finite number, got {float(value)!r}")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1" + "0" * 400])
def test_a_float_in_the_file_is_finite(publication, edit_file, value):
    edit_file(publication, "timeout = 30 ", f"timeout = {value} ")
    message = load_error(publication)
    assert message.startswith(f"{publication}: [smtp] timeout: expected a finite number, got ")


@pytest.mark.parametrize(("key", "value"), [("timeout", "nan"), ("rate", "inf")])
def test_a_float_in_an_smtp_server_table_is_finite(publication, key, value):
    with publication.open("a", encoding="utf-8") as fh:
        fh.write(f'\n[smtp.backup]\nhost = "backup.example.com"\n{key} = {value}\n')
    message = load_error(publication)
    assert message == (
        f"{publication}: [smtp.backup] {key}: expected a finite number, got {float(value)!r}"
    )
    env = {"NEWSLETTER_SMTP_BACKUP_RETRY_DELAY": "-inf"}
    publication.write_text(
        publication.read_text(encoding="utf-8").replace(f"{key} = {value}\n", ""),
        encoding="utf-8",
    )
    assert "(overriding [smtp.backup] retry_delay): expected a finite number, got -inf" in (
        load_error(publication, env)
    )


def test_cli_reports_a_nan_timeout_in_one_line(
    publication, sample_issue, run_cli, monkeypatch, assert_user_error
):
    monkeypatch.setenv("NEWSLETTER_SMTP_TIMEOUT", "nan")
    result = run_cli("check", sample_issue)
    assert_user_error(result, "NEWSLETTER_SMTP_TIMEOUT", "[smtp] timeout", "finite number")
    assert result.exit_code == 2


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), (" 6h ", 21600), ("7d", 604800), ("45", 45), ("0s", 0)],
)
def test_parse_duration(text, seconds):
    assert config.parse_duration(text) == seconds


def test_parse_duration_stops_at_100_years():
    assert config.MAX_SECONDS == 100 * 365 * 86400
    assert config.parse_duration("36500d") == config.MAX_SECONDS
    assert config.parse_duration(f"{config.MAX_SECONDS}") == config.MAX_SECONDS
    for text in ("36501d", f"{config.MAX_SECONDS + 1}s", "9999999999999999999d", "9" * 5000):
        with pytest.raises(ValueError, match="too long: at most 100 years"):
            config.parse_duration(text)
    with pytest.raises(ValueError, match="expected a duration"):
        config.parse_duration("soon")


DURATION_KEYS = [
    ("schedule", "max_late"),
    ("schedule", "give_up_after"),
    ("signup", "throttle"),
    ("signup", "confirm_within"),
]


@pytest.mark.parametrize(("section", "key"), DURATION_KEYS)
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("9999999999999999999d", "too long: at most 100 years (36500d)"),
        ("36501d", "too long: at most 100 years (36500d)"),
        ("1" + "0" * 5000, "too long: at most 100 years (36500d)"),
        ("soon", "expected a duration like '6h', '30m' or '90s'"),
        ("-5m", "expected a duration like '6h', '30m' or '90s'"),
    ],
)
def test_a_duration_is_checked_when_read(publication, edit_file, section, key, value, expected):
    if section == "schedule":  # the sample has [schedule] max_late, and no [signup]
        kept = "" if key == "max_late" else 'max_late = "6h"\n'
        edit_file(publication, 'max_late = "6h"', f'{kept}{key} = "{value}"')
    else:
        with publication.open("a", encoding="utf-8") as fh:
            fh.write(f'\n[{section}]\n{key} = "{value}"\n')
    message = load_error(publication)
    assert message == f"{publication}: [{section}] {key}: {expected}, got {value!r}"


def test_a_duration_at_the_cap_loads_and_converts(publication):
    env = {"NEWSLETTER_SCHEDULE_MAX_LATE": "36500d", "NEWSLETTER_SIGNUP_CONFIRM_WITHIN": "36500d"}
    cfg = config.load(publication, environ=env)
    # What the scheduler and the signup form do with them must not overflow.
    assert dt.timedelta(seconds=cfg.schedule.max_late_seconds).days == 36500
    assert dt.timedelta(seconds=cfg.signup.confirm_within_seconds).days == 36500


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ("NEWSLETTER_SMTP_TIMEOUT", "[smtp] timeout"),
        ("NEWSLETTER_SMTP_RETRY_DELAY", "[smtp] retry_delay"),
        ("NEWSLETTER_WORKERS_LEASE", "[workers] lease"),
    ],
)
def test_a_number_of_seconds_stops_at_100_years(publication, env, key):
    assert config.load(publication, environ={env: str(config.MAX_SECONDS)})
    message = load_error(publication, {env: "1e300"})
    assert (
        message
        == f"{publication}: {key}: too long: at most 100 years (36500d), got 1e+300 seconds"
    )


@pytest.mark.parametrize(
    "args", [("run-due",), ("check", "ISSUE"), ("schedule", "list")], ids=lambda a: a[0]
)
def test_cli_reports_an_overflowing_duration_in_one_line(
    publication, sample_issue, run_cli, edit_file, assert_user_error, args
):
    edit_file(publication, 'max_late = "6h"', 'max_late = "9999999999999999999d"')
    result = run_cli(*(sample_issue if a == "ISSUE" else a for a in args))
    line = assert_user_error(result)
    assert line == (
        f"Error: {publication}: [schedule] max_late: too long: at most 100 years (36500d),"
        " got '9999999999999999999d'"
    )
    assert result.exit_code == 2


DEEP = 100_000
TOO_DEEP = "arrays or inline tables nested too deeply"


@pytest.mark.parametrize(
    "nested",
    ["[" * DEEP + "]" * DEEP, "{a = " * DEEP + "1" + "}" * DEEP],
    ids=["arrays", "inline-tables"],
)
def test_deeply_nested_toml_is_a_one_line_error(publication, nested):
    publication.write_text(
        publication.read_text(encoding="utf-8").replace(
            "[preview]\n", f"[preview]\nx = {nested}\n"
        ),
        encoding="utf-8",
    )
    message = load_error(publication)
    assert message == f"{publication}: invalid TOML: {TOO_DEEP}"


def test_a_deeply_nested_environment_override_is_a_one_line_error(publication):
    env = {"NEWSLETTER_PREVIEW_TEST_RECIPIENTS": "[" * DEEP + "]" * DEEP}
    message = load_error(publication, env)
    assert message == f"{publication}: {next(iter(env))}: {TOO_DEEP}"


def test_cli_reports_deeply_nested_toml_in_one_line(
    publication, sample_issue, run_cli, assert_user_error
):
    publication.write_text("a = " + "[" * DEEP + "]" * DEEP, encoding="utf-8")
    result = run_cli("check", sample_issue)
    line = assert_user_error(result)
    assert line == f"Error: {publication}: invalid TOML: {TOO_DEEP}"
    assert result.exit_code == 2


RFC_5321_WAITS = {
    "greeting_timeout": 300.0,
    "mail_timeout": 300.0,
    "rcpt_timeout": 300.0,
    "data_timeout": 120.0,
    "block_timeout": 180.0,
    "dot_timeout": 600.0,
}


def test_the_smtp_waits_default_to_rfc_5321(publication):
    smtp = config.load(publication, environ={}).smtp
    assert {key: getattr(smtp, key) for key in RFC_5321_WAITS} == RFC_5321_WAITS
    assert smtp.timeout == 30.0
    assert set(config.SMTP_TIMEOUTS) == {"timeout", *RFC_5321_WAITS}


def test_the_smtp_waits_are_read_and_inherited(publication, edit_file):
    edit_file(publication, "timeout = 30 ", "timeout = 30\ndot_timeout = 900\nrcpt_timeout = 60 ")
    with publication.open("a", encoding="utf-8") as fh:
        fh.write('\n[smtp.backup]\nhost = "backup.example.com"\nrcpt_timeout = 45\n')
    cfg = config.load(publication, environ={"NEWSLETTER_SMTP_DATA_TIMEOUT": "90"})
    assert (cfg.smtp.dot_timeout, cfg.smtp.rcpt_timeout, cfg.smtp.data_timeout) == (900, 60, 90)
    backup = cfg.smtp_servers["backup"]
    # Unset keys are [smtp]'s, as for every other key.
    assert (backup.dot_timeout, backup.rcpt_timeout, backup.data_timeout) == (900, 45, 90)
    assert backup.greeting_timeout == 300.0
    assert isinstance(backup.rcpt_timeout, float)


def test_the_sample_documents_the_defaults_it_leaves_commented(publication):
    """newsletter.toml shows the new keys as comments; uncommented, they change nothing."""
    keys = [*RFC_5321_WAITS, "give_up_after"]
    text = publication.read_text(encoding="utf-8")
    for key in keys:
        assert text.count(f"\n# {key} = ") == 1, key
        text = text.replace(f"\n# {key} = ", f"\n{key} = ")
    publication.write_text(text, encoding="utf-8")
    cfg = config.load(publication, environ={})
    assert cfg.schedule.give_up_after == config.Schedule().give_up_after
    for key in RFC_5321_WAITS:
        assert getattr(cfg.smtp, key) == getattr(config.Smtp(), key), key


@pytest.mark.parametrize("key", ["timeout", *RFC_5321_WAITS])
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", "must be positive, got 0"),
        ("-5", "must be positive, got -5"),
        ("4e9", "too long: at most 100 years (36500d), got 4e+09 seconds"),
        ("nan", "expected a finite number, got nan"),
    ],
)
def test_every_smtp_wait_is_positive_finite_and_capped(publication, key, value, expected):
    env = f"NEWSLETTER_SMTP_{key.upper()}"
    message = load_error(publication, {env: value})
    # The type is checked as the override is read, the range once the whole file is.
    where = f"{env} (overriding [smtp] {key})" if value == "nan" else f"[smtp] {key}"
    assert message == f"{publication}: {where}: {expected}"


def test_a_wait_in_an_smtp_server_table_is_validated(publication):
    with publication.open("a", encoding="utf-8") as fh:
        fh.write('\n[smtp.backup]\nhost = "backup.example.com"\nblock_timeout = 0\n')
    message = load_error(publication)
    assert message == f"{publication}: [smtp.backup] block_timeout: must be positive, got 0"


def test_give_up_after_defaults_to_a_day_and_is_read(publication, edit_file):
    cfg = config.load(publication, environ={})
    assert (cfg.schedule.give_up_after, cfg.schedule.give_up_after_seconds) == ("24h", 86400)
    edit_file(publication, 'max_late = "6h"', 'max_late = "6h"\ngive_up_after = "90m"')
    assert config.load(publication, environ={}).schedule.give_up_after_seconds == 5400
    env = {"NEWSLETTER_SCHEDULE_GIVE_UP_AFTER": "2d"}
    assert config.load(publication, environ=env).schedule.give_up_after_seconds == 172800


def test_missing_file(tmp_path):
    message = load_error(tmp_path / "nope.toml")
    assert message == f"{tmp_path / 'nope.toml'}: no such file"


def test_a_folder_is_not_a_config_file(tmp_path):
    assert "is a folder" in load_error(tmp_path)


def test_not_utf8_names_the_line(publication):
    data = publication.read_bytes().replace(b"Westminster, CA", b"Westminster, \xff CA", 1)
    publication.write_bytes(data)
    message = load_error(publication)
    assert str(publication) in message
    assert "not UTF-8" in message
    line = data[: data.index(b"\xff")].count(b"\n") + 1
    assert f"{publication}:{line}: not UTF-8" in message


def test_a_byte_order_mark_is_accepted(publication):
    publication.write_bytes(b"\xef\xbb\xbf" + publication.read_bytes().replace(b"\n", b"\r\n"))
    assert config.load(publication, environ={}).smtp.port == 1025


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('security = "none"', 'security = "ssl"', "[smtp] security: expected one of"),
        ("port = 1025", "port = 0", "[smtp] port: out of range"),
        ("concurrency = 1 ", "concurrency = 0 ", "[smtp] concurrency"),
        ('timezone = "America/Los_Angeles"', 'timezone = "Mars/Base"', "unknown time zone"),
        ('base_url = "https://', 'base_url = "ftp://', "[publication] base_url"),
        ('from = "Hello Shuttle News <news@helloshuttle.com>"', 'from = "nobody"', "from: not an"),
        ('url = "https://www.helloshuttle.com"', 'url = "www.x.com"', "helloshuttle] url"),
        ("[sponsors.helloshuttle]", "[sponsors.none]", "a sponsor id is"),
        ('name = "Hello Shuttle News Briefing"\n', "", "missing key 'name' in [publication]"),
    ],
)
def test_values_are_validated_when_read(publication, edit_file, old, new, expected):
    if "sponsors.none" in new:
        edit_file(publication, 'default = "helloshuttle"', 'default = "none"')
    edit_file(publication, old, new)
    message = load_error(publication)
    assert str(publication) in message
    assert expected in message


def test_an_unknown_sponsor_id_is_an_error_with_a_suggestion(publication):
    cfg = config.load(publication, environ={})
    with pytest.raises(ConfigError, match="did you mean 'helloshuttle'"):
        cfg.sponsor("helloshutle")


def test_find_config_walks_up_and_honours_the_variable(publication, monkeypatch, tmp_path):
    deep = publication.parent / "issues"
    assert config.find_config(deep) == publication
    other = tmp_path / "elsewhere.toml"
    monkeypatch.setenv("NEWSLETTER_CONFIG", str(other))
    assert config.find_config(deep) == other


@pytest.mark.parametrize(
    ("old", "new", "needles"),
    [
        ("port = 1025", "port = 1025 oops", ["invalid TOML", "line "]),
        ("port = 1025", 'port = "abc"', ["[smtp] port", "expected an integer"]),
        ("port = 1025", "prot = 1025", ["did you mean 'port'?"]),
        ('reply_to = "editor@', 'reply_to = "x@y.z\\nBcc: editor@', ["[publication] reply_to"]),
    ],
)
def test_cli_reports_config_errors_in_one_line(
    publication, sample_issue, run_cli, edit_file, assert_user_error, old, new, needles
):
    edit_file(publication, old, new)
    out = publication.parent / "out"
    result = run_cli("build", sample_issue, "-o", out)
    assert_user_error(result, publication.name, *needles, out_dir=out)
    assert result.exit_code == 2
    assert not out.exists()


def test_cli_reports_a_bad_environment_override(
    publication, sample_issue, run_cli, monkeypatch, assert_user_error
):
    monkeypatch.setenv("NEWSLETTER_SMTP_PORT", "abc")
    out = publication.parent / "out"
    result = run_cli("build", sample_issue, "-o", out)
    assert_user_error(result, "NEWSLETTER_SMTP_PORT", "expected an integer", out_dir=out)
