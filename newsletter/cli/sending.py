"""Sending: send, resume, close, status; the local capture server; the Celery workers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from newsletter.cli.root import (
    InputFile,
    State,
    cli,
    open_store,
    pass_state,
    repeat_choice,
    repeat_options,
)

if TYPE_CHECKING:
    from newsletter import config as config_mod
    from newsletter.issue import publish
    from newsletter.ledger import campaign_status, once
    from newsletter.ledger.store import Store
    from newsletter.send import runner


@cli.command()
@click.argument("issue", type=InputFile())
@click.option("--to", "to", multiple=True, help="Send a [TEST] copy to this address (repeatable).")
@click.option("--all", "to_all", is_flag=True, help="Send a campaign to every active subscriber.")
@click.option(
    "--segment",
    help="With --all: only the subscribers in this segment, a [segments] name or an"
    ' expression ("tag:vip and not tag:churned").',
)
@repeat_options
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
@click.option("--dry-run", is_flag=True, help="Render every message, send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@pass_state
def send(
    state: State,
    issue: Path,
    to: tuple[str, ...],
    to_all: bool,
    segment: str | None,
    again: bool,
    new_only: bool,
    yes: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Send ISSUE: a test with --to ADDR, or a campaign to the whole list with --all.

    A campaign asks for confirmation unless --yes. An issue goes to each subscriber
    once: --all refuses an issue an earlier campaign sent (or will send), unless
    --new-only (only those who have not had it) or --again (everyone).

    --segment narrows the campaign to a segment of the list (README: "Tags and
    segments"); the campaign records it and its size.

    Exit code 0 only when every message went out (nothing failed, deferred or left
    over), and for --new-only when nobody is left to send to (no campaign is made).
    """
    from newsletter.issue import publish
    from newsletter.ledger import once
    from newsletter.send import trial, whole_list

    repeat = repeat_choice(again, new_only)
    if bool(to) == to_all:
        raise click.UsageError("say who gets it: --to ADDRESS (a test) or --all (a campaign)")
    if to and (again or new_only):
        raise click.UsageError("--again and --new-only go with --all; a --to test is not recorded")
    if to and segment is not None:
        raise click.UsageError(
            "--segment goes with --all; a --to test goes to the addresses named"
        )
    config = state.config
    chosen = config.segment(segment) if segment is not None else None
    built = publish.build_issue(config, publish.load_issue(issue))
    if to:
        _send_test(config, built, to, dry_run, as_json)
        return

    store = open_store(state)
    try:
        plan = whole_list.plan(store, config, built, repeat, chosen)
    except once.NobodyLeft as exc:
        _nobody_left(exc, as_json)
        return
    if dry_run:
        report = trial.dry_run(store, config, built, repeat, chosen)
        if as_json:
            click.echo(
                json.dumps({"dry_run": True, "messages": report.messages, "bytes": report.bytes})
            )
        else:
            click.echo(
                f"dry run: {report.messages} messages rendered"
                f" ({report.bytes / max(report.messages, 1) / 1024:.1f} KB each), nothing sent"
            )
        return
    plan.refuse_empty()
    if not yes:
        click.confirm(plan.question(), abort=True, err=True)
    try:
        campaign_id = whole_list.create(store, plan)
    except once.NobodyLeft as exc:
        _nobody_left(exc, as_json)
        return
    _run_campaign(state, store, campaign_id, as_json)


def _nobody_left(exc: once.NobodyLeft, as_json: bool) -> None:
    # Not a failure: a script that sends each issue to newcomers finds nothing to do.
    if as_json:
        click.echo(json.dumps({"campaign_id": None, "sent": 0, "status": "nobody left"}))
    else:
        click.echo(str(exc))


def _send_test(
    config: config_mod.Config,
    built: publish.BuiltIssue,
    to: tuple[str, ...],
    dry_run: bool,
    as_json: bool,
) -> None:
    from newsletter.audience import subscribers as subscriber_ops
    from newsletter.send import trial

    for address in to:
        try:
            subscriber_ops.normalize_email(address)
        except ValueError as exc:
            raise click.BadParameter(f"{address!r}: {exc}", param_hint="--to") from None
    if dry_run:
        rendered = trial.render_test(config, built, to)
        if as_json:
            messages = [{"to": m.to, "subject": m.subject, "bytes": m.bytes} for m in rendered]
            click.echo(json.dumps({"test": True, "dry_run": True, "messages": messages}))
        else:
            for m in rendered:
                click.echo(f"{m.to}: would get {m.subject!r} ({m.bytes / 1024:.1f} KB)")
            click.echo(f"dry run: {len(rendered)} test message(s) rendered, nothing sent")
        return
    results = trial.send_test(config, built, to)
    failed = [r for r in results if r[1] != "sent"]
    if as_json:
        click.echo(json.dumps({"test": True, "results": dict(results)}))
    else:
        for address, outcome in results:
            click.echo(f"{address}: {outcome}")
    raise SystemExit(1 if failed else 0)


@cli.command()
@click.argument("campaign_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@pass_state
def resume(state: State, campaign_id: int, as_json: bool) -> None:
    """Send what CAMPAIGN_ID has not sent yet (after a crash, a stop or deferrals)."""
    _run_campaign(state, open_store(state), campaign_id, as_json)


@cli.command()
@click.argument("campaign_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print what was given up as JSON.")
@pass_state
def close(state: State, campaign_id: int, as_json: bool) -> None:
    """End CAMPAIGN_ID, which stopped with deliveries left: they are given up.

    What is still deferred, in doubt (no reply after the final dot) or never tried
    is marked given up and counted as such; nothing resends it afterwards, neither
    `resume` nor `run-due`. A campaign that is sending now is refused.
    """
    from newsletter.ledger import lifecycle

    closed = lifecycle.close(open_store(state), campaign_id)
    if as_json:
        click.echo(json.dumps({**dataclasses.asdict(closed), "given_up": closed.given_up}))
        return
    click.echo(
        f"campaign {campaign_id} closed: {closed.given_up} given up ({closed.deferred} deferred,"
        f" {closed.in_doubt} in doubt, {closed.pending} never tried)"
    )


def _run_campaign(state: State, store: Store, campaign_id: int, as_json: bool) -> None:
    from newsletter.ledger import delivery_rows
    from newsletter.ledger.tables import DONE
    from newsletter.send import campaign

    config = state.config
    show_bar = not as_json and sys.stderr.isatty()
    total = delivery_rows.counts(store, campaign_id)
    todo = total["pending"] + total["sending"] + total["deferred"]
    bar = (
        click.progressbar(length=todo, label=f"campaign {campaign_id}", file=sys.stderr)
        if show_bar
        else None
    )
    done = [0]

    def progress(result: runner.RunResult) -> None:
        if bar is not None:
            now = result.sent + result.failed
            bar.update(now - done[0])
            done[0] = now

    try:
        result = campaign.run(store, config, campaign_id, progress=progress)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: resume with `newsletter resume {campaign_id}`", err=True)
        raise SystemExit(130) from None
    finally:
        if bar is not None:
            bar.render_finish()
    if as_json:
        click.echo(json.dumps(result.as_dict()))
    else:
        if result.in_doubt_before:
            click.echo(
                f"{result.in_doubt_before} message(s) were in doubt from an interrupted run"
                " and went out again (they may get a second copy)",
                err=True,
            )
        for line in result.errors[-5:]:
            click.echo(f"  {line}", err=True)
        click.echo(
            f"campaign {campaign_id}: {result.sent} sent, {result.deferred} deferred,"
            f" {result.failed} failed, {result.skipped} skipped, {result.pending} pending,"
            f" {result.in_doubt} in doubt [{result.status}]"
        )
        if result.error:
            click.echo(f"error: {result.error}", err=True)
        if result.in_doubt:
            click.echo(
                f"{result.in_doubt} message(s) in doubt: no reply after the final dot, so the"
                " server may have them; `resume` sends them again (they may arrive twice),"
                f" `newsletter close {campaign_id}` gives up on them",
                err=True,
            )
        if result.status != DONE:
            click.echo(f"resume with `newsletter resume {campaign_id}`", err=True)
    if not result.ok:
        raise SystemExit(1)


# Between two looks of `status --watch` (tests put a clock of their own here).
_pause = time.sleep


@cli.command()
@click.argument("campaign_id", type=int, required=False)
@click.option(
    "--json", "as_json", is_flag=True, help="Print as JSON (with --watch: one line a look)."
)
@click.option(
    "--watch",
    "every",
    type=click.FloatRange(min=0.1),
    is_flag=False,
    flag_value=2.0,
    default=None,
    metavar="[SECONDS]",
    help="Look again every SECONDS (2 if not given) until Ctrl-C, or until CAMPAIGN_ID's"
    " run ends: exit 0 when it is done, 1 when it stopped with deliveries left.",
)
@pass_state
def status(state: State, campaign_id: int | None, as_json: bool, every: float | None) -> None:
    """Show campaigns (or CAMPAIGN_ID): counts per status and recent errors."""
    from newsletter.ledger import campaign_status
    from newsletter.ledger.statuses import DONE, ENDED

    store: Store | None = None

    def look() -> list[campaign_status.CampaignStatus]:
        # Watched in a loop during a send: read without SQLAlchemy where that is certain;
        # where not, through the Store, opened once (it upgrades an older schema).
        nonlocal store
        if store is None:
            rows = campaign_status.status_at(state.config.database_url, campaign_id)
            if rows is not None:
                return rows
            store = open_store(state)
        return campaign_status.status(store, campaign_id)

    if every is None:
        _show_status(look(), as_json)
        return
    redraw = not as_json and sys.stdout.isatty()
    try:
        while True:
            rows = look()
            if as_json:
                at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
                click.echo(json.dumps({"at": at, "campaigns": [r.as_dict() for r in rows]}))
            else:
                if redraw:
                    click.clear()
                click.echo(f"{time.strftime('%H:%M:%S')}, every {every:g} s (Ctrl-C to stop)")
                _show_status(rows, as_json=False)
            if campaign_id is not None and rows[0].status in ENDED:
                raise SystemExit(0 if rows[0].status == DONE else 1)
            if not redraw and not as_json:
                click.echo()
            _pause(every)
    except KeyboardInterrupt:
        click.echo()


def _show_status(rows: list[campaign_status.CampaignStatus], as_json: bool) -> None:
    from newsletter.ledger.statuses import INCOMPLETE

    if as_json:
        click.echo(json.dumps({"campaigns": [row.as_dict() for row in rows]}, indent=2))
        return
    if not rows:
        click.echo("no campaigns yet")
    for row in rows:
        click.echo(
            f"#{row.id} {row.issue} [{row.status}]: {row.sent}/{row.total} sent,"
            f" {row.deferred} deferred, {row.failed} failed, {row.skipped} skipped,"
            f" {row.pending} pending, {row.in_doubt} in doubt"
            + (f", {row.in_flight} in flight" if row.in_flight else "")
            + (f", {row.given_up} given up" if row.given_up else "")
            + (f", {row.bounced} bounced" if row.bounced else "")
            + (f", {row.complaints} complaint(s)" if row.complaints else "")
        )
        if row.segment:
            size = (
                " (its size is counted at the send time)"
                if row.segment_size is None
                else f" ({row.segment_size:,} subscriber(s) when the deliveries were made)"
            )
            click.echo(f"    segment: {row.segment}{size}")
        if row.status == INCOMPLETE:
            click.echo(
                f"    retried automatically from {row.retry_at} (run-due or worker)"
                if row.retry_at
                else f"    no more automatic retries: `newsletter resume {row.id}` or"
                f" `newsletter close {row.id}`"
            )
        if row.last_error:
            click.echo(f"    error: {row.last_error}")
        for err in row.recent_errors:
            click.echo(f"    {err.email}: {err.status}: {err.error}")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=1025, show_default=True, help="Port to listen on.")
@click.option(
    "--dir",
    "outbox",
    default="outbox",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the captured .eml files.",
)
def smtpd(host: str, port: int, outbox: Path) -> None:
    """Run a local SMTP server that stores every message it gets as a .eml file."""
    from newsletter.mail import capture as smtpd_mod

    controller = smtpd_mod.start(outbox, host, port)
    click.echo(f"capturing mail on {host}:{port} into {outbox}/ (Ctrl-C to stop)", err=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    controller.stop()
    click.echo(f"stopped; {controller.handler.count} message(s) captured in {outbox}/", err=True)


@cli.group()
def workers() -> None:
    """Celery workers that send campaigns in batches ([workers] broker in newsletter.toml).

    With a broker set, `send --all`, `resume`, `run-due` and `worker` queue a
    campaign's batches; workers on any machine sharing the database send them.
    """


@workers.command("start")
@click.option(
    "--concurrency",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Batches this process sends at once (each over [smtp] concurrency connections).",
)
@click.option(
    "--loglevel",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="How much the worker logs on stderr.",
)
@pass_state
def workers_start(state: State, concurrency: int, loglevel: str) -> None:
    """Run a worker until SIGTERM or Ctrl-C, which finish the messages in flight.

    Start one per machine (or several); each reads this newsletter.toml, takes
    batches from the broker and records every message in the shared ledger.
    """
    try:
        from newsletter.send import tasks
    except ImportError:
        from newsletter.send.broker import NO_CELERY

        raise click.ClickException(NO_CELERY) from None
    tasks.start_worker(state.config, concurrency, loglevel.upper())
