"""Sending on Celery workers: a task claims a batch of a campaign's rows, leased to it,
sends it with the same runner as in-process, and settles the campaign."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from newsletter.config import Config
from newsletter.errors import NewsletterError
from newsletter.ledger import lifecycle
from newsletter.ledger.delivery_rows import Item, LeasedRows, release_batch, renew_leases
from newsletter.ledger.lifecycle import (
    HEARTBEAT_EVERY,
    WORKERS,
    claim_batch,
    owner_id,
    release,
    settle,
)
from newsletter.ledger.rates import DatabaseReserve
from newsletter.ledger.store import Store
from newsletter.ledger.tables import (
    INCOMPLETE,
)
from newsletter.mail import ratelimit, transport
from newsletter.send.campaign import campaign_template
from newsletter.send.marking import runner_for
from newsletter.send.runner import Runner, RunResult, RunSettings, lanes

log = logging.getLogger("newsletter.campaign")


def send_batch(
    store: Store,
    config: Config,
    campaign_id: int,
    enqueue: Callable[[float], None],
    *,
    sweep: bool = False,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> RunResult:
    """A worker's task: claim a batch of the campaign's deliveries and send it.

    Every message is marked `sending` before it goes out and recorded right after the
    reply, exactly as in-process. What the batch does not send (stopped, or retries
    used up) is released. Then the batch finishes the campaign if the ledger has
    nothing left, or makes sure a task comes back (`enqueue(countdown)`) for rows that
    are due later or held by a worker that may have died. `sweep` says this task is
    that one.
    """
    stop = stop or threading.Event()
    owner = owner_id()
    result = RunResult(campaign_id)
    claimed = claim_batch(store, config, campaign_id, owner, sweep)
    if claimed is None:
        result.status = "not ours"
        return result
    row, items, number = claimed
    if items:
        _send_claimed(store, config, row, items, number, owner, stop, clock, sleep, result)
    result.status = settle(store, config, campaign_id, enqueue)
    return result


def _send_claimed(
    store: Store,
    config: Config,
    row: Any,
    items: list[Item],
    number: int,
    owner: str,
    stop: threading.Event,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    result: RunResult,
) -> None:
    campaign_id = row.id
    # Batches take the servers in turn: [smtp], then each [smtp.<name>], round-robin.
    names = [name for name, _ in transport.servers(config)]
    server = names[number % len(names)]
    halt = threading.Event()
    runner: Runner | None = None
    close_limiters = _nothing
    try:
        limiters, close_limiters = _shared_limiters(store, config, sleep)
        template, links = campaign_template(store, config, row)
        rows = LeasedRows(store, campaign_id, owner, items, config.workers.lease)
        rows.skip_unsubscribed(in_doubt=True)  # nothing of the batch is in flight yet
        runner = runner_for(
            RunSettings(
                store,
                config,
                campaign_id,
                template,
                row.issue_slug,
                rows,
                lanes(config, limiters, only=server),
                links=links,
                stop=halt,
                clock=clock,
                sleep=sleep,
            )
        )
        done = threading.Event()
        renew = threading.Thread(
            target=_renew,
            args=(store, config, campaign_id, owner, stop, halt, done),
            daemon=True,
        )
        renew.start()
        try:
            runner.drive()
            runner.undo_faults()
        finally:
            done.set()
            renew.join()
    except NewsletterError as exc:
        # Settings no batch can send with (a password variable not set...), as in-process.
        _stop_campaign(store, campaign_id, str(exc))
        raise
    finally:
        close_limiters()
        release_batch(store, campaign_id, owner, runner.given_up() if runner else [])
    assert runner is not None  # made in the try, or it raised
    if runner.broken is not None:
        raise runner.broken  # the task fails; the rows are free again for another batch
    result.sent = runner.result.sent
    result.failed = runner.result.failed
    result.errors = runner.result.errors
    if runner.fatal is not None:
        # The server refused us (login, TLS, connection): stop the campaign, as in-process.
        result.error = str(runner.fatal)
        _stop_campaign(store, campaign_id, result.error)
    log.info(
        "campaign %s: batch %s via [%s]: %s of %s sent, %s failed",
        campaign_id,
        number + 1,
        server,
        result.sent,
        len(items),
        result.failed,
    )


def _nothing() -> None:
    pass


def _renew(
    store: Store,
    config: Config,
    campaign_id: int,
    owner: str,
    stop: threading.Event,
    halt: threading.Event,
    done: threading.Event,
) -> None:
    """Keep the batch's lease and the campaign's heartbeat fresh; halt the batch when the
    worker stops or the campaign is no longer the workers' (finished, cancelled, failed)."""
    lease = dt.timedelta(seconds=config.workers.lease)
    every = min(config.workers.lease / 3, HEARTBEAT_EVERY)
    last = time.monotonic()
    while not done.wait(0.2):
        if stop.is_set():
            halt.set()
        if time.monotonic() - last < every:
            continue
        last = time.monotonic()
        try:
            renew_leases(store, owner, lease)
            ours = lifecycle.workers_beat(store, campaign_id)
        except NewsletterError as exc:
            log.warning("campaign %s: cannot renew the batch's lease: %s", campaign_id, exc)
            continue
        if not ours:
            halt.set()


def _stop_campaign(store: Store, campaign_id: int, error: str) -> None:
    release(store, campaign_id, WORKERS, INCOMPLETE, error)


def _shared_limiters(
    store: Store, config: Config, sleep: Callable[[float], None]
) -> tuple[dict[str, ratelimit.RateLimiter | ratelimit.SharedRateLimiter], Callable[[], None]]:
    """Each server's [smtp] rate as one budget for every worker: kept in the broker's
    Redis, or (RabbitMQ) in the database."""
    limiters: dict[str, ratelimit.RateLimiter | ratelimit.SharedRateLimiter] = {}
    closers: list[Callable[[], None]] = []
    redis = config.workers.broker.startswith(("redis://", "rediss://"))
    for name, smtp in transport.servers(config):
        if smtp.rate <= 0:
            limiters[name] = ratelimit.RateLimiter(0)
            continue
        # The relay account is what the limit is about.
        key = f"newsletter:rate:{smtp.host}:{smtp.port}:{smtp.username}"
        reserve: Callable[[float], float]
        if redis:
            client = ratelimit.RedisReserve(config.workers.broker, key)
            closers.append(client.close)
            reserve = client
        else:
            reserve = DatabaseReserve(store, key)
        limiters[name] = ratelimit.SharedRateLimiter(smtp.rate, reserve, sleep=sleep)

    def close() -> None:
        for c in closers:
            c()

    return limiters, close
