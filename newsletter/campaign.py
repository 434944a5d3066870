"""Run a campaign against the ledger: claim, send, record, resume.

Exactly once, as far as SMTP allows:
- a campaign is claimed atomically by one process (owner + heartbeat); a second
  `send`/`resume` on it is refused while the owner lives;
- before a message goes out its delivery row is marked `sending` in the same
  transaction that records the previous message's reply, so each worker holds
  at most one row in doubt, and every reply is recorded before the next message
  on that connection;
- after a crash, rows still `sending` are the ones in doubt (at most one per
  connection): a resume reports them and sends them again, and sends nothing
  that is marked `sent`.
"""

from __future__ import annotations

import datetime as dt
import os
import queue
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from newsletter import mailer
from newsletter.config import Config
from newsletter.config import load as load_config
from newsletter.errors import NewsletterError
from newsletter.message import MessageTemplate
from newsletter.publish import (
    BuiltIssue,
    Personalizer,
    build_issue,
    envelope_template,
    load_issue,
    message_template,
)
from newsletter.render import html_slots, text_slots
from newsletter.store import (
    ACTIVE,
    DEFERRED,
    FAILED,
    PENDING,
    SENDING,
    SENT,
    SKIPPED,
    UNSENT,
    Store,
    campaigns,
    deliveries,
    subscribers,
    utcnow,
)

# Campaign statuses
READY = "ready"  # created, not started
SCHEDULED = "scheduled"
RUNNING = "sending"
DONE = "done"  # every delivery is sent, failed or skipped
INCOMPLETE = "incomplete"  # stopped with deliveries left (deferred, interrupted): resume it
CANCELLED = "cancelled"
MISSED = "missed"

LEASE = dt.timedelta(seconds=120)  # a heartbeat older than this means the owner is gone
HEARTBEAT_EVERY = 10.0
BATCH = 500


class CampaignBusy(NewsletterError):
    """Another live process is sending this campaign."""


@dataclass
class RunResult:
    campaign_id: int
    status: str = RUNNING
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    skipped: int = 0
    pending: int = 0
    in_doubt: int = 0  # rows found `sending` at start: a crashed run may have delivered them
    error: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.failed or self.deferred or self.pending or self.error)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- creating ---------------------------------------------------------------------------


def create(
    store: Store,
    built: BuiltIssue,
    status: str = READY,
    scheduled_at: dt.datetime | None = None,
    timezone: str | None = None,
) -> int:
    """A campaign for the issue, with one pending delivery per active subscriber (if READY)."""
    now = utcnow()
    with store.begin() as conn:
        campaign_id = conn.execute(
            campaigns.insert()
            .values(
                issue_slug=built.issue.slug,
                issue_path=str(built.issue.path),
                subject=built.issue.subject,
                sponsor_id=built.sponsor.id if built.sponsor else None,
                html_template=built.html.source,
                text_template=built.text.source,
                status=status,
                created_at=now,
                scheduled_at=scheduled_at,
                timezone=timezone,
            )
            .returning(campaigns.c.id)
        ).scalar_one()
        if status == READY:
            _add_deliveries(conn, campaign_id)
    return int(campaign_id)


def _add_deliveries(conn: sa.Connection, campaign_id: int) -> int:
    conn.execute(
        deliveries.insert().from_select(
            ["campaign_id", "subscriber_id", "status", "attempts"],
            sa.select(
                sa.literal(campaign_id), subscribers.c.id, sa.literal(PENDING), sa.literal(0)
            ).where(subscribers.c.status == ACTIVE),
        )
    )
    total = conn.execute(
        sa.select(sa.func.count())
        .select_from(deliveries)
        .where(deliveries.c.campaign_id == campaign_id)
    ).scalar_one()
    conn.execute(campaigns.update().where(campaigns.c.id == campaign_id).values(total=total))
    return int(total)


# --- claiming ---------------------------------------------------------------------------


def _owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owner_alive(owner: str | None, heartbeat: dt.datetime | None, now: dt.datetime) -> bool:
    if not owner:
        return False
    if heartbeat is None or now - heartbeat > LEASE:
        return False
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host == socket.gethostname() and pid_text.isdigit():
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True


def claim(store: Store, campaign_id: int, owner: str, allowed: Iterable[str]) -> Any:
    """Take the campaign for this process, atomically; refuse while a live owner has it."""
    now = utcnow()
    allowed = tuple(allowed)
    with store.begin() as conn:
        row = conn.execute(
            sa.select(campaigns).where(campaigns.c.id == campaign_id).with_for_update()
        ).one_or_none()
        if row is None:
            raise NewsletterError(f"campaign {campaign_id}: no such campaign")
        if row.status == RUNNING and _owner_alive(row.owner, row.heartbeat_at, now):
            host, _, rest = (row.owner or "?").partition(":")
            raise CampaignBusy(
                f"campaign {campaign_id} is being sent by process {rest.partition(':')[0]}"
                f" on {host} (since {row.started_at:%Y-%m-%d %H:%M:%S} UTC); not sending it twice"
            )
        if row.status not in (*allowed, RUNNING):
            raise NewsletterError(f"campaign {campaign_id} is {row.status}; nothing to send")
        conn.execute(
            campaigns.update()
            .where(campaigns.c.id == campaign_id)
            .values(
                status=RUNNING,
                owner=owner,
                heartbeat_at=now,
                started_at=row.started_at or now,
                last_error=None,
            )
        )
        if row.status == SCHEDULED:
            _add_deliveries(conn, campaign_id)
    return row


# --- sending ----------------------------------------------------------------------------


@dataclass
class _Item:
    delivery_id: int
    email: str
    name: str


_STOP = object()


class _Runner:
    def __init__(
        self,
        store: Store,
        config: Config,
        campaign_id: int,
        template: MessageTemplate,
        slug: str,
        progress: Callable[[RunResult], None] | None,
        stop: threading.Event,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self.store = store
        self.config = config
        self.campaign_id = campaign_id
        self.template = template
        self.slug = slug
        self.progress = progress
        self.stop = stop
        self.sleep = sleep
        self.clock = clock
        self.settings = mailer.SmtpSettings.from_config(config)
        self.rate = mailer.RateLimiter(config.smtp.rate, clock=clock, sleep=sleep)
        self.personalizer = Personalizer(config, slug)
        self.sender = template.from_address
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=config.smtp.concurrency * 64)
        self.lock = threading.Lock()
        self.result = RunResult(campaign_id)
        self.fatal: NewsletterError | None = None
        self.retry: dict[int, tuple[_Item, int, float]] = {}  # deferred this run

    # worker side --------------------------------------------------------------------------

    def work(self) -> None:
        smtp = mailer.SmtpConnection(self.settings)
        unrecorded: tuple[_Item, mailer.SendResult] | None = None
        try:
            with self.store.writer() as db:
                while True:
                    try:
                        item = self.queue.get_nowait()
                    except queue.Empty:
                        # Nothing queued: record the last reply now rather than wait.
                        unrecorded = self._commit(db, unrecorded, None)
                        item = self.queue.get()
                    if item is _STOP:
                        unrecorded = self._commit(db, unrecorded, None)
                        self.queue.task_done()
                        return
                    if self.fatal is not None or self.stop.is_set():
                        self.queue.task_done()
                        continue
                    try:
                        smtp.connect()
                    except mailer.SmtpError as exc:
                        self.fatal = self.fatal or exc
                        self.queue.task_done()
                        continue
                    values, token = self.personalizer.values(item.email, item.name)
                    data = self.template.render(item.email, item.name, values, token)
                    self.rate.acquire()
                    unrecorded = self._commit(db, unrecorded, item)
                    try:
                        unrecorded = (item, smtp.send(self.sender, item.email, data))
                    except mailer.SmtpError as exc:
                        # The server refused us, not this recipient: stop, blame nobody.
                        self.fatal = self.fatal or exc
                        with db.begin():
                            db.execute(
                                deliveries.update()
                                .where(deliveries.c.id == item.delivery_id)
                                .values(status=PENDING)
                            )
                        self.queue.task_done()
        finally:
            smtp.close()

    def _commit(
        self,
        db: sa.Connection,
        unrecorded: tuple[_Item, mailer.SendResult] | None,
        next_item: _Item | None,
    ) -> None:
        """One transaction: record the last reply and mark the next message `sending`."""
        if unrecorded is None and next_item is None:
            return None
        retry_at = 0.0
        with db.begin():
            if unrecorded is not None:
                retry_at = self._record(db, *unrecorded)
            if next_item is not None:
                db.execute(
                    deliveries.update()
                    .where(deliveries.c.id == next_item.delivery_id)
                    .values(status=SENDING)
                )
        if unrecorded is not None:
            self._account(*unrecorded, retry_at)
            self.queue.task_done()
        return None

    def _record(self, db: sa.Connection, item: _Item, res: mailer.SendResult) -> float:
        now = utcnow()
        values: dict[str, Any] = {
            "status": res.status,
            "attempts": deliveries.c.attempts + 1,
            "last_code": res.code,
            "last_error": None if res.status == mailer.SENT else res.error[:500],
        }
        retry_at = 0.0
        if res.status == mailer.SENT:
            values["sent_at"] = now
        elif res.status == mailer.DEFERRED:
            tries = self.retry.get(item.delivery_id, (item, 0, 0.0))[1] + 1
            delay = self.config.smtp.retry_delay * (2 ** (tries - 1)) * random.uniform(0.8, 1.2)
            retry_at = self.clock() + delay
            values["next_attempt_at"] = now + dt.timedelta(seconds=delay)
        db.execute(deliveries.update().where(deliveries.c.id == item.delivery_id).values(values))
        return retry_at

    def _account(self, item: _Item, res: mailer.SendResult, retry_at: float) -> None:
        with self.lock:
            r = self.result
            if res.status == mailer.SENT:
                r.sent += 1
                self.retry.pop(item.delivery_id, None)
            elif res.status == mailer.FAILED:
                r.failed += 1
                r.errors.append(f"{item.email}: {res.error}")
            else:
                tries = self.retry.get(item.delivery_id, (item, 0, 0.0))[1] + 1
                self.retry[item.delivery_id] = (item, tries, retry_at)
                r.errors.append(f"{item.email}: deferred: {res.error}")
            del r.errors[:-20]
        if self.progress:
            self.progress(self.result)

    # producer side ------------------------------------------------------------------------

    def produce(self) -> None:
        last_id = 0
        while self.fatal is None and not self.stop.is_set():
            self._skip_unsubscribed()
            batch = self._fetch(last_id)
            for item in batch:
                self._put(item)
            if len(batch) < BATCH:
                break
            last_id = batch[-1].delivery_id
        self.queue.join()
        # Temporary failures get a few more tries in this run, with backoff and jitter.
        while self.fatal is None and not self.stop.is_set():
            with self.lock:
                due = [
                    (item, at)
                    for item, tries, at in self.retry.values()
                    if tries <= self.config.smtp.retries
                ]
            if not due:
                break
            wait = min(at for _, at in due) - self.clock()
            if wait > 0:
                self.sleep(wait)
            now = self.clock()
            self._skip_unsubscribed()
            for item, at in due:
                if at <= now:
                    self._put(item)
            self.queue.join()

    def _put(self, item: _Item) -> None:
        while self.fatal is None and not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _fetch(self, last_id: int) -> list[_Item]:
        query = (
            sa.select(deliveries.c.id, subscribers.c.email, subscribers.c.name)
            .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
            .where(
                deliveries.c.campaign_id == self.campaign_id,
                deliveries.c.status.in_(UNSENT),
                deliveries.c.id > last_id,
                subscribers.c.status == ACTIVE,
            )
            .order_by(deliveries.c.id)
            .limit(BATCH)
        )
        with self.store.engine.connect() as conn:
            return [_Item(r.id, r.email, r.name) for r in conn.execute(query)]

    def _skip_unsubscribed(self) -> None:
        """An unsubscribe during the campaign stops later messages to that address."""
        gone = sa.select(subscribers.c.id).where(subscribers.c.status != ACTIVE)
        with self.store.begin() as conn:
            conn.execute(
                deliveries.update()
                .where(
                    deliveries.c.campaign_id == self.campaign_id,
                    deliveries.c.status.in_((PENDING, DEFERRED)),
                    deliveries.c.subscriber_id.in_(gone),
                )
                .values(status=SKIPPED)
            )


def counts(store: Store, campaign_id: int, conn: sa.Connection | None = None) -> dict[str, int]:
    query = (
        sa.select(deliveries.c.status, sa.func.count())
        .where(deliveries.c.campaign_id == campaign_id)
        .group_by(deliveries.c.status)
    )
    if conn is None:
        with store.engine.connect() as own:
            rows = own.execute(query).all()
    else:
        rows = conn.execute(query).all()
    out = {s: 0 for s in (PENDING, SENDING, SENT, FAILED, DEFERRED, SKIPPED)}
    out.update({status: int(n) for status, n in rows})
    return out


def run(
    store: Store,
    config: Config,
    campaign_id: int,
    *,
    allowed: Iterable[str] = (READY, INCOMPLETE, DONE),
    progress: Callable[[RunResult], None] | None = None,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> RunResult:
    """Send every delivery of the campaign that is not yet sent; return what happened."""
    owner = _owner_id()
    row = claim(store, campaign_id, owner, allowed)
    stop = stop or threading.Event()
    before = counts(store, campaign_id)
    try:
        template = envelope_template(
            config, row.subject, html_slots(row.html_template), text_slots(row.text_template)
        )
        runner = _Runner(
            store, config, campaign_id, template, row.issue_slug, progress, stop, clock, sleep
        )
    except NewsletterError as exc:
        _release(store, campaign_id, owner, INCOMPLETE, str(exc))
        raise
    runner.result.in_doubt = before[SENDING]
    runner.result.skipped = before[SKIPPED]

    done_beating = threading.Event()
    beat = threading.Thread(
        target=_heartbeat, args=(store, campaign_id, owner, done_beating), daemon=True
    )
    beat.start()
    workers = [
        threading.Thread(target=runner.work, name=f"smtp-{n}", daemon=True)
        for n in range(config.smtp.concurrency)
    ]
    for w in workers:
        w.start()
    interrupted = False
    try:
        runner.produce()
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
    finally:
        _drain(runner.queue)
        for _ in workers:
            runner.queue.put(_STOP)
        for w in workers:
            w.join()
        done_beating.set()
        beat.join()

    after = counts(store, campaign_id)
    result = runner.result
    result.skipped = after[SKIPPED]
    result.deferred = after[DEFERRED]
    result.pending = after[PENDING] + after[SENDING]
    result.failed = after[FAILED]
    if runner.fatal is not None:
        result.error = str(runner.fatal)
    unsent = after[PENDING] + after[SENDING] + after[DEFERRED]
    result.status = DONE if unsent == 0 else INCOMPLETE
    _release(store, campaign_id, owner, result.status, result.error or None)
    if interrupted:
        raise KeyboardInterrupt
    return result


def _drain(q: queue.Queue[Any]) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return
        q.task_done()


def _heartbeat(store: Store, campaign_id: int, owner: str, done: threading.Event) -> None:
    while not done.wait(HEARTBEAT_EVERY):
        with store.begin() as conn:
            conn.execute(
                campaigns.update()
                .where(campaigns.c.id == campaign_id, campaigns.c.owner == owner)
                .values(heartbeat_at=utcnow())
            )


AUTO_RESUME_AFTER = dt.timedelta(minutes=1)


def _release(store: Store, campaign_id: int, owner: str, status: str, error: str | None) -> None:
    now = utcnow()
    with store.begin() as conn:
        conn.execute(
            campaigns.update()
            .where(campaigns.c.id == campaign_id, campaigns.c.owner == owner)
            .values(
                status=status,
                owner=None,
                heartbeat_at=None,
                finished_at=now if status == DONE else None,
                resume_after=now + AUTO_RESUME_AFTER if status == INCOMPLETE else None,
                last_error=error,
            )
        )


# --- status -----------------------------------------------------------------------------


def status(store: Store, campaign_id: int | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """Counts per campaign (newest first), with the most recent errors."""
    query = sa.select(campaigns).order_by(campaigns.c.id.desc())
    if campaign_id is not None:
        query = query.where(campaigns.c.id == campaign_id)
    else:
        query = query.limit(limit)
    out = []
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
        if campaign_id is not None and not rows:
            raise NewsletterError(f"campaign {campaign_id}: no such campaign")
        for row in rows:
            c = counts(store, row.id, conn)
            errors = conn.execute(
                sa.select(subscribers.c.email, deliveries.c.status, deliveries.c.last_error)
                .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
                .where(
                    deliveries.c.campaign_id == row.id,
                    deliveries.c.last_error.is_not(None),
                    deliveries.c.status.in_((FAILED, DEFERRED)),
                )
                .order_by(deliveries.c.id.desc())
                .limit(5)
            ).all()
            out.append(
                {
                    "id": row.id,
                    "issue": row.issue_slug,
                    "subject": row.subject,
                    "status": row.status,
                    "total": row.total,
                    "sent": c[SENT],
                    "failed": c[FAILED],
                    "deferred": c[DEFERRED],
                    "pending": c[PENDING],
                    "in_doubt": c[SENDING],
                    "skipped": c[SKIPPED],
                    "created_at": _iso(row.created_at),
                    "scheduled_at": _iso(row.scheduled_at),
                    "started_at": _iso(row.started_at),
                    "finished_at": _iso(row.finished_at),
                    "last_error": row.last_error,
                    "recent_errors": [
                        {"email": e.email, "status": e.status, "error": e.last_error}
                        for e in errors
                    ],
                }
            )
    return out


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


# --- test sends and dry runs ------------------------------------------------------------


def send_test(
    config: Config, built: BuiltIssue, addresses: Iterable[str]
) -> list[tuple[str, str]]:
    """Send the issue to a few addresses with "[TEST]" in the subject; nothing is recorded."""
    template = message_template(config, built, subject_prefix="[TEST] ")
    personalizer = Personalizer(config, built.issue.slug)
    conn = mailer.SmtpConnection(mailer.SmtpSettings.from_config(config))
    results = []
    try:
        for address in addresses:
            values, token = personalizer.values(address, config.sample.name)
            res = conn.send(
                template.from_address, address, template.render(address, "", values, token)
            )
            results.append(
                (address, "sent" if res.status == mailer.SENT else f"{res.status}: {res.error}")
            )
    finally:
        conn.close()
    return results


def test_sender(config_path: Path, issue_path: Path) -> Callable[[], str] | None:
    """For the preview's "Send test" button: sends the issue as it is on disk now to
    [preview] test_recipients; None when that setting is empty (no button)."""
    if not load_config(config_path).preview.test_recipients:
        return None

    def send() -> str:
        config = load_config(config_path)
        built = build_issue(config, load_issue(issue_path))
        results = send_test(config, built, config.preview.test_recipients)
        return "; ".join(f"{address}: {outcome}" for address, outcome in results)

    return send


@dataclass
class DryRun:
    messages: int = 0
    bytes: int = 0


def dry_run(store: Store, config: Config, built: BuiltIssue) -> DryRun:
    """Render every message a campaign would send, and send nothing."""
    template = message_template(config, built)
    personalizer = Personalizer(config, built.issue.slug)
    report = DryRun()
    for sub in store.iter_subscribers(status=ACTIVE):
        values, token = personalizer.values(sub.email, sub.name)
        report.messages += 1
        report.bytes += len(template.render(sub.email, sub.name, values, token))
    return report
