"""Whole commands, one run: `newsletter send ISSUE --all --yes` in-process on SQLite, in-process
on PostgreSQL, and on 1, 2 and 4 Celery workers on PostgreSQL (issue 20), beside Postfix's
smtp-source on 1 and 20 connections and mailmerge's CLI, all into the same smtp-sink.

Run from the repository root:

    .venv/bin/python bench/scale_bench.py [--subscribers 8000] [--workers 1,2,4]
                                          [--pg-database newsletter_scale] [--broker URL]
                                          [--env KEY=VALUE ...] [--repeat N] [--logs DIR]
                                          [--mark-ahead N] [--no-mailmerge]

Each run gets fresh tables (a SQLite file in a temporary folder, or the tables of the
PostgreSQL database `--pg-database`, created if missing and emptied: never point it at a
database you keep), the list imported with `newsletter subscribers import`, and then the
send timed as a user runs it: the wall time of the whole command, start-up included.
Workers (`newsletter workers start`, one process each, [smtp] concurrency 1) are started
and ready before the send; the send hands the campaign to them and follows it to the end.
Rate = subscribers / wall seconds (`--repeat N`: the median of N sends). `--env` adds a
NEWSLETTER_* setting to every run (e.g. `--env NEWSLETTER_DATABASE_SYNCHRONOUS_COMMIT=false`).

mailmerge runs last: its own CLI (`--no-dry-run --no-limit`, a connection a message), from
bench/.venv-mailmerge (send_bench.py creates it with pip on first use), sending the same
issue to the same N addresses (its template and CSV made from the SQLite run's list, as
send_bench.py does); its rate is N / the wall time of its command.

`--mark-ahead N` adds lines in the same run: in-process on SQLite and on PostgreSQL with
`[database] mark_ahead = N`, then on PostgreSQL with `synchronous_commit = false` alone and
with both, and each worker count with the same three; a ratio compares each line with
its baseline of the same settings (SQLite for in-process PostgreSQL, in-process
PostgreSQL for the workers), the issue's two 75% targets.

Needs smtp-sink and smtp-source (Debian package postfix), PostgreSQL on 127.0.0.1:5432 and
the broker (Redis database 15 by default, flushed: never 13, the tests', nor 14,
workers_bench's). Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import types
import uuid
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from send_bench import (  # noqa: E402
    mailmerge_binary,
    mailmerge_files,
    run_mailmerge,
    run_smtp_source,
)
from workers_bench import Relay, find_tool, publication, reachable  # noqa: E402

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SECRET = "bench-secret-not-for-production-0123456789"
NEWSLETTER = [sys.executable, "-m", "newsletter"]


def pg_url(name: str) -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def fresh_pg(name: str) -> None:
    """The database `name`, created if missing, without any table."""
    engine = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        if not conn.execute(
            sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
        ).first():
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    engine = sa.create_engine(pg_url(name))
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    engine.dispose()


def flush_broker(url: str) -> None:
    if url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(url)
        client.flushdb()
        client.close()


class Bench:
    def __init__(self, args: argparse.Namespace, folder: Path, sink_port: int) -> None:
        self.args = args
        self.folder = folder
        self.config_path = publication(folder)
        self.issue = sorted((folder / "issues").glob("*.md"))[0]
        self.csv = folder / "subscribers.csv"
        with self.csv.open("w") as fh:
            fh.write("email,name\n")
            for i in range(args.subscribers):
                fh.write(f"reader{i:07d}@example.com,Reader {i}\n")
        self.base = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")} | {
            "NEWSLETTER_CONFIG": str(self.config_path),
            "NEWSLETTER_SMTP_HOST": "127.0.0.1",
            "NEWSLETTER_SMTP_PORT": str(sink_port),
            "NEWSLETTER_SMTP_CONCURRENCY": "1",
            "NEWSLETTER_SMTP_RATE": "0",
            "NEWSLETTER_SECRET": SECRET,
        }
        for pair in args.env:
            key, _, value = pair.partition("=")
            self.base[key] = value

    def run(self, cmd: list[str], env: dict[str, str], log: Path) -> float:
        with log.open("ab") as out:
            t0 = time.perf_counter()
            done = subprocess.run(
                NEWSLETTER + cmd, env=env, cwd=self.folder, stdout=out, stderr=subprocess.STDOUT
            )
            wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)}: exit {done.returncode}\n{log.read_text()[-3000:]}")
        return wall

    def send(
        self, label: str, database: str, workers: int, env: dict[str, str] | None = None
    ) -> float:
        """The median rate of `--repeat` sends, each on fresh tables."""
        rates = []
        for n in range(self.args.repeat):
            if database == "sqlite":
                url = f"sqlite:///{self.folder / f'{label}-{n}.db'}"
            else:
                fresh_pg(self.args.pg_database)
                url = pg_url(self.args.pg_database)
            rates.append(self.send_once(label, url, workers, env or {}))
        return statistics.median(rates)

    def send_once(self, label: str, url: str, workers: int, more: dict[str, str]) -> float:
        env = dict(self.base, NEWSLETTER_DATABASE_URL=url) | more
        if workers:
            flush_broker(self.args.broker)
            env["NEWSLETTER_WORKERS_BROKER"] = self.args.broker
            env["NEWSLETTER_WORKERS_QUEUE"] = f"scale-{uuid.uuid4().hex[:8]}"
        log = self.folder / f"{label.replace(' ', '-')}.log"
        self.run(["subscribers", "import", str(self.csv)], env, log)
        procs = []
        try:
            for n in range(workers):
                wlog = self.folder / f"{label.replace(' ', '-')}-worker{n}.log"
                procs.append(
                    (
                        wlog,
                        subprocess.Popen(
                            [*NEWSLETTER, "workers", "start"],
                            env=env,
                            cwd=self.folder,
                            stdout=wlog.open("wb"),
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        ),
                    )
                )
            for wlog, proc in procs:
                deadline = time.monotonic() + 60
                while b" ready." not in wlog.read_bytes():
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"worker did not start:\n{wlog.read_text()[-2000:]}")
                    time.sleep(0.1)
            wall = self.run(["send", str(self.issue), "--all", "--yes"], env, log)
        finally:
            for _, proc in procs:
                os.killpg(proc.pid, signal.SIGTERM)
            for _, proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        return self.args.subscribers / wall

    def mailmerge(self, port: int) -> float | None:
        """mailmerge's CLI sending the issue to the list of the first SQLite send."""
        binary = mailmerge_binary(None)
        if binary is None:
            return None
        os.environ["NEWSLETTER_SECRET"] = SECRET  # its unsubscribe links, as ours are made
        files = mailmerge_files(
            types.SimpleNamespace(config_path=self.config_path),
            self.issue,
            self.folder / "in-process SQLite-0.db",
            self.args.subscribers,
            port,
            self.folder / "mailmerge",
        )
        done = run_mailmerge(binary, files, self.args.subscribers)
        return float(done["n"] / done["wall"])

    def message(self) -> bytes:
        out = self.folder / "build"
        self.run(
            ["build", str(self.issue), "-o", str(out)],
            dict(self.base, NEWSLETTER_DATABASE_URL=f"sqlite:///{self.folder / 'build.db'}"),
            self.folder / "build.log",
        )
        return next(out.glob("*.eml")).read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=8000)
    parser.add_argument("--workers", default="1,2,4", help="worker counts to measure")
    parser.add_argument("--pg-database", default="newsletter_scale")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for every run")
    parser.add_argument("--repeat", type=int, default=1, help="sends per line (median)")
    parser.add_argument("--no-reference", action="store_true", help="skip smtp-source")
    parser.add_argument("--logs", type=Path, help="keep the commands' and workers' logs here")
    parser.add_argument("--no-mailmerge", action="store_true", help="skip mailmerge's line")
    parser.add_argument(
        "--mark-ahead",
        type=int,
        default=0,
        help="also measure [database] mark_ahead = N (and synchronous_commit = false)",
    )
    args = parser.parse_args()

    sink, source = find_tool("smtp-sink"), find_tool("smtp-source")
    missing = [
        what
        for what, ok in (
            ("smtp-sink and smtp-source (apt-get install postfix)", sink and source),
            ("PostgreSQL on 127.0.0.1:5432", reachable("127.0.0.1", 5432)),
        )
        if not ok
    ]
    if missing:
        print("missing: " + ", ".join(missing), file=sys.stderr)
        raise SystemExit(2)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"{platform.node()}: {os.cpu_count()} CPUs, load average {load} before the run,"
        f" Python {platform.python_version()}, {args.subscribers:,} subscribers"
        + (f", median of {args.repeat}" if args.repeat > 1 else "")
        + (f", {' '.join(args.env)}" if args.env else "")
    )
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        relay = Relay("sink", sink)
        try:
            bench = Bench(args, Path(tmp), relay.port)
            print(f"{'':58} {'msg/s':>8} {'ratio':>26}")

            def show(label: str, rate: float, ratio: str = "") -> None:
                rows.append((label, rate))
                print(f"{label:58} {rate:>8,.0f} {ratio:>26}", flush=True)

            sqlite = bench.send("in-process SQLite", "sqlite", 0)
            show("in-process, SQLite", sqlite)
            inproc = bench.send("in-process PostgreSQL", "pg", 0)
            show("in-process, PostgreSQL", inproc, f"{inproc / sqlite:.2f}x SQLite")
            for n in [int(w) for w in args.workers.split(",") if w]:
                rate = bench.send(f"{n} workers", "pg", n)
                show(f"{n} worker(s), PostgreSQL", rate, f"{rate / inproc:.2f}x in-process PG")
            if args.mark_ahead:
                variants(bench, args, sqlite, show)
            if not args.no_reference:
                assert source
                message = bench.message()
                for sessions in (1, 20):
                    rate = run_smtp_source(source, relay.port, message, args.subscribers, sessions)
                    show(f"smtp-source, {sessions} connection(s)", rate)
            if not args.no_mailmerge:
                rate = bench.mailmerge(relay.port)
                if rate is not None:
                    show(
                        "mailmerge (its CLI, a connection a message)",
                        rate,
                        f"{rate / sqlite:.2f}x SQLite",
                    )
            if args.logs:
                shutil.copytree(
                    tmp,
                    args.logs,
                    dirs_exist_ok=True,
                    ignore=lambda d, n: [f for f in n if not f.endswith(".log")],
                )
        finally:
            relay.stop()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average {load} after the run")


def variants(
    bench: Bench, args: argparse.Namespace, sqlite: float, show: Callable[..., None]
) -> None:
    """The lines of --mark-ahead N: each setting in-process, then on the workers."""
    n = args.mark_ahead
    ahead = {"NEWSLETTER_DATABASE_MARK_AHEAD": str(n)}
    unsynced = {"NEWSLETTER_DATABASE_SYNCHRONOUS_COMMIT": "false"}
    rate = bench.send(f"in-process SQLite mark_ahead {n}", "sqlite", 0, ahead)
    show(f"in-process, SQLite, mark_ahead {n}", rate, f"{rate / sqlite:.2f}x SQLite")
    settings = {
        f"mark_ahead {n}": ahead,
        "synchronous_commit false": unsynced,
        f"mark_ahead {n} + sync. commit false": ahead | unsynced,
    }
    inproc = {}
    for name, env in settings.items():
        inproc[name] = rate = bench.send(f"in-process PostgreSQL {name}", "pg", 0, env)
        show(f"in-process, PostgreSQL, {name}", rate, f"{rate / sqlite:.2f}x SQLite")
    for workers in [int(w) for w in args.workers.split(",") if w]:
        for name, env in settings.items():
            rate = bench.send(f"{workers} workers {name}", "pg", workers, env)
            show(
                f"{workers} worker(s), PG, {name}",
                rate,
                f"{rate / inproc[name]:.2f}x in-process, same",
            )


if __name__ == "__main__":
    main()
