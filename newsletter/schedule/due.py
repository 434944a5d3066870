"""Running what is due: `run_due` is cron's entry point and the worker's job.

Each event (a campaign sent, late, missed, given up; an error) is one log line, and
the log is the only place it is told: the CLI prints nothing more, so a cron line
`>> run-due.log 2>&1` has each once. A run where nothing happens logs nothing.

What is due is claimed atomically in the database, so any number of runners never
send it twice; what is found later than `[schedule] max_late` is marked missed,
never sent; an interrupted or incomplete campaign is resumed.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from newsletter.config import Config
from newsletter.errors import NewsletterError
from newsletter.ledger import schedules
from newsletter.ledger.tables import INCOMPLETE, READY, RUNNING, SCHEDULED, utcnow
from newsletter.schedule.timing import describe, human, zone

if TYPE_CHECKING:
    from newsletter.ledger.store import Store

# cron runs run-due every minute and mostly nothing is due: the send engine, the issue
# build (premailer, jinja2), the campaign's transitions and the cron parser (APScheduler)
# load when something is.

log = logging.getLogger("newsletter.schedule")


@dataclass
class DueReport:
    sent: list[dict[str, Any]] = field(default_factory=list)  # campaign summaries
    missed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missed and not self.errors and all(r["ok"] for r in self.sent)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def run_due(
    store: Store,
    config: Config,
    now: dt.datetime | None = None,
    stop: threading.Event | None = None,
) -> DueReport:
    """Send what is due now; resume what was interrupted; mark what is too late as missed."""
    now = now or utcnow()
    max_late = dt.timedelta(seconds=config.schedule.max_late_seconds)
    report = DueReport()
    _tick_recurring(store, config, now, max_late, report)
    # Interrupted: a runner died mid-send (still "sending"), or a run stopped with
    # deliveries left (deferred, server down): retried when resume_after comes, less
    # often as time passes; no resume_after once run-due gave up on it.
    due, interrupted = schedules.due(store, now)

    for row in due:
        late = now - row.scheduled_at
        if late > max_late:
            note = f"found {human(late)} late, over [schedule] max_late"
            if schedules.mark_missed(store, row.id, note):
                message = (
                    f"campaign {row.id} missed: due {describe(row.scheduled_at, row.timezone)},"
                    f" found {human(late)} late (over [schedule] max_late); not sent"
                )
                log.error(message)
                report.missed.append(message)
            continue
        if late > dt.timedelta(seconds=60):
            note = f"campaign {row.id} is {human(late)} late; sending now"
            log.warning(note)
            report.notes.append(note)
        _send(store, config, row.id, (SCHEDULED,), report, stop)

    give_up = dt.timedelta(seconds=config.schedule.give_up_after_seconds)
    for stopped in interrupted:
        from newsletter.ledger import lifecycle

        if stopped.status == RUNNING and lifecycle.owner_alive(
            stopped.owner, stopped.heartbeat_at, utcnow()
        ):
            continue  # another runner has it
        since = stopped.incomplete_since
        if stopped.status == INCOMPLETE and since is not None and now - since >= give_up:
            cid = stopped.id
            message = (
                f"campaign {cid}: still incomplete {human(now - since)} after it first"
                " stopped (over [schedule] give_up_after); no more automatic retries:"
                f" `newsletter resume {cid}` tries again, `newsletter close {cid}` ends it"
            )
            if lifecycle.stop_retrying(store, stopped.id, message):  # said once, not every minute
                log.error(message)
                report.errors.append(message)
            continue
        _send(store, config, stopped.id, (INCOMPLETE,), report, stop, automatic=True)
    return report


def _send(
    store: Store,
    config: Config,
    campaign_id: int,
    allowed: tuple[str, ...],
    report: DueReport,
    stop: threading.Event | None,
    automatic: bool = False,
) -> None:
    from newsletter.ledger import lifecycle
    from newsletter.send import campaign

    try:
        # With [workers] broker set, this queues the campaign's batches and returns.
        result = campaign.run(
            store, config, campaign_id, allowed=allowed, stop=stop, wait=False, automatic=automatic
        )
    except lifecycle.CampaignBusy:
        return  # another runner claimed it first: it is being sent once
    except lifecycle.NothingToSend:
        return  # claimed and finished by another runner meanwhile
    except NewsletterError as exc:
        report.errors.append(f"campaign {campaign_id}: {exc}")
        log.error("campaign %s: %s", campaign_id, exc)
        return
    summary = {**result.as_dict(), "ok": result.ok}
    report.sent.append(summary)
    if result.queued:
        return  # campaign.run logged the batches it queued: one line for the event
    level = logging.INFO if result.ok else logging.ERROR
    log.log(
        level,
        "campaign %s: %s sent, %s deferred, %s failed, %s pending, %s in doubt [%s]%s",
        campaign_id,
        result.sent,
        result.deferred,
        result.failed,
        result.pending,
        result.in_doubt,
        result.status,
        f" error: {result.error}" if result.error else "",
    )


def _tick_recurring(
    store: Store, config: Config, now: dt.datetime, max_late: dt.timedelta, report: DueReport
) -> None:
    for rule in schedules.due_rules(store, now):
        from newsletter.issue import publish
        from newsletter.issue.content import read_issue
        from newsletter.ledger import lifecycle
        from newsletter.schedule.cron import next_tick

        following = next_tick(rule.cron, rule.timezone, now)
        if not schedules.claim_tick(store, rule, following, now):
            continue  # another runner took this tick
        tick = rule.next_run_at
        late = now - tick
        if late > max_late:
            message = (
                f"recurring r{rule.id}: the tick of {describe(tick, rule.timezone)} was missed"
                f" ({human(late)} late); next: {describe(following, rule.timezone)}"
            )
            log.error(message)
            report.missed.append(message)
            schedules.note_rule(store, rule.id, message)
            continue
        today = tick.astimezone(zone(rule.timezone)).date()
        try:
            issue_path = oldest_unsent_issue(store, config, today)
        except NewsletterError as exc:
            report.errors.append(f"recurring r{rule.id}: {exc}")
            log.error("recurring r%s: %s", rule.id, exc)
            continue
        if issue_path is None:
            note = (
                f"recurring r{rule.id}: no unsent issue dated on or before {today}; nothing sent"
            )
            # Nothing happened: no line at each tick (cron would log one every week or
            # every minute); `schedule list` shows the note.
            log.debug(note)
            report.notes.append(note)
            schedules.note_rule(store, rule.id, note)
            continue
        try:
            built = publish.build_issue(config, read_issue(issue_path))
            publish.refuse_on_check_errors(config, built, "sending")
        except NewsletterError as exc:
            report.errors.append(f"recurring r{rule.id}: {exc}")
            log.error("recurring r%s: %s", rule.id, exc)
            continue
        cid = lifecycle.create(store, built, scheduled_at=tick, timezone=rule.timezone)
        note = f"tick {tick:%Y-%m-%d %H:%M} UTC: campaign {cid} ({built.issue.slug})"
        schedules.note_rule(store, rule.id, note)
        _send(store, config, cid, (READY,), report, None)


def oldest_unsent_issue(store: Store, config: Config, today: dt.date) -> Path | None:
    """The oldest issue in issues/ dated on or before `today` that no campaign has taken."""
    from newsletter.issue.content import read_issue

    taken = schedules.taken_issues(store)
    candidates = []
    for path in sorted(config.issues_dir.glob("*.md")):
        issue = read_issue(path)
        if issue.date <= today and issue.slug not in taken:
            candidates.append((issue.date, path.name, path))
    return min(candidates)[2] if candidates else None
