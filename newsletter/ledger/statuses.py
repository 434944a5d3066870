"""A subscriber's statuses, apart from the tables (tables.py re-exports them): the
CLI offers them as choices (`subscribers list --status`) without loading SQLAlchemy."""

from __future__ import annotations

ACTIVE = "active"
PENDING_CONFIRMATION = "pending"  # signed up on the web, confirmation link not yet followed
UNSUBSCRIBED = "unsubscribed"
BOUNCED = "bounced"  # a hard bounce, or soft ones past [bounces] soft_limit: never sent to
COMPLAINED = "complained"  # marked the newsletter as spam: never sent to
SUBSCRIBER_STATUSES = (ACTIVE, PENDING_CONFIRMATION, UNSUBSCRIBED, BOUNCED, COMPLAINED)
# Suppressed: nothing brings these back but a new confirmation of the address.
SUPPRESSED = (BOUNCED, COMPLAINED)
