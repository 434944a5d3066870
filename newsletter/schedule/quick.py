"""run-due's first look: is anything there for it, asked without SQLAlchemy.

cron runs `newsletter run-due` every minute and mostly nothing is due; importing
SQLAlchemy alone costs about 0.15 s of a run, more than everything else an idle run
does. On a SQLite ledger (the default) this asks the file directly through the
standard library's sqlite3, read-only, in one query: a scheduled campaign whose time
has come, a campaign still `sending` (its runner may have died), an incomplete one
whose retry time has come, or a recurring rule whose tick has come: exactly what
schedules.due and schedules.due_rules select (tests/test_run_due_quick.py compares
the two). Only a certain "nothing" skips the full run; anything else (another
database, a file not there yet, a schema not at this release's revision, any error)
answers "look properly", and run-due does what it always did.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from urllib.parse import unquote, urlsplit

from newsletter.ledger.revision import HEAD

# The values of tables.SCHEDULED, RUNNING, INCOMPLETE and schedules.ACTIVE_RULE (the
# test holds them equal), and SQLAlchemy's way of keeping a DateTime in SQLite: text
# that sorts as the time does.
_SCHEDULED, _RUNNING, _INCOMPLETE, _ACTIVE_RULE = "scheduled", "sending", "incomplete", "active"
_STORED_TIME = "%Y-%m-%d %H:%M:%S.%f"

_ANYTHING = f"""
SELECT
  (SELECT version_num FROM newsletter_alembic_version),
  EXISTS (SELECT 1 FROM campaigns
          WHERE (status = '{_SCHEDULED}' AND scheduled_at <= :now)
             OR status = '{_RUNNING}'
             OR (status = '{_INCOMPLETE}' AND resume_after <= :now)),
  EXISTS (SELECT 1 FROM recurring_schedules
          WHERE status = '{_ACTIVE_RULE}' AND next_run_at <= :now)
"""


def sqlite_path(url: str) -> Path | None:
    """The file of a plain SQLite URL (`sqlite:///newsletter.db`, a `?timeout=` allowed);
    None for anything else, which the full run handles."""
    parts = urlsplit(url)
    if parts.scheme not in ("sqlite", "sqlite+pysqlite") or parts.netloc or not parts.path:
        return None
    path = unquote(parts.path[1:])  # sqlite:///x.db: "/x.db"; sqlite:////abs: "//abs"
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return Path(path)


def nothing_due(database_url: str, now: dt.datetime) -> bool:
    """True only when the ledger certainly has nothing for run-due at `now` (UTC)."""
    path = sqlite_path(database_url)
    if path is None or not path.is_file():
        return False
    stamp = now.astimezone(dt.UTC).strftime(_STORED_TIME)
    try:
        # Read-only and without creating anything; a writer holding the lock is waited
        # for briefly, like any reader of a WAL database (readers are not blocked).
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1.0)
        try:
            revision, campaign_due, rule_due = conn.execute(_ANYTHING, {"now": stamp}).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    return revision == HEAD and not campaign_due and not rule_due
