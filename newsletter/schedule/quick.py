"""run-due's first look: is anything there for it, asked without SQLAlchemy.

cron runs `newsletter run-due` every minute and mostly nothing is due; importing
SQLAlchemy alone costs about 0.15 s of a run, more than everything else an idle run
does. This asks the ledger through its driver (ledger/direct.py: sqlite3 on a SQLite
file, psycopg on PostgreSQL), read-only, in one query: a scheduled campaign whose time
has come, a campaign still `sending` (its runner may have died), an incomplete one
whose retry time has come, or a recurring rule whose tick has come: exactly what
schedules.due and schedules.due_rules select (tests/test_run_due_quick.py compares
the two). Only a certain "nothing" skips the full run; anything else (another
database, a file not there yet, a schema not at this release's revision, any error)
answers "look properly", and run-due does what it always did.
"""

from __future__ import annotations

import datetime as dt

from newsletter.ledger import direct
from newsletter.ledger.statuses import INCOMPLETE, RUNNING, SCHEDULED

# schedules.ACTIVE_RULE (the test holds them equal).
_ACTIVE_RULE = "active"

_ANYTHING = f"""
SELECT
  EXISTS (SELECT 1 FROM campaigns
          WHERE (status = '{SCHEDULED}' AND scheduled_at <= :now)
             OR status = '{RUNNING}'
             OR (status = '{INCOMPLETE}' AND resume_after <= :now)),
  EXISTS (SELECT 1 FROM recurring_schedules
          WHERE status = '{_ACTIVE_RULE}' AND next_run_at <= :now)
"""


def nothing_due(database_url: str, now: dt.datetime) -> bool:
    """True only when the ledger certainly has nothing for run-due at `now` (UTC)."""
    answer = direct.read(database_url, lambda d: d.rows(_ANYTHING, now=d.time(now))[0])
    return answer is not None and not any(answer)
