"""`newsletter init` (the starter publication) and `newsletter completion`."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import REPO_ROOT, SAMPLE_ISSUE_NAME

from newsletter import config as config_mod
from newsletter.cli import cli
from newsletter.setup import starter

ISSUE = f"issues/{SAMPLE_ISSUE_NAME}"
FLAGS = [
    "--name",
    "The Weekly Test",
    "--from",
    "The Weekly Test <news@weekly.example.org>",
    "--postal-address",
    "1 Test Street, Testville",
    "--base-url",
    "https://news.weekly.example.org",
    "--reply-to",
    "Editor <editor@weekly.example.org>",
]


def invoke(*args: str | Path, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, prog_name="newsletter")


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `init` believe it runs on a terminal (CliRunner's stdin is not one)."""
    monkeypatch.setattr("newsletter.cli.setup._stdin_is_terminal", lambda: True)


def repo_starter_files() -> dict[str, bytes]:
    files = {
        p.relative_to(REPO_ROOT).as_posix(): p.read_bytes()
        for p in sorted((REPO_ROOT / "templates").rglob("*"))
        if p.is_file()
    }
    for name in ("newsletter.toml", ISSUE, "subscribers.csv"):
        files[name] = (REPO_ROOT / name).read_bytes()
    return files


def publication_of(folder: Path) -> config_mod.Publication:
    return config_mod.load(folder / "newsletter.toml", environ={}).publication


# --- what the starter is --------------------------------------------------------------


def test_the_wheel_force_includes_exactly_the_starter() -> None:
    """pyproject's force-include and the source-tree fallback name the same files."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    force_include = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert force_include == {
        path: f"newsletter/{starter.PACKAGED_DIR}/{path}" for path in starter.STARTER_PATHS
    }


def test_a_development_install_reads_the_starter_from_the_source_tree() -> None:
    assert Path(str(starter.source())) == REPO_ROOT
    assert starter.starter_files() == repo_starter_files()


def test_an_installed_package_reads_its_own_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site-packages" / "newsletter"
    (package / starter.PACKAGED_DIR / "templates").mkdir(parents=True)
    (package / starter.PACKAGED_DIR / "templates" / "email.txt").write_text("packaged")
    monkeypatch.setattr(starter.resources, "files", lambda name: package)
    assert Path(str(starter.source())) == package / starter.PACKAGED_DIR


def _uncommented_keys(text: str) -> list[str]:
    """Keys with neither a comment at the end of their line nor a comment line just above."""
    missing = []
    section = ""
    previous = ""
    open_brackets = 0
    for line in text.splitlines():
        stripped = line.strip()
        if open_brackets:  # inside a multi-line array
            open_brackets += stripped.count("[") - stripped.count("]")
        elif header := re.match(r"^\[([^\]]+)\]", stripped):
            section = header.group(1)
        elif key := re.match(r"^([A-Za-z0-9_-]+)\s*=\s*(.*)$", stripped):
            value = re.sub(r'"(?:[^"\\]|\\.)*"', '""', key.group(2))
            if "#" not in value and not previous.strip().startswith("#"):
                missing.append(f"[{section}] {key.group(1)}")
            open_brackets = value.count("[") - value.count("]")
        previous = line
    return missing


def test_every_key_of_the_starter_config_has_a_comment(tmp_path: Path) -> None:
    text = starter.starter_files()["newsletter.toml"].decode("utf-8")
    assert _uncommented_keys(text) == []
    assert invoke("init", tmp_path, *FLAGS).exit_code == 0
    assert _uncommented_keys((tmp_path / "newsletter.toml").read_text(encoding="utf-8")) == []


# --- init -----------------------------------------------------------------------------


def written_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def welcome(folder: Path) -> str:
    (issue,) = sorted((folder / "issues").glob("*.md"))
    return issue.relative_to(folder).as_posix()


def test_init_with_flags_writes_a_publication_of_its_own(tmp_path: Path) -> None:
    result = invoke("init", tmp_path / "weekly", *FLAGS)
    assert result.exit_code == 0, result.output
    folder = tmp_path / "weekly"
    written = written_files(folder)
    issue = f"issues/{dt.date.today().isoformat()}-welcome.md"
    expected = repo_starter_files()
    templates = {k: v for k, v in expected.items() if k.startswith("templates/")}
    assert sorted(written) == sorted([*templates, "newsletter.toml", issue, "subscribers.csv"])
    assert {k: written[k] for k in templates} == templates  # the templates as they are
    assert written["subscribers.csv"] == expected["subscribers.csv"]
    pub = publication_of(folder)
    assert pub.name == "The Weekly Test"
    assert pub.from_addr == "The Weekly Test <news@weekly.example.org>"
    assert pub.postal_address == "1 Test Street, Testville"
    assert pub.base_url == "https://news.weekly.example.org"
    assert pub.reply_to == "Editor <editor@weekly.example.org>"
    # Derived: the List-Id under base_url's host (RFC 2919), utm_source the name's slug.
    assert pub.list_id == "the-weekly-test.news.weekly.example.org"
    config = config_mod.load(folder / "newsletter.toml", environ={})
    assert config.utm.source == "the-weekly-test"
    # An example sponsor, marked as one, on example.com, with an international phone.
    assert list(config.sponsors) == ["example"] and config.default_sponsor == "example"
    sponsor = config.sponsors["example"]
    assert sponsor.url == "https://www.example.com" and sponsor.phone.startswith("+")
    text = written["newsletter.toml"].decode()
    assert "# An example: replace or delete" in text
    # Every comment of the sample's config is kept, apart from its header and sponsor.
    sample = expected["newsletter.toml"].decode()
    kept = sample[sample.index("[publication]") : sample.index("[sponsors]")]
    assert {line for line in kept.splitlines() if line.startswith("#")} <= set(text.splitlines())
    assert result.stderr == ""
    assert result.stdout.splitlines()[-5:] == [
        "Next:",
        f"  cd {folder}",
        "  newsletter doctor",
        f"  newsletter build {issue}",
        f"  newsletter send {issue} --to news@weekly.example.org",
    ]


def test_nothing_init_writes_is_the_sample_publications(tmp_path: Path) -> None:
    for folder, args in ((tmp_path / "flags", FLAGS), (tmp_path / "defaults", ["--defaults"])):
        assert invoke("init", folder, *args).exit_code == 0
        for name, data in written_files(folder).items():
            text = data.decode("utf-8").lower()
            for sample in ("hello shuttle", "helloshuttle", "shuttle", "atacms", "biden"):
                assert sample not in text, (folder.name, name, sample)
    # The repository's own demo stays the demo.
    assert "helloshuttle" in (REPO_ROOT / "newsletter.toml").read_text(encoding="utf-8")
    assert (REPO_ROOT / ISSUE).is_file()


def test_init_defaults_to_the_current_folder_and_says_where_to_cd_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert invoke("init", *FLAGS).exit_code == 0
    assert (tmp_path / "newsletter.toml").is_file()
    result = invoke("init", "other", *FLAGS)
    assert "  cd other" in result.stdout.splitlines()


def test_init_refuses_to_overwrite_and_names_the_file(
    tmp_path: Path, assert_user_error: Callable[..., str]
) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "email.html").write_text("mine")
    result = invoke("init", tmp_path, *FLAGS)
    assert_user_error(result, f"{tmp_path / 'templates/email.html'}: already exists", "--force")
    assert result.exit_code == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["email.html", "templates"]
    assert (tmp_path / "templates" / "email.html").read_text() == "mine"


def test_init_refuses_before_asking_anything(
    tmp_path: Path, terminal: None, assert_user_error: Callable[..., str]
) -> None:
    (tmp_path / "newsletter.toml").write_text("# mine\n")
    result = invoke("init", tmp_path, input="")
    assert_user_error(result, "newsletter.toml: already exists; use --force")
    assert "Publication name" not in result.stdout


def test_init_force_overwrites(tmp_path: Path) -> None:
    assert invoke("init", tmp_path, *FLAGS).exit_code == 0
    count = len(written_files(tmp_path))
    (tmp_path / "templates" / "email.html").write_text("mine")
    (tmp_path / "templates" / "extra.html").write_text("kept")
    result = invoke("init", tmp_path, "--force", "--name", "Renamed")
    assert result.exit_code == 0, result.output
    assert f"overwrote {count} existing file(s)" in result.stderr
    email_html = (REPO_ROOT / "templates" / "email.html").read_bytes()
    assert (tmp_path / "templates" / "email.html").read_bytes() == email_html
    assert (tmp_path / "templates" / "extra.html").read_text() == "kept"
    assert publication_of(tmp_path).name == "Renamed"


def test_init_asks_on_a_terminal(tmp_path: Path, terminal: None) -> None:
    answers = (
        "Letters from Nowhere\nnot an address\nAnn <ann@nowhere.example>\n2 Main St\n"
        "ftp://nowhere.example\n\nnobody\nEd <ed@nowhere.example>\n"
    )
    result = invoke("init", tmp_path, input=answers)
    assert result.exit_code == 0, result.output
    assert "Publication name [My Newsletter]: " in result.stdout
    assert "Sender (Name <address>) [Letters from Nowhere <news@example.com>]: " in result.stdout
    assert "Error: not one email address: 'not an address'" in result.output  # asked again
    assert "[https://news.nowhere.example]: " in result.stdout  # from the sender's domain
    assert "Error: not a web address: 'ftp://nowhere.example'" in result.output
    assert "Error: not one email address: 'nobody'" in result.output
    pub = publication_of(tmp_path)
    assert (pub.name, pub.from_addr, pub.postal_address, pub.base_url, pub.reply_to) == (
        "Letters from Nowhere",
        "Ann <ann@nowhere.example>",
        "2 Main St",
        "https://news.nowhere.example",
        "Ed <ed@nowhere.example>",
    )
    assert pub.list_id == "letters-from-nowhere.news.nowhere.example"
    assert result.stderr == ""


def test_init_on_a_terminal_asks_only_what_the_flags_leave_open(
    tmp_path: Path, terminal: None
) -> None:
    result = invoke("init", tmp_path, "--name", "Flagged", input="\n\n\n\n")
    assert result.exit_code == 0, result.output
    assert "Publication name" not in result.stdout
    pub = publication_of(tmp_path)
    assert (pub.name, pub.from_addr, pub.postal_address, pub.base_url, pub.reply_to) == (
        "Flagged",
        "Flagged <news@example.com>",
        starter.DEFAULT_POSTAL_ADDRESS,
        "https://news.example.com",
        "",
    )


def test_init_with_every_flag_or_defaults_asks_nothing(tmp_path: Path, terminal: None) -> None:
    result = invoke("init", tmp_path / "a", *FLAGS, input="")
    assert result.exit_code == 0, result.output
    assert "[" not in result.stdout.splitlines()[0]  # no prompt
    result = invoke("init", tmp_path / "b", "--name", "Quick", "--defaults", input="")
    assert result.exit_code == 0, result.output
    assert publication_of(tmp_path / "b").from_addr == "Quick <news@example.com>"


def test_init_without_a_terminal_or_flags_takes_the_defaults_and_says_so(tmp_path: Path) -> None:
    result = invoke("init", tmp_path)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "note: took init's defaults for [publication] name, from, postal_address, base_url,"
        " reply_to; change them in newsletter.toml (or pass --name, --from, --postal-address,"
        " --base-url, --reply-to)"
    ]
    pub = publication_of(tmp_path)
    assert (pub.name, pub.from_addr, pub.base_url, pub.list_id) == (
        "My Newsletter",
        "My Newsletter <news@example.com>",
        "https://news.example.com",
        "my-newsletter.news.example.com",
    )
    assert f"  newsletter send {welcome(tmp_path)} --to you@example.com" in result.stdout


@pytest.mark.parametrize(
    ("sender", "reason"),
    [
        ("nobody", "not one email address"),
        ("a@example.com, b@example.com", "not one email address"),
        ("Ann <ann@@example.com>", "not one email address"),
        ("Ann <ann@example>", "'ann@example': The part after the @-sign is not valid"),
        ("Ann <ann@example.com>\nBcc: x@example.com", "one line"),
    ],
)
def test_init_rejects_a_bad_sender(tmp_path: Path, sender: str, reason: str) -> None:
    result = invoke("init", tmp_path, "--from", sender)
    assert result.exit_code == 2
    error = result.stderr.splitlines()[-1]
    assert error.startswith("Error: Invalid value for '--from': ") and reason in error
    assert not tmp_path.joinpath("newsletter.toml").exists()


@pytest.mark.parametrize(
    ("option", "value", "reason"),
    [
        ("--base-url", "news.example.org", "not a web address: 'news.example.org'"),
        ("--base-url", "https://news.example.org/?a=1", "may not have a query or a fragment"),
        ("--reply-to", "two@example.org, three@example.org", "not one email address"),
    ],
)
def test_init_rejects_a_bad_base_url_or_reply_to(
    tmp_path: Path, option: str, value: str, reason: str
) -> None:
    result = invoke("init", tmp_path, option, value)
    assert result.exit_code == 2
    error = result.stderr.splitlines()[-1]
    assert error.startswith(f"Error: Invalid value for '{option}': ") and reason in error
    assert not tmp_path.joinpath("newsletter.toml").exists()


@pytest.mark.parametrize("name", ["Ann, Bob & Co.", 'The "Best" Letter', "Back\\slash: news"])
def test_a_name_with_specials_makes_a_valid_default_sender(tmp_path: Path, name: str) -> None:
    result = invoke("init", tmp_path, "--name", name, "--defaults")
    assert result.exit_code == 0, result.output
    pub = publication_of(tmp_path)
    assert pub.name == name
    message = email.message_from_string(f"From: {pub.from_addr}\n\n", policy=email.policy.default)
    (address,) = message["From"].addresses
    assert (address.display_name, address.addr_spec) == (name, "news@example.com")


def test_values_are_escaped_for_toml(tmp_path: Path) -> None:
    name = 'The "Quoted" \\ Letter — Zürich # not a comment'
    result = invoke("init", tmp_path, "--name", name, "--from", '"Ann, Editor" <ann@example.org>')
    assert result.exit_code == 0, result.output
    pub = publication_of(tmp_path)
    assert pub.name == name
    assert pub.from_addr == '"Ann, Editor" <ann@example.org>'
    assert pub.list_id == "the-quoted-letter-zurich-not-a-comment.news.example.org"
    # The welcome issue carries the name as one YAML value.
    config = tmp_path / "newsletter.toml"
    result = invoke("--config", config, "check", tmp_path / welcome(tmp_path))
    assert result.exit_code == 0, result.output


def test_a_new_publication_checks_and_builds_without_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", "init-test-secret-of-at-least-32-bytes-too")
    assert invoke("init", tmp_path, *FLAGS).exit_code == 0
    config = tmp_path / "newsletter.toml"
    issue = tmp_path / welcome(tmp_path)
    result = invoke("--config", config, "check", issue)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].endswith(": 0 error(s), 0 warning(s)")
    result = invoke("--config", config, "build", issue)
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    html = (tmp_path / "build" / "welcome.html").read_text(encoding="utf-8")
    assert "1 Test Street, Testville" in html and "Example Sponsor" in html
    # The sponsor's link is tracked, through the new publication's own base_url.
    assert 'href="https://news.weekly.example.org/c/' in html


def test_doctor_finds_one_domain_in_a_new_publication(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from newsletter.setup import doctor

    assert invoke("init", tmp_path, *FLAGS).exit_code == 0
    config = config_mod.load(tmp_path / "newsletter.toml", environ={})
    assert doctor.check_domains(config) == doctor.Check(
        doctor.OK, "domains", "the sender, base_url and List-Id are all in example.org"
    )


def test_outside_a_publication_a_command_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, assert_user_error: Callable[..., str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "issue.md").write_text("an issue, but no publication", encoding="utf-8")
    result = invoke("build", "issue.md")
    assert_user_error(result, f"no newsletter.toml here or above {tmp_path}")
    assert result.exit_code == 2


def test_outside_a_publication_the_error_points_at_init(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "issue.md").write_text("an issue, but no publication", encoding="utf-8")
    assert "run `newsletter init`" in invoke("build", "issue.md").stderr


# --- completion -----------------------------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_clicks_script(shell: str) -> None:
    result = invoke("completion", shell)
    assert result.exit_code == 0, result.output
    assert "_NEWSLETTER_COMPLETE" in result.stdout
    assert f"{shell}_complete" in result.stdout


def test_the_completion_script_completes_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the bash script asks the program when Tab is pressed after "newsletter do".
    env = {
        "_NEWSLETTER_COMPLETE": "bash_complete",
        "COMP_WORDS": "newsletter do",
        "COMP_CWORD": "1",
    }
    result = CliRunner().invoke(cli, [], env=env, prog_name="newsletter")
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == ["plain,doctor"]


def test_completion_refuses_an_unknown_shell() -> None:
    result = invoke("completion", "tcsh")
    assert result.exit_code == 2
    assert "'tcsh' is not one of 'bash', 'zsh', 'fish'" in result.stderr
