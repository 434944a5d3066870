"""Writing an issue: import, build, check, preview."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from newsletter import config as config_mod
from newsletter.cli.root import (
    InputFile,
    State,
    cli,
    format_finding,
    page_server_options,
    pass_state,
)


class IssueDate(click.ParamType):
    """YYYY-MM-DD, telling a wrong format from a date that does not exist (2026-02-30)."""

    name = "date"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> dt.date:
        if isinstance(value, dt.date):
            return value
        from newsletter.issue import content

        try:
            return content.parse_date(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@cli.command("import")
@click.argument("article", type=InputFile())
@click.option(
    "--date", "date", type=IssueDate(), metavar="YYYY-MM-DD", help="Issue date (default: today)."
)
@click.option("--slug", help="URL name of the issue (default: made from the title).")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Where to write the issue.")
@click.option("--force", is_flag=True, help="Overwrite an existing issue file.")
@pass_state
def import_cmd(
    state: State,
    article: Path,
    date: dt.date | None,
    slug: str | None,
    output: Path | None,
    force: bool,
) -> None:
    """Turn a plain-text ARTICLE into an issue file (front matter + Markdown)."""
    from newsletter.fileio import read_text, write_files
    from newsletter.issue import content

    cfg = state.config
    day = date or dt.date.today()
    imported = content.import_article(
        read_text(article), day, [s.name for s in cfg.sponsors.values()], slug=slug
    )
    target = output or cfg.issues_dir / f"{imported.date.isoformat()}-{imported.slug}.md"
    if target.exists() and not force:
        raise click.ClickException(f"{target}: already exists (use --force to overwrite)")
    write_files({target: imported.markdown.encode("utf-8")})
    for note in imported.notes:
        click.echo(f"note: {note}", err=True)
    # file:line, so that an editor can jump to each guess and undo a wrong one.
    for line in imported.headings:
        click.echo(f"note: {article}:{line.number}: made a heading: {line.text}", err=True)
    for line in imported.skipped:
        click.echo(f"note: {article}:{line.number}: left out, only markup: {line.text}", err=True)
    click.echo(str(target))


@cli.command()
@click.argument("issue", type=InputFile())
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
    from newsletter.issue import publish

    outputs, findings = publish.write_build(state.config, issue, out_dir, force=force)
    for finding in findings:
        click.echo(format_finding(finding), err=True)
    for path in (outputs.html, outputs.text, outputs.eml):
        click.echo(str(path))


@cli.command()
@click.argument("issue", type=InputFile())
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.option(
    "--spam",
    is_flag=True,
    help="Also score the message with SpamAssassin (local rules): an error over [check] spam_max.",
)
@pass_state
def check(state: State, issue: Path, as_json: bool, spam: bool) -> None:
    """Lint ISSUE: exit 1 on errors (unsubscribe, postal address, sponsor label, sizes...)."""
    from newsletter.issue import publish
    from newsletter.issue.check import has_errors

    with contextlib.ExitStack() as stack:
        findings = publish.check_issue(
            state.config,
            issue,
            spam_score=spam,
            audience=lambda: active_subscribers(stack, state.config.database_url),
        )
    errors = sum(f.level == "error" for f in findings)
    warnings = sum(f.level == "warning" for f in findings)
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
            click.echo(format_finding(finding))
        click.echo(f"{issue}: {errors} error(s), {warnings} warning(s)")
    if has_errors(findings):
        raise SystemExit(1)


def active_subscribers(stack: contextlib.ExitStack, url: str) -> Iterator[Any] | None:
    """The list's active subscribers, when the database is there (nothing is created)."""
    from newsletter.ledger.store import Store
    from newsletter.ledger.tables import ACTIVE

    store = Store.existing(url)
    if store is None:
        return None
    stack.callback(store.close)
    return store.iter_subscribers(ACTIVE)


@cli.command()
@click.argument("issue", required=False, type=InputFile())
@click.option(
    "--outbox",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Show the .eml files captured in this folder instead of an issue.",
)
@page_server_options(
    "preview",
    8025,
    "Address to listen on; other machines can see the page unless it is local.",
)
@pass_state
def preview(
    state: State,
    issue: Path | None,
    outbox: Path | None,
    port: int,
    host: str,
    allow_hosts: tuple[str, ...],
    open_browser: bool,
) -> None:
    """Serve a live preview of ISSUE: desktop and phone, plain text, headers and checks.

    Without ISSUE, the newest issue in [paths] issues (by the date in its file name,
    else in its front matter).
    """
    # Imported here so that the web stack loads only for this command.
    from newsletter.issue import content
    from newsletter.send import trial
    from newsletter.web import preview as previews

    if issue is not None and outbox is not None:
        raise click.UsageError("give an ISSUE or --outbox DIR, not both")
    if issue is None and outbox is None:
        issues_dir = state.config.issues_dir
        issue = content.newest_issue(issues_dir)
        if issue is None:
            raise click.UsageError(f"no issue in {issues_dir}: give an ISSUE or --outbox DIR")
        click.echo(f"no ISSUE given: previewing the newest, {issue}", err=True)
    previews.check_allowed_hosts(host, allow_hosts)  # before the issue is rendered

    def log(message: str) -> None:
        click.echo(message, err=True)

    if outbox is not None:
        shown = previews.outbox_preview(outbox, log=log)
    else:
        assert issue is not None
        config_path = state.config_path or config_mod.find_config()
        sender = trial.test_sender(config_path, issue)
        shown = previews.issue_preview(config_path, issue, send_test=sender, log=log)
    previews.serve(
        shown,
        host,
        port,
        open_browser=open_browser,
        announce=click.echo,
        log=log,
        allow_hosts=allow_hosts,
    )
