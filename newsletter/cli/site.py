"""The public side: serve the site, export the archive, the sponsors' bookings and reports;
and the marketer's console."""

from __future__ import annotations

import json
from pathlib import Path

import click

from newsletter.cli.root import (
    State,
    cli,
    open_store,
    page_server_options,
    pass_state,
)


@cli.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (the reverse proxy's upstream).",
)
@click.option(
    "--port",
    default=8080,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free port).",
)
@pass_state
def serve(state: State, host: str, port: int) -> None:
    """Serve the public pages behind a reverse proxy at [publication] base_url.

    One-click unsubscribe (the link in every message), signup with a
    confirmation email, and the archive of sent issues with its Atom feed.
    """
    # Imported here so that the web stack loads only for this command.
    from newsletter.web import site

    def log(message: str) -> None:
        click.echo(message, err=True)

    site.serve(state.config, host, port, announce=click.echo, log=log)


@cli.command()
@page_server_options(
    "console",
    8030,
    "Address to listen on; keep the default unless other machines must reach it.",
)
@click.option(
    "--hash-password",
    is_flag=True,
    help="Ask for a password (twice) and print the [console] password_hash line for"
    " newsletter.toml, which a --host other machines reach requires; serve nothing.",
)
@pass_state
def console(
    state: State,
    port: int,
    host: str,
    allow_hosts: tuple[str, ...],
    open_browser: bool,
    hash_password: bool,
) -> None:
    """Serve the marketer's console: the calendar, campaigns, issues, sponsors and
    subscribers in a browser.

    It listens on 127.0.0.1. A --host other machines reach needs --allow-host NAME and
    a password: `newsletter console --hash-password` prints the line to put in
    newsletter.toml's [console] section; with it set, the console asks for a login.
    """
    if hash_password:
        from newsletter.web.console import auth

        password = click.prompt(
            "Console password", hide_input=True, confirmation_prompt=True, err=True
        )
        if len(password) < 8:
            raise click.UsageError("the password needs at least 8 characters")
        click.echo(f'[console]\npassword_hash = "{auth.hash_password(password)}"')
        return
    # Imported here so that the web stack loads only for this command.
    from newsletter.web.console import app
    from newsletter.web.console.context import Console

    config = state.config
    # Refused before the ledger is opened or anything is bound: --allow-host and a password.
    app.check_host(config.console.password_hash, host, allow_hosts)

    def log(message: str) -> None:
        click.echo(message, err=True)

    shown = Console(
        config.path,
        config,
        open_store(state),
        log=log,
        password_hash=config.console.password_hash,
    )
    app.serve(
        shown,
        host,
        port,
        open_browser=open_browser,
        announce=click.echo,
        allow_hosts=allow_hosts,
    )


@cli.group()
def archive() -> None:
    """The archive of sent issues: the pages `newsletter serve` shows, as static files."""


@archive.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@pass_state
def archive_export(state: State, directory: Path) -> None:
    """Write the archive into DIRECTORY for any static host (all files or none).

    index.html, feed.xml, site.css and issues/<slug>/index.html: the same bytes
    `newsletter serve` answers for /, /feed.xml, /site.css and /issues/<slug>.
    """
    from newsletter.web import archive as archive_mod

    written = archive_mod.export(open_store(state), state.config, directory)
    issues = sum(1 for path in written if path.name == "index.html") - 1
    click.echo(f"{issues} issue(s), {len(written)} files written to {directory}")


@cli.group()
def sponsors() -> None:
    """Sponsor bookings: who appears in which issue."""


@sponsors.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_state
def sponsors_list(state: State, as_json: bool) -> None:
    """Show each sponsor's booking (dates, weight) and the issues it appeared in."""
    from newsletter.ledger import sponsorship

    rows = sponsorship.bookings(state.config, open_store(state))
    if as_json:
        click.echo(json.dumps({"sponsors": [b.as_dict() for b in rows]}, indent=2))
        return
    for b in rows:
        period = f"{b.start or '...'} to {b.end or '...'}" if b.start or b.end else "no dates"
        flags = " (default)" if b.default else ""
        click.echo(f"{b.id}: {b.name}{flags}, {period}, weight {b.weight}")
        for sent in b.sent_in:
            click.echo(f"    campaign {sent['campaign']}: {sent['issue']} [{sent['status']}]")
        for slug in b.planned:
            click.echo(f"    planned: {slug}")


@sponsors.command("report")
@click.argument("sponsor_id")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print the report as CSV.")
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a self-contained HTML report (with a chart) to this file.",
)
@pass_state
def sponsors_report(
    state: State, sponsor_id: str, as_json: bool, as_csv: bool, html_file: Path | None
) -> None:
    """What SPONSOR_ID's placements delivered: per issue, per link and in total.

    Unique clickers and clicks are readers': a reader's clicks on a link within
    [tracking] dedupe_window count once. Bot clicks (crawlers, mail scanners, HEAD
    requests, clicks right after delivery) are shown apart, and raw is every request.
    """
    from newsletter.fileio import write_files
    from newsletter.ledger import sponsorship

    if sum((as_json, as_csv, html_file is not None)) > 1:
        raise click.UsageError("choose one of --json, --csv and --html")
    rep = sponsorship.report(state.config, open_store(state), sponsor_id)
    if as_json:
        click.echo(json.dumps(rep.as_dict(), indent=2))
    elif as_csv:
        click.echo(sponsorship.report_csv(rep), nl=False)
    elif html_file is not None:
        page = sponsorship.report_html(rep, state.config.publication.name)
        write_files({html_file: page.encode("utf-8")})
        click.echo(str(html_file))
    else:
        click.echo(sponsorship.report_text(rep), nl=False)
