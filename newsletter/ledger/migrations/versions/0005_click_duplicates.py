"""A reader's repeated clicks on a link, kept but counted once.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

- clicks.duplicate: a click by the same reader on the same link within [tracking]
  dedupe_window of their counted one. Clicks recorded before this revision were all
  counted, and stay so: the window is a setting of the site that recorded them, which
  the migration does not know.
- ix_clicks_reader: finding a reader's last counted click on a link is one index lookup.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("clicks") as batch:
        batch.add_column(
            sa.Column("duplicate", sa.Boolean, nullable=False, server_default=sa.false())
        )
    op.create_index("ix_clicks_reader", "clicks", ["campaign_id", "subscriber_id", "link_idx"])


def downgrade() -> None:
    op.drop_index("ix_clicks_reader", table_name="clicks")
    with op.batch_alter_table("clicks") as batch:
        batch.drop_column("duplicate")
