"""Scheduling: schedule (create, list, cancel, move), run-due for cron, the worker."""

from __future__ import annotations

import datetime as dt
import json
import signal
import threading
from pathlib import Path
from typing import Any

import click

from newsletter.cli.root import (
    InputFile,
    State,
    cli,
    log_to_stderr,
    open_store,
    pass_state,
    repeat_choice,
    repeat_options,
)


class ScheduleGroup(click.Group):
    """`schedule ISSUE --at ...` creates; `schedule list|cancel|move` manage."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["create", *args]
        return super().parse_args(ctx, args)


def _fold_option(f: Any) -> Any:
    return click.option(
        "--fold",
        type=click.IntRange(0, 1),
        help="For a time that happens twice (clocks go back): 0 the first, 1 the second.",
    )(f)


@cli.group(cls=ScheduleGroup)
def schedule() -> None:
    """Schedule issues: `schedule ISSUE --at "2026-12-01 09:00" [--tz ZONE]`.

    Or a recurring send: `schedule --every "0 9 * * TUE"`, which at each tick
    sends the oldest unsent issue whose date has come. `newsletter worker` or a
    cron line calling `newsletter run-due` every minute does the sending.
    """


@schedule.command("create")
@click.argument("issue", type=InputFile(), required=False)
@click.option("--at", "at", help='Local time: "2026-12-01 09:00" or "2026-12-01T09:00:30".')
@click.option("--every", help='A cron expression for a recurring send: "0 9 * * TUE".')
@click.option("--tz", "tz", help="Time zone (default: [publication] timezone).")
@_fold_option
@click.option(
    "--segment",
    help="Only the subscribers in this segment at the send time: a [segments] name or an"
    ' expression ("tag:vip and not tag:churned").',
)
@repeat_options
@pass_state
def schedule_create(
    state: State,
    issue: Path | None,
    at: str | None,
    every: str | None,
    tz: str | None,
    fold: int | None,
    segment: str | None,
    again: bool,
    new_only: bool,
) -> None:
    """Schedule ISSUE --at a local time, or a recurring send --every CRON.

    An issue an earlier campaign sent (or will send) is refused unless --again
    (everyone) or --new-only (those who have not had it by the send time).
    --segment is checked now and evaluated at the send time.
    """
    from newsletter.ledger import once
    from newsletter.schedule import plans as schedule_plans
    from newsletter.schedule import timing as schedule_timing

    repeat = repeat_choice(again, new_only)
    config = state.config
    chosen = config.segment(segment) if segment is not None else None
    store = open_store(state)
    if every:
        if issue or at:
            raise click.UsageError("--every takes no ISSUE and no --at")
        if again or new_only:
            raise click.UsageError("--every sends each issue once: no --again or --new-only")
        if chosen is not None:
            raise click.UsageError("--every sends to the whole list: no --segment")
        rid, first, tz_name = schedule_plans.add_recurring(store, config, every, tz, None)
        click.echo(
            f"recurring r{rid}: every {every!r}; next: {schedule_timing.describe(first, tz_name)}"
        )
        return
    if not issue or not at:
        raise click.UsageError('give ISSUE and --at "YYYY-MM-DD HH:MM" (or --every CRON)')
    cid, when, tz_name = schedule_plans.schedule_issue(
        store, config, issue, at, tz, fold, repeat=repeat, segment=chosen
    )
    click.echo(f"campaign {cid} scheduled for {schedule_timing.describe(when, tz_name)}")
    if chosen is not None:
        click.echo(f"  to segment {chosen.describe()}, as it is at the send time")
    if repeat is once.Repeat.NEW_ONLY:
        click.echo("  to the active subscribers who have not had this issue by then")
    elif repeat is once.Repeat.AGAIN:
        click.echo("  to every active subscriber, including those who have had this issue")


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_state
def schedule_list(state: State, as_json: bool) -> None:
    """List scheduled campaigns and recurring schedules with local time, UTC and status."""
    from newsletter.schedule import plans as schedule_plans

    rows = schedule_plans.listing(open_store(state))
    if as_json:
        click.echo(json.dumps({"schedules": rows}, indent=2))
        return
    if not rows:
        click.echo("nothing scheduled")
    for r in rows:
        local = dt.datetime.fromisoformat(r["local_time"])
        utc = dt.datetime.fromisoformat(r["utc"])
        click.echo(
            f"{r['id']:>5}  {r['status']:<10} {local:%Y-%m-%d %H:%M} {r['timezone']}"
            f"  ({utc:%Y-%m-%d %H:%M} UTC)  {r['issue']}: {r['subject']}"
            + (f"  [{r['note']}]" if r["note"] else "")
            + (f"  segment: {r['segment']}" if r["segment"] else "")
        )


@schedule.command("cancel")
@click.argument("ref")
@pass_state
def schedule_cancel(state: State, ref: str) -> None:
    """Cancel scheduled campaign REF (an id) or recurring schedule REF (r1, r2, ...)."""
    from newsletter.schedule import plans as schedule_plans

    click.echo(schedule_plans.cancel(open_store(state), ref))


@schedule.command("move")
@click.argument("campaign_id", type=int)
@click.option("--at", "at", required=True, help='New local time: "2026-12-01 09:00".')
@click.option("--tz", "tz", help="Time zone (default: the campaign's).")
@_fold_option
@pass_state
def schedule_move(
    state: State, campaign_id: int, at: str, tz: str | None, fold: int | None
) -> None:
    """Move scheduled campaign CAMPAIGN_ID to another time."""
    from newsletter.schedule import plans as schedule_plans
    from newsletter.schedule import timing as schedule_timing

    when, tz_name = schedule_plans.move(open_store(state), campaign_id, at, tz, fold)
    click.echo(f"campaign {campaign_id} moved to {schedule_timing.describe(when, tz_name)}")


def _quiet_option(f: Any) -> Any:
    return click.option(
        "-q", "--quiet", is_flag=True, help="Log only errors (missed, failed, given up)."
    )(f)


@cli.command("run-due")
@click.option("--json", "as_json", is_flag=True, help="Print what happened as JSON.")
@_quiet_option
@pass_state
def run_due(state: State, as_json: bool, quiet: bool) -> None:
    """For cron, every minute: send what is due, resume what was interrupted.

    One time-stamped line per event on stderr (a campaign sent, late, missed, an
    error), nothing when nothing happened; -q logs only errors. With --json the
    report goes to stdout and stderr has only errors.

    Exit 0 when everything went out, 1 when anything failed or was missed,
    2 on usage or configuration errors. Quick when nothing is due.
    """
    if quiet or as_json:
        state.verbosity = -1
    log_to_stderr(state)
    if not as_json:
        from newsletter.schedule import quick

        # Most minutes nothing is due: a look at a SQLite ledger without SQLAlchemy.
        if quick.nothing_due(state.config.database_url, dt.datetime.now(dt.UTC)):
            return
    from newsletter.schedule import due as schedule_due

    report = schedule_due.run_due(open_store(state), state.config)
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    if not report.ok:
        raise SystemExit(1)


@cli.command()
@_quiet_option
@pass_state
def worker(state: State, quiet: bool) -> None:
    """Run scheduled campaigns as a long-lived process (APScheduler); Ctrl-C/SIGTERM stop it.

    On a stop signal the messages in flight are finished and recorded; the next
    start resumes the rest. One time-stamped line per event on stderr; -q: errors only.
    """
    from newsletter.schedule import worker as schedule_worker

    if quiet:
        state.verbosity = -1
    log_to_stderr(state)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    schedule_worker.Worker(open_store(state), state.config).run(stop)
