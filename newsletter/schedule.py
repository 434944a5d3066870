"""Scheduling: the campaigns table is the schedule; APScheduler and cron are only triggers.

- `schedule_issue` stores a campaign as `scheduled` with its UTC time and zone.
- `add_recurring` stores a cron rule; each tick sends the oldest unsent issue.
- `run_due` (cron's entry point, and the worker's job) claims what is due
  atomically in the database, so any number of runners never send it twice;
  what is found later than `[schedule] max_late` is marked missed, never sent.
- `Worker` is a long-running APScheduler process that polls `run_due` every
  second: a campaign scheduled or cancelled elsewhere is seen without a restart.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import zoneinfo
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from newsletter.config import Config
from newsletter.errors import NewsletterError
from newsletter.issue import publish
from newsletter.issue.content import read_issue
from newsletter.ledger import lifecycle, once
from newsletter.ledger.store import Store
from newsletter.ledger.tables import (
    CANCELLED,
    INCOMPLETE,
    MISSED,
    READY,
    RUNNING,
    SCHEDULED,
    campaigns,
    recurring,
    utcnow,
)
from newsletter.send import campaign

log = logging.getLogger("newsletter.schedule")

Clock = Callable[[], dt.datetime]


# --- time zones and local times ---------------------------------------------------------


def zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise NewsletterError(
            f"unknown time zone {name!r} (use a name like America/Los_Angeles)"
        ) from None


def parse_local(text: str) -> dt.datetime:
    """ "2026-12-01 09:00", "2026-12-01T09:00:30" -> a naive local datetime."""
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise NewsletterError(
            f"--at {text!r}: expected a local time like '2026-12-01 09:00'"
        ) from None
    if value.tzinfo is not None:
        raise NewsletterError(f"--at {text!r}: give the local time without an offset; use --tz")
    return value


def _exists(local: dt.datetime, tz: zoneinfo.ZoneInfo) -> bool:
    aware = local.replace(tzinfo=tz)
    back = aware.astimezone(dt.UTC).astimezone(tz).replace(tzinfo=None)
    return back == local


def _ambiguous(local: dt.datetime, tz: zoneinfo.ZoneInfo) -> bool:
    a = local.replace(tzinfo=tz, fold=0).utcoffset()
    b = local.replace(tzinfo=tz, fold=1).utcoffset()
    return a != b and _exists(local, tz)


def resolve_local(local: dt.datetime, tz: zoneinfo.ZoneInfo, fold: int | None) -> dt.datetime:
    """The UTC instant of a wall-clock time in a zone, refusing times DST makes unclear."""
    if not _exists(local, tz):
        before = after = local
        for _ in range(24 * 60):
            before -= dt.timedelta(minutes=1)
            if _exists(before, tz):
                break
        for _ in range(24 * 60):
            after += dt.timedelta(minutes=1)
            if _exists(after, tz):
                break
        raise NewsletterError(
            f"{local:%Y-%m-%d %H:%M} does not exist in {tz.key} (the clocks skip it);"
            f" the nearest valid times are {before:%H:%M} and {after:%H:%M}"
        )
    if _ambiguous(local, tz):
        if fold is None:
            first = local.replace(tzinfo=tz, fold=0)
            second = local.replace(tzinfo=tz, fold=1)
            raise NewsletterError(
                f"{local:%Y-%m-%d %H:%M} happens twice in {tz.key} (the clocks go back):"
                f" --fold 0 for the first ({first:%Z}, UTC{first:%z}),"
                f" --fold 1 for the second ({second:%Z}, UTC{second:%z})"
            )
        local = local.replace(fold=fold)
    return local.replace(tzinfo=tz).astimezone(dt.UTC)


def describe(when_utc: dt.datetime, tz_name: str) -> str:
    local = when_utc.astimezone(zone(tz_name))
    return f"{local:%Y-%m-%d %H:%M:%S %Z} ({tz_name}) = {when_utc:%Y-%m-%d %H:%M:%S} UTC"


# --- cron expressions -------------------------------------------------------------------

_DOW_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]


def _cron_dow(field_text: str) -> str:
    """Day-of-week in cron's meaning (0 or 7 = Sunday) as names for APScheduler,
    whose numbers start at Monday."""

    def day(token: str) -> int:
        token = token.lower()
        if token in _DOW_NAMES:
            return _DOW_NAMES.index(token)
        if token.isdigit() and 0 <= int(token) <= 7:
            return int(token) % 7
        raise NewsletterError(f"day of week {token!r}: expected 0-7 or sun..sat")

    days: set[int] = set()
    for item in field_text.split(","):
        part, _, step_text = item.partition("/")
        step = int(step_text) if step_text.isdigit() else 1
        if step_text and not step_text.isdigit():
            raise NewsletterError(f"day of week {item!r}: bad step")
        if part == "*":
            start, end = 0, 6
        elif "-" in part:
            a, b = part.split("-", 1)
            start, end = day(a), day(b)
            if end < start:  # "1-7" or "fri-sun": up to Sunday at the end of the week
                end += 7
        else:
            start = end = day(part)
            if step_text:
                end = 6
        days.update(d % 7 for d in range(start, end + 1, step))
    # APScheduler: mon=0 .. sun=6; order the names its way for readability.
    order = [1, 2, 3, 4, 5, 6, 0]
    return ",".join(_DOW_NAMES[d] for d in order if d in days)


def cron_trigger(expression: str, tz_name: str) -> CronTrigger:
    fields = expression.split()
    if len(fields) != 5:
        raise NewsletterError(
            f"--every {expression!r}: expected 5 fields (minute hour day month weekday),"
            " for example '0 9 * * TUE'"
        )
    minute, hour, day, month, dow = fields
    try:
        return CronTrigger(
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=_cron_dow(dow),
            timezone=zone(tz_name),
        )
    except ValueError as exc:
        raise NewsletterError(f"--every {expression!r}: {exc}") from None


def next_tick(expression: str, tz_name: str, after: dt.datetime) -> dt.datetime:
    """The first tick strictly after `after`, in UTC."""
    trigger = cron_trigger(expression, tz_name)
    fire = trigger.get_next_fire_time(None, after + dt.timedelta(seconds=1))
    if fire is None:  # pragma: no cover - a 5-field cron expression always fires again
        raise NewsletterError(f"--every {expression!r} never fires")
    return fire.astimezone(dt.UTC)


# --- creating and changing schedules ----------------------------------------------------


def schedule_issue(
    store: Store,
    config: Config,
    issue_path: Path,
    at: str,
    tz_name: str | None = None,
    fold: int | None = None,
    now: dt.datetime | None = None,
    repeat: once.Repeat = once.Repeat.REFUSE,
) -> tuple[int, dt.datetime, str]:
    """Store a scheduled campaign; returns (id, UTC time, zone name).

    An issue an earlier campaign sent (or will send) is refused unless `repeat` says
    AGAIN or NEW_ONLY; NEW_ONLY picks its audience when the campaign is claimed.
    """
    tz_name = tz_name or config.publication.timezone
    when = resolve_local(parse_local(at), zone(tz_name), fold)
    now = now or utcnow()
    if when <= now:
        raise NewsletterError(f"{describe(when, tz_name)} is in the past (now: {now:%H:%M} UTC)")
    built = publish.build_issue(config, read_issue(issue_path))
    _refuse_check_errors(config, built)
    cid = lifecycle.create(
        store,
        built,
        status=SCHEDULED,
        scheduled_at=when,
        timezone=tz_name,
        repeat=repeat,
    )
    return cid, when, tz_name


def _refuse_check_errors(config: Config, built: publish.BuiltIssue) -> None:
    findings = publish.check_built(config, built, publish.sample(config, built))
    errors = [f for f in findings if f.level == "error"]
    if errors:
        raise NewsletterError(
            f"{built.issue.path}: check found {len(errors)} error(s) (first: {errors[0].message});"
            " fix them before scheduling"
        )


def move(
    store: Store,
    campaign_id: int,
    at: str,
    tz_name: str | None = None,
    fold: int | None = None,
    now: dt.datetime | None = None,
) -> tuple[dt.datetime, str]:
    with store.begin() as conn:
        row = _scheduled_row(conn, campaign_id)
        tz_name = tz_name or row.timezone or "UTC"
        when = resolve_local(parse_local(at), zone(tz_name), fold)
        if when <= (now or utcnow()):
            raise NewsletterError(f"{describe(when, tz_name)} is in the past")
        conn.execute(
            campaigns.update()
            .where(campaigns.c.id == campaign_id, campaigns.c.status == SCHEDULED)
            .values(scheduled_at=when, timezone=tz_name)
        )
    return when, tz_name


def cancel(store: Store, ref: str) -> str:
    """Cancel a scheduled campaign (ID) or a recurring rule (rID)."""
    with store.begin() as conn:
        if ref.lower().startswith("r") and ref[1:].isdigit():
            done = conn.execute(
                recurring.update()
                .where(recurring.c.id == int(ref[1:]), recurring.c.status == "active")
                .values(status="cancelled")
            ).rowcount
            if not done:
                raise NewsletterError(f"recurring schedule {ref}: no such active schedule")
            return f"recurring schedule {ref} cancelled"
        if not ref.isdigit():
            raise NewsletterError(f"{ref!r}: expected a campaign id (12) or a recurring id (r3)")
        _scheduled_row(conn, int(ref))
        conn.execute(
            campaigns.update()
            .where(campaigns.c.id == int(ref), campaigns.c.status == SCHEDULED)
            .values(status=CANCELLED)
        )
    return f"campaign {ref} cancelled"


def _scheduled_row(conn: sa.Connection, campaign_id: int) -> Any:
    row = conn.execute(
        sa.select(campaigns).where(campaigns.c.id == campaign_id).with_for_update()
    ).one_or_none()
    if row is None:
        raise NewsletterError(f"campaign {campaign_id}: no such campaign")
    if row.status != SCHEDULED:
        raise NewsletterError(f"campaign {campaign_id} is {row.status}, not scheduled")
    return row


def add_recurring(
    store: Store, config: Config, expression: str, tz_name: str | None, now: dt.datetime | None
) -> tuple[int, dt.datetime, str]:
    tz_name = tz_name or config.publication.timezone
    first = next_tick(expression, tz_name, now or utcnow())
    with store.begin() as conn:
        rid = conn.execute(
            recurring.insert()
            .values(
                cron=expression,
                timezone=tz_name,
                status="active",
                created_at=utcnow(),
                next_run_at=first,
            )
            .returning(recurring.c.id)
        ).scalar_one()
    return int(rid), first, tz_name


def listing(store: Store) -> list[dict[str, Any]]:
    """Scheduled (and recently scheduled) campaigns, then recurring rules."""
    out: list[dict[str, Any]] = []
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(campaigns)
            .where(campaigns.c.scheduled_at.is_not(None))
            .order_by(campaigns.c.scheduled_at)
        ).all()
        for row in rows:
            tz_name = row.timezone or "UTC"
            out.append(
                {
                    "id": str(row.id),
                    "kind": "once",
                    "issue": row.issue_slug,
                    "subject": row.subject,
                    "local_time": row.scheduled_at.astimezone(zone(tz_name)).isoformat(),
                    "timezone": tz_name,
                    "utc": row.scheduled_at.isoformat(),
                    "status": row.status,
                    "note": row.last_error or "",
                }
            )
        for rule in conn.execute(sa.select(recurring).order_by(recurring.c.id)).all():
            out.append(
                {
                    "id": f"r{rule.id}",
                    "kind": "recurring",
                    "issue": "(oldest unsent issue)",
                    "subject": f"every {rule.cron}",
                    "local_time": rule.next_run_at.astimezone(zone(rule.timezone)).isoformat(),
                    "timezone": rule.timezone,
                    "utc": rule.next_run_at.isoformat(),
                    "status": rule.status,
                    "note": rule.last_note or "",
                }
            )
    return out


# --- running what is due ----------------------------------------------------------------


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

    with store.engine.connect() as conn:
        due = conn.execute(
            sa.select(campaigns.c.id, campaigns.c.scheduled_at, campaigns.c.timezone)
            .where(campaigns.c.status == SCHEDULED, campaigns.c.scheduled_at <= now)
            .order_by(campaigns.c.scheduled_at)
        ).all()
        # Interrupted: a runner died mid-send (still "sending"), or a run stopped with
        # deliveries left (deferred, server down): retried when resume_after comes, less
        # often as time passes; no resume_after once run-due gave up on it.
        interrupted = conn.execute(
            sa.select(
                campaigns.c.id,
                campaigns.c.status,
                campaigns.c.owner,
                campaigns.c.heartbeat_at,
                campaigns.c.incomplete_since,
            )
            .where(
                (campaigns.c.status == RUNNING)
                | ((campaigns.c.status == INCOMPLETE) & (campaigns.c.resume_after <= now))
            )
            .order_by(campaigns.c.id)
        ).all()

    for row in due:
        late = now - row.scheduled_at
        if late > max_late:
            if _mark_missed(store, row.id, late):
                message = (
                    f"campaign {row.id} missed: due {describe(row.scheduled_at, row.timezone)},"
                    f" found {_human(late)} late (over [schedule] max_late); not sent"
                )
                log.error(message)
                report.missed.append(message)
            continue
        if late > dt.timedelta(seconds=60):
            note = f"campaign {row.id} is {_human(late)} late; sending now"
            log.warning(note)
            report.notes.append(note)
        _send(store, config, row.id, (SCHEDULED,), report, stop)

    give_up = dt.timedelta(seconds=config.schedule.give_up_after_seconds)
    for stopped in interrupted:
        if stopped.status == RUNNING and lifecycle.owner_alive(
            stopped.owner, stopped.heartbeat_at, utcnow()
        ):
            continue  # another runner has it
        since = stopped.incomplete_since
        if stopped.status == INCOMPLETE and since is not None and now - since >= give_up:
            cid = stopped.id
            message = (
                f"campaign {cid}: still incomplete {_human(now - since)} after it first"
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
        log.info("campaign %s: %s message(s) queued for the workers", campaign_id, result.queued)
        return
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


def _mark_missed(store: Store, campaign_id: int, late: dt.timedelta) -> bool:
    with store.begin() as conn:
        return bool(
            conn.execute(
                campaigns.update()
                .where(campaigns.c.id == campaign_id, campaigns.c.status == SCHEDULED)
                .values(
                    status=MISSED,
                    last_error=f"found {_human(late)} late, over [schedule] max_late",
                )
            ).rowcount
        )


def _tick_recurring(
    store: Store, config: Config, now: dt.datetime, max_late: dt.timedelta, report: DueReport
) -> None:
    with store.engine.connect() as conn:
        rules = conn.execute(
            sa.select(recurring).where(
                recurring.c.status == "active", recurring.c.next_run_at <= now
            )
        ).all()
    for rule in rules:
        following = next_tick(rule.cron, rule.timezone, now)
        # Claim this tick: only the runner that moves next_run_at on sends for it.
        with store.begin() as conn:
            claimed = conn.execute(
                recurring.update()
                .where(recurring.c.id == rule.id, recurring.c.next_run_at == rule.next_run_at)
                .values(next_run_at=following, last_run_at=now)
            ).rowcount
        if not claimed:
            continue
        tick = rule.next_run_at
        late = now - tick
        if late > max_late:
            message = (
                f"recurring r{rule.id}: the tick of {describe(tick, rule.timezone)} was missed"
                f" ({_human(late)} late); next: {describe(following, rule.timezone)}"
            )
            log.error(message)
            report.missed.append(message)
            _note(store, rule.id, message)
            continue
        today = tick.astimezone(zone(rule.timezone)).date()
        try:
            issue_path = oldest_unsent_issue(store, config, today)
        except NewsletterError as exc:
            report.errors.append(f"recurring r{rule.id}: {exc}")
            continue
        if issue_path is None:
            note = (
                f"recurring r{rule.id}: no unsent issue dated on or before {today}; nothing sent"
            )
            log.info(note)
            report.notes.append(note)
            _note(store, rule.id, note)
            continue
        try:
            built = publish.build_issue(config, read_issue(issue_path))
            _refuse_check_errors(config, built)
        except NewsletterError as exc:
            report.errors.append(f"recurring r{rule.id}: {exc}")
            log.error("recurring r%s: %s", rule.id, exc)
            continue
        cid = lifecycle.create(store, built, scheduled_at=tick, timezone=rule.timezone)
        _note(
            store, rule.id, f"tick {tick:%Y-%m-%d %H:%M} UTC: campaign {cid} ({built.issue.slug})"
        )
        _send(store, config, cid, (READY,), report, None)


def _note(store: Store, rule_id: int, note: str) -> None:
    with store.begin() as conn:
        conn.execute(recurring.update().where(recurring.c.id == rule_id).values(last_note=note))


def oldest_unsent_issue(store: Store, config: Config, today: dt.date) -> Path | None:
    """The oldest issue in issues/ dated on or before `today` that no campaign has taken."""
    with store.engine.connect() as conn:
        taken = {
            slug
            for (slug,) in conn.execute(
                sa.select(campaigns.c.issue_slug).where(
                    campaigns.c.status.not_in((CANCELLED, MISSED))
                )
            )
        }
    candidates = []
    for path in sorted(config.issues_dir.glob("*.md")):
        issue = read_issue(path)
        if issue.date <= today and issue.slug not in taken:
            candidates.append((issue.date, path.name, path))
    return min(candidates)[2] if candidates else None


def _human(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


# --- the long-running worker ------------------------------------------------------------


class Worker:
    """APScheduler as a timer: every second, run what the database says is due."""

    def __init__(self, store: Store, config: Config, poll_seconds: float = 1.0) -> None:
        self.store = store
        self.config = config
        self.stop = threading.Event()
        self.scheduler = BackgroundScheduler(timezone=dt.UTC)
        self.scheduler.add_job(
            self._poll,
            IntervalTrigger(seconds=poll_seconds),
            id="run-due",
            max_instances=1,
            coalesce=True,
            # The database is the schedule: a late poll is still a poll, never dropped.
            misfire_grace_time=None,
            next_run_time=utcnow(),
        )

    def _poll(self) -> None:
        if self.stop.is_set():
            return
        try:
            run_due(self.store, self.config, stop=self.stop)
        except NewsletterError as exc:
            log.error("%s", exc)
        except Exception:  # keep the worker alive; the next poll tries again
            log.exception("run-due failed")

    def run(self, until: threading.Event) -> None:
        """Block until `until` is set (SIGTERM/SIGINT); finish in-flight messages, then return."""
        self.scheduler.start()
        log.info("worker started; polling for due campaigns every second")
        until.wait()
        log.info("stopping: finishing the messages in flight")
        self.stop.set()
        self.scheduler.shutdown(wait=True)
        log.info("worker stopped")
