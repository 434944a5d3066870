"""How long do the console's /issues and /sponsors pages take with many issue files
(issue 21)?

Every issue on the page carries `newsletter check`'s findings, and a check is a build.
The page keeps each file's findings while the issue files, newsletter.toml and the
templates are unchanged (web/console/issues.CheckCache, at most 60 s). This prints the
time of the first visit (every issue built and checked: the baseline, what the page
would cost on every visit without the cache) and of the visits after it, for a copy
of the sample publication with --issues dated copies of the sample issue.

The sponsors page says which sponsor each issue carries: `sponsor.choose` one issue at
a time reads every issue file for the rotation (n issues: n readings of issues/), where
`sponsor.choices` reads them once for all. Both are timed over the same issues with a
booking (the first is the baseline), then the /sponsors page.

    .venv/bin/python bench/console_issues_bench.py [--issues 40] [--runs 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from console_support import make_console, running  # noqa: E402

from newsletter.issue.content import issue_files, read_issue  # noqa: E402
from newsletter.issue.sponsor import choices, choose  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--issues", type=int, default=40)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("NEWSLETTER_SECRET", "bench-secret-not-for-production-0123456789")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copy(REPO / "newsletter.toml", root / "newsletter.toml")
        shutil.copytree(REPO / "templates", root / "templates")
        (root / "issues").mkdir()
        sample = next((REPO / "issues").glob("*.md")).read_text(encoding="utf-8")
        sample = "\n".join(line for line in sample.split("\n") if not line.startswith("date:"))
        start = dt.date(2025, 1, 6)
        for n in range(args.issues):
            day = start + dt.timedelta(weeks=n)
            (root / "issues" / f"{day}-issue-{n}.md").write_text(sample, encoding="utf-8")
        with (root / "newsletter.toml").open("a", encoding="utf-8") as toml:
            toml.write(
                '\n[sponsors.acme]\nname = "Acme"\nurl = "https://acme.example.com"\n'
                f"start = {start}\nend = {start + dt.timedelta(weeks=args.issues)}\n"
            )
        console = make_console(root / "newsletter.toml")
        issues = [read_issue(p) for p in issue_files(console.config.issues_dir)]
        one_by_one = best_of(args.runs, lambda: [choose(console.config, i) for i in issues])
        at_once = best_of(args.runs, lambda: choices(console.config, issues))
        with running(console) as web:
            first = timed(web.url + "/issues")
            after = [timed(web.url + "/issues") for _ in range(args.runs)]
            sponsors = [timed(web.url + "/sponsors") for _ in range(args.runs)]
    print(f"/issues with {args.issues} issue files")
    print(f"  first visit (each issue built and checked): {first * 1000:8.0f} ms")
    later = statistics.median(after)
    print(f"  later visits, median of {args.runs}: {later * 1000:8.0f} ms")
    print(f"  ratio first / later: {first / later:.1f}x")
    print(f"each issue's sponsor, {args.issues} issues with a booking (best of {args.runs})")
    print(f"  sponsor.choose, one issue at a time: {one_by_one * 1000:8.0f} ms")
    print(f"  sponsor.choices, all at once:        {at_once * 1000:8.0f} ms")
    print(f"  ratio: {one_by_one / at_once:.1f}x")
    print(f"/sponsors, median of {args.runs}: {statistics.median(sponsors) * 1000:8.0f} ms")


def best_of(runs: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def timed(url: str) -> float:
    start = time.perf_counter()
    response = httpx.get(url, timeout=300)
    response.raise_for_status()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
