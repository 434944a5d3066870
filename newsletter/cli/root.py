"""The `newsletter` command itself: its options, the state its commands share, and
the edge where a library error becomes one line on stderr and an exit code (1 for a
failed operation, 2 for usage and configuration)."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from newsletter import __version__
from newsletter import config as config_mod
from newsletter.errors import NewsletterError, UsageError

if TYPE_CHECKING:
    from newsletter.issue.check import Finding
    from newsletter.ledger import once
    from newsletter.ledger.store import Store

# Start-up: `--help`, `--version` and each Tab of shell completion import this package
# and nothing more, so the commands import the library (SQLAlchemy, premailer, the
# send engine, ...) inside their functions; tests/test_startup.py holds that line.


class _Failed(click.ClickException):
    """A failed operation: exit 1."""

    exit_code = 1


class _Refused(click.ClickException):
    """Usage or configuration: exit 2."""

    exit_code = 2


# The module of newsletter/cli that defines each command: a command's module is imported
# when the command is used (`newsletter status` loads cli/sending.py, not the other six),
# `--help` and completion import them all. tests/test_startup.py holds this table equal to
# what the modules define.
COMMAND_MODULES = {
    "archive": "site",
    "bounces": "bounces",
    "build": "issue",
    "check": "issue",
    "close": "sending",
    "completion": "setup",
    "console": "site",
    "db": "setup",
    "dkim": "setup",
    "doctor": "setup",
    "import": "issue",
    "init": "setup",
    "preview": "issue",
    "resume": "sending",
    "run-due": "schedule",
    "schedule": "schedule",
    "send": "sending",
    "serve": "site",
    "smtpd": "sending",
    "sponsors": "site",
    "status": "sending",
    "subscribers": "audience",
    "unsubscribe": "audience",
    "worker": "schedule",
    "workers": "sending",
}


class Group(click.Group):
    """Loads each command's module on first use (COMMAND_MODULES), and turns a
    NewsletterError raised by any command into a one-line error."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMAND_MODULES})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in COMMAND_MODULES:
            importlib.import_module(f"newsletter.cli.{COMMAND_MODULES[name]}")
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NewsletterError as exc:
            raise (_Refused if exc.exit_code == 2 else _Failed)(str(exc)) from None


class State:
    def __init__(self, config_path: Path | None, verbosity: int = 0) -> None:
        self.config_path = config_path
        self.verbosity = verbosity  # -1 with -q, 1 or more with -v
        self._config: config_mod.Config | None = None

    @property
    def config(self) -> config_mod.Config:
        if self._config is None:
            path = self.config_path or config_mod.find_config()
            self._config = config_mod.load(path)
        return self._config


pass_state = click.make_pass_decorator(State)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=config_mod.ENV_CONFIG,
    help="The publication's newsletter.toml (default: found here or in a parent folder).",
)
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Say more: debug messages, and the traceback of an unexpected error.",
)
@click.option("-q", "--quiet", is_flag=True, help="Say only what went wrong.")
@click.version_option(__version__, prog_name="newsletter")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, verbose: int, quiet: bool) -> None:
    """Publish an email newsletter with a sponsor footer.

    Import an article, build and check the issue, then send it.
    """
    if verbose and quiet:
        raise click.UsageError("-v and -q exclude each other: choose one")
    ctx.obj = State(config_path, -1 if quiet else verbose)
    configure_logging(ctx.obj.verbosity)


def open_store(state: State) -> Store:
    from newsletter.ledger.store import Store

    return Store.open(state.config.database_url)


class _Stderr(logging.StreamHandler):
    """Log lines on whatever sys.stderr is when they are written (click's test runner
    swaps it per command)."""

    name = "newsletter-cli"

    def emit(self, record: logging.LogRecord) -> None:
        self.setStream(sys.stderr)
        super().emit(record)


class _Lines(logging.Formatter):
    """One line a record; its traceback only with -v, where a developer wants it."""

    def __init__(self, fmt: str, tracebacks: bool) -> None:
        super().__init__(fmt)
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        if not self.tracebacks and (record.exc_info or record.exc_text or record.stack_info):
            record = logging.makeLogRecord(record.__dict__)
            record.exc_info = record.exc_text = record.stack_info = None
        return super().format(record)


# Quiet: errors only. Normal: warnings (a long-running command: what it does, too).
_LEVELS = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.DEBUG}


def configure_logging(verbosity: int, daemon: bool = False) -> None:
    """Log lines on stderr for the command that runs: bare messages for a command a
    person waits for, time-stamped ones from INFO up for run-due and the workers."""
    level = _LEVELS[max(-1, min(verbosity, 1))]
    if daemon and verbosity == 0:
        level = logging.INFO
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if daemon else "%(message)s"
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _Stderr.name]:
        root.removeHandler(old)
    handler = _Stderr()
    handler.set_name(_Stderr.name)
    handler.setFormatter(_Lines(fmt, tracebacks=verbosity > 0))
    root.addHandler(handler)
    root.setLevel(level)
    # APScheduler says "Running job ..." each second at INFO: only its trouble is news.
    logging.getLogger("apscheduler").setLevel(max(level, logging.WARNING))


def log_to_stderr(state: State) -> None:
    """For run-due and the workers: time-stamped lines, from INFO up unless -q."""
    configure_logging(state.verbosity, daemon=True)


def format_finding(finding: Finding) -> str:
    where = f" [{finding.where}]" if finding.where else ""
    return f"{finding.level}: {finding.message}{where}"


# --- options more than one command takes ----------------------------------------------


class InputFile(click.ParamType):
    """A file the command reads (an issue, an article, a list): one that is not there
    is a usage error, exit 2, in one line naming it (click.Path's own wording comes
    with the usage text and 'Invalid value for ...')."""

    name = "file"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> Path:
        path = value if isinstance(value, Path) else Path(str(value))
        if path.is_dir():
            raise UsageError(f"{path}: is a folder, not a file")
        if not path.exists():
            raise UsageError(f"{path}: no such file")
        return path

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[click.shell_completion.CompletionItem]:
        return [click.shell_completion.CompletionItem(incomplete, type="file")]


def repeat_options(f: Any) -> Any:
    """--again / --new-only: what to do with an issue an earlier campaign sent."""
    f = click.option(
        "--new-only",
        is_flag=True,
        help="Send an issue that went out before only to those who have not had it.",
    )(f)
    return click.option(
        "--again", is_flag=True, help="Send an issue that went out before to everyone again."
    )(f)


def repeat_choice(again: bool, new_only: bool) -> once.Repeat:
    from newsletter.ledger import once

    if again and new_only:
        raise click.UsageError("--again and --new-only exclude each other: choose one")
    if again:
        return once.Repeat.AGAIN
    return once.Repeat.NEW_ONLY if new_only else once.Repeat.REFUSE


def page_server_options(what: str, port: int, host_help: str) -> Any:
    """--port, --host, --allow-host and --open/--no-open: the options of a command that
    serves pages to a browser (`preview`, `console`); `what` names it in their help.
    The command checks the pair with web.previews.check_allowed_hosts."""

    def decorate(f: Any) -> Any:
        f = click.option(
            "--open/--no-open",
            "open_browser",
            default=True,
            show_default=True,
            help=f"Open the {what} in a web browser.",
        )(f)
        f = click.option(
            "--allow-host",
            "allow_hosts",
            multiple=True,
            metavar="NAME",
            help=f"A Host name the {what} answers to (repeatable); required with a --host"
            " other machines reach.",
        )(f)
        f = click.option("--host", default="127.0.0.1", show_default=True, help=host_help)(f)
        return click.option(
            "--port",
            default=port,
            show_default=True,
            type=click.IntRange(0, 65535),
            help="Port to listen on (0: any free port).",
        )(f)

    return decorate
