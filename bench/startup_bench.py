"""How long does a command take to start, and in how much memory (issue 20, "Start-up")?

Runs each command as a user does (the `newsletter` console script beside this Python,
in a fresh process) --runs times and prints the median and fastest wall time, the peak
RSS, the CPU time (user + system, the median) and the ratio of the median wall time to
its target. The peak RSS is GNU time's `%M`
(/usr/bin/time, Debian package `time`): a child's own ru_maxrss from os.wait4 would
count the bench's memory too, which the child holds between fork and exec. Without
/usr/bin/time it is that figure, marked `>=`. Two baselines run in the same loop:
`python -c pass` (the interpreter alone) and `python -c "import click"` (the floor of
any Click command).

- --version, --help, `subscribers --help`: target 150 ms.
- a completion request, what bash asks on each Tab
  (`_NEWSLETTER_COMPLETE=bash_complete COMP_WORDS="newsletter sub" COMP_CWORD=1`):
  target 150 ms.
- `run-due` with nothing due (cron's line, every minute), in a publication that
  `newsletter init --defaults` made, with a SQLite database at the newest schema and a
  campaign and a recurring rule scheduled but not yet due: target 300 ms.
- `status` in that publication (what a marketer runs in a loop during a send): target
  200 ms. With --postgres URL also on PostgreSQL, beside its floor `python -c "import
  click, psycopg"` (the database is emptied first: its public schema dropped and made
  again; never a database you keep).

    .venv/bin/python bench/startup_bench.py [--runs 15] [--compare main] [--postgres URL]

--compare REV runs the same commands with the package as it is at revision REV (from
`git archive`, on PYTHONPATH) in the same loop: the before and after of one run.

The runs of the cases are interleaved (case 1, case 2, ..., case 1, ...), so a burst
of load on a shared machine falls on every case alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

TARGET_CLI = 0.150  # s: --help, --version and completion (issue 20)
TARGET_RUN_DUE = 0.300  # s: run-due with nothing due
TARGET_STATUS = 0.200  # s: status (issue 20: "answering in under 200 ms during the send")


@dataclass
class Case:
    name: str
    argv: list[str]
    target: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    rss_kb: list[int] = field(default_factory=list)


def newsletter_command() -> list[str]:
    """The console script installed beside this Python, as a user runs it."""
    script = Path(sys.executable).with_name("newsletter")
    return [str(script)] if script.exists() else [sys.executable, "-m", "newsletter"]


GNU_TIME = Path("/usr/bin/time")


def run_once(case: Case, cwd: Path, rss_file: Path) -> None:
    env = {**os.environ, **case.env}
    argv = case.argv
    if GNU_TIME.exists():
        argv = [str(GNU_TIME), "-f", "%M", "-o", str(rss_file), *argv]
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.stderr is not None
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{case.name}: exit {proc.returncode}: {stderr.strip()}")
    case.walls.append(wall)
    case.cpus.append(usage.ru_utime + usage.ru_stime)  # with its children: GNU time's
    # KiB on Linux, both ways.
    rss = rss_file.read_text().split()[-1] if GNU_TIME.exists() else usage.ru_maxrss
    case.rss_kb.append(int(rss))


def make_publication(folder: Path, newsletter: list[str], databases: list[dict[str, str]]) -> Path:
    """A fresh publication with its database (each of `databases`: environments, {} for
    its own SQLite file) created and something scheduled, not due."""
    pub = folder / "pub"
    subprocess.run([*newsletter, "init", str(pub), "--defaults"], check=True, capture_output=True)
    issue = sorted((pub / "issues").glob("*.md"))[0]
    for env in databases:
        for args in (
            ["schedule", str(issue), "--at", "2099-12-01 09:00"],
            ["schedule", "--every", "0 9 * * TUE"],
            ["run-due"],  # once, so the measured runs find the schema current
        ):
            subprocess.run(
                [*newsletter, *args],
                cwd=pub,
                check=True,
                capture_output=True,
                env={**os.environ, **env},
            )
    return pub


def empty_postgres(url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    engine.dispose()


REPO = Path(__file__).resolve().parents[1]
CLICK_SA = "import click, sqlalchemy"
CLICK_PG = "import click, psycopg"
# What the console script does, for the package of another revision on PYTHONPATH.
CONSOLE_SCRIPT = "import sys; from newsletter.cli import main; sys.exit(main())"


def newsletter_cases(label: str, newsletter: list[str], env: dict[str, str]) -> list[Case]:
    complete = {"_NEWSLETTER_COMPLETE": "bash_complete", "COMP_WORDS": "newsletter sub"}
    return [
        Case(f"{label} --version", [*newsletter, "--version"], TARGET_CLI, env),
        Case(f"{label} --help", [*newsletter, "--help"], TARGET_CLI, env),
        Case(
            f"{label} subscribers --help", [*newsletter, "subscribers", "--help"], TARGET_CLI, env
        ),
        Case(
            f"{label} completion (Tab: sub)",
            newsletter,
            TARGET_CLI,
            {**env, **complete, "COMP_CWORD": "1"},
        ),
        Case(f"{label} run-due (nothing due)", [*newsletter, "run-due"], TARGET_RUN_DUE, env),
        Case(f"{label} status", [*newsletter, "status"], TARGET_STATUS, env),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="runs of each case (median kept)")
    parser.add_argument(
        "--compare",
        metavar="REV",
        help="also run the package as it is at git revision REV (e.g. main), for before/after",
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="also run `status` on this PostgreSQL database (postgresql+psycopg://...; the"
        " bench creates the ledger's tables in it and schedules a campaign)",
    )
    args = parser.parse_args()

    newsletter = newsletter_command()
    cases = [
        Case("python -c pass", [sys.executable, "-c", "pass"]),
        Case('python -c "import click"', [sys.executable, "-c", "import click"]),
        # The floor of any command that opens the ledger.
        Case("python -c 'import click, sqlalchemy'", [sys.executable, "-c", CLICK_SA]),
        *newsletter_cases("newsletter", newsletter, {}),
    ]
    databases: list[dict[str, str]] = [{}]
    if args.postgres:
        empty_postgres(args.postgres)
        postgres = {"NEWSLETTER_DATABASE_URL": args.postgres}
        databases.append(postgres)
        cases += [
            Case('python -c "import click, psycopg"', [sys.executable, "-c", CLICK_PG]),
            Case(
                "newsletter status (PostgreSQL)", [*newsletter, "status"], TARGET_STATUS, postgres
            ),
        ]
    with tempfile.TemporaryDirectory(prefix="startup-bench-") as tmp:
        if args.compare:
            before = Path(tmp) / "before"
            before.mkdir()
            archive = subprocess.run(
                ["git", "-C", str(REPO), "archive", args.compare, "newsletter"],
                check=True,
                capture_output=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
            as_script = [sys.executable, "-c", CONSOLE_SCRIPT]
            env = {"PYTHONPATH": str(before)}
            cases += newsletter_cases(f"{args.compare}:", as_script, env)
            if args.postgres:
                postgres = {**env, "NEWSLETTER_DATABASE_URL": args.postgres}
                name = f"{args.compare}: status (PostgreSQL)"
                cases.append(Case(name, [*as_script, "status"], TARGET_STATUS, postgres))
        pub = make_publication(Path(tmp), newsletter, databases)
        rss_file = Path(tmp) / "rss"
        for case in cases:
            run_once(case, pub, rss_file)  # warm the file cache; not counted
            case.walls.clear()
            case.cpus.clear()
            case.rss_kb.clear()
        for _ in range(args.runs):
            for case in cases:
                run_once(case, pub, rss_file)
        shutil.rmtree(pub)

    print(f"{' '.join(newsletter)}; {args.runs} runs each, interleaved; load {os.getloadavg()}")
    print(
        f"{'command':<40}{'median':>9}{'fastest':>9}{'CPU':>9}{'peak RSS':>10}"
        f"{'target':>8}{'ratio':>7}"
    )
    for case in cases:
        median = statistics.median(case.walls)
        rss = max(case.rss_kb) / 1024
        at_least = "" if GNU_TIME.exists() else ">="
        target = f"{case.target * 1000:.0f} ms" if case.target else ""
        ratio = f"{median / case.target:.2f}" if case.target else ""
        print(
            f"{case.name:<40}{median * 1000:>6.0f} ms{min(case.walls) * 1000:>6.0f} ms"
            f"{statistics.median(case.cpus) * 1000:>6.0f} ms"
            f"{at_least:>3}{rss:>4.1f} MB{target:>8}{ratio:>7}"
        )
    print(
        "median, fastest: wall time; CPU: user + system time (median), which other load on"
        " the machine inflates less than wall time\nratio: median wall time / target"
        " (under 1.00 meets it)"
    )


if __name__ == "__main__":
    main()
