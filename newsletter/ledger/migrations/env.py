"""Alembic's environment: runs the revisions on the connection newsletter hands over.

newsletter calls Alembic from code (newsletter/migrations/__init__.py), with the
connection in `config.attributes` and inside its own transaction, so the whole
upgrade commits or rolls back at once and no engine is made here.
"""

from __future__ import annotations

from alembic import context

from newsletter.ledger import migrations
from newsletter.ledger.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError(
        "newsletter's migrations run through newsletter itself (Store.open or"
        " `newsletter db upgrade`), with a connection; there is no alembic.ini"
    )

context.configure(
    connection=connection,
    # For comparing and autogenerating against today's tables.
    target_metadata=metadata,
    # SQLite alters most things only by copying a table: batch mode does that.
    render_as_batch=True,
    **migrations.context_options(),
)
with context.begin_transaction():
    context.run_migrations()
