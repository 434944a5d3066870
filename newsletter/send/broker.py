"""The broker side of sending on several machines: Celery's settings, and queueing batches.

With `[workers] broker` set, a campaign is sent by Celery workers (`newsletter
workers start`, see tasks.py) in batches they claim from the shared ledger. This
module only talks to the broker: it knows the task by name, so the code that
queues work (campaign.py) never imports the code that runs it.

The broker is an accelerator, not the truth. Tasks are acknowledged late and
re-queued if their worker is lost, but a task that runs twice, or never, costs no
message: each batch claims its rows in the database, and a campaign whose tasks
are all gone is queued again by whoever follows it (`send`, `resume`, `run-due`,
`worker`) once its heartbeat is older than campaign.LEASE.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from newsletter.config import Config, Workers
from newsletter.errors import ConfigError, NewsletterError

SEND_BATCH = "newsletter.send_batch"  # the task: campaign.send_batch in a worker
NO_CELERY = (
    "[workers] broker is set, but Celery is not installed here: pip install 'newsletter[workers]'"
)


def is_redis(workers: Workers) -> bool:
    return workers.broker.startswith(("redis://", "rediss://"))


def safe_url(url: str) -> str:
    """The broker URL without its password, for messages and logs."""
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))


def celery_settings(config: Config) -> dict[str, Any]:
    """Celery's configuration for this publication's workers and for whoever queues work."""
    workers = config.workers
    if not workers.broker:
        raise ConfigError(
            f"{config.path}: [workers] broker: not set, so campaigns are sent in-process;"
            ' set it to "redis://HOST:6379/0" or "amqp://USER:PASSWORD@HOST:5672//"'
        )
    transport: dict[str, Any] = {}
    if is_redis(workers):
        # Redis has no acknowledgements of its own: a task taken by a worker that died
        # is given out again after visibility_timeout, checked every 10 s by the workers.
        # A task that outlives it runs twice, which the leases make harmless.
        transport = {
            "visibility_timeout": max(600, int(workers.lease * 10)),
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
        }
    else:
        # RabbitMQ gives an unacknowledged task back as soon as its worker's connection
        # drops; confirmed publishing makes sure a queued batch reached the broker.
        transport = {"confirm_publish": True}
    return {
        "broker_url": workers.broker,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": workers.queue,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        # Acknowledged after the batch, and given back if its worker process is lost.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One batch at a time per slot: a worker never sits on batches others could send.
        "worker_prefetch_multiplier": 1,
        # A batch keeps sending when the broker goes away (the ledger is the truth); its
        # message is given out again and the second run finds the rows sent.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Progress is in the ledger (`newsletter status`), not in Celery's events.
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "worker_enable_remote_control": False,
    }


@contextmanager
def celery_app(config: Config) -> Iterator[Any]:
    """A Celery app for queueing this publication's batches; closed (its connections
    too) on leaving the block."""
    try:
        from celery import Celery
    except ImportError:
        raise NewsletterError(NO_CELERY) from None

    app = Celery("newsletter", set_as_current=False)
    app.conf.update(celery_settings(config))
    try:
        yield app
    finally:
        app.close()


def enqueue(
    config: Config, campaign_id: int, count: int = 1, countdown: float = 0.0, sweep: bool = False
) -> None:
    """Queue `count` batch tasks of the campaign for the workers."""
    with celery_app(config) as app:
        _publish(app, config, campaign_id, count, countdown, sweep)


def _publish(
    app: Any, config: Config, campaign_id: int, count: int, countdown: float, sweep: bool
) -> None:
    from kombu.exceptions import OperationalError

    try:
        with app.connection_for_write() as connection:
            for _ in range(count):
                app.send_task(
                    SEND_BATCH,
                    args=[campaign_id],
                    kwargs={"sweep": sweep},
                    queue=config.workers.queue,
                    countdown=countdown or None,
                    connection=connection,
                )
    except (OperationalError, OSError) as exc:
        raise NewsletterError(
            f"[workers] broker {safe_url(config.workers.broker)}: cannot queue campaign"
            f" {campaign_id}: {exc}"
        ) from None
