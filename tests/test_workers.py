"""Sending on several machines: real Celery worker processes, a real broker (Redis and
RabbitMQ), the ledger in the local PostgreSQL, and the aiosmtpd fixture as the relay.

Each test gets its own broker queue, removed afterwards with what the broker kept for
it, and fresh tables. The tests that need the brokers or PostgreSQL carry the `celery` and
`postgres` markers (tests/services.py): without CI a missing service skips them; with CI set
it fails them, since `.ci/run` starts the services.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
import sqlalchemy as sa
from campaign_support import Publication, add_subscribers, make_publication
from click.testing import CliRunner
from services import REDIS, postgres_url
from smtp_fixtures import SmtpServer, running_smtp_server

from newsletter import config
from newsletter.cli import cli
from newsletter.errors import ConfigError
from newsletter.issue import publish
from newsletter.ledger import campaign_status, delivery_rows, lifecycle, rates
from newsletter.ledger.store import Store
from newsletter.ledger.tables import (
    INCOMPLETE,
    RUNNING,
    SENT,
    UNSENT,
    deliveries,
    metadata,
    utcnow,
)
from newsletter.mail import ratelimit, transport
from newsletter.schedule import plans
from newsletter.schedule.due import run_due
from newsletter.send import campaign

REDIS_DB = 13  # the tests' Redis database; each test removes only its own keys
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


# --- fixtures: database, broker, workers --------------------------------------------------


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The local PostgreSQL with empty newsletter tables (the ledger all workers share)."""
    url = postgres_url()
    engine = sa.create_engine(url)

    def drop() -> None:
        with engine.begin() as conn:
            metadata.drop_all(conn)
            conn.execute(sa.text("DROP TABLE IF EXISTS newsletter_meta"))
            conn.execute(sa.text("DROP TABLE IF EXISTS newsletter_alembic_version"))

    try:
        drop()
    except sa.exc.OperationalError as exc:
        engine.dispose()
        pytest.fail(f"PostgreSQL at {url} is not reachable: {exc.orig}")
    try:
        yield url
    finally:
        drop()
        engine.dispose()


@dataclass
class Broker:
    kind: str
    url: str
    queue: str
    keys: list[str] = field(default_factory=list)  # more Redis keys to remove afterwards


def _purge_redis(queue: str, *keys: str) -> None:
    """Remove one queue and what kombu keeps for it (its unacknowledged messages), and
    `keys`; other runs sharing the database keep theirs."""
    import json

    import redis

    client = redis.Redis(host=REDIS[0], port=REDIS[1], db=REDIS_DB)
    try:
        for tag, payload in client.hgetall("unacked").items():
            if json.loads(payload)[2] == queue:  # [message, exchange, routing key]
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        for pattern in (f"{queue}\x06\x16*", *keys):  # priority queues, rate buckets
            for key in client.scan_iter(match=pattern):
                client.delete(key)
    finally:
        client.close()


def _delete_amqp_queue(queue: str) -> None:
    from kombu import Connection

    with Connection(AMQP_URL, connect_timeout=5) as conn:
        for delete in ("queue_delete", "exchange_delete"):
            channel = conn.channel()
            try:
                getattr(channel, delete)(queue)
            except Exception:  # noqa: BLE001 - already gone: nothing to clean
                pass
            finally:
                channel.close()


@pytest.fixture(params=["redis", "amqp"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    queue = f"newsletter-test-{uuid.uuid4().hex[:10]}"
    if request.param == "redis":
        broker = Broker("redis", f"redis://{REDIS[0]}:{REDIS[1]}/{REDIS_DB}", queue)
        try:
            yield broker
        finally:
            _purge_redis(queue, *broker.keys)
    else:
        try:
            yield Broker("amqp", AMQP_URL, queue)
        finally:
            _delete_amqp_queue(queue)


@pytest.fixture
def second_smtp() -> Iterator[SmtpServer]:
    """Another relay, for [smtp.backup]."""
    with running_smtp_server() as server:
        yield server


@pytest.fixture
def pub(tmp_path: Path, pg_url: str, broker: Broker, smtp_server: SmtpServer) -> Publication:
    pub = make_publication(tmp_path, pg_url, smtp_server.port)
    pub.env.update(
        NEWSLETTER_WORKERS_BROKER=broker.url,
        NEWSLETTER_WORKERS_QUEUE=broker.queue,
        NEWSLETTER_WORKERS_BATCH_SIZE="100",
        NEWSLETTER_WORKERS_LEASE="3",
    )
    return pub


@dataclass
class Workers:
    """`newsletter workers start` processes, each in its own process group."""

    pub: Publication
    folder: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[IO[bytes]] = field(default_factory=list)

    def start(self, n: int, **env: str) -> None:
        for _ in range(n):
            path = self.folder / f"worker{len(self.procs)}.log"
            log = open(path, "wb")  # noqa: SIM115 - closed in stop()
            self.logs.append(log)
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "newsletter", "workers", "start"],
                    env={**self.pub.subprocess_env(), **env},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        for n, proc in enumerate(self.procs):
            while b" ready." not in (self.folder / f"worker{n}.log").read_bytes():
                assert proc.poll() is None, self.output(n)
                assert time.monotonic() < deadline, self.output(n)
                time.sleep(0.1)

    def output(self, n: int) -> str:
        return (self.folder / f"worker{n}.log").read_text(errors="replace")[-4000:]

    def kill(self, n: int) -> None:
        """kill -9, the worker and anything it started."""
        os.killpg(self.procs[n].pid, signal.SIGKILL)
        self.procs[n].wait()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for log in self.logs:
            log.close()


@pytest.fixture
def workers(pub: Publication, tmp_path: Path) -> Iterator[Workers]:
    running = Workers(pub, tmp_path)
    try:
        yield running
    finally:
        running.stop()


def wait_until(condition: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what()
        time.sleep(0.05)


def new_campaign(pub: Publication, store: Store) -> int:
    config_ = pub.config()
    built = publish.build_issue(config_, publish.load_issue(pub.issue))
    return lifecycle.create(store, built)


def senders(store: Store, campaign_id: int) -> Counter[str]:
    """Messages recorded sent per worker process (host:pid), from the ledger."""
    with store.engine.connect() as conn:
        owners = conn.execute(
            sa.select(deliveries.c.lease_owner).where(
                deliveries.c.campaign_id == campaign_id, deliveries.c.status == SENT
            )
        ).scalars()
        return Counter(str(owner).rsplit(":", 1)[0] for owner in owners)


# --- the promises, through real workers ---------------------------------------------------


def test_every_subscriber_gets_exactly_one_copy(
    pub: Publication,
    workers: Workers,
    smtp_server: SmtpServer,
    second_smtp: SmtpServer,
) -> None:
    store = pub.store()
    emails = add_subscribers(store, 2500)
    # Two relays share the load: [smtp] and [smtp.backup], batches taking them in turn.
    pub.config_path.write_text(
        pub.config_path.read_text() + f"\n[smtp.backup]\nport = {second_smtp.port}\n"
    )
    workers.start(3)
    started = time.monotonic()
    result = CliRunner().invoke(
        cli,
        ["--config", str(pub.config_path), "send", str(pub.issue), "--all", "--yes", "--json"],
        env=pub.env,
    )
    assert result.exit_code == 0, (result.output, workers.output(0))
    assert '"sent": 2500' in result.stdout and '"status": "done"' in result.stdout
    assert time.monotonic() - started < 60
    counts = smtp_server.handler.count_by_recipient() + second_smtp.handler.count_by_recipient()
    assert counts == {e: 1 for e in emails}
    assert len(smtp_server.received) > 500 and len(second_smtp.received) > 500
    row = campaign_status.status(store, 1)[0]
    assert row.status == "done" and row.sent == 2500 and row.batches >= 25
    assert len(senders(store, 1)) >= 2  # the work was shared


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_late_reply_after_the_dot_stays_in_doubt_and_no_batch_sends_it_again(
    pub: Publication, workers: Workers, smtp_server: SmtpServer
) -> None:
    # The relay stores one message at its final dot and answers after the workers'
    # dot timeout: the row is in doubt, and the next batches (and the sweep) leave it
    # alone until the campaign is dispatched again, as a resume does in-process.
    store = pub.store()
    emails = add_subscribers(store, 250)
    smtp_server.handler.answer_late = {emails[120]: 1.5}
    workers.start(2, NEWSLETTER_SMTP_DOT_TIMEOUT="0.3", NEWSLETTER_SMTP_RETRIES="3")
    # In a process of its own, with a time limit: were the row sent again, the
    # campaign would never end, and following it would never return.
    result = subprocess.run(
        [sys.executable, "-m", "newsletter", "send", str(pub.issue), "--all", "--yes", "--json"],
        env=pub.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, (result.stdout, result.stderr, workers.output(0))
    assert '"in_doubt": 1' in result.stdout and '"status": "incomplete"' in result.stdout
    assert smtp_server.handler.count_by_recipient() == {e: 1 for e in emails}
    row = campaign_status.status(store, 1)[0]
    assert (row.sent, row.in_doubt, row.pending) == (249, 1, 0)


def test_worker_killed_mid_campaign_loses_nobody(
    pub: Publication, workers: Workers, smtp_server: SmtpServer
) -> None:
    store = pub.store()
    emails = add_subscribers(store, 2500)
    a_minute_ago = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    plans.schedule_issue(
        store,
        pub.config(),
        pub.issue,
        a_minute_ago.strftime("%Y-%m-%d %H:%M:%S"),
        "UTC",
        now=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
    )
    smtp_server.handler.delay = 0.002  # keep the campaign going for a few seconds
    workers.start(3)
    # run-due queues the campaign's batches and returns; the workers send them.
    due = run_due(store, pub.config(), now=utcnow())
    assert due.ok and due.sent[0]["queued"] == 2500, due
    wait_until(
        lambda: len(smtp_server.received) >= 600,
        30,
        lambda: f"{len(smtp_server.received)} received\n{workers.output(0)}",
    )
    # Kill the worker that holds the most rows right now: it is mid-batch for sure.
    held: Counter[str] = Counter()

    def leased() -> bool:  # between two batches a worker may hold nothing for a moment
        with store.engine.connect() as conn:
            held.clear()
            held.update(
                str(owner).split(":")[1]
                for owner in conn.execute(
                    sa.select(deliveries.c.lease_owner).where(
                        deliveries.c.status.in_(UNSENT),
                        deliveries.c.lease_until > utcnow(),
                    )
                ).scalars()
            )
        return bool(held)

    wait_until(leased, 30, lambda: f"no batch is leased\n{workers.output(0)}")
    victim_pid = int(held.most_common(1)[0][0])
    victim = next(n for n, p in enumerate(workers.procs) if p.pid == victim_pid)
    workers.kill(victim)
    with store.engine.connect() as conn:
        orphaned = conn.execute(
            sa.select(sa.func.count()).where(
                deliveries.c.lease_owner.like(f"%:{victim_pid}:%"),
                deliveries.c.status.in_(UNSENT),
            )
        ).scalar_one()
    assert orphaned > 0  # it died holding rows: their lease has to run out
    smtp_server.handler.delay = 0
    wait_until(
        lambda: campaign_status.status(store, 1)[0].status == "done",
        60,
        lambda: f"{campaign_status.status(store, 1)[0]}\n{workers.output((victim + 1) % 3)}",
    )
    counts = smtp_server.handler.count_by_recipient()
    assert set(counts) == set(emails)  # nobody lost
    duplicates = sum(n - 1 for n in counts.values())
    assert duplicates <= 1  # at most the one message the killed worker had in flight
    row = campaign_status.status(store, 1)[0]
    assert row.sent == 2500 and row.in_doubt == 0 and row.pending == 0


def test_total_rate_holds_across_workers(
    pub: Publication, workers: Workers, smtp_server: SmtpServer, broker: Broker
) -> None:
    broker.keys.append(f"newsletter:rate:127.0.0.1:{smtp_server.port}:")  # the shared budget
    store = pub.store()
    add_subscribers(store, 900)
    # Capacity well above the limit (two connections per worker), so that what is
    # measured is the shared budget, not how fast this machine is.
    env = {"NEWSLETTER_SMTP_RATE": "100", "NEWSLETTER_SMTP_CONCURRENCY": "2"}
    pub.env.update(env)
    workers.start(3)
    workers.wait_ready()
    cid = new_campaign(pub, store)
    queued = campaign.run(store, pub.config(), cid, wait=False)
    assert queued.status == RUNNING and queued.queued == 900
    stamps: list[tuple[float, int]] = []
    deadline = time.monotonic() + 40
    while len(smtp_server.received) < 850:
        assert time.monotonic() < deadline, workers.output(0)
        stamps.append((time.monotonic(), len(smtp_server.received)))
        time.sleep(0.02)
    # Steady state: from the 100th message to the 800th, every worker sending.
    t0 = next(t for t, n in stamps if n >= 100)
    t1 = next(t for t, n in stamps if n >= 800)
    rate = 700 / (t1 - t0)
    assert 90 <= rate <= 110, f"{rate:.1f} messages/s with [smtp] rate = 100"
    wait_until(
        lambda: campaign_status.status(store, cid)[0].status == "done",
        20,
        lambda: workers.output(0),
    )
    assert len(senders(store, cid)) == 3  # all three shared the one budget


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_sigterm_finishes_the_message_in_flight_and_hands_back_the_rest(
    pub: Publication, workers: Workers, smtp_server: SmtpServer
) -> None:
    store = pub.store()
    emails = add_subscribers(store, 300)
    pub.env["NEWSLETTER_WORKERS_BATCH_SIZE"] = "300"  # one batch, held by the first worker
    smtp_server.handler.delay = 0.02
    workers.start(1)
    cid = new_campaign(pub, store)
    campaign.run(store, pub.config(), cid, wait=False)
    wait_until(lambda: len(smtp_server.received) >= 20, 30, lambda: workers.output(0))
    workers.procs[0].send_signal(signal.SIGTERM)
    assert workers.procs[0].wait(timeout=20) == 0, workers.output(0)
    row = campaign_status.status(store, cid)[0]
    # Every message that went out is recorded; nothing is in doubt; the rest is free.
    assert row.sent == len(smtp_server.received) < 300
    assert row.in_doubt == 0 and row.in_flight == 0 and row.batches_sending == 0
    smtp_server.handler.delay = 0
    workers.start(1)
    wait_until(
        lambda: campaign_status.status(store, cid)[0].status == "done",
        30,
        lambda: workers.output(1),
    )
    assert smtp_server.handler.count_by_recipient() == {e: 1 for e in emails}  # no duplicate


# --- the parts, without worker processes --------------------------------------------------


def test_a_sender_that_cannot_record_stops_the_run_instead_of_hanging(
    tmp_path: Path, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A batch whose sender hangs would renew its lease forever: its rows never sent.
    pub = make_publication(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", smtp_server.port)
    store = pub.store()
    add_subscribers(store, 30)
    cid = new_campaign(pub, store)
    calls = []

    original = delivery_rows.Ledger.commit

    def failing_commit(self: delivery_rows.Ledger, record: object, mark: object) -> bool:
        if record is None:  # marking the first message works; recording its reply fails
            return original(self, record, mark)  # type: ignore[arg-type]
        calls.append(record)
        raise sa.exc.OperationalError("UPDATE deliveries", {}, Exception("server closed"))

    monkeypatch.setattr(delivery_rows.Ledger, "commit", failing_commit)
    result = campaign.run(store, pub.config(NEWSLETTER_SMTP_CONCURRENCY="2"), cid)
    assert result.status == INCOMPLETE
    assert "cannot record deliveries" in result.error and "server closed" in result.error
    assert len(smtp_server.received) <= 2  # nothing more went out unrecorded


def test_smtp_servers_share_an_in_process_campaign(
    tmp_path: Path, smtp_server: SmtpServer, second_smtp: SmtpServer
) -> None:
    pub = make_publication(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", smtp_server.port)
    pub.config_path.write_text(
        pub.config_path.read_text() + f"\n[smtp.backup]\nport = {second_smtp.port}\n"
    )
    store = pub.store()
    emails = add_subscribers(store, 60)
    smtp_server.handler.delay = second_smtp.handler.delay = 0.005
    result = campaign.run(store, pub.config(), new_campaign(pub, store))
    assert result.ok and result.sent == 60
    counts = smtp_server.handler.count_by_recipient() + second_smtp.handler.count_by_recipient()
    assert counts == {e: 1 for e in emails}
    assert smtp_server.received and second_smtp.received  # one connection to each


def test_without_a_broker_the_workers_refuse_to_start(tmp_path: Path) -> None:
    pub = make_publication(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", 25)
    result = CliRunner().invoke(
        cli, ["--config", str(pub.config_path), "workers", "start"], env=pub.env
    )
    assert result.exit_code == 2
    assert "[workers] broker: not set" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_workers_and_smtp_server_tables_in_the_config(tmp_path: Path) -> None:
    pub = make_publication(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", 2525)
    assert pub.config().workers == config.Workers()  # no broker: in-process, as ever
    text = pub.config_path.read_text()
    pub.config_path.write_text(
        text
        + '\n[workers]\nbroker = "redis://10.0.0.5:6379/0"\nbatch_size = 200\n'
        + '\n[smtp.backup]\nhost = "relay2.example.com"\nrate = 20\n'
    )
    loaded = pub.config(NEWSLETTER_SMTP_BACKUP_PORT="587")
    assert loaded.workers.broker == "redis://10.0.0.5:6379/0"
    assert loaded.workers.batch_size == 200 and loaded.workers.lease == 60
    backup = loaded.smtp_servers["backup"]
    # Unset keys are [smtp]'s (port from its environment override, timeout from the file).
    assert (backup.host, backup.rate, backup.port) == ("relay2.example.com", 20.0, 587)
    assert backup.timeout == loaded.smtp.timeout
    assert [name for name, _ in transport.servers(loaded)] == ["smtp", "backup"]
    assert loaded.smtp.host == "127.0.0.1"  # [smtp] itself is unchanged

    pub.config_path.write_text(text + '\n[smtp.backup]\nhots = "x"\n')
    with pytest.raises(ConfigError, match=r"\[smtp.backup\].*did you mean 'host'"):
        pub.config()
    pub.config_path.write_text(text + '\n[workers]\nbroker = "kafka://x"\n')
    with pytest.raises(ConfigError, match=r"\[workers\] broker: expected a redis"):
        pub.config()


def assert_spaced(waits: list[float], interval: float, start: float = 0.0) -> None:
    """Each reservation is `interval` after the previous one, whoever takes it."""
    for n, wait in enumerate(waits):
        assert start + n * interval - 0.05 < wait < start + n * interval + 0.01, waits


def test_shared_rate_in_the_database_spaces_messages(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'rate.db'}")
    reserve = rates.DatabaseReserve(store, "relay")
    again = rates.DatabaseReserve(store, "relay")  # a second worker: same bucket
    assert_spaced([r(0.1) for r in (reserve, again, reserve, again, reserve)], 0.1)
    # After a pause, slots up to the tolerance late are still taken: no more than that.
    time.sleep(0.7)
    assert_spaced([r(0.1, 0.2) for r in (reserve, again, reserve, again)], 0.1, -0.2)


@pytest.mark.celery
def test_shared_rate_in_redis_spaces_messages() -> None:
    url = f"redis://{REDIS[0]}:{REDIS[1]}/{REDIS_DB}"
    key = f"test-relay-{uuid.uuid4().hex}"
    first, second = ratelimit.RedisReserve(url, key), ratelimit.RedisReserve(url, key)
    try:
        assert_spaced([r(0.1) for r in (first, second, first, second, first)], 0.1)
        time.sleep(0.7)
        assert_spaced([r(0.1, 0.2) for r in (first, second, first, second)], 0.1, -0.2)
    finally:
        first.close()
        second.close()
        _purge_redis("-", key)


def test_shared_rate_limiter_sleeps_what_the_store_says() -> None:
    slept: list[float] = []
    asked: list[tuple[float, float]] = []

    def reserve(interval: float, tolerance: float) -> float:
        asked.append((interval, tolerance))
        return [-0.05, 0.25][len(asked) - 1]

    limiter = ratelimit.SharedRateLimiter(4.0, reserve, sleep=slept.append)
    limiter.acquire()
    limiter.acquire()
    assert asked == [(0.25, 0.1), (0.25, 0.1)] and slept == [0.25]
    ratelimit.SharedRateLimiter(0, reserve, sleep=slept.append).acquire()  # unlimited: no call
    assert len(asked) == 2


def test_celery_finds_the_app_where_deployments_look_for_it() -> None:
    # `celery -A newsletter.tasks worker` (and systemd units written for it) keep working
    # with the app in send/tasks.py.
    from newsletter import tasks
    from newsletter.send import tasks as send_tasks

    assert tasks.app is send_tasks.app and tasks.app.main == "newsletter"
