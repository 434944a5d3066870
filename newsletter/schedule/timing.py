"""Time zones and wall-clock times: pure functions, no database, no scheduler.

A campaign is scheduled for a wall-clock time in a zone; what it means in UTC is
decided here, refusing times that daylight saving makes unclear (skipped, or
happening twice) rather than guessing.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

from newsletter.errors import UsageError

# Every refusal here is about a value the user typed (--at, --tz, --fold): a usage
# error, exit 2. [publication] timezone is checked when the config is read.


class AmbiguousTime(UsageError):
    """A wall-clock time that happens twice in its zone (the clocks go back): `choices`
    are the two readings, (fold, "PDT, UTC-0700"), for a caller to offer."""

    def __init__(self, message: str, choices: tuple[tuple[int, str], tuple[int, str]]) -> None:
        super().__init__(message)
        self.choices = choices


def zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise UsageError(
            f"--tz {name!r}: unknown time zone (use an IANA name like America/Los_Angeles)"
        ) from None


def parse_local(text: str) -> dt.datetime:
    """ "2026-12-01 09:00", "2026-12-01T09:00:30" -> a naive local datetime."""
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--at {text!r}: expected a local time like '2026-12-01 09:00'") from None
    if value.tzinfo is not None:
        raise UsageError(f"--at {text!r}: give the local time without an offset; use --tz")
    return value


def _exists(local: dt.datetime, tz: zoneinfo.ZoneInfo) -> bool:
    aware = local.replace(tzinfo=tz)
    back = aware.astimezone(dt.UTC).astimezone(tz).replace(tzinfo=None)
    return back == local


def _ambiguous(local: dt.datetime, tz: zoneinfo.ZoneInfo) -> bool:
    a = local.replace(tzinfo=tz, fold=0).utcoffset()
    b = local.replace(tzinfo=tz, fold=1).utcoffset()
    return a != b and _exists(local, tz)


def resolve_local(local: dt.datetime, tz: zoneinfo.ZoneInfo, fold: int | None) -> dt.datetime:
    """The UTC instant of a wall-clock time in a zone, refusing times DST makes unclear."""
    if not _exists(local, tz):
        before = after = local
        for _ in range(24 * 60):
            before -= dt.timedelta(minutes=1)
            if _exists(before, tz):
                break
        for _ in range(24 * 60):
            after += dt.timedelta(minutes=1)
            if _exists(after, tz):
                break
        raise UsageError(
            f"{local:%Y-%m-%d %H:%M} does not exist in {tz.key} (the clocks skip it);"
            f" the nearest valid times are {before:%H:%M} and {after:%H:%M}"
        )
    if _ambiguous(local, tz):
        if fold is None:
            first = local.replace(tzinfo=tz, fold=0)
            second = local.replace(tzinfo=tz, fold=1)
            raise AmbiguousTime(
                f"{local:%Y-%m-%d %H:%M} happens twice in {tz.key} (the clocks go back):"
                f" --fold 0 for the first ({first:%Z}, UTC{first:%z}),"
                f" --fold 1 for the second ({second:%Z}, UTC{second:%z})",
                ((0, f"{first:%Z}, UTC{first:%z}"), (1, f"{second:%Z}, UTC{second:%z}")),
            )
        local = local.replace(fold=fold)
    return local.replace(tzinfo=tz).astimezone(dt.UTC)


def describe_local(when_utc: dt.datetime, tz_name: str) -> str:
    """The date, time and zone of an instant as its zone's clocks show it."""
    local = when_utc.astimezone(zone(tz_name))
    return f"{local:%Y-%m-%d %H:%M:%S %Z} ({tz_name})"


def refuse_past(when_utc: dt.datetime, tz_name: str, now: dt.datetime) -> None:
    """A scheduled time must be ahead: both the time and now shown with their dates."""
    if when_utc <= now:
        raise UsageError(
            f"--at: {describe(when_utc, tz_name)} is in the past"
            f" (now: {describe_local(now, tz_name)})"
        )


def describe(when_utc: dt.datetime, tz_name: str) -> str:
    local = when_utc.astimezone(zone(tz_name))
    return f"{local:%Y-%m-%d %H:%M:%S %Z} ({tz_name}) = {when_utc:%Y-%m-%d %H:%M:%S} UTC"


def human(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"
