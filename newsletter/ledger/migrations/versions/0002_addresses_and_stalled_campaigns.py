"""Addresses keep their local part as given; incomplete campaigns remember since when.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

- subscribers.email_key: one subscriber per address whatever its case (the address
  with its case folded), so that `email` can keep the local part as given. Until
  now every address was stored lower-cased, so the key of an existing row is its
  address; one whose domain was stored in Unicode gets it as A-labels, in both.
- campaigns.incomplete_since: when a campaign first stopped with deliveries left;
  run-due's retries slow down from then and stop after [schedule] give_up_after.
"""

from __future__ import annotations

import datetime as dt

import idna
import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("subscribers") as batch:
        batch.add_column(sa.Column("email_key", sa.String(320), nullable=True))
    conn = op.get_bind()
    subscribers = sa.table(
        "subscribers", sa.column("id", sa.Integer), sa.column("email"), sa.column("email_key")
    )
    conn.execute(subscribers.update().values(email_key=subscribers.c.email))
    last = 0
    while True:  # in id windows: memory stays flat however long the list
        rows = conn.execute(
            sa.select(subscribers.c.id, subscribers.c.email)
            .where(subscribers.c.id > last)
            .order_by(subscribers.c.id)
            .limit(10_000)
        ).all()
        if not rows:
            break
        last = rows[-1].id
        for sid, email in rows:
            local, _, domain = email.rpartition("@")
            if domain.isascii():
                continue
            try:
                ascii_email = f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"
            except idna.IDNAError:
                continue  # it never could be sent; left as it is
            same = conn.execute(
                sa.select(subscribers.c.id).where(subscribers.c.email_key == ascii_email.lower())
            ).first()
            if same is None:  # else the address is there already in ASCII: keep both rows
                conn.execute(
                    subscribers.update()
                    .where(subscribers.c.id == sid)
                    .values(email=ascii_email, email_key=ascii_email.lower())
                )
    with op.batch_alter_table("subscribers") as batch:
        batch.alter_column("email_key", existing_type=sa.String(320), nullable=False)
        batch.create_unique_constraint("uq_subscribers_email_key", ["email_key"])

    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("incomplete_since", sa.DateTime, nullable=True))
    # Incomplete campaigns from before are retried from now on, as a new one would be.
    campaigns = sa.table(
        "campaigns", sa.column("status"), sa.column("incomplete_since", sa.DateTime)
    )
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)  # stored as naive UTC
    conn.execute(
        campaigns.update().where(campaigns.c.status == "incomplete").values(incomplete_since=now)
    )


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("incomplete_since")
    with op.batch_alter_table("subscribers") as batch:
        batch.drop_constraint("uq_subscribers_email_key", type_="unique")
        batch.drop_column("email_key")
