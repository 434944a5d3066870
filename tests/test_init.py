"""`newsletter init` (the starter publication) and `newsletter completion`."""

from __future__ import annotations

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


def test_every_key_of_the_starter_config_has_a_comment() -> None:
    text = starter.starter_files()["newsletter.toml"].decode("utf-8")
    assert _uncommented_keys(text) == []


# --- init -----------------------------------------------------------------------------


def test_init_with_flags_writes_the_starter(tmp_path: Path) -> None:
    result = invoke("init", tmp_path / "weekly", *FLAGS)
    assert result.exit_code == 0, result.output
    folder = tmp_path / "weekly"
    written = {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    expected = repo_starter_files()
    assert sorted(written) == sorted(expected)
    assert {k: v for k, v in written.items() if k != "newsletter.toml"} == {
        k: v for k, v in expected.items() if k != "newsletter.toml"
    }
    pub = publication_of(folder)
    assert pub.name == "The Weekly Test"
    assert pub.from_addr == "The Weekly Test <news@weekly.example.org>"
    assert pub.postal_address == "1 Test Street, Testville"
    # Only the three values changed: every comment and every other line is kept.
    old = expected["newsletter.toml"].decode().splitlines()
    new = written["newsletter.toml"].decode().splitlines()
    assert len(old) == len(new)
    changed = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
    assert [b for _, b in changed] == [
        'name = "The Weekly Test"',
        'from = "The Weekly Test <news@weekly.example.org>"',
        'postal_address = "1 Test Street, Testville"',
    ]
    assert result.stderr == ""
    assert result.stdout.splitlines()[-5:] == [
        "Next:",
        f"  cd {folder}",
        "  newsletter doctor",
        f"  newsletter build {ISSUE}",
        f"  newsletter send {ISSUE} --to news@weekly.example.org",
    ]


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
    (tmp_path / "templates" / "email.html").write_text("mine")
    (tmp_path / "templates" / "extra.html").write_text("kept")
    result = invoke("init", tmp_path, "--force", "--name", "Renamed")
    assert result.exit_code == 0, result.output
    assert f"overwrote {len(starter.starter_files())} existing file(s)" in result.stderr
    email_html = (REPO_ROOT / "templates" / "email.html").read_bytes()
    assert (tmp_path / "templates" / "email.html").read_bytes() == email_html
    assert (tmp_path / "templates" / "extra.html").read_text() == "kept"
    assert publication_of(tmp_path).name == "Renamed"


def test_init_asks_on_a_terminal(tmp_path: Path, terminal: None) -> None:
    answers = "Letters from Nowhere\nnot an address\nAnn <ann@nowhere.example>\n2 Main St\n"
    result = invoke("init", tmp_path, input=answers)
    assert result.exit_code == 0, result.output
    assert "Publication name [Hello Shuttle News Briefing]: " in result.stdout
    assert "Error: not one email address: 'not an address'" in result.output  # asked again
    pub = publication_of(tmp_path)
    assert (pub.name, pub.from_addr, pub.postal_address) == (
        "Letters from Nowhere",
        "Ann <ann@nowhere.example>",
        "2 Main St",
    )
    assert result.stderr == ""


def test_init_on_a_terminal_asks_only_what_the_flags_leave_open(
    tmp_path: Path, terminal: None
) -> None:
    result = invoke("init", tmp_path, "--name", "Flagged", input="\n\n")
    assert result.exit_code == 0, result.output
    assert "Publication name" not in result.stdout
    pub = publication_of(tmp_path)
    sample = starter.sample_publication()
    assert (pub.name, pub.from_addr, pub.postal_address) == (
        "Flagged",
        sample.from_addr,
        sample.postal_address,
    )


def test_init_without_a_terminal_or_flags_keeps_the_sample_and_says_so(tmp_path: Path) -> None:
    result = invoke("init", tmp_path)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "note: kept the sample's [publication] name, from, postal_address; change them in"
        " newsletter.toml (or pass --name, --from, --postal-address)"
    ]
    assert publication_of(tmp_path) == starter.sample_publication()
    assert f"  newsletter send {ISSUE} --to you@example.com" in result.stdout


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


def test_values_are_escaped_for_toml(tmp_path: Path) -> None:
    name = 'The "Quoted" \\ Letter — Zürich # not a comment'
    result = invoke("init", tmp_path, "--name", name, "--from", '"Ann, Editor" <ann@example.org>')
    assert result.exit_code == 0, result.output
    pub = publication_of(tmp_path)
    assert pub.name == name
    assert pub.from_addr == '"Ann, Editor" <ann@example.org>'


def test_a_new_publication_builds_and_checks(tmp_path: Path) -> None:
    assert invoke("init", tmp_path, *FLAGS).exit_code == 0
    config = tmp_path / "newsletter.toml"
    result = invoke("--config", config, "check", tmp_path / ISSUE)
    assert result.exit_code == 0, result.output
    result = invoke("--config", config, "build", tmp_path / ISSUE)
    assert result.exit_code == 0, result.output
    html = (tmp_path / "build" / f"{SAMPLE_ISSUE_NAME[11:-3]}.html").read_text(encoding="utf-8")
    assert "1 Test Street, Testville" in html


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
