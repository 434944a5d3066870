"""Every command and subcommand, and every option, says what it does in --help."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from newsletter.cli import cli


def walk(command: click.Command, path: tuple[str, ...] = ()):
    yield path, command
    if isinstance(command, click.Group):  # as --help lists them (their modules load on use)
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, name
            yield from walk(sub, (*path, name))


COMMANDS = list(walk(cli))


def test_the_commands_of_issue_2_are_there():
    names = {path for path, _ in COMMANDS}
    assert {("import",), ("build",), ("check",)} <= names


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=[" ".join(p) or "newsletter" for p, _ in COMMANDS]
)
def test_command_has_help(path, command):
    assert (command.help or "").strip(), f"`newsletter {' '.join(path)}` has no help text"
    assert command.get_short_help_str().strip()
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="newsletter")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: newsletter {' '.join(path)}".rstrip())
    first_line = command.help.strip().split("\n")[0]
    assert " ".join(first_line.split()) in " ".join(result.stdout.split())


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=[" ".join(p) or "newsletter" for p, _ in COMMANDS]
)
def test_every_option_has_help(path, command):
    missing = [
        p.opts[0]
        for p in command.params
        if isinstance(p, click.Option) and not (p.help or "").strip()
    ]
    assert missing == [], f"`newsletter {' '.join(path)}`: options without help: {missing}"
