"""-v and -q on the top-level command: what reaches stderr through logging, and that
no traceback does unless asked for."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import Result

from newsletter.cli.root import configure_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def fail_loudly() -> None:
    try:
        raise RuntimeError("the relay vanished")
    except RuntimeError:
        logging.getLogger("newsletter.test").exception("run-due failed")


def test_a_logged_error_is_one_line_without_its_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(0)
    fail_loudly()
    assert capsys.readouterr().err == "run-due failed\n"


def test_with_v_the_traceback_comes_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(1)
    fail_loudly()
    err = capsys.readouterr().err
    assert (
        err.startswith("run-due failed\nTraceback") and "RuntimeError: the relay vanished" in err
    )


@pytest.mark.parametrize(
    ("verbosity", "daemon", "shown"),
    [
        (-1, False, {"error"}),
        (0, False, {"warning", "error"}),
        (1, False, {"debug", "info", "warning", "error"}),
        (-1, True, {"error"}),
        (0, True, {"info", "warning", "error"}),
    ],
)
def test_levels(
    capsys: pytest.CaptureFixture[str], verbosity: int, daemon: bool, shown: set[str]
) -> None:
    configure_logging(verbosity, daemon=daemon)
    log = logging.getLogger("newsletter.test")
    for level in ("debug", "info", "warning", "error"):
        getattr(log, level)(level)
    lines = capsys.readouterr().err.splitlines()
    assert {line.rsplit(" ", 1)[-1] for line in lines} == shown
    if daemon:  # time-stamped, with the level and the logger's name
        assert " ERROR newsletter.test: error" in lines[-1]


def test_v_and_q_exclude_each_other(run_cli: Callable[..., Result]) -> None:
    result = run_cli("-v", "-q", "status")
    assert result.exit_code == 2 and "-v and -q exclude each other" in result.stderr


def test_quiet_run_due_says_nothing_when_nothing_is_due(
    run_cli: Callable[..., Result], publication: Path
) -> None:
    result = run_cli("-q", "run-due")
    assert result.exit_code == 0, result.output
    assert result.stderr == "" and result.stdout == ""
