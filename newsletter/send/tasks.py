"""The Celery app of the workers: `newsletter workers start` (or `celery -A newsletter.tasks
worker`) on any number of machines sends the campaigns' batches.

Each worker process reads the same newsletter.toml (`--config` or NEWSLETTER_CONFIG)
when it starts and runs batches in threads (`--concurrency`), each over [smtp]
concurrency connections. A warm shutdown (SIGTERM, Ctrl-C) halts the running
batches after the message in flight, records it and hands back the rest.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

from celery import Celery
from celery.signals import worker_shutting_down

from newsletter.config import ENV_CONFIG, Config, find_config, load
from newsletter.ledger.marked_groups import mark_ahead_risk
from newsletter.ledger.store import Store
from newsletter.send import broker, workers

log = logging.getLogger("newsletter.tasks")


class _Settings(Mapping[str, Any]):
    """Celery's settings from newsletter.toml, read when Celery first asks for them
    (so importing this module needs no configuration)."""

    def _data(self) -> dict[str, Any]:
        return broker.celery_settings(_config())

    def __getitem__(self, key: str) -> Any:
        return self._data()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data())

    def __len__(self) -> int:
        return len(self._data())


app = Celery("newsletter", set_as_current=False)
app.config_from_object(_Settings())

_stopping = threading.Event()


@worker_shutting_down.connect
def _halt_batches(**_: Any) -> None:
    _stopping.set()


@lru_cache(maxsize=1)
def _config() -> Config:
    return load(find_config())


@lru_cache(maxsize=1)
def _store(url: str) -> Store:
    # Room for every batch thread's connections (one per SMTP lane, and their renewals).
    return Store.open(url, pool_size=20, max_overflow=40)


@app.task(name=broker.SEND_BATCH, bind=True, acks_late=True, reject_on_worker_lost=True)
def send_batch(self: Any, campaign_id: int, sweep: bool = False) -> None:
    """Claim a batch of the campaign's deliveries, send it, and settle the campaign."""
    config = _config()

    def enqueue(countdown: float) -> None:
        self.app.send_task(
            broker.SEND_BATCH,
            args=[campaign_id],
            kwargs={"sweep": True},
            queue=config.workers.queue,
            countdown=countdown or None,
        )

    workers.send_batch(
        _store(config.database_url), config, campaign_id, enqueue, sweep=sweep, stop=_stopping
    )


def start_worker(config: Config, concurrency: int = 1, loglevel: str = "INFO") -> None:
    """Run a Celery worker for this publication until it is stopped (SIGTERM, Ctrl-C)."""
    broker.celery_settings(config)  # a clear error when [workers] broker is not set
    if config.database.mark_ahead > 1:
        # The bound `send` prints, in the worker's own log too: its rows are the ones
        # left in doubt if it is killed.
        log.warning("%s", mark_ahead_risk(config.database.mark_ahead))
    os.environ[ENV_CONFIG] = str(config.path)
    _config.cache_clear()
    app.worker_main(
        [
            "worker",
            "--pool=threads",
            f"--concurrency={concurrency}",
            f"--queues={config.workers.queue}",
            f"--hostname=newsletter-{os.getpid()}@%h",
            f"--loglevel={loglevel}",
            # No broadcast traffic between workers: everything they share is in the ledger.
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
        ]
    )
