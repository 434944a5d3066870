"""The runner: one thread per SMTP connection, each taking its rows, sending and
recording every reply, the same in-process and in a worker's batch."""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import itertools
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from newsletter import tokens
from newsletter.config import Config
from newsletter.errors import NewsletterError
from newsletter.issue.publish import Personalizer
from newsletter.ledger import bounces
from newsletter.ledger.delivery_rows import Item, Ledger, Rows, undo_failed
from newsletter.ledger.store import Store
from newsletter.ledger.tables import (
    FAILED,
    RUNNING,
    SENDING,
    utcnow,
)
from newsletter.mail import ratelimit, transport
from newsletter.mail.message import MessageTemplate
from newsletter.send import tracking

log = logging.getLogger("newsletter.campaign")


WAKE_EVERY = 0.2  # seconds: how soon a waiting sender, or a nap, notices a stop


# Messages that fail in a row by an exception of ours (not a server's reply) before
# the run stops: one bad row fails alone, but a broken template or a bug would fail
# every row for good, so those rows go back to pending and the run stops instead.
FAULTS_IN_A_ROW = 10


@dataclass
class RunResult:
    campaign_id: int
    status: str = RUNNING
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    skipped: int = 0
    pending: int = 0
    # Rows left `sending` at the end: the final dot went out, no reply came (or the run
    # was cut short). Never sent again in the run; `resume` sends them again.
    in_doubt: int = 0
    in_doubt_before: int = 0  # rows found `sending` at start (a crash): sent again now
    queued: int = 0  # handed to the workers, not finished when this returned
    error: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.failed or self.deferred or self.pending or self.in_doubt or self.error)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# A message made for one row, or (b"", why it could not be made).
Made = tuple[bytes, str | None]


@dataclass(frozen=True)
class Lane:
    """One SMTP connection of a runner: its server and that server's rate limiter."""

    server: str
    settings: transport.SmtpSettings
    rate: ratelimit.RateLimiter | ratelimit.SharedRateLimiter


def lanes(
    config: Config,
    limiters: dict[str, ratelimit.RateLimiter | ratelimit.SharedRateLimiter],
    only: str | None = None,
) -> list[Lane]:
    """`concurrency` connections to each configured server (or to `only`)."""
    lanes = []
    for name, smtp in transport.servers(config):
        if only is None or name == only:
            settings = transport.SmtpSettings.from_config(config, name)
            lanes += [Lane(name, settings, limiters[name])] * smtp.concurrency
    return lanes


# An enhanced status code (RFC 3463) in a server's reply: class.subject.detail.
_STATUS_CODE = re.compile(r"\b[245]\.\d{1,3}\.\d{1,3}\b")


@dataclass(frozen=True)
class RunSettings:
    """What a Runner sends and how: the campaign's message, its rows (all unsent rows,
    or a worker's leased batch), its connections, and the clock it keeps."""

    store: Store
    config: Config
    campaign_id: int
    template: MessageTemplate
    slug: str  # the issue's, for the per-recipient links
    rows: Rows
    lanes: list[Lane]
    links: tracking.LinkSlots | None = None  # when the campaign tracks clicks
    progress: Callable[[RunResult], None] | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


class Runner:
    """Sends a campaign's rows on one thread per lane, every reply recorded in the ledger.

    The senders pull their work (`_take`); there is no producer thread and no queue,
    so with one connection a single thread fetches, renders, records and sends.
    Whoever finds nothing left to take fetches the next batch of rows. After the
    first pass the deferred rows come back, with backoff and jitter, until they are
    sent or their tries run out.
    """

    def __init__(self, settings: RunSettings) -> None:
        self.store = settings.store
        self.config = settings.config
        self.campaign_id = campaign_id = settings.campaign_id
        self.template = settings.template
        self.slug = settings.slug
        self.progress = settings.progress
        self.stop = settings.stop
        self.sleep = settings.sleep
        self.clock = settings.clock
        self.rows = settings.rows
        self.lanes = settings.lanes
        self.links = settings.links
        self._lane_numbers = itertools.count()
        self.personalizer = Personalizer(
            settings.config, settings.slug, slots=settings.template.slots
        )
        self.sender = settings.template.from_address
        # With [bounces] address, each message's envelope sender names its campaign and
        # subscriber (VERP), so its bounce is matched without guessing.
        bounce_address = settings.config.bounces.address
        self.verp = (
            (bounce_address, tokens.load_secret(settings.config)) if bounce_address else None
        )
        # One lock for all the shared state below; the condition wakes senders that
        # wait for the others (the retry rounds) or for a nap to end.
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.turns = threading.Lock()  # the senders' turns at SQLite's write lock (Ledger)
        self.result = RunResult(campaign_id)
        self.fatal: NewsletterError | None = None
        self.broken: Exception | None = None  # a sender thread died (the database failed it)
        self.retry: dict[int, tuple[Item, int, float]] = {}  # deferred this run
        self.ready: collections.deque[Item] = collections.deque()  # fetched, not yet taken
        self.last_id = 0  # the first pass has fetched every row up to this delivery id
        self.fetched_all = False  # the first pass is over
        self.busy = 0  # rows taken and not yet settled (recorded, or given back)
        self.napping = False  # a sender sleeps until the next retry is due
        self.faults: list[int] = []  # rows failed in a row by a fault of ours (see _account)
        self.tripped = False  # the run stopped on those (see undo_faults)

    # taking work --------------------------------------------------------------------------

    def _take(self, idle: bool) -> Item | None:
        """The next row to send; None when there is nothing to send now.

        A sender still holding an unrecorded reply (`idle` False) gets None as soon
        as no row is at hand; it records its reply and asks again, idle. An idle
        sender waits for the retry rounds, and gets None only when the run is over:
        every row settled and no retry left, or a stop, or a fatal error.
        """
        with self.lock:
            while True:
                if self.fatal is not None or self.stop.is_set():
                    return None
                if self.ready:
                    self.busy += 1
                    return self.ready.popleft()
                if not self.fetched_all:
                    self._fetch()
                    continue
                if not idle:
                    return None
                if self.busy or self.napping:
                    # Retries go out in rounds, once every row taken is settled (a
                    # deferral adds one), and one sender at a time waits for them.
                    self.changed.wait(WAKE_EVERY)
                    continue
                due = [
                    (item, at)
                    for item, tries, at in self.retry.values()
                    if tries <= self.config.smtp.retries
                ]
                if not due:
                    self.changed.notify_all()
                    return None
                wait = min(at for _, at in due) - self.clock()
                if wait > 0:
                    self._nap(wait)
                    continue
                now = self.clock()
                self.rows.skip_unsubscribed()
                self.ready.extend(item for item, at in due if at <= now)
                self.changed.notify_all()

    def _fetch(self) -> None:
        """The next batch of the first pass (under the lock)."""
        batch = self.rows.fetch(self.last_id)
        self.ready.extend(batch)
        if len(batch) < self.rows.BATCH:
            self.fetched_all = True
            self.rows.after_pass()  # the rows not fetched because their owner left
        else:
            self.last_id = batch[-1].delivery_id

    def _nap(self, seconds: float) -> None:
        """Sleep until a retry is due (under the lock, which is let go meanwhile);
        short naps, so that a stop is noticed soon."""
        self.napping = True
        self.lock.release()
        try:
            self.sleep(min(seconds, WAKE_EVERY))
        finally:
            self.lock.acquire()
            self.napping = False
            self.changed.notify_all()

    def _settled(self) -> None:
        """A row taken is settled: its reply recorded, or given back (under the lock)."""
        self.busy -= 1
        if not self.busy:
            self.changed.notify_all()

    def _drop(self, item: Item) -> None:
        """A row taken that this sender does not send (skipped since it was fetched,
        another worker holds it, or the run stops): settled, not retried this run."""
        with self.lock:
            self.retry.pop(item.delivery_id, None)
            self._settled()

    # sending ------------------------------------------------------------------------------

    def work(self) -> None:
        """One SMTP connection: take rows and send them, recording every reply."""
        try:
            self._work()
        except Exception as exc:
            # Nothing can be recorded (the database went away): stop rather than send
            # unrecorded messages, and wake the senders that wait for this one. One
            # line for the user; the traceback only with -v (debug).
            log.error("campaign %s: a sender stopped: %s", self.campaign_id, exc)
            log.debug("campaign %s: the sender's traceback", self.campaign_id, exc_info=True)
            with self.lock:
                self.broken = self.broken or exc
                self.fatal = self.fatal or NewsletterError(
                    f"campaign {self.campaign_id}: cannot record deliveries: {exc}"
                )
                self.changed.notify_all()

    def _work(self) -> None:
        with self.lock:
            lane = self.lanes[next(self._lane_numbers) % len(self.lanes)]
        smtp = transport.SmtpConnection(lane.settings)
        unrecorded: tuple[Item, transport.SendResult] | None = None
        # The next row is taken before a message goes out: its envelope follows the
        # message in the same write, and its message is made while the server
        # answers (`prepare`). Its content goes out only once it is marked `sending`.
        following: Item | None = None
        made: Made | None = None
        ahead: tuple[Item, Made | None] | None = None
        trouble: list[Exception] = []

        def prepare() -> None:
            # Runs after a message is written, before the server's reply is read;
            # it must not raise (a fault of that message is kept in `made`).
            nonlocal made
            if following is not None:
                made = self._make(following)

        try:
            with self.store.writer() as db, self._ledger(db) as ledger:
                while True:
                    prepared: Made | None = None
                    if ahead is not None:
                        (item, prepared), ahead = ahead, None
                        if self.fatal is not None or self.stop.is_set():
                            smtp.abandon_ahead()
                            self._drop(item)
                            continue
                    else:
                        taken = self._take(idle=unrecorded is None)
                        if taken is None:
                            # Nothing to send next: record the last reply now, not later.
                            if unrecorded is None:
                                return
                            self._commit(ledger, unrecorded, None)
                            unrecorded = None
                            continue
                        item = taken
                    try:
                        smtp.connect()
                    except transport.SmtpError as exc:
                        self._stop_on(exc)
                        continue
                    data, fault = prepared or self._make(item)
                    if fault is None:
                        lane.rate.acquire()
                    marked = self._commit(ledger, unrecorded, item)
                    unrecorded = None
                    if not marked:
                        smtp.abandon_ahead()
                        self._drop(item)
                        continue
                    if fault is not None:
                        # This recipient's message cannot be made (a slot, an encoding):
                        # its row fails alone, and the run goes on. Its envelope may have
                        # gone ahead: no content follows it.
                        smtp.abandon_ahead()
                        unrecorded = (item, transport.SendResult(FAILED, None, fault, fault=True))
                        continue
                    try:
                        following, made = self._take(idle=False), None
                    except Exception as exc:  # raised once the reply is read and recorded
                        following = None
                        trouble.append(exc)
                    then = (
                        (self._envelope_sender(following), following.email)
                        if following is not None
                        else None
                    )
                    try:
                        unrecorded = (
                            item,
                            smtp.send(
                                self._envelope_sender(item), item.email, data, prepare, then
                            ),
                        )
                    except transport.SmtpError as exc:
                        # The server refused us, not this recipient: stop, blame nobody.
                        ledger.give_back(item.delivery_id)
                        self._stop_on(exc)
                    if following is not None:
                        ahead, following = (following, made), None
                    if trouble:
                        if unrecorded is not None:
                            self._commit(ledger, unrecorded, None)
                        raise trouble[0]
        finally:
            smtp.close()

    @contextlib.contextmanager
    def _ledger(self, db: Any) -> Iterator[Ledger]:
        ledger = Ledger(db, self.rows.MARK, self.turns, self.config.database.synchronous_commit)
        try:
            yield ledger
        finally:
            ledger.close()

    def _envelope_sender(self, item: Item) -> str:
        """MAIL FROM for one row: the VERP address, or the From address without one."""
        if self.verp is None:
            return self.sender
        base, secret = self.verp
        return tokens.verp_address(base, secret, self.campaign_id, item.subscriber_id)

    def _make(self, item: Item) -> Made:
        """The message for one row, or why it cannot be made (that row's fault alone)."""
        try:
            return self._message(item), None
        except Exception as exc:  # noqa: BLE001 - a slot, a token, an encoding: this row's
            return b"", f"cannot make the message: {type(exc).__name__}: {exc}"

    def _message(self, item: Item) -> bytes:
        """The message for one row: its slot values filled into the campaign's template."""
        values, token = self.personalizer.values(item.email, item.name, item.attributes)
        if self.links is not None:
            values.update(self.links.values(item.subscriber_id))
        return self.template.render(item.email, item.name, values, token)

    def _stop_on(self, exc: transport.SmtpError) -> None:
        """The server refused the session: the run stops; the row taken goes back."""
        with self.lock:
            self.fatal = self.fatal or exc
            self._settled()
            self.changed.notify_all()

    def _commit(
        self,
        ledger: Ledger,
        unrecorded: tuple[Item, transport.SendResult] | None,
        next_item: Item | None,
    ) -> bool:
        """One transaction: record the last reply and mark the next message `sending`.

        True when the next message is marked (it is still this runner's to send).
        """
        if unrecorded is None and next_item is None:
            return False
        now = utcnow()
        retry_at = 0.0
        record = None
        if unrecorded is not None:
            record, retry_at = self._record_params(ledger, now, *unrecorded)
        mark = None
        if next_item is not None:
            mark = self.rows.mark_params(ledger.time, now)
            mark["did"] = next_item.delivery_id
        marked = ledger.commit(record, mark)
        if unrecorded is not None:
            self._account(*unrecorded, retry_at)
            if unrecorded[1].stage == "rcpt" and unrecorded[1].status == transport.FAILED:
                self._bounced(*unrecorded)
        return marked

    def _bounced(self, item: Item, res: transport.SendResult) -> None:
        """A 5xx at RCPT says the address is not there: a hard bounce, suppressed at once
        (rare: one write more, and only for that row)."""
        found = _STATUS_CODE.search(res.text)
        bounces.record(
            self.store,
            bounces.Bounce(
                kind=bounces.HARD,
                email=item.email,
                source="smtp",
                event_key=f"smtp:{self.campaign_id}:{item.subscriber_id}",
                status_code=found.group(0) if found else "",
                diagnostic=res.error,
                campaign_id=self.campaign_id,
                subscriber_id=item.subscriber_id,
            ),
            self.config.bounces.soft_limit,
            self.config.bounces.soft_days,
        )

    def _record_params(
        self, ledger: Ledger, now: dt.datetime, item: Item, res: transport.SendResult
    ) -> tuple[dict[str, Any], float]:
        """The ledger's record of one reply (see Ledger.RECORD), and when to retry it."""
        params: dict[str, Any] = {
            "did": item.delivery_id,
            "new_status": res.status,
            "code": res.code,
            "error": None,
            "when_sent": None,
            "retry_at": None,
        }
        retry_at = 0.0
        if res.status == transport.SENT:
            params["when_sent"] = ledger.time(now)
        else:
            params["error"] = res.error[:500]
        if res.status == transport.IN_DOUBT:
            # The server may have it: the row stays `sending` (in doubt), never retried
            # in this run; a resume treats it as a crash's in-doubt row.
            params["new_status"] = SENDING
        if res.status == transport.DEFERRED:
            tries = self.retry.get(item.delivery_id, (item, 0, 0.0))[1] + 1
            delay = self.config.smtp.retry_delay * (2 ** (tries - 1)) * random.uniform(0.8, 1.2)
            retry_at = self.clock() + delay
            params["retry_at"] = ledger.time(now + dt.timedelta(seconds=delay))
        return params, retry_at

    def _account(self, item: Item, res: transport.SendResult, retry_at: float) -> None:
        """Count a recorded reply; the row is settled."""
        with self.lock:
            r = self.result
            if res.fault:
                self.faults.append(item.delivery_id)
                if len(self.faults) >= FAULTS_IN_A_ROW and self.fatal is None:
                    self.tripped = True
                    self.fatal = NewsletterError(
                        f"campaign {self.campaign_id}: {len(self.faults)} messages in a row"
                        f" could not be made or sent (last: {res.error}); stopping, since"
                        " that points at the issue or the tool rather than the addresses"
                    )
                    self.changed.notify_all()
            elif res.status != transport.FAILED:
                self.faults.clear()
            if res.status == transport.SENT:
                r.sent += 1
                self.retry.pop(item.delivery_id, None)
            elif res.status == transport.FAILED:
                r.failed += 1
                r.errors.append(f"{item.email}: {res.error}")
            elif res.status == transport.IN_DOUBT:
                r.in_doubt += 1
                self.retry.pop(item.delivery_id, None)
                r.errors.append(f"{item.email}: in doubt: {res.error}")
            else:
                tries = self.retry.get(item.delivery_id, (item, 0, 0.0))[1] + 1
                self.retry[item.delivery_id] = (item, tries, retry_at)
                r.errors.append(f"{item.email}: deferred: {res.error}")
            del r.errors[:-20]
            self._settled()
        if self.progress:
            self.progress(self.result)

    def undo_faults(self) -> None:
        """After a run stopped on faults in a row, those rows go back to pending: the
        fault was not theirs, and `failed` is never retried."""
        if self.tripped:
            undo_failed(self.store, self.faults)

    def given_up(self) -> list[int]:
        """Deliveries deferred more often this run than [smtp] retries allows."""
        with self.lock:
            limit = self.config.smtp.retries
            return [i for i, (_, tries, _) in self.retry.items() if tries > limit]

    def drive(self) -> bool:
        """Run one sender thread per lane until done; True if interrupted (Ctrl-C)."""
        threads = [
            threading.Thread(target=self.work, name=f"smtp-{n}", daemon=True)
            for n in range(len(self.lanes))
        ]
        for t in threads:
            t.start()
        interrupted = False
        try:
            for t in threads:
                while t.is_alive():  # a join with a timeout lets Ctrl-C through
                    t.join(WAKE_EVERY)
        except KeyboardInterrupt:
            interrupted = True
            self.stop.set()
            with self.lock:
                self.changed.notify_all()
            for t in threads:
                t.join()
        return interrupted
