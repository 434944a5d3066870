"""The long-running worker: APScheduler as a timer that runs `run_due` every second,
so a campaign scheduled or cancelled elsewhere is seen without a restart."""

from __future__ import annotations

import datetime as dt
import logging
import threading

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from newsletter.config import Config
from newsletter.errors import NewsletterError
from newsletter.ledger.store import Store
from newsletter.ledger.tables import utcnow
from newsletter.schedule.due import run_due

log = logging.getLogger("newsletter.schedule")


class Worker:
    """APScheduler as a timer: every second, run what the database says is due."""

    def __init__(self, store: Store, config: Config, poll_seconds: float = 1.0) -> None:
        self.store = store
        self.config = config
        self.stop = threading.Event()
        self._polling = threading.Lock()
        self.scheduler = BackgroundScheduler(timezone=dt.UTC)
        self.scheduler.add_job(
            self._poll,
            IntervalTrigger(seconds=poll_seconds),
            id="run-due",
            # A poll that comes while the last one still sends returns at once (the
            # lock); with max_instances=1 APScheduler would instead log a warning each
            # second of a long campaign.
            max_instances=2,
            coalesce=True,
            # The database is the schedule: a late poll is still a poll, never dropped.
            misfire_grace_time=None,
            next_run_time=utcnow(),
        )

    def _poll(self) -> None:
        if self.stop.is_set() or not self._polling.acquire(blocking=False):
            return
        try:
            run_due(self.store, self.config, stop=self.stop)
        except NewsletterError as exc:
            log.error("%s", exc)
        except Exception:  # keep the worker alive; the next poll tries again
            log.exception("run-due failed")
        finally:
            self._polling.release()

    def run(self, until: threading.Event) -> None:
        """Block until `until` is set (SIGTERM/SIGINT); finish in-flight messages, then return."""
        self.scheduler.start()
        log.info("worker started; polling for due campaigns every second")
        until.wait()
        log.info("stopping: finishing the messages in flight")
        self.stop.set()
        self.scheduler.shutdown(wait=True)
        log.info("worker stopped")
