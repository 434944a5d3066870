"""Subscribers' tags, and the segment a campaign goes to.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29

- tags: (subscriber_id, tag), one row a tag, unique on the pair; ix_tags_tag finds a
  tag's subscribers. No subscriber had a tag before this revision.
- campaigns.segment, campaigns.segment_size: the segment expression a campaign was
  narrowed to and how many active subscribers it matched when the deliveries were made.
  Every campaign so far went to its whole audience: both stay NULL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "tags",
        sa.Column(
            "subscriber_id",
            sa.Integer,
            sa.ForeignKey("subscribers.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("tag", sa.String(64), nullable=False),
        sa.UniqueConstraint("subscriber_id", "tag", name="uq_tags_subscriber_tag"),
    )
    op.create_index("ix_tags_tag", "tags", ["tag"])
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("segment", sa.Text))
        batch.add_column(sa.Column("segment_size", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("segment_size")
        batch.drop_column("segment")
    op.drop_index("ix_tags_tag", table_name="tags")
    op.drop_table("tags")
