"""Deliveries counted per status as they change, partial indexes for `status`, and
the workers' claim cursor.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29

- delivery_counts: (campaign_id, status, shard) -> n. On PostgreSQL filled here from
  the deliveries as they are, then kept by statement triggers on deliveries (INSERT,
  UPDATE, DELETE), one shard per connection. The triggers' SQL is copied here as it was
  at this revision (tables.COUNT_TRIGGERS is today's; a test holds the two equal while
  this is the newest revision). On SQLite the table stays empty: the counts are COUNT.
- ix_deliveries_errors, ix_deliveries_held: partial indexes of the few rows `status`
  lists (recent errors) and counts (unsent rows under a lease); ix_bounces_campaign, the
  reports `status` counts.
- campaigns.claim_from: the lowest id a pending delivery may have (the workers' claims
  start there). NULL for every campaign so far: their next claim starts at the first.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

TRIGGERS = {
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
SHOWN_ERRORS = "last_error IS NOT NULL AND status IN ('failed', 'deferred', 'sending')"
HELD = (
    "lease_owner IS NOT NULL AND lease_until IS NOT NULL"
    " AND status IN ('pending', 'sending', 'deferred')"
)


def upgrade() -> None:
    op.create_table(
        "delivery_counts",
        sa.Column("campaign_id", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("shard", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("n", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", "status", "shard"),
    )
    if op.get_bind().dialect.name == "postgresql":
        # In the upgrade's transaction, before the triggers: nothing is counted twice.
        op.execute(
            "INSERT INTO delivery_counts (campaign_id, status, shard, n)"
            " SELECT campaign_id, status, 0, count(*) FROM deliveries"
            " GROUP BY campaign_id, status"
        )
        for statement in TRIGGERS["postgresql"]:
            op.execute(statement)
    for name, columns, where in (
        ("ix_deliveries_errors", ["campaign_id", "id"], SHOWN_ERRORS),
        ("ix_deliveries_held", ["campaign_id", "lease_until"], HELD),
    ):
        op.create_index(
            name,
            "deliveries",
            columns,
            postgresql_where=sa.text(where),
            sqlite_where=sa.text(where),
        )
    op.create_index("ix_bounces_campaign", "bounces", ["campaign_id", "kind"])
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("claim_from", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("claim_from")
    op.drop_index("ix_bounces_campaign", table_name="bounces")
    op.drop_index("ix_deliveries_held", table_name="deliveries")
    op.drop_index("ix_deliveries_errors", table_name="deliveries")
    if op.get_bind().dialect.name == "postgresql":
        for name in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER delivery_counts_{name} ON deliveries")
        op.execute("DROP FUNCTION delivery_counts_kept()")
    op.drop_table("delivery_counts")
