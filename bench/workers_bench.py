"""Sending on several workers: messages/s with 1, 2 and 4 worker processes, same sink.

Run from the repository root:

    .venv/bin/python bench/workers_bench.py [--subscribers N] [--slow-subscribers N]
                                            [--workers 1,2,4] [--quick]

Needs the local PostgreSQL (the ledger, in its own database `newsletter_bench`,
created if missing), Redis (the broker, database 14, flushed) and `smtp-sink`
(Debian package postfix). For each worker count it makes fresh tables and a
campaign, starts that many `newsletter workers start` processes (threads pool,
concurrency 1, [smtp] concurrency 1: one SMTP connection each; batches of 100,
so that there are many more batches than workers), hands the
campaign to them with `campaign.run` and reads the rate off the ledger: messages
sent / (last sent_at - first sent_at), so process start-up is not counted.

Two relays:
- smtp-sink on 127.0.0.1, which answers at once: the workers, PostgreSQL and the
  sink share this machine's cores, so this shows how far the CPUs go;
- a slow relay (aiosmtpd in a subprocess) that holds each DATA reply for 20 ms,
  as a remote relay does: sending is latency-bound, which is when more workers
  (on more machines) pay off.

Figures only; nothing is asserted. Exit status 2 when a service or smtp-sink is missing.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from newsletter import config  # noqa: E402
from newsletter.issue import publish  # noqa: E402
from newsletter.ledger import lifecycle  # noqa: E402
from newsletter.ledger.store import Store, SubscriberRow  # noqa: E402
from newsletter.ledger.tables import DONE, SENT, deliveries, metadata  # noqa: E402
from newsletter.send import campaign  # noqa: E402

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PG_BENCH = "postgresql+psycopg://postgres@127.0.0.1:5432/newsletter_bench"
REDIS = "redis://127.0.0.1:6379/14"
SECRET = "bench-secret-not-for-production-0123456789"
SLOW_REPLY = 0.020  # seconds the slow relay holds each DATA reply

SLOW_RELAY = """
import asyncio, sys
from aiosmtpd.controller import Controller
class Slow:
    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(float(sys.argv[2]))
        return "250 2.0.0 Accepted"
c = Controller(Slow(), hostname="127.0.0.1", port=int(sys.argv[1]))
c.start()
print("ready", flush=True)
sys.stdin.read()
c.stop()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        return False
    return True


def wait_listening(port: int, proc: subprocess.Popen[Any], what: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode}")
        if reachable("127.0.0.1", port):
            return
        time.sleep(0.05)
    raise SystemExit(f"{what} is not listening on 127.0.0.1:{port} after 10 s")


def find_tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/usr/local/sbin") if (p := Path(d) / name).is_file()),
        None,
    )


class Relay:
    """smtp-sink (fast) or the slow aiosmtpd relay, as a subprocess on a free port."""

    def __init__(self, kind: str, sink: str | None) -> None:
        self.port = free_port()
        if kind == "sink":
            assert sink
            cmd = [sink]
            if os.geteuid() == 0:  # smtp-sink refuses to run as root without -u
                cmd += ["-u", "nobody"]
            cmd += [f"127.0.0.1:{self.port}", "1000"]
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        else:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", SLOW_RELAY, str(self.port), str(SLOW_REPLY)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
            )
        wait_listening(self.port, self.proc, kind)

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.terminate()
        self.proc.wait(10)


def make_database() -> None:
    engine = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        if not conn.execute(
            sa.text("SELECT 1 FROM pg_database WHERE datname = 'newsletter_bench'")
        ).first():
            conn.execute(sa.text("CREATE DATABASE newsletter_bench"))
    engine.dispose()


def fresh_tables() -> None:
    engine = sa.create_engine(PG_BENCH)
    with engine.begin() as conn:
        metadata.drop_all(conn)
        conn.execute(sa.text("DROP TABLE IF EXISTS newsletter_meta"))
        conn.execute(sa.text("DROP TABLE IF EXISTS newsletter_alembic_version"))
    engine.dispose()


def flush_redis() -> None:
    import redis

    client = redis.Redis.from_url(REDIS)
    client.flushdb()
    client.close()


def publication(folder: Path) -> Path:
    shutil.copy(ROOT / "newsletter.toml", folder / "newsletter.toml")
    shutil.copytree(ROOT / "templates", folder / "templates")
    shutil.copytree(ROOT / "issues", folder / "issues")
    return folder / "newsletter.toml"


def one_run(
    config_path: Path, relay_port: int, n_workers: int, subscribers: int, logs: Path
) -> dict[str, float]:
    fresh_tables()
    flush_redis()
    env = {
        "NEWSLETTER_DATABASE_URL": PG_BENCH,
        "NEWSLETTER_SMTP_HOST": "127.0.0.1",
        "NEWSLETTER_SMTP_PORT": str(relay_port),
        "NEWSLETTER_SMTP_CONCURRENCY": "1",
        "NEWSLETTER_SMTP_RATE": "0",
        "NEWSLETTER_WORKERS_BROKER": REDIS,
        "NEWSLETTER_WORKERS_QUEUE": f"bench-{uuid.uuid4().hex[:8]}",
        "NEWSLETTER_WORKERS_BATCH_SIZE": "100",
        "NEWSLETTER_SECRET": SECRET,
    }
    cfg = config.load(config_path, env)
    store = Store.open(cfg.database_url)
    rows = [SubscriberRow(f"reader{i:06d}@example.com", f"Reader {i}") for i in range(subscribers)]
    for start in range(0, len(rows), 5000):
        store.upsert_subscribers(rows[start : start + 5000])
    built = publish.build_issue(cfg, publish.load_issue(next(cfg.issues_dir.glob("*.md"))))
    campaign_id = lifecycle.create(store, built)

    child_env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    child_env.update(env, NEWSLETTER_CONFIG=str(config_path))
    procs: list[subprocess.Popen[bytes]] = []
    files = []
    try:
        for n in range(n_workers):
            log = (logs / f"worker-{n_workers}-{n}.log").open("wb")
            files.append(log)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "newsletter", "workers", "start"],
                    env=child_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        for n, proc in enumerate(procs):
            path = logs / f"worker-{n_workers}-{n}.log"
            deadline = time.monotonic() + 60
            while b" ready." not in path.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"worker did not start:\n{path.read_text()[-2000:]}")
                time.sleep(0.1)
        wall = time.perf_counter()
        result = campaign.run(store, cfg, campaign_id)
        wall = time.perf_counter() - wall
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for f in files:
            f.close()
    with store.engine.connect() as conn:
        first, last, sent = conn.execute(
            sa.select(
                sa.func.min(deliveries.c.sent_at),
                sa.func.max(deliveries.c.sent_at),
                sa.func.count(),
            ).where(deliveries.c.campaign_id == campaign_id, deliveries.c.status == SENT)
        ).one()
    store.close()
    if result.status != DONE or sent != subscribers:
        raise SystemExit(f"campaign not done: {result}")
    span = (last - first).total_seconds()
    return {"sent": sent, "span": span, "rate": (sent - 1) / span, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=20000, help="for smtp-sink")
    parser.add_argument("--slow-subscribers", type=int, default=3000, help="for the slow relay")
    parser.add_argument("--workers", default="1,2,4", help="worker counts to measure")
    parser.add_argument("--quick", action="store_true", help="small counts (~1 min)")
    args = parser.parse_args()
    if args.quick:
        args.subscribers, args.slow_subscribers = 4000, 800

    sink = find_tool("smtp-sink")
    missing = [
        what
        for what, ok in (
            ("smtp-sink (apt-get install postfix)", sink is not None),
            ("PostgreSQL on 127.0.0.1:5432", reachable("127.0.0.1", 5432)),
            ("Redis on 127.0.0.1:6379", reachable("127.0.0.1", 6379)),
        )
        if not ok
    ]
    if missing:
        print("missing: " + ", ".join(missing), file=sys.stderr)
        raise SystemExit(2)

    counts = [int(n) for n in args.workers.split(",")]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"{platform.node()}: {os.cpu_count()} CPUs, load average {load} before the run,"
        f" Python {platform.python_version()}"
    )
    print("ledger: PostgreSQL (newsletter_bench), broker: Redis, one SMTP connection a worker")
    make_database()
    with tempfile.TemporaryDirectory(prefix="workers-bench-") as tmp:
        folder = Path(tmp)
        config_path = publication(folder)
        for kind, n, title in (
            ("sink", args.subscribers, "smtp-sink on 127.0.0.1 (answers at once)"),
            ("slow", args.slow_subscribers, f"slow relay ({SLOW_REPLY * 1000:.0f} ms a reply)"),
        ):
            relay = Relay(kind, sink)
            try:
                print(f"\n{title}, {n:,} messages")
                print(f"{'workers':>8} {'msg/s':>9} {'scaling':>8} {'seconds':>8}")
                base = 0.0
                for workers in counts:
                    figures = one_run(config_path, relay.port, workers, n, folder)
                    base = base or figures["rate"]
                    print(
                        f"{workers:>8} {figures['rate']:>9.0f} {figures['rate'] / base:>7.2f}x"
                        f" {figures['span']:>8.1f}",
                        flush=True,
                    )
            finally:
                relay.stop()
    fresh_tables()
    flush_redis()


if __name__ == "__main__":
    main()
