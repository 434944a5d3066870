"""The ledger's tables and the statuses their rows move through.

Every (campaign, subscriber) pair has one row in `deliveries`, unique on that pair,
moving pending -> sending -> sent | failed | deferred | skipped | given up. The ledger
is the truth: a campaign sends only rows not yet sent. A campaign moves ready (or
scheduled) -> sending -> done | incomplete -> ... | closed; the functions that move
it live in campaigns.py, each transition in one place.

The schema changes only through a migration (migrations/versions/), which a test
holds against these tables.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

# The statuses of subscribers, deliveries and campaigns: in statuses.py, which the CLI and
# `status` read without loading SQLAlchemy.
from newsletter.ledger.statuses import (  # noqa: F401 (re-exported: the ledger's names)
    ACTIVE,
    BOUNCED,
    CANCELLED,
    CLOSED,
    COMPLAINED,
    DEFERRED,
    DONE,
    FAILED,
    GIVEN_UP,
    INCOMPLETE,
    MISSED,
    PENDING,
    PENDING_CONFIRMATION,
    READY,
    RUNNING,
    SCHEDULED,
    SENDING,
    SENT,
    SHOWN_ERRORS,
    SKIPPED,
    SUBSCRIBER_STATUSES,
    SUPPRESSED,
    UNSENT,
    UNSUBSCRIBED,
)

# Releases before migrations refuse a database whose newsletter_meta says more than
# this; the schema's own version is now the Alembic revision (newsletter/migrations).
SCHEMA_VERSION = 1

# How far an address is from being sent to: an import's status column moves a known
# address only further away (active -> unsubscribed -> bounced or complained), so a file
# exported before someone left never brings them back. Pending counts as active here: a
# file saying "pending" does not undo a confirmation.
_DISTANCE = {ACTIVE: 0, PENDING_CONFIRMATION: 0, UNSUBSCRIBED: 1, BOUNCED: 2, COMPLAINED: 2}


def imported_status_applies(imported: str, stored: str) -> bool:
    """Whether a status read from an imported file replaces a known address's status."""
    return _DISTANCE[imported] > _DISTANCE.get(stored, 0)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use UTC-aware datetimes")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=dt.UTC)


metadata = sa.MetaData()

meta_table = sa.Table(
    "newsletter_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
)

subscribers = sa.Table(
    "subscribers",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    # As sent: the local part as given, the domain in ASCII (see addresses.py); one
    # subscriber per email_key (the last column), the address with its case folded.
    sa.Column("email", sa.String(320), nullable=False, unique=True),
    sa.Column("name", sa.String(255), nullable=False, server_default=""),
    sa.Column("attributes", sa.Text, nullable=False, server_default="{}"),
    sa.Column("status", sa.String(16), nullable=False, server_default=ACTIVE),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("unsubscribed_at", UTCDateTime),
    # When the last signup confirmation went to this address: repeated signups are throttled.
    sa.Column("confirm_sent_at", UTCDateTime),
    sa.Column("email_key", sa.String(320), nullable=False),
    sa.UniqueConstraint("email_key", name="uq_subscribers_email_key"),
    sa.Index("ix_subscribers_status", "status", "id"),
)

campaigns = sa.Table(
    "campaigns",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("issue_slug", sa.String(200), nullable=False),
    sa.Column("issue_path", sa.Text, nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("sponsor_id", sa.String(64)),
    # The issue as built when the campaign was created: a resume sends the same thing.
    sa.Column("html_template", sa.Text, nullable=False),
    sa.Column("text_template", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("scheduled_at", UTCDateTime),
    sa.Column("timezone", sa.String(64)),
    sa.Column("started_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("owner", sa.String(200)),  # host:pid:nonce of the process sending it
    sa.Column("heartbeat_at", UTCDateTime),
    sa.Column("total", sa.Integer, nullable=False, server_default="0"),
    # An incomplete campaign is resumed by run-due/worker no sooner than this.
    sa.Column("resume_after", UTCDateTime),
    # Sent by Celery workers: batches claimed so far, and when the one pending sweep
    # task (which picks up rows of a stopped worker once their lease ends) is due.
    sa.Column("batches", sa.Integer, nullable=False, server_default="0"),
    sa.Column("sweep_at", UTCDateTime),
    sa.Column("last_error", sa.Text),
    # When the campaign first stopped with deliveries left: run-due retries it, less
    # often as time passes, until [schedule] give_up_after from then.
    sa.Column("incomplete_since", UTCDateTime),
    # Who the campaign goes to, fixed when its deliveries are made (at once, or when a
    # scheduled campaign is claimed): "all" active subscribers, or the "new" ones who
    # have not had its issue from another campaign.
    sa.Column("audience", sa.String(16), nullable=False, server_default="all"),
    # A segment narrows the audience (newsletter/segments.py): the expression as given,
    # and how many active subscribers it matched when the deliveries were made (revision
    # 0006). NULL: the whole audience.
    sa.Column("segment", sa.Text),
    sa.Column("segment_size", sa.Integer),
    # Sent by Celery workers: no pending delivery of the campaign has a lower id, so a
    # batch's claim reads the pending rows from here, not over every row sent before
    # (revision 0007). NULL: from the first.
    sa.Column("claim_from", sa.Integer),
)

# A subscriber's tags (`subscribers tag`, `import --tag`), lower case; segments select
# by them (revision 0006).
tags = sa.Table(
    "tags",
    metadata,
    sa.Column(
        "subscriber_id",
        sa.Integer,
        sa.ForeignKey("subscribers.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("tag", sa.String(64), nullable=False),
    sa.UniqueConstraint("subscriber_id", "tag", name="uq_tags_subscriber_tag"),
    sa.Index("ix_tags_tag", "tag"),
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "campaign_id",
        sa.Integer,
        sa.ForeignKey("campaigns.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("subscriber_id", sa.Integer, sa.ForeignKey("subscribers.id"), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, server_default=PENDING),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_code", sa.Integer),
    sa.Column("last_error", sa.Text),
    sa.Column("next_attempt_at", UTCDateTime),
    sa.Column("sent_at", UTCDateTime),
    # Sent by Celery workers: the batch that holds the row, and until when. A row whose
    # lease has run out belongs to nobody and is claimed by the next batch.
    sa.Column("lease_owner", sa.String(200)),
    sa.Column("lease_until", UTCDateTime),
    sa.UniqueConstraint("campaign_id", "subscriber_id", name="uq_delivery_campaign_subscriber"),
    sa.Index("ix_deliveries_campaign_status", "campaign_id", "status", "id"),
    sa.Index("ix_deliveries_lease_owner", "lease_owner"),
)


def status_in(values: tuple[str, ...]) -> sa.ColumnElement[bool]:
    """A delivery's status is one of `values`, written into the SQL, not bound: a partial
    index serves a query only when the planner finds the index's condition in the
    query's (a generic plan's parameters prove nothing), on PostgreSQL and SQLite."""
    return deliveries.c.status.in_([sa.literal(v, literal_execute=True) for v in values])


# The rows `status` shows as recent errors, and the unsent rows under a lease (the ones
# a worker holds, or held when it stopped): few at any time, so each has a partial
# index, and `status` costs the same at row 1,000 and row 1,000,000 (revision 0007).
shows_an_error = sa.and_(deliveries.c.last_error.is_not(None), status_in(SHOWN_ERRORS))
# The owner is in the condition so that only a query that says so (status's) reads this
# index: the claim's looks at rows in flight (lease_until IS NOT NULL) would otherwise be
# planned on it, from stale figures that say it is empty, and read every entry it ever had.
held_unsent = sa.and_(
    deliveries.c.lease_owner.is_not(None),
    deliveries.c.lease_until.is_not(None),
    status_in(UNSENT),
)
errors_index = sa.Index(
    "ix_deliveries_errors",
    deliveries.c.campaign_id,
    deliveries.c.id,
    postgresql_where=shows_an_error,
    sqlite_where=shows_an_error,
)
held_index = sa.Index(
    "ix_deliveries_held",
    deliveries.c.campaign_id,
    deliveries.c.lease_until,
    postgresql_where=held_unsent,
    sqlite_where=held_unsent,
)

# A campaign's deliveries counted per status on PostgreSQL, kept by triggers on
# `deliveries` in the transaction of every INSERT, UPDATE and DELETE (revision 0007):
# `status` reads a few rows here instead of counting every delivery. The sum of `n` over
# a campaign's shards for a status is exactly COUNT(*) of its deliveries in that status.
# The triggers are per statement (one aggregated UPSERT, so the INSERT ... SELECT of a
# million rows adds one statement) and each connection adds to its own shard (its
# backend's pid), so no two transactions wait for the same counter row; a shard's `n`
# may be negative. SQLite has the table, empty: there row triggers cost each message a
# third more in the ledger's writes (bench/ledger_bench.py --writes), and its one
# process's lists are counted by COUNT (delivery_rows.counts).
delivery_counts = sa.Table(
    "delivery_counts",
    metadata,
    sa.Column("campaign_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("status", sa.String(16), primary_key=True),
    sa.Column("shard", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("n", sa.Integer, nullable=False),
)

# The shared token buckets of [smtp] rate when workers on several machines send and the
# broker has no Redis: the "theoretical arrival time" of the next message, per server.
rate_buckets = sa.Table(
    "rate_buckets",
    metadata,
    sa.Column("name", sa.String(300), primary_key=True),
    sa.Column("next_at", sa.Float, nullable=False),
)


recurring = sa.Table(
    "recurring_schedules",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("cron", sa.String(100), nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # active | cancelled
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("next_run_at", UTCDateTime, nullable=False),
    sa.Column("last_run_at", UTCDateTime),
    sa.Column("last_note", sa.Text),
)

campaigns_due_index = sa.Index(
    "ix_campaigns_status_scheduled", campaigns.c.status, campaigns.c.scheduled_at
)


# Click tracking: the links a campaign tracks, and each click on one.
campaign_links = sa.Table(
    "campaign_links",
    metadata,
    sa.Column("campaign_id", sa.Integer, sa.ForeignKey("campaigns.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("idx", sa.Integer, primary_key=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("in_sponsor_block", sa.Boolean, nullable=False),
)  # fmt: skip

clicks = sa.Table(
    "clicks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("campaign_id", sa.Integer, nullable=False),
    sa.Column("subscriber_id", sa.Integer, nullable=False),
    sa.Column("link_idx", sa.Integer, nullable=False),
    sa.Column("clicked_at", UTCDateTime, nullable=False),
    sa.Column("suspected_bot", sa.Boolean, nullable=False),
    sa.Column("reason", sa.String(64)),  # why a bot: a HEAD request, its user agent, too soon
    # A reader's click again on the same link within [tracking] dedupe_window of their
    # counted click: kept, as every request is, but counted once (revision 0005).
    sa.Column("duplicate", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("ix_clicks_campaign", "campaign_id", "link_idx"),
    sa.Index("ix_clicks_reader", "campaign_id", "subscriber_id", "link_idx"),
)

# Bounces and complaints as they came back (a DSN, an ARF report, a 5xx at RCPT, a
# provider's webhook), each once: `event_key` is unique (the report's Message-ID, the
# provider's event id), so fetching a mailbox again counts nothing twice.
bounces = sa.Table(
    "bounces",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # hard, soft, complaint
    sa.Column("source", sa.String(32), nullable=False),  # smtp, dsn, arf, ses, postmark...
    sa.Column("email", sa.String(320), nullable=False),  # the address it is about
    sa.Column("subscriber_id", sa.Integer),
    sa.Column("campaign_id", sa.Integer),
    sa.Column("status_code", sa.String(16)),  # the enhanced status code, e.g. 5.1.1
    sa.Column("diagnostic", sa.Text),
    sa.Column("event_key", sa.String(255), nullable=False),
    sa.UniqueConstraint("event_key", name="uq_bounces_event_key"),
    sa.Index("ix_bounces_subscriber", "subscriber_id", "received_at"),
    # A campaign's reports by kind, as `status` counts them (revision 0007).
    sa.Index("ix_bounces_campaign", "campaign_id", "kind"),
)

# People whose data was erased (`subscribers erase`): only a hash of the address is
# kept, so that an import does not bring them back by accident.
erased = sa.Table(
    "erased",
    metadata,
    sa.Column("email_hash", sa.String(64), primary_key=True),
    sa.Column("erased_at", UTCDateTime, nullable=False),
)


# The triggers that keep delivery_counts on PostgreSQL (revision 0007 made them; a new
# database gets them with its tables): one function for the three statement triggers,
# whose transition tables hold the rows the statement inserted, changed or deleted.
COUNT_TRIGGERS = {
    "postgresql": (
        """CREATE OR REPLACE FUNCTION delivery_counts_kept() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO delivery_counts AS d (campaign_id, status, shard, n)
        SELECT campaign_id, status, pg_backend_pid(), count(*) FROM new_rows
        GROUP BY campaign_id, status ORDER BY campaign_id, status
        ON CONFLICT (campaign_id, status, shard) DO UPDATE SET n = d.n + excluded.n;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO delivery_counts AS d (campaign_id, status, shard, n)
        SELECT campaign_id, status, pg_backend_pid(), -count(*) FROM old_rows
        GROUP BY campaign_id, status ORDER BY campaign_id, status
        ON CONFLICT (campaign_id, status, shard) DO UPDATE SET n = d.n + excluded.n;
    ELSE
        INSERT INTO delivery_counts AS d (campaign_id, status, shard, n)
        SELECT c.campaign_id, c.status, pg_backend_pid(), sum(c.n)
        FROM old_rows o JOIN new_rows w ON w.id = o.id
        CROSS JOIN LATERAL (VALUES (o.campaign_id, o.status, -1), (w.campaign_id, w.status, 1))
            AS c (campaign_id, status, n)
        WHERE o.status <> w.status OR o.campaign_id <> w.campaign_id
        GROUP BY c.campaign_id, c.status HAVING sum(c.n) <> 0 ORDER BY c.campaign_id, c.status
        ON CONFLICT (campaign_id, status, shard) DO UPDATE SET n = d.n + excluded.n;
    END IF;
    RETURN NULL;
END
$$""",
        "CREATE TRIGGER delivery_counts_insert AFTER INSERT ON deliveries"
        " REFERENCING NEW TABLE AS new_rows"
        " FOR EACH STATEMENT EXECUTE FUNCTION delivery_counts_kept()",
        "CREATE TRIGGER delivery_counts_update AFTER UPDATE ON deliveries"
        " REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"
        " FOR EACH STATEMENT EXECUTE FUNCTION delivery_counts_kept()",
        "CREATE TRIGGER delivery_counts_delete AFTER DELETE ON deliveries"
        " REFERENCING OLD TABLE AS old_rows"
        " FOR EACH STATEMENT EXECUTE FUNCTION delivery_counts_kept()",
    ),
}


@sa.event.listens_for(metadata, "after_create")
def _create_count_triggers(target: sa.MetaData, connection: sa.Connection, **_: Any) -> None:
    for statement in COUNT_TRIGGERS.get(connection.dialect.name, ()):
        connection.exec_driver_sql(statement)


@sa.event.listens_for(metadata, "after_drop")
def _drop_count_function(target: sa.MetaData, connection: sa.Connection, **_: Any) -> None:
    # The triggers went with the table; PostgreSQL keeps a function until it is dropped.
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("DROP FUNCTION IF EXISTS delivery_counts_kept()")
