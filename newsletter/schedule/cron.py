"""Cron expressions as cron reads them, computed with APScheduler's triggers.

Five fields, cron's weekday numbers (0 or 7 is Sunday), names (MON, JAN), and the
@hourly/@daily/@weekly/@monthly/@yearly shorthands. When both the day of the month
and the day of the week are restricted, cron fires on either (`0 9 1 * MON`: the
1st, and every Monday); APScheduler alone would need both, so the two are computed
apart and the earlier tick wins.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

from newsletter.errors import UsageError
from newsletter.schedule.timing import zone

_DOW_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_MONTH_NAMES = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # the names cron takes for the numbers from `low`

    def allowed(self) -> str:
        names = f", or {self.names[0].upper()}-{self.names[-1].upper()}" if self.names else ""
        return f"{self.low}-{self.high}{names}"


# crontab(5): the five fields, their ranges, and the names month and weekday take.
_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day of month", 1, 31),
    _Field("month", 1, 12, tuple(_MONTH_NAMES)),
    _Field("day of week", 0, 7, tuple(_DOW_NAMES)),  # 0 and 7 are both Sunday
)


def _check_field(expression: str, spec: _Field, text: str) -> None:
    """One field as crontab(5) reads it: '*', a value or a range 'a-b', each with an
    optional '/step', in a comma-separated list. Our wording names the field and its
    range (APScheduler's names its own fields and takes more than cron does)."""

    def bad(why: str) -> UsageError:
        return UsageError(
            f"--every {expression!r}: {spec.name} {text!r}: {why} (allowed: {spec.allowed()})"
        )

    def value(token: str) -> int:
        if token.isdigit():
            number = int(token)
        elif token.lower() in spec.names:
            number = spec.low + spec.names.index(token.lower())
        else:
            kind = "a number or a name" if spec.names else "a number"
            raise bad(f"{token!r} is not {kind}")
        if not spec.low <= number <= spec.high:
            raise bad(f"{number} is out of range")
        return number

    for item in text.split(","):
        part, slash, step = item.partition("/")
        if slash and not (step.isdigit() and int(step) > 0):
            raise bad(f"the step {step!r} must be a whole number from 1")
        if part == "*":
            continue
        first, dash, last = part.partition("-")
        if not first or (dash and not last):
            raise bad(f"{item!r} is not a value, a range a-b or *")
        start = value(first)
        # A weekday range may wrap past Sunday (fri-sun, 5-0); no other range may.
        if dash and value(last) < start and spec.name != "day of week":
            raise bad(f"the range {part!r} runs backwards")


def _cron_dow(field_text: str) -> str:
    """Day-of-week in cron's meaning (0 or 7 = Sunday) as names for APScheduler,
    whose numbers start at Monday."""

    def day(token: str) -> int:
        token = token.lower()
        if token in _DOW_NAMES:
            return _DOW_NAMES.index(token)
        if token.isdigit() and 0 <= int(token) <= 7:
            return int(token) % 7
        raise UsageError(f"day of week {token!r}: expected 0-7 or sun..sat")

    days: set[int] = set()
    for item in field_text.split(","):
        part, _, step_text = item.partition("/")
        step = int(step_text) if step_text.isdigit() else 1
        if step_text and not step_text.isdigit():
            raise UsageError(f"day of week {item!r}: bad step")
        if part == "*":
            start, end = 0, 6
        elif "-" in part:
            a, b = part.split("-", 1)
            start, end = day(a), day(b)
            if end < start:  # "1-7" or "fri-sun": up to Sunday at the end of the week
                end += 7
        else:
            start = end = day(part)
            if step_text:
                end = 6
        days.update(d % 7 for d in range(start, end + 1, step))
    # APScheduler: mon=0 .. sun=6; order the names its way for readability.
    order = [1, 2, 3, 4, 5, 6, 0]
    return ",".join(_DOW_NAMES[d] for d in order if d in days)


def _cron_month(field_text: str) -> str:
    """Month names as numbers: APScheduler takes a name alone, not in a range with a
    number (1-mar) or with a step (jan/2), which cron takes."""
    return re.sub(r"[a-z]+", lambda m: str(_MONTH_NAMES.index(m.group()) + 1), field_text.lower())


# The shorthands of cron(8), as the five fields they stand for.
SHORTHANDS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def cron_trigger(expression: str, tz_name: str) -> BaseTrigger:
    """The trigger of a cron expression in a zone (wall-clock times, across DST)."""
    fields = SHORTHANDS.get(expression.strip().lower(), expression).split()
    if len(fields) != 5:
        raise UsageError(
            f"--every {expression!r}: expected 5 fields (minute hour day month weekday),"
            " for example '0 9 * * TUE', or @daily, @weekly, @monthly"
        )
    for spec, text in zip(_FIELDS, fields, strict=True):
        _check_field(expression, spec, text)
    minute, hour, day, month, dow = fields
    tz = zone(tz_name)

    def trigger(day: str, dow: str) -> CronTrigger:
        return CronTrigger(
            minute=minute,
            hour=hour,
            day=day,
            month=_cron_month(month),
            day_of_week=_cron_dow(dow),
            timezone=tz,
        )

    try:
        # crontab(5): with both days restricted (neither starts with "*"), a day that
        # matches either one fires.
        if not day.startswith("*") and not dow.startswith("*"):
            return OrTrigger([trigger(day, "*"), trigger("*", dow)])
        return trigger(day, dow)
    except ValueError as exc:  # pragma: no cover - _check_field lets through only what it takes
        raise UsageError(f"--every {expression!r}: {exc}") from None


def next_tick(expression: str, tz_name: str, after: dt.datetime) -> dt.datetime:
    """The first tick strictly after `after`, in UTC."""
    trigger = cron_trigger(expression, tz_name)
    fire = trigger.get_next_fire_time(None, after + dt.timedelta(seconds=1))
    if fire is None:  # a day no month has: '0 9 31 2 *'
        raise UsageError(f"--every {expression!r}: never fires (no such day in those months)")
    return fire.astimezone(dt.UTC)
