"""The list: subscribers import, add, remove, list, count, export, erase; unsubscribe."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from newsletter.cli.root import (
    InputFile,
    State,
    cli,
    open_store,
    pass_state,
)
from newsletter.ledger.statuses import SUBSCRIBER_STATUSES, SUPPRESSED

if TYPE_CHECKING:
    from newsletter.audience import subscribers as subscriber_ops


def _stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


@cli.group()
def subscribers() -> None:
    """Manage the subscriber list: import, add, remove, list, count, export, erase."""


def _stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def _tags(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[str]:
    """--tag/--add/--remove: each a tag, as stored (lower case); a bad one exits 2."""
    from newsletter import segments

    tags = []
    for value in values:
        try:
            tags.append(segments.normalize_tag(value))
        except ValueError as exc:
            raise click.BadParameter(f"{value!r}: {exc}") from None
    return tags


def _segment_option(f: Any) -> Any:
    return click.option(
        "--segment",
        help="Only subscribers in this segment: a [segments] name or an expression"
        ' ("tag:vip and not tag:churned").',
    )(f)


@subscribers.command("import")
@click.argument("csv_file", type=InputFile())
@click.option(
    "--strict",
    is_flag=True,
    help="Exit 1 when any row is not imported as written (rejected, or a duplicate).",
)
@click.option(
    "--map",
    "maps",
    multiple=True,
    metavar="FIELD=COLUMN",
    help="Read FIELD (email, name or status) from COLUMN; `status=` leaves statuses out."
    " Repeatable.",
)
@click.option(
    "--encoding",
    default="utf-8",
    show_default=True,
    help="The file's encoding, e.g. cp1252 or latin-1 (a UTF-8 BOM is read either way).",
)
@click.option("--dry-run", is_flag=True, help="Say what would be imported; change nothing.")
@click.option(
    "--tag",
    "tags",
    multiple=True,
    callback=_tags,
    help="Tag every imported row with TAG (repeatable); tags they had are kept.",
)
@pass_state
def subscribers_import(
    state: State,
    csv_file: Path,
    strict: bool,
    maps: tuple[str, ...],
    encoding: str,
    dry_run: bool,
    tags: list[str],
) -> None:
    """Import CSV_FILE: a list, or the export of Mailchimp, Substack, Buttondown, Kit,
    Beehiiv or Ghost (comma, semicolon or tab; the address, name and status columns are
    recognised; other columns are kept as attributes).

    Bad rows are reported with their line number and skipped; the good rows are
    imported. A row whose address an earlier row has (in any case) is a duplicate: the
    first row stands, the later is reported and counted. Re-importing is safe: an
    unsubscribed address stays unsubscribed, a bounced or complained one stays
    suppressed ("kept suppressed"), a status in the file never makes anyone active
    again, and an address erased at the person's request is refused (reported with its
    row). Exit 0 when rows were imported, even if others were not (1 with --strict); 1
    when none could be.
    """
    from newsletter.audience import subscribers as subscriber_ops

    mapping = subscriber_ops.parse_mapping(maps)
    store = open_store(state)
    if _stderr_is_terminal():
        with click.progressbar(length=1, label="importing", file=sys.stderr) as bar:

            def progress(done: int, total: int) -> None:
                bar.length = max(total, 1)
                bar.update(done - bar.pos)

            report = subscriber_ops.import_csv(
                store,
                csv_file,
                mapping=mapping,
                encoding=encoding,
                dry_run=dry_run,
                progress=progress,
                tags=tags,
            )
    else:
        report = subscriber_ops.import_csv(
            store, csv_file, mapping=mapping, encoding=encoding, dry_run=dry_run, tags=tags
        )
    _print_import(report)
    if report.rejected.count and not report.imported:
        raise SystemExit(1)  # nothing could be imported: a failed import
    if strict and report.partial:
        raise SystemExit(1)


def _print_import(report: subscriber_ops.ImportReport) -> None:
    from newsletter.audience import subscribers as subscriber_ops

    shown = subscriber_ops.DRY_RUN_SHOWN if report.dry_run else subscriber_ops.SHOWN
    if report.dry_run:
        click.echo(report.source)
        for kind, outcome in report.examples.items():
            _print_lines(f"would {kind}", outcome, shown, err=False)
        for status, outcome in sorted(report.statuses.items()):
            _print_lines(f"would be {status} (the file says)", outcome, shown, err=False)
    _print_lines("skipped", report.rejected, shown, err=True)
    _print_lines("duplicate", report.duplicates, shown, err=True)
    # "kept suppressed", "duplicate(s)" and the statuses only when there are some: the
    # line scripts read stays as it was.
    kept = f", {report.kept_suppressed} kept suppressed" if report.kept_suppressed else ""
    twice = f", {report.duplicates.count} duplicate(s)" if report.duplicates.count else ""
    statuses = ", ".join(f"{o.count} {s}" for s, o in sorted(report.statuses.items()))
    said = f"; by the file's status: {statuses}" if statuses else ""
    dry = "dry run, nothing changed: would be " if report.dry_run else ""
    click.echo(
        f"{dry}{report.added} added, {report.updated} updated{kept}{twice},"
        f" {report.rejected.count} rejected{said}"
    )


def _print_lines(kind: str, outcome: subscriber_ops.Outcome, shown: int, err: bool) -> None:
    lines = outcome.lines[:shown]
    for line in lines:
        click.echo(f"{kind}: {line}", err=err)
    if outcome.count > len(lines):
        click.echo(f"{kind}: ... and {outcome.count - len(lines)} more", err=err)


@subscribers.command("add")
@click.argument("email")
@click.option(
    "--name", default="", help="The subscriber's name, used in the greeting (default: kept)."
)
@click.option(
    "--resubscribe",
    is_flag=True,
    help="Make an unsubscribed (or unconfirmed) address active again: the person asked to.",
)
@click.option(
    "--again-after-erasure",
    is_flag=True,
    help="Add an address erased at the person's request (they asked to be added again).",
)
@pass_state
def subscribers_add(
    state: State, email: str, name: str, resubscribe: bool, again_after_erasure: bool
) -> None:
    """Add EMAIL to the list, or change a known subscriber's --name.

    Says what it did. A known address keeps its status: an unsubscribed one stays
    unsubscribed unless --resubscribe; a bounced or complained one stays suppressed
    (only a confirmed signup brings it back). Without --name, a stored name is kept.
    An erased address is refused unless --again-after-erasure.
    """
    from newsletter.audience import subscribers as subscriber_ops

    done = subscriber_ops.add(
        open_store(state), email, name, again_after_erasure, resubscribe=resubscribe
    )
    click.echo(_added_message(done))


def _added_message(done: subscriber_ops.Added) -> str:
    from newsletter.audience import subscribers as subscriber_ops

    who = done.email
    renamed = "; name updated" if done.renamed else ""
    if done.outcome == subscriber_ops.ADDED:
        return f"added {who}"
    if done.outcome == subscriber_ops.UPDATED:
        return f"updated {who}: name changed (still active)"
    if done.outcome == subscriber_ops.UNCHANGED:
        return f"{who} is already subscribed (active); nothing changed"
    if done.outcome == subscriber_ops.RESUBSCRIBED:
        return f"resubscribed {who}: {done.status} before, active now{renamed}"
    if done.status in SUPPRESSED:
        return (
            f"kept {who} suppressed ({done.status}){renamed}:"
            " only a confirmed signup brings it back"
        )
    return (
        f"{who} is {done.status}; left {done.status}{renamed}"
        f" (`newsletter subscribers add --resubscribe {who}` if they asked to come back)"
    )


@subscribers.command("remove")
@click.argument("email")
@pass_state
def subscribers_remove(state: State, email: str) -> None:
    """Unsubscribe EMAIL (kept as unsubscribed, so a re-import does not add it back)."""
    from newsletter.audience import subscribers as subscriber_ops

    subscriber_ops.remove(open_store(state), email)
    click.echo(f"unsubscribed {email.strip()}")


@subscribers.command("tag")
@click.argument("emails", metavar="EMAIL...", nargs=-1, required=True)
@click.option("--add", "add", multiple=True, callback=_tags, help="Add TAG (repeatable).")
@click.option("--remove", "remove", multiple=True, callback=_tags, help="Remove TAG (repeatable).")
@pass_state
def subscribers_tag(
    state: State, emails: tuple[str, ...], add: list[str], remove: list[str]
) -> None:
    """Add or remove tags on each EMAIL: `subscribers tag ann@example.com --add vip`.

    Tags are lower case (VIP is vip), letters, digits, '_', '.' and '-'. A tag both
    added and removed is an error. Addresses not on the list are named on one line
    and change nothing; the others are tagged all the same, and the exit code is 1.
    """
    from newsletter.ledger import tags as ledger_tags

    if not add and not remove:
        raise click.UsageError("say what to do: --add TAG and/or --remove TAG")
    both = sorted(set(add) & set(remove))
    if both:
        raise click.UsageError(f"--add and --remove both name {', '.join(both)}")
    done = ledger_tags.apply(open_store(state), emails, add, remove)
    click.echo(
        f"{done.subscribers} subscriber(s): {done.added} tag(s) added, {done.removed} removed"
    )
    if done.unknown:
        raise click.ClickException(f"not on the list: {', '.join(done.unknown)}")


@subscribers.command("list")
@click.option(
    "--status", type=click.Choice(SUBSCRIBER_STATUSES), help="Only subscribers with this status."
)
@pass_state
def subscribers_list(state: State, status: str | None) -> None:
    """List subscribers, one a line: address, name, status."""
    for row in open_store(state).iter_subscribers(status=status):
        click.echo(f"{row.email}\t{row.name}\t{row.status}")


@subscribers.command("count")
@click.option(
    "--status",
    type=click.Choice(SUBSCRIBER_STATUSES),
    default="active",
    show_default=True,
    help="Count subscribers with this status.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the count of every status as JSON.")
@_segment_option
@click.pass_context
def subscribers_count(ctx: click.Context, status: str, as_json: bool, segment: str | None) -> None:
    """Print the number of subscribers (active ones unless --status), or with --json
    the number with each status. --segment counts those in a segment: what
    `send --all --segment` would reach before "one issue once"."""
    from newsletter.ledger import privacy
    from newsletter.ledger import tags as ledger_tags

    state = ctx.find_object(State)
    assert state is not None  # the root command made it
    if as_json:
        if ctx.get_parameter_source("status") is not click.core.ParameterSource.DEFAULT:
            raise click.UsageError("--json counts every status: leave out --status")
        if segment is not None:
            raise click.UsageError("--json counts every status of the list: leave out --segment")
        click.echo(json.dumps(privacy.status_counts(open_store(state))))
        return
    if segment is not None:
        chosen = state.config.segment(segment)
        click.echo(str(ledger_tags.count(open_store(state), chosen, status)))
        return
    click.echo(str(open_store(state).count_subscribers(status)))


@subscribers.command("export")
@click.argument("email")
@click.option("--json", "as_json", is_flag=True, help="Print every record as JSON.")
@pass_state
def subscribers_export(state: State, email: str, as_json: bool) -> None:
    """Print every record the list holds about EMAIL (a request for access): the
    subscriber, each delivery, click, bounce and complaint, and whether it was erased.
    """
    from newsletter.audience import subscribers as subscriber_ops
    from newsletter.ledger import privacy

    data = privacy.export(open_store(state), email.strip())
    if as_json:
        click.echo(json.dumps(data.as_dict(), ensure_ascii=False, indent=2))
        return
    if data.erased_at is not None:
        click.echo(f"erased: {subscriber_ops.erased_reason(data.email, data.erased_at)}")
    if data.subscriber is not None:
        s = data.subscriber
        click.echo(f"subscriber: {s.email}\t{s.name}\t{s.status}\tsince {s.created_at:%Y-%m-%d}")
        for name, value in s.attributes.items():
            click.echo(f"attribute: {name}={value}")
        for tag in s.tags:
            click.echo(f"tag: {tag}")
    for d in data.deliveries:
        sent = f"\t{d.sent_at.isoformat()}" if d.sent_at else ""
        click.echo(f"delivery: campaign {d.campaign_id}\t{d.issue}\t{d.status}{sent}")
    for c in data.clicks:
        click.echo(f"click: campaign {c.campaign_id}\t{c.url}\t{c.clicked_at.isoformat()}")
    for b in data.bounces:
        said = f"\t{b.diagnostic}" if b.diagnostic else ""
        click.echo(f"{b.kind}: {b.received_at.isoformat()}\t{b.status_code or ''}{said}")


@subscribers.command("erase")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
@pass_state
def subscribers_erase(state: State, email: str, yes: bool) -> None:
    """Erase EMAIL's data at the person's request: name, attributes, clicks, the
    address in bounce reports. Deliveries stay, for the campaigns' statistics, on a
    row with no address. Only a hash of the address is kept, so that an import does
    not add it back. Asks for confirmation unless --yes; it cannot be undone.
    """
    from newsletter.ledger import privacy

    email = email.strip()
    if not yes:
        if not _stdin_is_terminal():
            raise click.UsageError(f"erasing {email} cannot be undone: confirm it with --yes")
        click.confirm(f"Erase {email}'s data for good?", abort=True, err=True)
    done = privacy.erase(open_store(state), email)
    if not done.erased_now:
        click.echo(
            f"{email}: erased already on {done.erased_at:%Y-%m-%d};"
            f" {done.bounces} bounce report(s) cleared of the address"
        )
        return
    click.echo(
        f"erased {done.email}: name, attributes, {done.clicks} click(s) and the address in"
        f" {done.bounces} bounce report(s) removed; {done.deliveries} delivery(ies) kept"
        f" as {done.placeholder}"
    )


@cli.command()
@click.argument("token_or_email")
@pass_state
def unsubscribe(state: State, token_or_email: str) -> None:
    """Apply an unsubscribe link's TOKEN (or an address): later messages stop."""
    from newsletter import tokens
    from newsletter.audience import subscribers as subscriber_ops

    config = state.config
    if "@" in token_or_email:
        email = token_or_email.strip()
    else:
        email = tokens.publication_signer(config).verify(token_or_email) or ""
        if not email:
            raise click.ClickException("the token is not valid (forged, altered or cut short)")
    subscriber_ops.remove(open_store(state), email)
    click.echo(f"unsubscribed {email}")
