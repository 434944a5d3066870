"""Who a campaign goes to: everyone, or those who have not had its issue.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

campaigns.audience: "all" active subscribers, or the "new" ones who have not had
the campaign's issue from another campaign (`send --new-only`); fixed when the
deliveries are made. Every campaign so far went to all.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(
            sa.Column("audience", sa.String(16), nullable=False, server_default="all")
        )


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("audience")
