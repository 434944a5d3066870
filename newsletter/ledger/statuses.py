"""The ledger's statuses (a subscriber's, a delivery's, a campaign's) and the kinds of
bounce report, apart from the tables (tables.py and bounces.py re-export them): the CLI
offers them as choices (`subscribers list --status`) and `status` reads the ledger
(campaign_status) without loading SQLAlchemy."""

from __future__ import annotations

import datetime as dt
import os
import socket

ACTIVE = "active"
PENDING_CONFIRMATION = "pending"  # signed up on the web, confirmation link not yet followed
UNSUBSCRIBED = "unsubscribed"
BOUNCED = "bounced"  # a hard bounce, or soft ones past [bounces] soft_limit: never sent to
COMPLAINED = "complained"  # marked the newsletter as spam: never sent to
SUBSCRIBER_STATUSES = (ACTIVE, PENDING_CONFIRMATION, UNSUBSCRIBED, BOUNCED, COMPLAINED)
# Suppressed: nothing brings these back but a new confirmation of the address.
SUPPRESSED = (BOUNCED, COMPLAINED)

# Delivery statuses
PENDING = "pending"
SENDING = "sending"  # handed to the SMTP server, reply not yet recorded: in doubt after a crash
SENT = "sent"
FAILED = "failed"  # permanent (5xx), never retried
DEFERRED = "deferred"  # temporary (4xx, dropped connection), retried later
SKIPPED = "skipped"  # unsubscribed before their turn came
GIVEN_UP = "given_up"  # still unsent when the campaign was closed: never tried again
UNSENT = (PENDING, SENDING, DEFERRED)
# The rows `status` shows as recent errors (tables.errors_index).
SHOWN_ERRORS = (FAILED, DEFERRED, SENDING)

# Campaign statuses (the transitions: lifecycle.py)
READY = "ready"  # created, not started
SCHEDULED = "scheduled"
RUNNING = "sending"
DONE = "done"  # every delivery is sent, failed or skipped
INCOMPLETE = "incomplete"  # stopped with deliveries left (deferred, interrupted): resume it
CANCELLED = "cancelled"
MISSED = "missed"
CLOSED = "closed"  # ended by `newsletter close` with deliveries left: they were given up
# Who sends a campaign (campaigns.owner): a process ("host:pid:random"), or the workers.
# An owner whose heartbeat is older than LEASE is gone (owner_alive, below).
LEASE = dt.timedelta(seconds=120)
# The owner of a campaign that Celery workers send. Not a host name, so only the
# heartbeat (renewed by every batch) says whether the workers still have it.
WORKERS = "[workers]"
# A campaign no run is sending, nor will start by itself (an incomplete one may be retried
# by run-due: a new run).
ENDED = (DONE, INCOMPLETE, CANCELLED, MISSED, CLOSED)

# Bounce and complaint reports (ledger/bounces.py)
HARD = "hard"
SOFT = "soft"
COMPLAINT = "complaint"
KINDS = (HARD, SOFT, COMPLAINT)


def owner_alive(owner: str | None, heartbeat: dt.datetime | None, now: dt.datetime) -> bool:
    """The campaign's owner is sending it now: its heartbeat is within LEASE and, for a
    process on this host, that process is still there."""
    if not owner:
        return False
    if heartbeat is None or now - heartbeat > LEASE:
        return False
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host == socket.gethostname() and pid_text.isdigit():
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True
