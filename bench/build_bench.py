"""Build once, fill per recipient: what the slots save over re-rendering for everyone.

Run from the repository root:

    .venv/bin/python bench/build_bench.py [--builds N] [--recipients N] [--rerenders N]

Prints the time to build the sample issue (Markdown, Jinja2, sponsor block,
premailer), the per-recipient cost of filling the slots and of rendering the
message bytes, beside the cost of re-running the full render + premailer for
every recipient, and the ratio.

Then merge fields: the CPU time per message of what the runner does per
recipient (`Personalizer.values` with the stored attributes' JSON text, and
`MessageTemplate.render`), for the sample issue as it is (the baseline) and for
copies with two merge fields (`{{ subscriber.company | default("there") }}` and
`{{ subscriber.city }}`) in the body, and in the body and the subject. The modes
take turns, a batch of each at a time, in the same process, and the median batch
of each is printed with its ratio to the baseline (the target: within 10%).
With --end-to-end N, the same modes once more as whole campaigns to N
subscribers (`campaign.run`: the ledger, the SMTP transactions) into the tool's
own capture server (`newsletter smtpd`, a subprocess, so its CPU is not
counted), each run on a fresh copy of one seeded SQLite ledger, the modes taking
turns: the client's CPU per message (process time, all threads, / N).

Figures only; nothing is asserted. No files are written (but a temporary copy of
the issue) and no mail is sent.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from newsletter import config as config_mod
from newsletter import tokens
from newsletter.issue import publish

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "issues" / "2024-11-25-motivated-biden-authorize-ukraines-use-atacms.md"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--builds", type=int, default=30, help="build_issue runs (default 30)")
    parser.add_argument("--recipients", type=int, default=2000, help="recipients (default 2000)")
    parser.add_argument("--rerenders", type=int, default=20, help="full re-renders (default 20)")
    parser.add_argument(
        "--batches", type=int, default=40, help="merge fields: batches per mode (default 40)"
    )
    parser.add_argument(
        "--end-to-end",
        type=int,
        default=0,
        metavar="N",
        help="merge fields: also whole campaigns to N subscribers into `newsletter smtpd`",
    )
    parser.add_argument("--rounds", type=int, default=3, help="end-to-end runs per mode")
    args = parser.parse_args()

    # A fixed secret: the benchmark must not create .newsletter-secret.
    os.environ["NEWSLETTER_SECRET"] = "bench-secret-not-for-production-0123456789"
    config = config_mod.load(ROOT / "newsletter.toml")
    issue = publish.load_issue(SAMPLE)

    publish.build_issue(config, issue)  # warm up imports, caches and cssutils
    builds = [timed(lambda: publish.build_issue(config, issue)) for _ in range(args.builds)]
    built = publish.build_issue(config, issue)

    personalizer = publish.Personalizer(
        config, built.issue.slug, tokens.Signer(b"bench-secret-not-for-production-0123456789")
    )
    template = publish.message_template(config, built)
    recipients = [(f"reader{n}@example.com", f"Reader {n}") for n in range(args.recipients)]

    values_t: list[float] = []
    fill_t: list[float] = []
    message_t: list[float] = []
    size = 0
    clock = time.perf_counter
    for address, name in recipients:
        t0 = clock()
        values, token = personalizer.values(address, name)
        t1 = clock()
        built.html.fill(values)
        built.text.fill(values)
        t2 = clock()
        message = template.render(address, name, values, token)
        t3 = clock()
        values_t.append(t1 - t0)
        fill_t.append(t2 - t1)
        message_t.append(t3 - t2)
        size += len(message)

    def rerender(address: str, name: str) -> None:
        again = publish.build_issue(config, issue)
        values, _ = personalizer.values(address, name)
        again.html.fill(values)
        again.text.fill(values)

    rerenders = [timed(lambda r=r: rerender(*r)) for r in recipients[: args.rerenders]]

    build_ms = median_ms(builds)
    fill_us = median_us(fill_t)
    values_us = median_us(values_t)
    message_us = median_us(message_t)
    rerender_us = median_us(rerenders)
    per_recipient_us = values_us + fill_us + message_us

    print(f"sample issue: {SAMPLE.name}")
    print(f"build_issue (markdown + jinja2 + sponsor + premailer), median of {args.builds}:")
    print(f"  {build_ms:10.2f} ms per issue")
    print(f"per recipient, median over {args.recipients} recipients:")
    print(f"  {values_us:10.2f} µs slot values (signed unsubscribe link)")
    print(f"  {fill_us:10.2f} µs SlotTemplate.fill, html + text")
    print(f"  {message_us:10.2f} µs MessageTemplate.render (includes its own fill + QP)")
    print(
        f"  {per_recipient_us:10.2f} µs total ({size / len(recipients) / 1024:.1f} KB a message)"
    )
    print(
        f"full render + premailer per recipient (build_issue + fill), median of {args.rerenders}:"
    )
    print(f"  {rerender_us:10.2f} µs")
    print("ratio, re-rendering vs filling:")
    print(f"  {rerender_us / fill_us:10.0f}x  (build_issue + fill) / fill")
    print(f"  {rerender_us / per_recipient_us:10.0f}x  (build_issue + fill) / per-recipient total")
    for count in (10_000, 100_000):
        print(
            f"  {count:,} recipients: {count * per_recipient_us / 1e6:8.1f} s with slots,"
            f" {count * rerender_us / 1e6:8.1f} s re-rendering (CPU only, no SMTP)"
        )
    merge_fields(config, issue, args.batches)
    if args.end_to_end:
        end_to_end(args.end_to_end, args.rounds)


# Two merge fields, one with a default; two thirds of the list have both attributes.
BODY_FIELDS = 'Hello {{ subscriber.company | default("there") }} in {{ subscriber.city }}.'
SUBJECT_FIELDS = " for {{ subscriber.city }}"
BATCH = 200  # messages in one timed batch


def issue_copies(folder: Path) -> dict[str, Path]:
    """The sample issue, and copies with the two fields in the body, and in both."""
    text = SAMPLE.read_text(encoding="utf-8")
    head, sep, body = text.partition("\n---\n")
    body_only = folder / f"{SAMPLE.stem}-body.md"
    body_only.write_text(f"{head}{sep}\n{BODY_FIELDS}\n\n{body}", encoding="utf-8")
    both = folder / f"{SAMPLE.stem}-both.md"
    subject = next(row for row in head.splitlines() if row.startswith("subject:"))
    both_head = head.replace(subject, subject + SUBJECT_FIELDS)
    both.write_text(f"{both_head}{sep}\n{BODY_FIELDS}\n\n{body}", encoding="utf-8")
    return {
        "no merge fields (today)": SAMPLE,
        "two fields in the body": body_only,
        "two fields in body + subject": both,
    }


CITIES = ["Irvine", "Zürich", "Oslo", "Lyon", "Austin"]


def attributes(n: int) -> dict[str, str]:
    """Two thirds of the list have both attributes; one city in five is not ASCII."""
    return {"company": f"Company {n % 97}", "city": CITIES[n % 5]} if n % 3 else {}


def merge_fields(config: Any, issue: Any, batches: int) -> None:
    """Per-message CPU of the runner's per-recipient work, without and with merge fields."""
    with tempfile.TemporaryDirectory() as tmp:
        modes = {
            label: publish.load_issue(path) for label, path in issue_copies(Path(tmp)).items()
        }
        senders = {}
        for label, source in modes.items():
            built = publish.build_issue(config, source)
            template = publish.message_template(config, built)
            personalizer = publish.Personalizer(
                config,
                built.issue.slug,
                tokens.Signer(b"bench-secret-not-for-production-0123456789"),
                slots=template.slots,
            )
            senders[label] = (personalizer, template)

    cities = ["Irvine", "Zürich", "Oslo", "Lyon", "Austin"]
    recipients = [
        (
            f"reader{n}@example.com",
            f"Reader {n}",
            json.dumps({"company": f"Company {n % 97}", "city": cities[n % 5]}) if n % 3 else "{}",
        )
        for n in range(BATCH)
    ]

    def batch(personalizer: publish.Personalizer, template: Any) -> float:
        """CPU seconds of one batch, on this thread: what the runner's _message does."""
        start = time.thread_time()
        for address, name, attributes in recipients:
            values, token = personalizer.values(address, name, attributes)
            template.render(address, name, values, token)
        return time.thread_time() - start

    for personalizer, template in senders.values():  # warm up
        batch(personalizer, template)
    timings: dict[str, list[float]] = {label: [] for label in senders}
    for _ in range(batches):
        for label, (personalizer, template) in senders.items():
            timings[label].append(batch(personalizer, template))

    baseline = statistics.median(timings["no merge fields (today)"]) / BATCH * 1e6
    print(
        f"merge fields: CPU per message (Personalizer.values + MessageTemplate.render),"
        f" median of {batches} batches of {BATCH}, modes taking turns:"
    )
    for label, samples in timings.items():
        per_message = statistics.median(samples) / BATCH * 1e6
        print(f"  {per_message:10.2f} µs  {label}  ({per_message / baseline:.3f}x)")


def end_to_end(n: int, rounds: int) -> None:
    """Whole campaigns per mode into `newsletter smtpd`: the client's CPU per message."""
    from newsletter.ledger import lifecycle
    from newsletter.ledger.store import Store, SubscriberRow
    from newsletter.send import campaign

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copy(ROOT / "newsletter.toml", root / "newsletter.toml")
        shutil.copytree(ROOT / "templates", root / "templates")
        (root / "issues").mkdir()
        modes = issue_copies(root / "issues")
        seeded = root / "seed.db"
        store = Store.open(f"sqlite:///{seeded}")
        store.upsert_subscribers(
            [
                SubscriberRow(f"reader{i:06d}@example.com", f"Reader {i}", attributes(i))
                for i in range(n)
            ]
        )
        store.close()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = subprocess.Popen(
            [sys.executable, "-m", "newsletter", "smtpd", "--port", str(port), "--dir", "out"],
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_listening(port)
            cpu: dict[str, list[float]] = {label: [] for label in modes}
            for run in range(rounds):
                for label, path in modes.items():
                    db = root / f"run-{run}-{len(cpu[label])}-{path.stem}.db"
                    shutil.copy(seeded, db)
                    config = config_mod.load(
                        root / "newsletter.toml",
                        {
                            "NEWSLETTER_DATABASE_URL": f"sqlite:///{db}",
                            "NEWSLETTER_SMTP_HOST": "127.0.0.1",
                            "NEWSLETTER_SMTP_PORT": str(port),
                            "NEWSLETTER_SMTP_SECURITY": "none",
                            "NEWSLETTER_SMTP_USERNAME": "",
                            "NEWSLETTER_SMTP_RATE": "0",
                            "NEWSLETTER_SECRET": "bench-secret-not-for-production-0123456789",
                        },
                    )
                    store = Store.open(config.database_url)
                    built = publish.build_issue(config, publish.load_issue(path))
                    campaign_id = lifecycle.create(store, built)
                    start = time.process_time()
                    result = campaign.run(store, config, campaign_id)
                    cpu[label].append((time.process_time() - start) / n)
                    store.close()
                    if result.sent != n:
                        raise SystemExit(f"end to end: {label}: sent {result.sent} of {n}")
        finally:
            server.terminate()
            server.wait(10)
    baseline = statistics.median(cpu["no merge fields (today)"]) * 1e6
    print(
        f"merge fields end to end: client CPU per message (campaign.run to {n:,} subscribers"
        f" into newsletter smtpd), median of {rounds} runs, modes taking turns:"
    )
    for label, samples in cpu.items():
        per_message = statistics.median(samples) * 1e6
        print(f"  {per_message:10.2f} µs  {label}  ({per_message / baseline:.3f}x)")


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.recv(512)  # the greeting: ready
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"newsletter smtpd is not listening on 127.0.0.1:{port} after 10 s")


if __name__ == "__main__":
    main()
