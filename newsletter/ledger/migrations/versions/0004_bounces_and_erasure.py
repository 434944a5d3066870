"""Bounces and complaints, and the people whose data was erased.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

- bounces: each bounce or complaint as it came back, once (event_key is unique);
- erased: a hash of each erased address, so an import cannot add it back.
The subscriber statuses `bounced` and `complained` are new values of the same column.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "bounces",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("received_at", sa.DateTime, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("subscriber_id", sa.Integer),
        sa.Column("campaign_id", sa.Integer),
        sa.Column("status_code", sa.String(16)),
        sa.Column("diagnostic", sa.Text),
        sa.Column("event_key", sa.String(255), nullable=False),
        sa.UniqueConstraint("event_key", name="uq_bounces_event_key"),
    )
    op.create_index("ix_bounces_subscriber", "bounces", ["subscriber_id", "received_at"])
    op.create_table(
        "erased",
        sa.Column("email_hash", sa.String(64), primary_key=True),
        sa.Column("erased_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("erased")
    op.drop_index("ix_bounces_subscriber", table_name="bounces")
    op.drop_table("bounces")
