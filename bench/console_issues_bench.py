"""How long does the console's /issues page take with many issue files (issue 21)?

Every issue on the page carries `newsletter check`'s findings, and a check is a build.
The page keeps each file's findings while the issue files, newsletter.toml and the
templates are unchanged (web/console/issues.CheckCache, at most 60 s). This prints the
time of the first visit (every issue built and checked: the baseline, what the page
would cost on every visit without the cache) and of the visits after it, for a copy
of the sample publication with --issues dated copies of the sample issue.

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
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from console_support import make_console, running  # noqa: E402


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
        console = make_console(root / "newsletter.toml")
        with running(console) as web:
            first = timed(web.url + "/issues")
            after = [timed(web.url + "/issues") for _ in range(args.runs)]
    print(f"/issues with {args.issues} issue files")
    print(f"  first visit (each issue built and checked): {first * 1000:8.0f} ms")
    later = statistics.median(after)
    print(f"  later visits, median of {args.runs}: {later * 1000:8.0f} ms")
    print(f"  ratio first / later: {first / later:.1f}x")


def timed(url: str) -> float:
    start = time.perf_counter()
    response = httpx.get(url, timeout=300)
    response.raise_for_status()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
