"""Bounces and complaints that come back: ingest one message, fetch the mailbox."""

from __future__ import annotations

from typing import BinaryIO

import click

from newsletter.cli.root import State, cli, open_store, pass_state


@cli.group("bounces")
def bounces_group() -> None:
    """Bounces, complaints and auto-replies that come back: read them, suppress addresses.

    A hard bounce or a complaint suppresses the address at once; soft bounces after
    [bounces] soft_limit of them within soft_days. Auto-replies are ignored.
    """


@bounces_group.command("ingest")
@click.argument("message", type=click.File("rb"), default="-")
@pass_state
def bounces_ingest(state: State, message: BinaryIO) -> None:
    """Read one message from MESSAGE (a file, or - for standard input) and record it.

    For a Postfix pipe transport or an Exim pipe router. Prints one line per report:
    the address, the kind, and what it did (suppressed, recorded, seen before), or one
    line saying why the message was ignored. Exits 1 when the input is not mail.
    """
    from newsletter.bounces import ingest as ingest_mod
    from newsletter.tokens import load_secret

    name = getattr(message, "name", "-")  # a file's path; stdin is "<stdin>" (or has none)
    name = "standard input" if name in ("-", "<stdin>") else str(name)
    result = ingest_mod.ingest(
        open_store(state), state.config.bounces, load_secret(state.config), message.read(), name
    )
    if result.ignored:
        click.echo(f"{result.sender or name}: {result.ignored}, ignored")
    for outcome in result.outcomes:
        code = f" {outcome.bounce.status_code}" if outcome.bounce.status_code else ""
        click.echo(f"{outcome.who}: {outcome.bounce.kind}{code}, {outcome.effect}")


@bounces_group.command("fetch")
@pass_state
def bounces_fetch(state: State) -> None:
    """Read every message in the [bounces] IMAP mailbox, record it, move it away.

    Reads imap_folder on imap_host (TLS unless imap_security says otherwise), logs in
    as imap_username with the password in the variable imap_password_env names, and
    moves each message it handled to imap_done_folder. Safe from cron, and twice at
    once: a report is counted once.
    """
    from newsletter.bounces import fetch as fetch_mod
    from newsletter.tokens import load_secret

    done = fetch_mod.fetch(open_store(state), state.config, load_secret(state.config))
    click.echo(
        f"{done.messages} messages, {done.hard} hard, {done.soft} soft,"
        f" {done.complaints} complaints, {done.ignored} ignored, {done.suppressed} suppressed"
        + (f", {done.seen_before} seen before" if done.seen_before else "")
    )
