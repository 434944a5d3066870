"""Setting up: init, doctor, completion, dkim keygen, db upgrade/current."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from newsletter.cli.root import (
    State,
    cli,
    pass_state,
)
from newsletter.config import DKIM_ALGORITHMS


def _stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


def _sender(value: str) -> str:
    from newsletter.setup import starter

    try:
        return starter.parse_sender(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _sender_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else _sender(value)


def _base_url(value: str) -> str:
    from newsletter.setup import starter

    try:
        return starter.parse_base_url(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _base_url_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else _base_url(value)


def _reply_to(value: str) -> str:
    return _sender(value) if value.strip() else ""


def _reply_to_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else _reply_to(value)


@cli.command()
@click.argument(
    "directory", required=False, default=".", type=click.Path(file_okay=False, path_type=Path)
)
@click.option("--name", help="The publication's name (default: asked, or 'My Newsletter').")
@click.option(
    "--from",
    "from_addr",
    callback=_sender_option,
    help='The sender, "Name <address>" (default: asked, or news@example.com).',
)
@click.option(
    "--postal-address",
    help="The postal address every issue shows (default: asked, or a placeholder).",
)
@click.option(
    "--base-url",
    callback=_base_url_option,
    help="The web address `serve` answers at: unsubscribe, archive and click links"
    " (default: asked, or https://news.<the sender's domain>).",
)
@click.option(
    "--reply-to",
    callback=_reply_to_option,
    help='Where replies go, "Name <address>" (default: asked, or none: to the sender).',
)
@click.option(
    "--defaults",
    "--yes",
    "-y",
    "defaults",
    is_flag=True,
    help="Ask nothing: take the defaults for what the flags leave open.",
)
@click.option("--force", is_flag=True, help="Overwrite starter files that are already there.")
def init(
    directory: Path,
    name: str | None,
    from_addr: str | None,
    postal_address: str | None,
    base_url: str | None,
    reply_to: str | None,
    defaults: bool,
    force: bool,
) -> None:
    """Create a publication in DIRECTORY (default: here): config, templates, a first issue.

    On a terminal it asks for the publication's name, sender, postal address, web
    address and reply address; scripts pass --name, --from, --postal-address,
    --base-url and --reply-to (or --defaults). The List-Id and utm_source are made
    from the name and the web address. Existing files are kept unless --force.
    """
    from newsletter.setup import starter

    starter.check_target(directory, force)  # before asking anything
    given = (name, from_addr, postal_address, base_url, reply_to)
    if _stdin_is_terminal() and not defaults and None in given:
        name = name or click.prompt("Publication name", default=starter.DEFAULT_NAME)
        from_addr = from_addr or click.prompt(
            "Sender (Name <address>)", default=starter.default_sender(name), value_proc=_sender
        )
        postal_address = postal_address or click.prompt(
            "Postal address (every issue shows it)", default=starter.DEFAULT_POSTAL_ADDRESS
        )
        domain = starter.address_domain(from_addr)
        base_url = base_url or click.prompt(
            "Web address, where `newsletter serve` answers (unsubscribe and click links)",
            default=starter.default_base_url(domain),
            value_proc=_base_url,
        )
        if reply_to is None:
            reply_to = click.prompt(
                "Reply address (Enter: replies go to the sender)",
                default="",
                show_default=False,
                value_proc=_reply_to,
            )
    identity = starter.Identity(name, from_addr, postal_address, base_url, reply_to)
    created = starter.create(directory, identity, force)
    if identity.kept():
        click.echo(
            f"note: took init's defaults for [publication] {', '.join(identity.kept())};"
            " change them in newsletter.toml (or pass --name, --from, --postal-address,"
            " --base-url, --reply-to)",
            err=True,
        )
    if created.overwritten:
        click.echo(f"overwrote {len(created.overwritten)} existing file(s) (--force)", err=True)
    pub = created.publication
    click.echo(f"Created {pub.name!r} in {created.folder.resolve()}:")
    click.echo(f"  {created.summary()}")
    click.echo(f"  List-Id {pub.list_id}, utm_source {created.utm_source}")
    click.echo("  an example sponsor ([sponsors.example]): replace or delete it")
    click.echo("Next:")
    for command in starter.next_commands(created, Path.cwd()):
        click.echo(f"  {command}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@pass_state
def doctor(state: State, as_json: bool) -> None:
    """Check the setup: config, templates, database, SMTP login (nothing sent), links.

    One line per check: ok, warn or fail. Exit 1 when any check fails.
    """
    from newsletter.setup import doctor as doctor_mod

    colors = {doctor_mod.OK: "green", doctor_mod.WARN: "yellow", doctor_mod.FAIL: "red"}
    checks = []
    for check in doctor_mod.run(state.config_path):
        checks.append(check)
        if not as_json:
            level = click.style(f"{check.level:<4}", fg=colors[check.level], bold=True)
            click.echo(f"{level}  {check.name}: {check.message}")
    if as_json:
        report = {"ok": not doctor_mod.failed(checks), "checks": [c.as_dict() for c in checks]}
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(f"doctor: {doctor_mod.summary(checks)}")
    if doctor_mod.failed(checks):
        raise SystemExit(1)


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the SHELL completion script: eval "$(newsletter completion bash)".

    Put that line in ~/.bashrc (zsh: ~/.zshrc), or for fish save the output as
    ~/.config/fish/completions/newsletter.fish.
    """
    from click.shell_completion import get_completion_class

    # Click's own script, the one `_NEWSLETTER_COMPLETE=bash_source newsletter` prints.
    complete = get_completion_class(shell)
    assert complete is not None  # the Choice names only shells Click supports
    click.echo(complete(cli, {}, "newsletter", "_NEWSLETTER_COMPLETE").source())


@cli.group()
def dkim() -> None:
    """DKIM signing keys ([dkim] in newsletter.toml signs every outgoing message)."""


@dkim.command("keygen")
@click.option("--domain", help="Signing domain (default: [dkim] domain, else the From domain).")
@click.option("--selector", help="Selector (default: [dkim] selector, else 'newsletter').")
@click.option(
    "--algorithm",
    type=click.Choice(DKIM_ALGORITHMS),
    default="rsa-sha256",
    show_default=True,
    help="rsa-sha256 is what every receiver checks; ed25519-sha256 as a second key.",
)
@click.option("--bits", default=2048, show_default=True, help="RSA key size.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Private key file (default: dkim-<selector>.pem beside newsletter.toml).",
)
@pass_state
def dkim_keygen(
    state: State,
    domain: str | None,
    selector: str | None,
    algorithm: str,
    bits: int,
    output: Path | None,
) -> None:
    """Make a DKIM key pair and print the DNS TXT record to publish."""
    from newsletter.mail import dkim as dkim_keys

    config = state.config
    domain = domain or config.dkim.domain or config.publication.from_addr.rpartition("@")[2]
    domain = domain.strip(" >")
    selector = selector or config.dkim.selector or "newsletter"
    path = output or config.root / f"dkim-{selector}.pem"
    key = dkim_keys.keygen(path, domain, selector, algorithm, bits)
    click.echo(f"private key written to {key.path} (keep it secret; mode 0600)", err=True)
    click.echo("publish this DNS record:", err=True)
    click.echo(key.zone_record())
    click.echo(
        f"then set in newsletter.toml: [dkim] domain = {domain!r}, selector = {selector!r},"
        f" private_key = {key.path.name!r}, algorithm = {algorithm!r}",
        err=True,
    )


@cli.group()
def db() -> None:
    """The database's schema ([database] url): which revision it is at, and upgrading it.

    Every command upgrades the database on its own when a new release needs it;
    `db upgrade` does it on purpose, e.g. before starting workers on several machines.
    """


def _revision_name(revision: str, before_migrations: bool) -> str:
    return f"{revision} (made before migrations)" if before_migrations else revision


@db.command("upgrade")
@pass_state
def db_upgrade(state: State) -> None:
    """Upgrade the database to this release's schema, keeping its data (creates a new one)."""
    from newsletter.ledger.store import Store

    change = Store.upgrade(state.config.database_url)
    if change.before is None:
        click.echo(f"created the tables at {change.after} (the newest)")
    elif not change.changed:
        click.echo(f"already at {change.after} (the newest)")
    else:
        before = _revision_name(change.before, change.before_migrations)
        click.echo(f"upgraded from {before} to {change.after}")


@db.command("current")
@pass_state
def db_current(state: State) -> None:
    """Print the database's schema revision and whether it is the newest (changes nothing)."""
    from newsletter.ledger.store import Store

    current = Store.schema_state(state.config.database_url)
    if current.revision is None:
        click.echo("no tables yet: the first command that uses the database creates them")
    elif current.is_head:
        click.echo(f"{current.revision} (the newest)")
    else:
        name = _revision_name(current.revision, current.before_migrations)
        click.echo(f"{name}; the newest is {current.head}: run `newsletter db upgrade`")
