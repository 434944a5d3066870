"""How late does a scheduled send start when `newsletter worker` is running?

Starts a real worker process on a throwaway publication (SQLite file, an aiosmtpd
capture server on 127.0.0.1), schedules a one-subscriber campaign a few seconds
ahead, again and again, and prints the delay between the scheduled time and the
message's arrival at the SMTP server. The promise is under 2 seconds.

    .venv/bin/python bench/schedule_bench.py [--runs 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from newsletter import config as config_mod  # noqa: E402
from newsletter.ledger.store import Store, SubscriberRow  # noqa: E402
from newsletter.schedule import plans, timing  # noqa: E402


class Arrivals:
    def __init__(self) -> None:
        self.times: list[float] = []
        self.event = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.times.append(time.time())
        self.event.set()
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    arrivals = Arrivals()
    port = free_port()
    sink = Controller(arrivals, hostname="127.0.0.1", port=port)
    sink.start()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copy(REPO / "newsletter.toml", root / "newsletter.toml")
        shutil.copytree(REPO / "templates", root / "templates")
        shutil.copytree(REPO / "issues", root / "issues")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")},
            "NEWSLETTER_CONFIG": str(root / "newsletter.toml"),
            "NEWSLETTER_DATABASE_URL": f"sqlite:///{root / 'bench.db'}",
            "NEWSLETTER_SMTP_PORT": str(port),
            "NEWSLETTER_SECRET": "bench-secret-not-for-production-0123456789",
        }
        config = config_mod.load(root / "newsletter.toml", env)
        store = Store.open(config.database_url)
        store.upsert_subscribers([SubscriberRow("reader@example.com", "Reader")])
        issue = next((root / "issues").glob("*.md"))
        log = open(root / "worker.log", "wb")  # noqa: SIM115
        worker = subprocess.Popen(
            [sys.executable, "-m", "newsletter", "worker"], env=env, stdout=log, stderr=log
        )
        delays = []
        try:
            time.sleep(2)  # let the worker start before the first schedule
            tz = config.publication.timezone
            for _ in range(args.runs):
                arrivals.event.clear()
                at = dt.datetime.now(timing.zone(tz)).replace(microsecond=0)
                at += dt.timedelta(seconds=3)
                _, when, _ = plans.schedule_issue(
                    store, config, issue, at.strftime("%Y-%m-%d %H:%M:%S"), tz
                )
                if not arrivals.event.wait(30):
                    print("no message within 30 s; worker log:")
                    print((root / "worker.log").read_text())
                    break
                delays.append(arrivals.times[-1] - when.timestamp())
        finally:
            worker.terminate()
            worker.wait(timeout=30)
            log.close()
            store.close()
            sink.stop()
    if delays:
        print(f"scheduled send -> message at the SMTP server, {len(delays)} runs:")
        print("  " + ", ".join(f"{d:.2f} s" for d in delays))
        print(
            f"  median {statistics.median(delays):.2f} s, max {max(delays):.2f} s (promise: < 2 s)"
        )


if __name__ == "__main__":
    main()
