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

With `[workers] broker` set, the same per-message code runs in Celery workers on
any number of machines (`send_batch`): the campaign belongs to "the workers", and
each task claims a batch of rows with row locks that skip rows others hold, leased
to it for `[workers] lease` seconds and renewed while it sends. A worker that dies
stops renewing; its rows go to the next batch once the lease runs out, so nobody is
lost and only the rows it had in flight (one per connection) can get a second copy.
The task that finds nothing left to send marks the campaign finished.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from newsletter import tokens
from newsletter.config import Config
from newsletter.errors import NewsletterError
from newsletter.issue.publish import envelope_template, subject_slots
from newsletter.issue.render import html_slots, text_slots
from newsletter.ledger import lifecycle
from newsletter.ledger.delivery_rows import ASYNC_RISK, Rows, counts
from newsletter.ledger.lifecycle import (
    CampaignBusy,
    claim,
    heartbeat,
    owner_id,
    release,
)
from newsletter.ledger.marked_groups import mark_ahead_risk
from newsletter.ledger.statuses import LEASE, WORKERS, owner_alive
from newsletter.ledger.store import Store
from newsletter.ledger.tables import (
    DEFERRED,
    DONE,
    FAILED,
    INCOMPLETE,
    PENDING,
    READY,
    RUNNING,
    SENDING,
    SENT,
    SKIPPED,
    utcnow,
)
from newsletter.mail import ratelimit, transport
from newsletter.mail.message import MessageTemplate
from newsletter.send import broker, tracking
from newsletter.send.marking import runner_for
from newsletter.send.runner import RunResult, RunSettings, lanes

log = logging.getLogger("newsletter.campaign")


FOLLOW_EVERY = 0.5  # seconds between looks at the ledger while the workers send
# Between two such looks (counts per status, a scan of the campaign's rows) the end is
# looked for more often, by the campaign's row alone: a send of 8,000 messages in ~5 s
# ended on average 0.25 s after the last batch, 5% of its time.
FOLLOW_END_EVERY = 0.1
# The counts: on PostgreSQL kept by triggers (delivery_counts, a few rows), on SQLite a
# COUNT that reads every row of the campaign. Either way they are read again after at
# least COUNTS_SHARE times the last read's time, so that following a list of a million
# costs the database a bounded share.
COUNTS_SHARE = 20


def campaign_template(
    store: Store, config: Config, row: Any
) -> tuple[MessageTemplate, tracking.LinkSlots | None]:
    """The message template of a campaign's snapshot, its tracked links made into
    per-recipient slots (`[tracking] clicks`; the links are saved for the redirects)."""
    html, text = row.html_template, row.text_template
    links = None
    if tracking.tracking_on(config):
        tracked = tracking.rewrite(html, text, config.tracking.clicks)
        if tracked.links:
            tracking.save_links(store, row.id, tracked.links)
            html, text = tracked.html, tracked.text
            signer = tracking.ClickSigner(tokens.load_secret(config))
            links = tracking.LinkSlots(config, signer, row.id, len(tracked.links))
    # Gmail's feedback loop (Feedback-ID: a:b:c:sender): complaints per campaign and issue.
    sender_id = config.publication.list_id or config.publication.from_addr.rpartition("@")[2]
    feedback_id = f"{row.id}:{row.issue_slug}:newsletter:{sender_id.strip('<> ')}"
    # The campaign keeps the subject as the issue writes it; its merge fields are slots.
    subject, _ = subject_slots(row.subject, f"campaign {row.id}: subject")
    template = envelope_template(
        config, subject, html_slots(html), text_slots(text), feedback_id=feedback_id
    )
    return template, links


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
    wait: bool = True,
    automatic: bool = False,
) -> RunResult:
    """Send every delivery of the campaign that is not yet sent; return what happened.

    With `[workers] broker` set, the campaign is handed to the Celery workers instead;
    then `wait` follows the ledger until it is finished (reporting progress as the
    workers send), and `wait=False` returns as soon as the batches are queued.
    `automatic`: run-due's retry of an incomplete campaign, not a person's resume.
    """
    stop = stop or threading.Event()
    if not config.database.synchronous_commit and not store.is_sqlite:
        log.warning("%s", ASYNC_RISK)
    if config.database.mark_ahead > 1:
        log.warning("%s", mark_ahead_risk(config.database.mark_ahead))
    if config.workers.broker:
        return _run_on_workers(
            store, config, campaign_id, allowed, progress, stop, sleep, wait, automatic
        )
    owner = owner_id()
    row = claim(store, campaign_id, owner, allowed, automatic)
    rows = Rows(store, campaign_id)
    rows.skip_unsubscribed(in_doubt=True)  # nothing is in flight yet
    before = counts(store, campaign_id)
    try:
        template, links = campaign_template(store, config, row)
        limiters: dict[str, ratelimit.RateLimiter | ratelimit.SharedRateLimiter] = {
            name: ratelimit.RateLimiter(smtp.rate, clock=clock, sleep=sleep)
            for name, smtp in transport.servers(config)
        }
        runner = runner_for(
            RunSettings(
                store,
                config,
                campaign_id,
                template,
                row.issue_slug,
                rows,
                lanes(config, limiters),
                links=links,
                progress=progress,
                stop=stop,
                clock=clock,
                sleep=sleep,
            )
        )
    except NewsletterError as exc:
        release(store, campaign_id, owner, INCOMPLETE, str(exc))
        raise
    runner.result.in_doubt_before = before[SENDING]

    done_beating = threading.Event()
    beat = threading.Thread(
        target=heartbeat, args=(store, campaign_id, owner, done_beating), daemon=True
    )
    beat.start()
    try:
        interrupted = runner.drive()
        runner.undo_faults()
    finally:
        done_beating.set()
        beat.join()

    after = counts(store, campaign_id)
    result = runner.result
    result.skipped = after[SKIPPED]
    result.deferred = after[DEFERRED]
    result.pending = after[PENDING]
    result.in_doubt = after[SENDING]
    result.failed = after[FAILED]
    if runner.fatal is not None:
        result.error = str(runner.fatal)
    unsent = after[PENDING] + after[SENDING] + after[DEFERRED]
    result.status = DONE if unsent == 0 else INCOMPLETE
    try:
        release(store, campaign_id, owner, result.status, result.error or None)
    except NewsletterError as exc:
        raise NewsletterError(
            f"campaign {campaign_id} stopped ({result.sent} sent): {exc};"
            f" `newsletter resume {campaign_id}` sends the rest once it is free"
        ) from None
    if interrupted:
        raise KeyboardInterrupt
    return result


def _run_on_workers(
    store: Store,
    config: Config,
    campaign_id: int,
    allowed: Iterable[str],
    progress: Callable[[RunResult], None] | None,
    stop: threading.Event,
    sleep: Callable[[float], None],
    wait: bool,
    automatic: bool,
) -> RunResult:
    result = RunResult(campaign_id)
    result.in_doubt_before = _dispatch(store, config, campaign_id, tuple(allowed), automatic)
    base = counts(store, campaign_id)
    if not wait:
        result.failed = base[FAILED]
        result.skipped = base[SKIPPED]
        result.queued = base[PENDING] + base[SENDING] + base[DEFERRED]
        return result
    while True:
        began = time.perf_counter()
        row, now = lifecycle.with_counts(store, campaign_id)
        pause = max(FOLLOW_EVERY, COUNTS_SHARE * (time.perf_counter() - began))
        result.sent = now[SENT] - base[SENT]
        result.failed = now[FAILED] - base[FAILED]
        if progress:
            progress(result)
        if row.status != RUNNING or row.owner != WORKERS or stop.is_set():
            break
        if not owner_alive(row.owner, row.heartbeat_at, utcnow()):
            # No batch has renewed the campaign for a while: its tasks are gone (the
            # broker lost them, or every worker died). Hand it out again.
            log.warning(
                "campaign %s: no worker has sent a batch for %s s; queueing it again"
                " (is `newsletter workers start` running?)",
                campaign_id,
                int(LEASE.total_seconds()),
            )
            try:
                _dispatch(store, config, campaign_id, tuple(allowed), automatic=True)
            except CampaignBusy:
                pass  # run-due or another follower got there first
        for _ in range(round(pause / FOLLOW_END_EVERY)):
            sleep(FOLLOW_END_EVERY)
            if stop.is_set() or not lifecycle.workers_have(store, campaign_id):
                break
    result.status = row.status
    result.failed = now[FAILED]
    result.skipped = now[SKIPPED]
    result.error = row.last_error or ""
    if row.status == RUNNING:  # stopped following: the workers go on
        result.queued = now[PENDING] + now[SENDING] + now[DEFERRED]
    else:
        result.deferred = now[DEFERRED]
        result.pending = now[PENDING]
        result.in_doubt = now[SENDING]
    return result


def _dispatch(
    store: Store,
    config: Config,
    campaign_id: int,
    allowed: tuple[str, ...],
    automatic: bool = False,
) -> int:
    """Give the campaign to the workers and queue a task per batch; the rows in doubt.

    A campaign the workers already have (heartbeat fresh) is left to them."""
    if lifecycle.workers_have(store, campaign_id):
        return 0
    claim(store, campaign_id, WORKERS, allowed, automatic)
    try:
        in_doubt, claimable = lifecycle.new_round(store, campaign_id)
        # At least one task: it finishes a campaign with nothing left, or waits for rows
        # a worker still holds.
        tasks = max(1, math.ceil(claimable / config.workers.batch_size))
        broker.enqueue(config, campaign_id, tasks)
    except NewsletterError as exc:
        release(store, campaign_id, WORKERS, INCOMPLETE, str(exc))
        raise
    log.info(
        "campaign %s: %s deliveries in %s batch(es) queued for the workers",
        campaign_id,
        claimable,
        tasks,
    )
    return int(in_doubt)
