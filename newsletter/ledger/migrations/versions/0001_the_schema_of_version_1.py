"""The schema of version 1, as it stood when migrations began.

Revision ID: 0001
Revises:
Create Date: 2026-11-29

Written out table by table rather than from tables.metadata, which keeps changing:
this revision must always create what version 1 was. A database made before
migrations (newsletter_meta says schema_version 1) is recorded as this revision
without running it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    meta = op.create_table(
        "newsletter_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(255), nullable=False),
    )
    # Releases before migrations read this and refuse a database above version 1.
    op.bulk_insert(meta, [{"key": "schema_version", "value": "1"}])

    op.create_table(
        "subscribers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("name", sa.String(255), nullable=False, server_default=""),
        sa.Column("attributes", sa.Text, nullable=False, server_default="{}"),
        sa.Column("status", sa.String(16), nullable=False, server_default="active"),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("unsubscribed_at", sa.DateTime),
        sa.Column("confirm_sent_at", sa.DateTime),
        sa.UniqueConstraint("email"),
    )
    op.create_index("ix_subscribers_status", "subscribers", ["status", "id"])

    op.create_table(
        "campaigns",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("issue_slug", sa.String(200), nullable=False),
        sa.Column("issue_path", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("sponsor_id", sa.String(64)),
        sa.Column("html_template", sa.Text, nullable=False),
        sa.Column("text_template", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("scheduled_at", sa.DateTime),
        sa.Column("timezone", sa.String(64)),
        sa.Column("started_at", sa.DateTime),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("owner", sa.String(200)),
        sa.Column("heartbeat_at", sa.DateTime),
        sa.Column("total", sa.Integer, nullable=False, server_default="0"),
        sa.Column("resume_after", sa.DateTime),
        sa.Column("batches", sa.Integer, nullable=False, server_default="0"),
        sa.Column("sweep_at", sa.DateTime),
        sa.Column("last_error", sa.Text),
    )
    op.create_index("ix_campaigns_status_scheduled", "campaigns", ["status", "scheduled_at"])

    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "campaign_id",
            sa.Integer,
            sa.ForeignKey("campaigns.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("subscriber_id", sa.Integer, sa.ForeignKey("subscribers.id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_code", sa.Integer),
        sa.Column("last_error", sa.Text),
        sa.Column("next_attempt_at", sa.DateTime),
        sa.Column("sent_at", sa.DateTime),
        sa.Column("lease_owner", sa.String(200)),
        sa.Column("lease_until", sa.DateTime),
        sa.UniqueConstraint(
            "campaign_id", "subscriber_id", name="uq_delivery_campaign_subscriber"
        ),
    )
    op.create_index("ix_deliveries_campaign_status", "deliveries", ["campaign_id", "status", "id"])
    op.create_index("ix_deliveries_lease_owner", "deliveries", ["lease_owner"])

    op.create_table(
        "rate_buckets",
        sa.Column("name", sa.String(300), primary_key=True),
        sa.Column("next_at", sa.Float, nullable=False),
    )

    op.create_table(
        "recurring_schedules",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("cron", sa.String(100), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("next_run_at", sa.DateTime, nullable=False),
        sa.Column("last_run_at", sa.DateTime),
        sa.Column("last_note", sa.Text),
    )

    op.create_table(
        "campaign_links",
        sa.Column(
            "campaign_id",
            sa.Integer,
            sa.ForeignKey("campaigns.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("in_sponsor_block", sa.Boolean, nullable=False),
    )

    op.create_table(
        "clicks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("campaign_id", sa.Integer, nullable=False),
        sa.Column("subscriber_id", sa.Integer, nullable=False),
        sa.Column("link_idx", sa.Integer, nullable=False),
        sa.Column("clicked_at", sa.DateTime, nullable=False),
        sa.Column("suspected_bot", sa.Boolean, nullable=False),
        sa.Column("reason", sa.String(64)),
    )
    op.create_index("ix_clicks_campaign", "clicks", ["campaign_id", "link_idx"])


def downgrade() -> None:
    for table in (
        "clicks",
        "campaign_links",
        "recurring_schedules",
        "rate_buckets",
        "deliveries",
        "campaigns",
        "subscribers",
        "newsletter_meta",
    ):
        op.drop_table(table)
