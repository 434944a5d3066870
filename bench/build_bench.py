"""Build once, fill per recipient: what the slots save over re-rendering for everyone.

Run from the repository root:

    .venv/bin/python bench/build_bench.py [--builds N] [--recipients N] [--rerenders N]

Prints the time to build the sample issue (Markdown, Jinja2, sponsor block,
premailer), the per-recipient cost of filling the slots and of rendering the
message bytes, beside the cost of re-running the full render + premailer for
every recipient, and the ratio. Figures only; nothing is asserted. No files are
written and no mail is sent.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

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


if __name__ == "__main__":
    main()
