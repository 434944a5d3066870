"""The content score: SpamAssassin's verdict on the built message, rule by rule.

SpamAssassin runs with its local rules only (`--local`: no DNS blocklists, Razor or
Pyzor, nothing leaves the machine) and learns nothing (no Bayes, no auto-learn), so
checking an issue twice gives the same score and never changes the filter. No user
preferences are read (`--prefspath /dev/null`): the score is the machine's rules alone
(Debian's package ships them in /usr/share/spamassassin; /etc/spamassassin adds the
site's). SpamAssassin still makes an empty ~/.spamassassin, as every run of it does.

The message scored has no Received header: it has not travelled yet. The rules about
relays and reverse DNS therefore cannot fire, and what is scored is the content.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32

from newsletter.errors import NewsletterError
from newsletter.issue.check import Finding

EXECUTABLE = "spamassassin"
INSTALL_HINT = "apt-get install spamassassin"
# Scoring the sample issue takes about 1.1 s on a 2-core machine, nearly all of it
# loading the rules; 60 s leaves room for a slow disk or a long issue, and still ends
# a run that hangs before CI's or a user's patience does.
TIMEOUT = 60.0

# SpamAssassin puts these in the headers of the message it hands back (as X-Spam-...);
# the points of every rule that fired, and its report with their descriptions.
_TESTS_HEADER = "X-Spam-Newsletter-Tests"
_REPORT_HEADER = "X-Spam-Newsletter-Report"
_SCORE_HEADER = "X-Spam-Newsletter-Score"
_OPTIONS = (
    "--local",
    "--nocreate-prefs",
    "--prefspath",
    os.devnull,
    "--cf",
    "use_bayes 0",
    "--cf",
    "bayes_auto_learn 0",
    # Headers only, the message untouched: nothing to strip back out.
    "--cf",
    "report_safe 0",
    "--cf",
    "add_header all Newsletter-Score _SCORE_",
    "--cf",
    "add_header all Newsletter-Tests _TESTSSCORES(,)_",
    "--cf",
    "add_header all Newsletter-Report _REPORT_",
)
_REPORT_LINE = re.compile(r"\s*-?\d+(?:\.\d+)?\s+(?P<name>\w+)\s+(?P<text>.*)")
# "Nov 29 14:01:04.416 [12853] warn: " before a warning, " at /usr/bin/spamassassin
# line 426." after a fatal error: neither helps the reader.
_LOG_PREFIX = re.compile(r"^\w{3} +\d+ [\d:.]+ \[\d+\] \w+: ")
_PERL_WHERE = re.compile(r" at \S+ line \d+\.?$")


class SpamAssassinMissing(NewsletterError):
    """SpamAssassin is not installed (or not where it was said to be)."""


class SpamAssassinFailed(NewsletterError):
    """SpamAssassin ran but gave no score: it failed, timed out or answered garbage."""


@dataclass(frozen=True)
class Rule:
    name: str
    points: float  # as SpamAssassin's rules give them, e.g. 0.713
    description: str

    @property
    def counts(self) -> bool:
        """Whether the rule adds to the score as SpamAssassin reports it.

        Informational rules carry +-0.001 points, so that they show in reports without
        counting; SpamAssassin shows points to one decimal, and so do we.
        """
        return round(self.points, 1) > 0


@dataclass(frozen=True)
class Score:
    total: float
    rules: tuple[Rule, ...]  # highest points first


def score(message: bytes, executable: str | None = None, timeout: float = TIMEOUT) -> Score:
    """SpamAssassin's score of `message` (the bytes of an RFC 5322 message).

    `executable` is the spamassassin program (default: found on PATH). Raises
    SpamAssassinMissing without it, SpamAssassinFailed when the run fails or lasts
    longer than `timeout` seconds.
    """
    program = executable or shutil.which(EXECUTABLE)
    if not program:
        raise SpamAssassinMissing(
            f"SpamAssassin is not installed ({EXECUTABLE} is not on PATH);"
            f" install it to score the issue: {INSTALL_HINT}"
        )
    if not os.path.isfile(program):
        raise SpamAssassinMissing(
            f"{program}: no such program; install SpamAssassin: {INSTALL_HINT}"
        )
    try:
        done = subprocess.run(
            [program, *_OPTIONS], input=message, capture_output=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise SpamAssassinFailed(
            f"{program}: no score after {timeout:g} s; SpamAssassin was stopped"
        ) from None
    except OSError as exc:
        raise SpamAssassinFailed(f"{program}: cannot run: {exc.strerror or exc}") from None
    if done.returncode != 0:
        said = _first_line(done.stderr) or "no message"
        raise SpamAssassinFailed(f"{program}: failed (exit {done.returncode}): {said}")
    return parse(done.stdout, program)


def parse(scored: bytes, program: str = EXECUTABLE) -> Score:
    """The score in the headers SpamAssassin added to the message it handed back."""
    # compat32 keeps the folded header text as it came, line breaks included: the
    # report's lines are told apart by them.
    headers = BytesHeaderParser(policy=compat32).parsebytes(scored)
    total, tests = headers.get(_SCORE_HEADER), headers.get(_TESTS_HEADER)
    if total is None or tests is None:
        raise SpamAssassinFailed(f"{program}: its output has no score (is it SpamAssassin?)")
    try:
        value = float(str(total).strip())
        points = {
            name: float(number)
            for name, _, number in (
                item.partition("=") for item in "".join(str(tests).split()).split(",") if item
            )
        }
    except ValueError:
        raise SpamAssassinFailed(f"{program}: cannot read its score: {tests} ({total})") from None
    descriptions = _descriptions(str(headers.get(_REPORT_HEADER, "")), set(points))
    rules = [Rule(name, p, descriptions.get(name, "")) for name, p in points.items()]
    rules.sort(key=lambda r: (-r.points, r.name))
    return Score(total=value + 0.0, rules=tuple(rules))  # + 0.0: no "-0.0" shown


def findings(result: Score, spam_max: float) -> list[Finding]:
    """One finding per rule that fired, then the total: an error over `spam_max`.

    A rule that adds points is a warning: it says what to change. The others are
    "info": they do not hurt, and show what SpamAssassin saw.
    """
    out = []
    for rule in result.rules:
        about = f": {rule.description}" if rule.description else ""
        out.append(
            Finding(
                "warning" if rule.counts else "info",
                "spam-rule",
                f"SpamAssassin {rule.name} {rule.points:+.1f}{about}",
                "message",
            )
        )
    if result.total > spam_max:
        out.append(
            Finding(
                "error",
                "spam-score",
                f"SpamAssassin scores the message {result.total:.1f},"
                f" over {float(spam_max)} ([check] spam_max)",
                "message",
            )
        )
    else:
        out.append(
            Finding(
                "info",
                "spam-score",
                f"SpamAssassin scores the message {result.total:.1f}"
                f" (at most {float(spam_max)}, [check] spam_max)",
                "message",
            )
        )
    return out


def _descriptions(report: str, names: set[str]) -> dict[str, str]:
    """{rule: description} from SpamAssassin's report, whose lines read
    "*  0.7 HTML_FONT_LOW_CONTRAST BODY: HTML font color similar or identical to"
    with a long description going on after "*" on the lines below. Only the `names`
    that fired start an entry, so a description's own words never do."""
    out: dict[str, str] = {}
    name = ""
    for line in report.splitlines():
        line = line.strip().removeprefix("*")
        match = _REPORT_LINE.fullmatch(line)
        if match and match["name"] in names:
            name = match["name"]
            out[name] = match["text"].strip()
        elif name and line.strip():
            out[name] += " " + line.strip()
    return out


def _first_line(stderr: bytes) -> str:
    for line in stderr.decode("utf-8", "replace").splitlines():
        if line.strip():
            return _PERL_WHERE.sub("", _LOG_PREFIX.sub("", line.strip()))
    return ""
