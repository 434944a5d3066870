"""How fast, and in how much memory, does `subscribers import` read a large export?

Writes a file of --rows rows (1,000,000 by default) in a Mailchimp-like layout
("Email Address", "First Name", "Last Name", two extra columns, a status for one row in
fifty), then imports it into a fresh SQLite file, each way in a process of its own so
that each peak RSS (resource.getrusage, ru_maxrss) is that way's alone:

- csv-loop: the file through a plain csv.reader loop, nothing kept: the floor.
- previous: the import before issue 19: the whole file read into memory, every row
  held, one call to the store (the code as it was, copied here).
- streamed: `audience.subscribers.import_csv`, the import today: streamed, written in
  batches of 1,000.

    .venv/bin/python bench/import_bench.py [--rows 1000000] [--no-previous]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from newsletter import addresses  # noqa: E402
from newsletter.audience import subscribers as subscriber_ops  # noqa: E402
from newsletter.fileio import read_text  # noqa: E402
from newsletter.ledger.store import Store, SubscriberRow  # noqa: E402
from newsletter.mail.message import clean_display_name  # noqa: E402


def write_file(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["Email Address", "First Name", "Last Name", "City", "Plan", "Status"])
        for i in range(rows):
            status = "unsubscribed" if i % 50 == 0 else "subscribed"
            writer.writerow(
                [f"reader{i:07d}@example.com", f"Reader{i}", "Smith", "Irvine", "free", status]
            )


def csv_loop(path: Path, url: str) -> int:
    count = 0
    with path.open(encoding="utf-8", newline="") as handle:
        for _ in csv.reader(handle):
            count += 1
    return count - 1


def previous(path: Path, url: str) -> int:
    """The import before issue 19, in short: the file read whole, every row kept."""
    text = read_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows: dict[str, SubscriberRow] = {}
    for record in reader:
        values = {k.strip().lower(): (v or "").strip() for k, v in record.items()}
        email = addresses.normalize(values.pop("email address", ""))
        name = clean_display_name(values.pop("first name", ""))
        key = addresses.key(email)
        if key not in rows:
            rows[key] = SubscriberRow(email=email, name=name, attributes=values)
    store = Store.open(url)
    done = store.upsert_subscribers(list(rows.values()))
    store.close()
    return done.added


def streamed(path: Path, url: str) -> int:
    store = Store.open(url)
    report = subscriber_ops.import_csv(store, path)
    store.close()
    return report.added


WAYS = {"csv-loop": csv_loop, "previous": previous, "streamed": streamed}


def run_one(way: str, path: Path, url: str) -> None:
    """In the child: run one way, print its figures as JSON."""
    start = time.perf_counter()
    rows = WAYS[way](path, url)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_mib": peak_kib / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--no-previous", action="store_true", help="Skip the previous import.")
    parser.add_argument("--way", choices=sorted(WAYS), help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.way:
        run_one(args.way, args.file, args.url)
        return
    with tempfile.TemporaryDirectory(prefix="import-bench-") as tmp:
        path = Path(tmp) / "subscribed_members_export.csv"
        write_file(path, args.rows)
        size = path.stat().st_size / 1e6
        print(f"file: {args.rows:,} rows, {size:.1f} MB ({path.name})")
        print(f"{'way':<10} {'rows':>10} {'seconds':>8} {'rows/s':>9} {'peak RSS':>10}")
        for way in WAYS:
            if way == "previous" and args.no_previous:
                continue
            url = f"sqlite:///{Path(tmp) / (way + '.db')}"
            argv = [sys.executable, __file__, "--way", way, "--file", str(path), "--url", url]
            done = json.loads(subprocess.run(argv, check=True, capture_output=True).stdout)
            rate = args.rows / done["seconds"]
            print(
                f"{way:<10} {done['rows']:>10,} {done['seconds']:>8.1f} {rate:>9,.0f}"
                f" {done['peak_mib']:>7.0f} MiB"
            )


if __name__ == "__main__":
    main()
