"""Sponsor bookings: deterministic rotation by dates and weights; pinned sponsors checked."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from campaign_support import Publication, add_subscribers, make_publication
from click.testing import CliRunner
from smtp_fixtures import SmtpServer

from newsletter import config as config_mod
from newsletter.cli import cli
from newsletter.issue import publish, sponsor
from newsletter.issue.content import read_issue
from newsletter.ledger import lifecycle
from newsletter.send import campaign

BOOKINGS = """
[sponsors.acme]
name = "Acme Rockets"
url = "https://acme.example.com"
start = 2026-12-01
end = 2026-12-31
weight = 2

[sponsors.bolt]
name = "Bolt Bikes"
url = "https://bolt.example.com"
start = 2026-12-01
end = 2027-01-31
weight = 1
"""


@pytest.fixture
def pub(tmp_path: Path, smtp_server: SmtpServer) -> Publication:
    pub = make_publication(tmp_path, f"sqlite:///{tmp_path / 'r.db'}", smtp_server.port)
    with pub.config_path.open("a", encoding="utf-8") as fh:
        fh.write(BOOKINGS)
    return pub


def write_issue(pub: Publication, day: dt.date, slug: str, sponsor_line: str = "") -> Path:
    path = pub.root / "issues" / f"{day.isoformat()}-{slug}.md"
    path.write_text(
        f"---\ntitle: Issue {slug}\nsubject: Issue {slug}\npreheader: News.\n{sponsor_line}---\n\n"
        f"Body of {slug}.\n",
        encoding="utf-8",
    )
    return path


def daily(pub: Publication, start: dt.date, days: int) -> list[Path]:
    return [write_issue(pub, start + dt.timedelta(days=n), f"day{n:02d}") for n in range(days)]


def chosen(pub: Publication, path: Path) -> str | None:
    picked = sponsor.choose(pub.config(), read_issue(path))
    return picked.id if picked else None


def test_rotation_follows_weights_and_spreads_evenly(pub: Publication) -> None:
    paths = daily(pub, dt.date(2026, 12, 1), 30)
    picks = [chosen(pub, p) for p in paths]
    assert Counter(picks) == {"acme": 20, "bolt": 10}
    # Evenly spread: never three acme in a row, never two bolt in a row.
    run = "".join("a" if p == "acme" else "b" for p in picks)
    assert "aaa" not in run and "bb" not in run


def test_rotation_respects_dates(pub: Publication) -> None:
    before = write_issue(pub, dt.date(2026, 11, 30), "before")
    january = daily(pub, dt.date(2027, 1, 1), 3)
    after = write_issue(pub, dt.date(2027, 2, 1), "after")
    assert chosen(pub, before) == "helloshuttle"  # no booking: the default
    assert [chosen(pub, p) for p in january] == ["bolt"] * 3  # acme's booking ended
    assert chosen(pub, after) == "helloshuttle"


def test_rotation_is_deterministic_and_stable_when_later_issues_arrive(pub: Publication) -> None:
    first = daily(pub, dt.date(2026, 12, 1), 6)
    picks = [chosen(pub, p) for p in first]
    assert picks == [chosen(pub, p) for p in first]
    write_issue(pub, dt.date(2026, 12, 20), "later")
    assert picks == [chosen(pub, p) for p in first]


def test_pinned_issues_keep_their_sponsor_and_stay_out_of_the_rotation(pub: Publication) -> None:
    pinned = write_issue(pub, dt.date(2026, 12, 1), "pinned", "sponsor: bolt\n")
    free = write_issue(pub, dt.date(2026, 12, 2), "free")
    assert chosen(pub, pinned) == "bolt"
    assert chosen(pub, free) == "acme"  # first turn of the rotation: the heavier weight


@pytest.mark.parametrize(
    ("day", "message"),
    [
        (dt.date(2027, 1, 5), "sponsor 'acme' was booked until 2026-12-31"),
        (dt.date(2026, 11, 5), "sponsor 'acme' is booked from 2026-12-01"),
    ],
)
def test_check_fails_a_pinned_sponsor_outside_its_booking(
    pub: Publication, day: dt.date, message: str
) -> None:
    path = write_issue(pub, day, "pinned", "sponsor: acme\n")
    result = CliRunner().invoke(
        cli, ["--config", str(pub.config_path), "check", str(path)], env=pub.env
    )
    assert result.exit_code == 1
    assert f"error: {message}; this issue is dated {day}" in result.stdout


def test_build_and_send_agree_on_the_sponsor(pub: Publication, smtp_server: SmtpServer) -> None:
    paths = daily(pub, dt.date(2026, 12, 1), 3)
    target = paths[1]
    expected = chosen(pub, target)
    assert expected == "bolt"
    config = pub.config()
    built = publish.build_issue(config, publish.load_issue(target))
    assert "Bolt Bikes" in publish.sample(config, built).html
    store = pub.store()
    add_subscribers(store, 1)
    campaign.run(store, config, lifecycle.create(store, built))
    body = smtp_server.received[0].parse().get_body(("html",)).get_content()
    assert "Bolt Bikes" in body and "Acme Rockets" not in body


def test_sponsors_list_shows_bookings_and_issues(
    pub: Publication, smtp_server: SmtpServer
) -> None:
    paths = daily(pub, dt.date(2026, 12, 1), 3)
    config = pub.config()
    store = pub.store()
    add_subscribers(store, 1)
    built = publish.build_issue(config, publish.load_issue(paths[0]))
    campaign.run(store, config, lifecycle.create(store, built))
    result = CliRunner().invoke(
        cli, ["--config", str(pub.config_path), "sponsors", "list", "--json"], env=pub.env
    )
    assert result.exit_code == 0, result.output
    rows = {b["id"]: b for b in json.loads(result.stdout)["sponsors"]}
    assert rows["acme"]["start"] == "2026-12-01" and rows["acme"]["weight"] == 2
    assert [s["issue"] for s in rows["acme"]["sent_in"]] == ["day00"]
    assert rows["bolt"]["planned"] == ["day01"] and rows["acme"]["planned"] == ["day02"]
    assert rows["helloshuttle"]["default"] is True


def test_bad_booking_config_is_a_clear_error(pub: Publication) -> None:
    text = pub.config_path.read_text().replace("weight = 2", "weight = 0")
    pub.config_path.write_text(text)
    result = CliRunner().invoke(cli, ["--config", str(pub.config_path), "sponsors", "list"])
    assert result.exit_code == 2 and "[sponsors.acme] weight: must be 1 or more" in result.stderr
    pub.config_path.write_text(text.replace("weight = 0", "weight = 1").replace(
        "end = 2026-12-31", 'end = "soon"'))  # fmt: skip
    result = CliRunner().invoke(cli, ["--config", str(pub.config_path), "sponsors", "list"])
    assert result.exit_code == 2 and "expected a date like 2026-12-01" in result.stderr


def test_preview_shows_the_same_sponsor_as_build_and_send(pub: Publication) -> None:
    from newsletter.web import preview_sources

    paths = daily(pub, dt.date(2026, 12, 1), 3)
    assert chosen(pub, paths[1]) == "bolt"
    source = preview_sources.IssueSource(pub.config_path, paths[1])
    source.refresh()
    rendering = source.snapshot(preview_sources.ISSUE_KEY).rendering
    assert rendering is not None
    assert "Bolt Bikes" in rendering.html and "Acme Rockets" not in rendering.html


# --- the README's worked example ------------------------------------------------------


def readme_worked_example() -> tuple[list[str], list[str]]:
    """The shell blocks and the output blocks of the README's sponsors example, in order."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    start = readme.index("### A worked example: two sponsors over a quarter")
    section = readme[start : readme.index("\n## ", start)]
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", section, re.S | re.M)
    return [b for kind, b in blocks if kind == "sh"], [b for kind, b in blocks if not kind]


def test_the_readmes_sponsor_bookings_load_and_rotate_as_it_shows(tmp_path: Path) -> None:
    """The README's first two blocks, run as written: the config loader takes its
    [sponsors] tables, and `sponsors list` prints what the README shows."""
    shell, outputs = readme_worked_example()
    assert "cat >> newsletter.toml <<'EOF'" in shell[0]
    bin_dir = Path(sys.executable).parent  # where this environment's `newsletter` is
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    run = subprocess.run(
        ["bash", "-e", "-c", shell[0] + shell[1]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    config = config_mod.load(tmp_path / "sponsors-demo" / "newsletter.toml", environ={})
    acme, globex = config.sponsors["acme"], config.sponsors["globex"]
    assert (acme.start, acme.end, acme.weight) == (dt.date(2027, 1, 1), dt.date(2027, 3, 31), 2)
    assert (globex.start, globex.end, globex.weight) == (acme.start, acme.end, 1)
    assert run.stdout.endswith(outputs[0])


def test_choices_for_many_issues_are_choose_for_each(pub: Publication) -> None:
    """The console's plan and `sponsors list` work the rotation out once for every issue:
    the same sponsors as `choose` one issue at a time; an unknown pinned one left out."""
    paths = daily(pub, dt.date(2026, 11, 28), 40)
    paths.append(write_issue(pub, dt.date(2026, 12, 9), "pinned", "sponsor: bolt\n"))
    paths.append(write_issue(pub, dt.date(2026, 12, 10), "bare", "sponsor: none\n"))
    unknown = write_issue(pub, dt.date(2026, 12, 11), "typo", "sponsor: acmee\n")
    config = pub.config()
    issues = [read_issue(p) for p in [*paths, unknown]]
    picked = sponsor.choices(config, issues)
    assert {p: (s.id if s else None) for p, s in picked.items()} == {
        p: chosen(pub, p) for p in paths
    }
    assert unknown not in picked
    assert {s.id if s else None for s in picked.values()} == {"helloshuttle", "acme", "bolt", None}
