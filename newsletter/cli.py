"""Thin Click commands: parse, call one function of the library, report.

The only module that imports click. Library errors (NewsletterError) become one
line on stderr and their exit code: 1 for a failed operation, 2 for usage and
configuration errors.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import click

from newsletter import __version__, content, publish
from newsletter import config as config_mod
from newsletter.check import Finding, has_errors
from newsletter.errors import NewsletterError
from newsletter.fileio import read_text, write_files


class NewsletterClickError(click.ClickException):
    def __init__(self, error: NewsletterError) -> None:
        super().__init__(str(error))
        self.exit_code = error.exit_code


class Group(click.Group):
    """Turns a NewsletterError raised by any command into a one-line error."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NewsletterError as exc:
            raise NewsletterClickError(exc) from None


class State:
    def __init__(self, config_path: Path | None) -> None:
        self.config_path = config_path
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
@click.version_option(__version__, prog_name="newsletter")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None) -> None:
    """Publish an email newsletter with a sponsor footer.

    Import an article, build and check the issue, then send it.
    """
    ctx.obj = State(config_path)


@cli.command("import")
@click.argument("article", type=click.Path(path_type=Path))
@click.option(
    "--date", "date", type=click.DateTime(["%Y-%m-%d"]), help="Issue date (default: today)."
)
@click.option("--slug", help="URL name of the issue (default: made from the title).")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Where to write the issue.")
@click.option("--force", is_flag=True, help="Overwrite an existing issue file.")
@pass_state
def import_cmd(
    state: State,
    article: Path,
    date: dt.datetime | None,
    slug: str | None,
    output: Path | None,
    force: bool,
) -> None:
    """Turn a plain-text ARTICLE into an issue file (front matter + Markdown)."""
    cfg = state.config
    day = date.date() if date else dt.date.today()
    imported = content.import_article(
        read_text(article), day, [s.name for s in cfg.sponsors.values()], slug=slug
    )
    target = output or cfg.issues_dir / f"{imported.date.isoformat()}-{imported.slug}.md"
    if target.exists() and not force:
        raise click.ClickException(f"{target}: already exists (use --force to overwrite)")
    write_files({target: imported.markdown.encode("utf-8")})
    for note in imported.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(str(target))


@cli.command()
@click.argument("issue", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the built files (default: [paths] output).",
)
@click.option("--force", is_flag=True, help="Write even when the checks find errors.")
@pass_state
def build(state: State, issue: Path, out_dir: Path | None, force: bool) -> None:
    """Build ISSUE into <slug>.html, .txt and .eml, as the sample subscriber gets it."""
    outputs, findings = publish.write_build(state.config, issue, out_dir, force=force)
    for finding in findings:
        click.echo(_format_finding(finding), err=True)
    for path in (outputs.html, outputs.text, outputs.eml):
        click.echo(str(path))


@cli.command()
@click.argument("issue", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@pass_state
def check(state: State, issue: Path, as_json: bool) -> None:
    """Lint ISSUE: exit 1 on errors (unsubscribe, postal address, sponsor label, sizes...)."""
    findings = publish.check_issue(state.config, issue)
    errors = sum(f.level == "error" for f in findings)
    warnings = len(findings) - errors
    if as_json:
        click.echo(
            json.dumps(
                {
                    "issue": str(issue),
                    "errors": errors,
                    "warnings": warnings,
                    "findings": [f.as_dict() for f in findings],
                },
                indent=2,
            )
        )
    else:
        for finding in findings:
            click.echo(_format_finding(finding))
        click.echo(f"{issue}: {errors} error(s), {warnings} warning(s)")
    if has_errors(findings):
        raise SystemExit(1)


def _format_finding(finding: Finding) -> str:
    where = f" [{finding.where}]" if finding.where else ""
    return f"{finding.level}: {finding.message}{where}"


def main() -> None:
    cli(prog_name="newsletter")
