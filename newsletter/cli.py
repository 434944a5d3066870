"""Thin Click commands: parse, call one function of the library, report.

The only module that imports click. Library errors (NewsletterError) become one
line on stderr and their exit code: 1 for a failed operation, 2 for usage and
configuration errors.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from newsletter import __version__, tokens
from newsletter import config as config_mod
from newsletter.audience import subscribers as subscriber_ops
from newsletter.errors import NewsletterError
from newsletter.fileio import read_text, write_files
from newsletter.issue import content, publish
from newsletter.issue.check import Finding, has_errors
from newsletter.ledger import campaign_status, delivery_rows, lifecycle, once, sponsorship
from newsletter.ledger.store import Store
from newsletter.ledger.tables import DONE, INCOMPLETE, SUBSCRIBER_STATUSES
from newsletter.mail import capture as smtpd_mod
from newsletter.mail import dkim as dkim_keys
from newsletter.schedule import due as schedule_due
from newsletter.schedule import plans as schedule_plans
from newsletter.schedule import timing as schedule_timing
from newsletter.schedule import worker as schedule_worker
from newsletter.send import campaign, runner, trial


class _Failed(click.ClickException):
    """A failed operation: exit 1."""

    exit_code = 1


class _Refused(click.ClickException):
    """Usage or configuration: exit 2."""

    exit_code = 2


class Group(click.Group):
    """Turns a NewsletterError raised by any command into a one-line error."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NewsletterError as exc:
            raise (_Refused if exc.exit_code == 2 else _Failed)(str(exc)) from None


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


# --- subscribers ------------------------------------------------------------------------


def _store(state: State) -> Store:
    return Store.open(state.config.database_url)


@cli.group()
def subscribers() -> None:
    """Manage the subscriber list: import, add, remove, list, count."""


@subscribers.command("import")
@click.argument("csv_file", type=click.Path(path_type=Path))
@pass_state
def subscribers_import(state: State, csv_file: Path) -> None:
    """Import CSV_FILE (columns email, name, and extra columns kept as attributes).

    Bad rows are reported with their line number and skipped; the good rows are
    imported. Re-importing is safe; an unsubscribed address stays unsubscribed.
    """
    report = subscriber_ops.import_csv(_store(state), csv_file)
    for problem in report.rejected:
        click.echo(f"skipped: {problem}", err=True)
    click.echo(f"{report.added} added, {report.updated} updated, {len(report.rejected)} rejected")
    if report.rejected:
        raise SystemExit(1)


@subscribers.command("add")
@click.argument("email")
@click.option("--name", default="", help="The subscriber's name, used in the greeting.")
@pass_state
def subscribers_add(state: State, email: str, name: str) -> None:
    """Add EMAIL to the list (or update its name)."""
    added = subscriber_ops.add(_store(state), email, name)
    click.echo(f"added {added}" if added else f"updated {email.strip()}")


@subscribers.command("remove")
@click.argument("email")
@pass_state
def subscribers_remove(state: State, email: str) -> None:
    """Unsubscribe EMAIL (kept as unsubscribed, so a re-import does not add it back)."""
    subscriber_ops.remove(_store(state), email)
    click.echo(f"unsubscribed {email.strip()}")


@subscribers.command("list")
@click.option(
    "--status", type=click.Choice(SUBSCRIBER_STATUSES), help="Only subscribers with this status."
)
@pass_state
def subscribers_list(state: State, status: str | None) -> None:
    """List subscribers, one a line: address, name, status."""
    for row in _store(state).iter_subscribers(status=status):
        click.echo(f"{row.email}\t{row.name}\t{row.status}")


@subscribers.command("count")
@click.option(
    "--status",
    type=click.Choice(SUBSCRIBER_STATUSES),
    default="active",
    show_default=True,
    help="Count subscribers with this status.",
)
@pass_state
def subscribers_count(state: State, status: str) -> None:
    """Print the number of subscribers."""
    click.echo(str(_store(state).count_subscribers(status)))


@cli.command()
@click.argument("token_or_email")
@pass_state
def unsubscribe(state: State, token_or_email: str) -> None:
    """Apply an unsubscribe link's TOKEN (or an address): later messages stop."""
    config = state.config
    if "@" in token_or_email:
        email = token_or_email.strip()
    else:
        email = tokens.Signer(tokens.load_secret(config)).verify(token_or_email) or ""
        if not email:
            raise click.ClickException("the token is not valid (forged, altered or cut short)")
    subscriber_ops.remove(_store(state), email)
    click.echo(f"unsubscribed {email}")


# --- sending ----------------------------------------------------------------------------


def _repeat_options(f: Any) -> Any:
    """--again / --new-only: what to do with an issue an earlier campaign sent."""
    f = click.option(
        "--new-only",
        is_flag=True,
        help="Send an issue that went out before only to those who have not had it.",
    )(f)
    return click.option(
        "--again", is_flag=True, help="Send an issue that went out before to everyone again."
    )(f)


def _repeat(again: bool, new_only: bool) -> once.Repeat:
    if again and new_only:
        raise click.UsageError("--again and --new-only exclude each other: choose one")
    if again:
        return once.Repeat.AGAIN
    return once.Repeat.NEW_ONLY if new_only else once.Repeat.REFUSE


@cli.command()
@click.argument("issue", type=click.Path(path_type=Path))
@click.option("--to", "to", multiple=True, help="Send a [TEST] copy to this address (repeatable).")
@click.option("--all", "to_all", is_flag=True, help="Send a campaign to every active subscriber.")
@_repeat_options
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
@click.option("--dry-run", is_flag=True, help="Render every message, send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@pass_state
def send(
    state: State,
    issue: Path,
    to: tuple[str, ...],
    to_all: bool,
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

    Exit code 0 only when every message went out (nothing failed, deferred or left
    over), and for --new-only when nobody is left to send to (no campaign is made).
    """
    repeat = _repeat(again, new_only)
    if bool(to) == to_all:
        raise click.UsageError("say who gets it: --to ADDRESS (a test) or --all (a campaign)")
    if to and (again or new_only):
        raise click.UsageError("--again and --new-only go with --all; a --to test is not recorded")
    config = state.config
    built = publish.build_issue(config, publish.load_issue(issue))
    if to:
        _send_test(config, built, to, dry_run, as_json)
        return

    store = _store(state)
    publish.refuse_on_check_errors(config, built, "sending")
    history = once.issue_history(store, built.issue.slug)
    try:
        history.check(built.issue.path, repeat, at_once=True)
    except once.NobodyLeft as exc:
        _nobody_left(exc, as_json)
        return
    count = history.audience(repeat)
    if dry_run:
        report = trial.dry_run(store, config, built, repeat)
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
    if count == 0:
        raise click.ClickException(
            "no active subscribers: import some with `newsletter subscribers import`"
        )
    if not yes:
        click.confirm(_send_question(built, history, repeat), abort=True, err=True)
    try:
        # Checked again in the transaction that makes it: the answer may have taken a while.
        campaign_id = lifecycle.create(store, built, repeat=repeat)
    except once.NobodyLeft as exc:
        _nobody_left(exc, as_json)
        return
    _run_campaign(state, store, campaign_id, as_json)


def _send_question(
    built: publish.BuiltIssue, history: once.IssueHistory, repeat: once.Repeat
) -> str:
    if not history.earlier:
        return f"Send {built.issue.subject!r} to {history.active:,} subscriber(s)?"
    if repeat is once.Repeat.NEW_ONLY:
        return f"{history.summary()}; send to {history.newcomers:,} who have not had it?"
    return f"{history.summary()}; send it again to all {history.active:,}?"


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
    _run_campaign(state, _store(state), campaign_id, as_json)


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
    closed = lifecycle.close(_store(state), campaign_id)
    if as_json:
        click.echo(json.dumps({**dataclasses.asdict(closed), "given_up": closed.given_up}))
        return
    click.echo(
        f"campaign {campaign_id} closed: {closed.given_up} given up ({closed.deferred} deferred,"
        f" {closed.in_doubt} in doubt, {closed.pending} never tried)"
    )


def _run_campaign(state: State, store: Store, campaign_id: int, as_json: bool) -> None:
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


@cli.command()
@click.argument("campaign_id", type=int, required=False)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_state
def status(state: State, campaign_id: int | None, as_json: bool) -> None:
    """Show campaigns (or CAMPAIGN_ID): counts per status and recent errors."""
    rows = campaign_status.status(_store(state), campaign_id)
    if as_json:
        click.echo(json.dumps({"campaigns": rows}, indent=2))
        return
    if not rows:
        click.echo("no campaigns yet")
    for row in rows:
        click.echo(
            f"#{row['id']} {row['issue']} [{row['status']}]: {row['sent']}/{row['total']} sent,"
            f" {row['deferred']} deferred, {row['failed']} failed, {row['skipped']} skipped,"
            f" {row['pending']} pending, {row['in_doubt']} in doubt"
            + (f", {row['in_flight']} in flight" if row["in_flight"] else "")
            + (f", {row['given_up']} given up" if row["given_up"] else "")
        )
        if row["status"] == INCOMPLETE:
            click.echo(
                f"    retried automatically from {row['retry_at']} (run-due or worker)"
                if row["retry_at"]
                else f"    no more automatic retries: `newsletter resume {row['id']}` or"
                f" `newsletter close {row['id']}`"
            )
        if row["last_error"]:
            click.echo(f"    error: {row['last_error']}")
        for err in row["recent_errors"]:
            click.echo(f"    {err['email']}: {err['status']}: {err['error']}")


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
    controller = smtpd_mod.start(outbox, host, port)
    click.echo(f"capturing mail on {host}:{port} into {outbox}/ (Ctrl-C to stop)", err=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    controller.stop()
    click.echo(f"stopped; {controller.handler.count} message(s) captured in {outbox}/", err=True)


@cli.command()
@click.argument(
    "issue", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--outbox",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Show the .eml files captured in this folder instead of an issue.",
)
@click.option(
    "--port",
    default=8025,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free port).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; other machines can see the page unless it is local.",
)
@click.option(
    "--open/--no-open",
    "open_browser",
    default=True,
    show_default=True,
    help="Open the page in a web browser.",
)
@pass_state
def preview(
    state: State, issue: Path | None, outbox: Path | None, port: int, host: str, open_browser: bool
) -> None:
    """Serve a live preview of ISSUE: desktop and phone, plain text, headers and checks."""
    # Imported here so that the web stack loads only for this command.
    from newsletter.web import preview as previews

    if (issue is None) == (outbox is None):
        raise click.UsageError("give an ISSUE or --outbox DIR")

    def log(message: str) -> None:
        click.echo(message, err=True)

    if outbox is not None:
        shown = previews.outbox_preview(outbox, log=log)
    else:
        assert issue is not None
        config_path = state.config_path or config_mod.find_config()
        sender = trial.test_sender(config_path, issue)
        shown = previews.issue_preview(config_path, issue, send_test=sender, log=log)
    previews.serve(shown, host, port, open_browser=open_browser, announce=click.echo, log=log)


# --- scheduling -------------------------------------------------------------------------


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
@click.argument("issue", type=click.Path(path_type=Path), required=False)
@click.option("--at", "at", help='Local time: "2026-12-01 09:00" or "2026-12-01T09:00:30".')
@click.option("--every", help='A cron expression for a recurring send: "0 9 * * TUE".')
@click.option("--tz", "tz", help="Time zone (default: [publication] timezone).")
@_fold_option
@_repeat_options
@pass_state
def schedule_create(
    state: State,
    issue: Path | None,
    at: str | None,
    every: str | None,
    tz: str | None,
    fold: int | None,
    again: bool,
    new_only: bool,
) -> None:
    """Schedule ISSUE --at a local time, or a recurring send --every CRON.

    An issue an earlier campaign sent (or will send) is refused unless --again
    (everyone) or --new-only (those who have not had it by the send time).
    """
    repeat = _repeat(again, new_only)
    config = state.config
    store = _store(state)
    if every:
        if issue or at:
            raise click.UsageError("--every takes no ISSUE and no --at")
        if again or new_only:
            raise click.UsageError("--every sends each issue once: no --again or --new-only")
        rid, first, tz_name = schedule_plans.add_recurring(store, config, every, tz, None)
        click.echo(
            f"recurring r{rid}: every {every!r}; next: {schedule_timing.describe(first, tz_name)}"
        )
        return
    if not issue or not at:
        raise click.UsageError('give ISSUE and --at "YYYY-MM-DD HH:MM" (or --every CRON)')
    cid, when, tz_name = schedule_plans.schedule_issue(
        store, config, issue, at, tz, fold, repeat=repeat
    )
    click.echo(f"campaign {cid} scheduled for {schedule_timing.describe(when, tz_name)}")
    if repeat is once.Repeat.NEW_ONLY:
        click.echo("  to the active subscribers who have not had this issue by then")
    elif repeat is once.Repeat.AGAIN:
        click.echo("  to every active subscriber, including those who have had this issue")


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_state
def schedule_list(state: State, as_json: bool) -> None:
    """List scheduled campaigns and recurring schedules with local time, UTC and status."""
    rows = schedule_plans.listing(_store(state))
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
        )


@schedule.command("cancel")
@click.argument("ref")
@pass_state
def schedule_cancel(state: State, ref: str) -> None:
    """Cancel scheduled campaign REF (an id) or recurring schedule REF (r1, r2, ...)."""
    click.echo(schedule_plans.cancel(_store(state), ref))


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
    when, tz_name = schedule_plans.move(_store(state), campaign_id, at, tz, fold)
    click.echo(f"campaign {campaign_id} moved to {schedule_timing.describe(when, tz_name)}")


@cli.command("run-due")
@click.option("--json", "as_json", is_flag=True, help="Print what happened as JSON.")
@pass_state
def run_due(state: State, as_json: bool) -> None:
    """For cron, every minute: send what is due, resume what was interrupted.

    Exit 0 when everything went out, 1 when anything failed or was missed,
    2 on usage or configuration errors. Quick when nothing is due.
    """
    _log_to_stderr()
    report = schedule_due.run_due(_store(state), state.config)
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        for summary in report.sent:
            click.echo(
                f"campaign {summary['campaign_id']}: {summary['sent']} sent,"
                f" {summary['deferred']} deferred, {summary['failed']} failed,"
                f" {summary['pending']} pending [{summary['status']}]"
                + (f", {summary['queued']} queued for the workers" if summary["queued"] else "")
            )
    if not report.ok:
        raise SystemExit(1)


@cli.command()
@pass_state
def worker(state: State) -> None:
    """Run scheduled campaigns as a long-lived process (APScheduler); Ctrl-C/SIGTERM stop it.

    On a stop signal the messages in flight are finished and recorded; the next
    start resumes the rest.
    """
    _log_to_stderr()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    schedule_worker.Worker(_store(state), state.config).run(stop)


def _log_to_stderr() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


# --- DKIM -------------------------------------------------------------------------------


@cli.group()
def dkim() -> None:
    """DKIM signing keys ([dkim] in newsletter.toml signs every outgoing message)."""


@dkim.command("keygen")
@click.option("--domain", help="Signing domain (default: [dkim] domain, else the From domain).")
@click.option("--selector", help="Selector (default: [dkim] selector, else 'newsletter').")
@click.option(
    "--algorithm",
    type=click.Choice(dkim_keys.ALGORITHMS),
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


# --- setting up: init, doctor, completion -----------------------------------------------


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


@cli.command()
@click.argument(
    "directory", required=False, default=".", type=click.Path(file_okay=False, path_type=Path)
)
@click.option("--name", help="The publication's name (default: asked, or the sample's).")
@click.option(
    "--from",
    "from_addr",
    callback=_sender_option,
    help='The sender, "Name <address>" (default: asked, or the sample\'s).',
)
@click.option(
    "--postal-address",
    help="The postal address every issue shows (default: asked, or the sample's).",
)
@click.option("--force", is_flag=True, help="Overwrite starter files that are already there.")
def init(
    directory: Path,
    name: str | None,
    from_addr: str | None,
    postal_address: str | None,
    force: bool,
) -> None:
    """Create a publication in DIRECTORY (default: here): config, templates, a first issue.

    On a terminal it asks for the publication's name, sender and postal address;
    scripts pass --name, --from and --postal-address. Existing files are kept
    unless --force.
    """
    from newsletter.setup import starter

    starter.check_target(directory, force)  # before asking anything
    if _stdin_is_terminal():
        sample = starter.sample_publication()
        name = name or click.prompt("Publication name", default=sample.name)
        from_addr = from_addr or click.prompt(
            "Sender (Name <address>)", default=sample.from_addr, value_proc=_sender
        )
        postal_address = postal_address or click.prompt(
            "Postal address (every issue shows it)", default=sample.postal_address
        )
    identity = starter.Identity(name, from_addr, postal_address)
    created = starter.create(directory, identity, force)
    if identity.kept():
        click.echo(
            f"note: kept the sample's [publication] {', '.join(identity.kept())};"
            " change them in newsletter.toml (or pass --name, --from, --postal-address)",
            err=True,
        )
    if created.overwritten:
        click.echo(f"overwrote {len(created.overwritten)} existing file(s) (--force)", err=True)
    click.echo(f"Created {created.publication.name!r} in {created.folder.resolve()}:")
    click.echo(f"  {created.summary()}")
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


# --- sponsors ---------------------------------------------------------------------------


@cli.group()
def sponsors() -> None:
    """Sponsor bookings: who appears in which issue."""


@sponsors.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_state
def sponsors_list(state: State, as_json: bool) -> None:
    """Show each sponsor's booking (dates, weight) and the issues it appeared in."""
    rows = sponsorship.bookings(state.config, _store(state))
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
    """What SPONSOR_ID's placements delivered: per issue and in total (bots left out)."""
    if sum((as_json, as_csv, html_file is not None)) > 1:
        raise click.UsageError("choose one of --json, --csv and --html")
    rep = sponsorship.report(state.config, _store(state), sponsor_id)
    if as_json:
        click.echo(json.dumps(rep.as_dict(), indent=2))
    elif as_csv:
        click.echo(sponsorship.report_csv(rep), nl=False)
    elif html_file is not None:
        page = sponsorship.report_html(rep, state.config.publication.name)
        write_files({html_file: page.encode("utf-8")})
        click.echo(str(html_file))
    else:
        for i in rep.issues:
            click.echo(
                f"{i.issue}: {i.delivered:,} delivered, {i.unique_clickers:,} unique clickers,"
                f" {i.clicks:,} clicks, {i.click_rate:.2%}"
            )
        t = rep.totals
        click.echo(
            f"total ({t['issues']} issues): {t['delivered']:,} delivered,"
            f" {t['unique_clickers']:,} unique clickers, {t['clicks']:,} clicks,"
            f" {t['click_rate']:.2%}"
        )


# --- the public site: serve, archive export ---------------------------------------------


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

    written = archive_mod.export(_store(state), state.config, directory)
    issues = sum(1 for path in written if path.name == "index.html") - 1
    click.echo(f"{issues} issue(s), {len(written)} files written to {directory}")


# --- the database's schema ---------------------------------------------------------------


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
    current = Store.schema_state(state.config.database_url)
    if current.revision is None:
        click.echo("no tables yet: the first command that uses the database creates them")
    elif current.is_head:
        click.echo(f"{current.revision} (the newest)")
    else:
        name = _revision_name(current.revision, current.before_migrations)
        click.echo(f"{name}; the newest is {current.head}: run `newsletter db upgrade`")


# --- Celery workers: sending on several machines -----------------------------------------


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


def _format_finding(finding: Finding) -> str:
    where = f" [{finding.where}]" if finding.where else ""
    return f"{finding.level}: {finding.message}{where}"


def main() -> None:
    cli(prog_name="newsletter")
