"""A large list on PostgreSQL, as a user runs it (issue 20, "A million subscribers"):
`newsletter subscribers import` of a generated file, campaign creation, and the send on
Celery workers into smtp-sink, with `newsletter status` asked during the send.

Run from the repository root:

    .venv/bin/python bench/million_bench.py [--subscribers 1000000] [--workers 2]
                                            [--pg-database bench_million] [--broker URL]
                                            [--status-samples 10] [--logs DIR]

Prints, for N subscribers:
- import: wall time of `subscribers import` and its peak RSS (ru_maxrss from wait4);
- creation: from the start of `send ISSUE --all --yes` to the campaign's row being
  committed with its deliveries (polled every 20 ms; the command's start-up and the
  issue's build are in it); lifecycle.add_deliveries makes them with one
  INSERT ... SELECT;
- send: msg/s (N / wall of the whole `send` command), CPU per message (the send
  command's and every worker process's user+system CPU, over N; PostgreSQL's own
  backends are not counted), peak RSS per process (VmHWM of each worker process read
  just before it is stopped, ru_maxrss of the send command);
- status: the wall time of `newsletter status` (the whole command), of one look of
  `status --watch` (`campaign_status.status_at`: a new psycopg connection and the reads,
  in this process) and of the reads alone on an open Store (`campaign_status.status`),
  sampled during the send.

Fresh tables in `--pg-database` (created if missing and emptied: never a database you
keep), Redis database 12 by default (flushed: never 13, the tests', nor 14 or 15, the
other benches'). Helpers come from scale_bench.py and workers_bench.py. Figures only.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from scale_bench import NEWSLETTER, SECRET, flush_broker, fresh_pg, pg_url  # noqa: E402
from workers_bench import Relay, find_tool, publication, reachable  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def write_list(path: Path, n: int) -> None:
    with path.open("w") as fh:
        fh.write("email,name,company\n")
        for i in range(n):
            fh.write(f"reader{i:07d}@example.com,Reader {i},Company {i % 977}\n")


def run_measured(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> tuple[float, Any]:
    """Wall seconds and the rusage of a command (its own, from wait4)."""
    with log.open("ab") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(NEWSLETTER + cmd, env=env, cwd=cwd, stdout=out, stderr=out)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {proc.returncode}\n{log.read_text()[-3000:]}")
    return wall, usage


def group_procs(pgid: int) -> list[int]:
    """The processes of a process group (a worker and any children it forked)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rpartition(")")[2].split()
            if int(fields[2]) == pgid:
                pids.append(int(entry))
    return pids


def cpu_and_hwm(pid: int) -> tuple[float, int]:
    """User+system CPU seconds and peak RSS (bytes) of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    return cpu, hwm


class Watcher(threading.Thread):
    """During the send: when the campaign's row is committed, and status latencies."""

    def __init__(self, url: str, env: dict[str, str], cwd: Path, samples: int, n: int) -> None:
        super().__init__(daemon=True)
        self.engine = sa.create_engine(url)
        self.url = url
        self.env, self.cwd, self.samples, self.n = env, cwd, samples, n
        self.start_at = 0.0
        self.created: float | None = None
        self.total: int | None = None
        self.command: list[float] = []
        self.query: list[float] = []
        self.look: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        from newsletter.ledger import campaign_status
        from newsletter.ledger.store import Store

        while not self.stop.is_set() and self.created is None:
            with self.engine.connect() as conn:
                row = conn.execute(sa.text("SELECT total FROM campaigns LIMIT 1")).first()
            if row is not None and row.total:
                self.created = time.perf_counter() - self.start_at
                self.total = int(row.total)
            else:
                time.sleep(0.02)
        store = Store.open(str(self.engine.url), create=False)
        # Samples spread over the send: one every (expected send time / samples), at least
        # every 2 s; the expected time is taken from the progress so far.
        while not self.stop.is_set() and len(self.command) < self.samples:
            t0 = time.perf_counter()
            rows = campaign_status.status(store, None)
            self.query.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            assert campaign_status.status_at(self.url, None) is not None
            self.look.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            status = [*NEWSLETTER, "status"]
            subprocess.run(status, env=self.env, cwd=self.cwd, capture_output=True, check=True)
            self.command.append(time.perf_counter() - t0)
            sent = rows[0].sent if rows else 0
            elapsed = time.perf_counter() - self.start_at
            left = (self.n - sent) * elapsed / sent if sent else 0.0
            self.stop.wait(max(0.5, min(left / max(self.samples - len(self.command), 1), 30)))
        store.engine.dispose()
        self.engine.dispose()


def floor_ms(runs: int = 5) -> float:
    """The median wall time of starting Python and importing what `status` on a
    PostgreSQL ledger must import (click and psycopg: it reads the ledger through psycopg
    without SQLAlchemy, ledger/direct.py): its floor on this machine, in this run."""
    code = "import click, psycopg"
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pg-database", default="bench_million")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--status-samples", type=int, default=10)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for every command")
    parser.add_argument("--logs", type=Path, help="keep the commands' and workers' logs here")
    args = parser.parse_args()

    sink = find_tool("smtp-sink")
    if not sink or not reachable("127.0.0.1", 5432):
        print("needs smtp-sink (apt-get install postfix) and PostgreSQL on 127.0.0.1:5432")
        raise SystemExit(2)
    n = args.subscribers
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"{platform.node()}: {os.cpu_count()} CPUs, load average {load} before the run,"
        f" {n:,} subscribers, {args.workers} worker(s), PostgreSQL {args.pg_database}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="million-bench-") as tmp:
        folder = Path(tmp)
        logs = args.logs or folder
        logs.mkdir(parents=True, exist_ok=True)
        relay = Relay("sink", sink)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            config = publication(folder)
            issue = sorted((folder / "issues").glob("*.md"))[0]
            csv = folder / "subscribers.csv"
            t0 = time.perf_counter()
            write_list(csv, n)
            print(f"list written: {time.perf_counter() - t0:.1f} s", flush=True)
            fresh_pg(args.pg_database)
            flush_broker(args.broker)
            url = pg_url(args.pg_database)
            env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")} | {
                "NEWSLETTER_CONFIG": str(config),
                "NEWSLETTER_DATABASE_URL": url,
                "NEWSLETTER_SMTP_HOST": "127.0.0.1",
                "NEWSLETTER_SMTP_PORT": str(relay.port),
                "NEWSLETTER_SMTP_CONCURRENCY": "1",
                "NEWSLETTER_SMTP_RATE": "0",
                "NEWSLETTER_SECRET": SECRET,
                "NEWSLETTER_WORKERS_BROKER": args.broker,
                "NEWSLETTER_WORKERS_QUEUE": f"million-{uuid.uuid4().hex[:8]}",
            }
            for pair in args.env:
                key, _, value = pair.partition("=")
                env[key] = value

            wall, usage = run_measured(
                ["subscribers", "import", str(csv)], env, folder, logs / "import.log"
            )
            print(
                f"import: {wall:,.1f} s ({n / wall:,.0f} rows/s),"
                f" CPU {usage.ru_utime + usage.ru_stime:,.1f} s,"
                f" peak RSS {mib(usage.ru_maxrss * 1024)}",
                flush=True,
            )

            for i in range(args.workers):
                wlog = logs / f"worker{i}.log"
                procs.append(
                    subprocess.Popen(
                        [*NEWSLETTER, "workers", "start"],
                        env=env,
                        cwd=folder,
                        stdout=wlog.open("wb"),
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            for i, proc in enumerate(procs):
                deadline = time.monotonic() + 60
                while b" ready." not in (logs / f"worker{i}.log").read_bytes():
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"worker {i} did not start")
                    time.sleep(0.1)
            before = {pid: cpu_and_hwm(pid)[0] for proc in procs for pid in group_procs(proc.pid)}

            watcher = Watcher(url, env, folder, args.status_samples, n)
            watcher.start_at = time.perf_counter()
            watcher.start()
            wall, usage = run_measured(
                ["send", str(issue), "--all", "--yes"], env, folder, logs / "send.log"
            )
            watcher.stop.set()
            watcher.join()
            after = {pid: cpu_and_hwm(pid) for proc in procs for pid in group_procs(proc.pid)}

            with sa.create_engine(url).connect() as conn:
                sent = conn.execute(
                    sa.text("SELECT count(*) FROM deliveries WHERE status = 'sent'")
                ).scalar_one()
            print(
                f"creation: {watcher.created or float('nan'):,.2f} s from the send's start to"
                f" the campaign committed with {watcher.total or 0:,} deliveries",
                flush=True,
            )
            worker_cpu = sum(cpu - before.get(pid, 0.0) for pid, (cpu, _) in after.items())
            send_cpu = usage.ru_utime + usage.ru_stime
            print(
                f"send: {wall:,.1f} s, {n / wall:,.0f} msg/s ({sent:,} sent),"
                f" CPU {(worker_cpu + send_cpu) / n * 1e6:,.0f} µs/msg"
                f" (workers {worker_cpu / n * 1e6:,.0f}, send command {send_cpu / n * 1e6:,.0f})"
            )
            print(
                f"peak RSS: send command {mib(usage.ru_maxrss * 1024)}, worker processes "
                + ", ".join(mib(hwm) for _, hwm in after.values())
            )
            for label, values in (
                ("command", watcher.command),
                ("--watch look", watcher.look),
                ("query", watcher.query),
            ):
                if values:
                    print(
                        f"status {label}: median {statistics.median(values) * 1000:,.0f} ms,"
                        f" max {max(values) * 1000:,.0f} ms ({len(values)} samples)"
                    )
            print(
                f"the status command's floor (python -c 'import click, psycopg',"
                f" after the send): median {floor_ms():,.0f} ms"
            )
        finally:
            for proc in procs:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            relay.stop()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average {load} after the run")


if __name__ == "__main__":
    main()
