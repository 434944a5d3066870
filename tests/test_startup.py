"""Start-up (issue 20): `--help`, `--version` and each Tab of shell completion load the
CLI and nothing heavy, and `run-due` with nothing due (cron, every minute) loads no send
engine, issue build or migration machinery, and `status` (watched in a loop during a send)
reads the ledger without SQLAlchemy. Each case runs the real command in a fresh
interpreter and reads the modules it loaded; the figures are bench/startup_bench.py's."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from click.testing import Result

import newsletter

# What no command loads unless it needs it (top-level package names).
HEAVY = (
    "sqlalchemy", "alembic", "premailer", "lxml", "cssutils", "jinja2", "markdown_it",
    "starlette", "uvicorn", "celery", "kombu", "cryptography", "dns", "email_validator",
    "aiosmtpd", "apscheduler", "imapclient", "flufl", "yaml", "requests",
)  # fmt: skip
# The library behind the commands: none of it for --help, --version or completion.
LIBRARY = (
    "newsletter.ledger.store", "newsletter.ledger.tables", "newsletter.issue",
    "newsletter.mail", "newsletter.send", "newsletter.schedule", "newsletter.web",
    "newsletter.setup", "newsletter.audience", "newsletter.bounces", "newsletter.tokens",
    "newsletter.config.reading",
)  # fmt: skip

# Runs `newsletter ARGS...` as the console script does, then writes what it loaded.
RUN_CLI = """
import json, sys
report, sys.argv = sys.argv[1], ["newsletter", *sys.argv[2:]]
from newsletter.cli import main
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
with open(report, "w", encoding="utf-8") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""


class Loaded:
    """What a command printed, its exit code and the modules it loaded."""

    def __init__(self, proc: subprocess.CompletedProcess[str], report: Path) -> None:
        data = json.loads(report.read_text(encoding="utf-8"))
        self.code: int = data["code"]
        self.modules: list[str] = data["modules"]
        self.stdout, self.stderr = proc.stdout, proc.stderr

    def heavy(self) -> list[str]:
        return sorted({m.split(".")[0] for m in self.modules} & set(HEAVY))

    def library(self, names: tuple[str, ...] = LIBRARY) -> list[str]:
        return [m for m in self.modules if any(m == n or m.startswith(n + ".") for n in names)]


@pytest.fixture
def loaded(tmp_path: Path) -> Callable[..., Loaded]:
    """loaded("--help", env={...}, cwd=...) runs the command in a fresh interpreter."""

    def run(*args: str, env: Mapping[str, str] | None = None, cwd: Path = tmp_path) -> Loaded:
        report = tmp_path / "loaded.json"
        report.unlink(missing_ok=True)
        proc = subprocess.run(
            [sys.executable, "-c", RUN_CLI, str(report), *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=cwd,
            env={**os.environ, **(env or {})},
        )
        assert report.exists(), proc.stderr
        return Loaded(proc, report)

    return run


def test_import_newsletter_cli_loads_nothing_heavy() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import newsletter.cli, sys; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    modules = set(ast.literal_eval(proc.stdout))
    assert "click" in modules and "newsletter.cli.root" in modules  # it did import
    assert sorted({m.split(".")[0] for m in modules} & set(HEAVY)) == []
    assert sorted(m for m in modules if m.startswith(LIBRARY)) == []
    # The command modules come with their commands (root.COMMAND_MODULES).
    assert sorted(m for m in modules if m.startswith("newsletter.cli.")) == ["newsletter.cli.root"]


def test_each_command_s_module_is_the_one_that_defines_it() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", COMMANDS_DEFINED],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    defined = json.loads(proc.stdout)
    from newsletter.cli.root import COMMAND_MODULES

    assert defined == COMMAND_MODULES


# Every module of newsletter/cli imported, then the group's own commands: which module
# defined each one.
COMMANDS_DEFINED = """
import importlib, json, pkgutil
import newsletter.cli
from newsletter.cli.root import cli
for info in pkgutil.iter_modules(newsletter.cli.__path__):
    importlib.import_module(f"newsletter.cli.{info.name}")
print(json.dumps({name: command.callback.__module__.rsplit(".", 1)[1]
                  for name, command in sorted(cli.commands.items())}))
"""


def test_version_loads_nothing_heavy(loaded: Callable[..., Loaded]) -> None:
    run = loaded("--version")
    assert (run.code, run.stdout) == (0, f"newsletter, version {newsletter.__version__}\n")
    assert run.heavy() == []
    assert run.library() == []


@pytest.mark.parametrize("args", [["--help"], ["subscribers", "--help"], ["send", "--help"]])
def test_help_loads_nothing_heavy(loaded: Callable[..., Loaded], args: list[str]) -> None:
    run = loaded(*args)
    assert run.code == 0, run.stderr
    assert "Usage: newsletter" in run.stdout
    assert run.heavy() == []
    assert run.library() == []


@pytest.mark.parametrize(
    ("words", "cword", "expected"),
    [
        ("newsletter sub", "1", "plain,subscribers"),
        ("newsletter subscribers list --status ", "4", "plain,unsubscribed"),
        ("newsletter dkim keygen --algorithm ", "4", "plain,ed25519-sha256"),
    ],
)
def test_completion_loads_nothing_heavy(
    loaded: Callable[..., Loaded], words: str, cword: str, expected: str
) -> None:
    # What bash asks on each Tab (the script `newsletter completion bash` prints).
    env = {"_NEWSLETTER_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": cword}
    run = loaded(env=env)
    assert run.code == 0, run.stderr
    assert expected in run.stdout.splitlines()
    assert run.heavy() == []
    assert run.library() == []


def test_run_due_with_nothing_due_loads_no_send_engine(
    loaded: Callable[..., Loaded],
    run_cli: Callable[..., Result],
    publication: Path,
    sample_issue: Path,
) -> None:
    # A schedule with a campaign and a recurring rule, neither due yet.
    assert run_cli("schedule", sample_issue, "--at", "2099-12-01 09:00").exit_code == 0
    assert run_cli("schedule", "--every", "0 9 * * TUE").exit_code == 0

    run = loaded("--config", str(publication), "run-due")

    assert (run.code, run.stdout, run.stderr) == (0, "", "")
    assert "newsletter.schedule.quick" in run.modules  # it did look (schedule/quick.py)
    assert "newsletter.schedule.due" not in run.modules
    assert run.heavy() == []  # not even SQLAlchemy: a SQLite ledger, asked through sqlite3
    engine = ("newsletter.send", "newsletter.issue", "newsletter.mail", "newsletter.tokens")
    engine += ("newsletter.ledger.lifecycle",)  # a campaign's transitions: none to make
    assert run.library(engine) == []
    assert "newsletter.schedule.cron" not in run.modules  # APScheduler's cron parser


def test_status_reads_the_ledger_without_sqlalchemy(
    loaded: Callable[..., Loaded],
    run_cli: Callable[..., Result],
    publication: Path,
    sample_issue: Path,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Watched in a loop during a send: its reads go through sqlite3 or psycopg
    # (ledger/direct.py); tests/test_delivery_counts.py holds them equal to the Store's.
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", database_url)
    config = ("--config", str(publication))
    empty = loaded(*config, "status")  # no ledger yet: the Store makes one, as before
    assert (empty.code, empty.stdout) == (0, "no campaigns yet\n"), empty.stderr
    assert "sqlalchemy" in empty.heavy()
    assert run_cli("schedule", sample_issue, "--at", "2099-12-01 09:00").exit_code == 0

    run = loaded(*config, "status")

    assert (run.code, run.stderr) == (0, "")
    assert run.stdout == run_cli("status").output
    assert run.stdout.startswith("#1 motivated-biden-authorize-ukraines-use-atacms [scheduled]")
    assert run.heavy() == []
    assert run.library(("newsletter.ledger.store", "newsletter.ledger.tables")) == []
    assert [m for m in run.modules if m.startswith("newsletter.cli.")] == [
        "newsletter.cli.root",
        "newsletter.cli.sending",
    ]
    missing = loaded(*config, "status", "7")
    assert (missing.code, missing.stdout, missing.heavy()) == (1, "", [])
    assert missing.stderr.strip().splitlines() == ["Error: campaign 7: no such campaign"]


def test_the_check_finds_a_heavy_module(
    loaded: Callable[..., Loaded], publication: Path, sample_issue: Path
) -> None:
    # The same reading finds them where they load: `check` builds the issue.
    run = loaded("--config", str(publication), "check", str(sample_issue))
    assert run.code in (0, 1), run.stderr
    assert {"premailer", "jinja2", "markdown_it"} <= set(run.heavy())
    assert "newsletter.issue.publish" in run.library()


def test_config_names_load_on_first_use() -> None:
    from newsletter import config

    assert config.load.__module__ == "newsletter.config.reading"
    assert config.header_value_problem.__module__ == "newsletter.config.rules"
    assert config.Config.__module__ == "newsletter.config.sections"
    with pytest.raises(AttributeError, match="no attribute 'lode'"):
        config.lode  # noqa: B018


def test_the_cli_s_choices_are_the_library_s() -> None:
    # The CLI reads them from modules without SQLAlchemy or cryptography.
    from newsletter.config import DKIM_ALGORITHMS
    from newsletter.ledger import statuses, tables
    from newsletter.mail import dkim

    assert dkim.ALGORITHMS == DKIM_ALGORITHMS
    assert tables.SUBSCRIBER_STATUSES == statuses.SUBSCRIBER_STATUSES
    assert tables.SUPPRESSED == statuses.SUPPRESSED
