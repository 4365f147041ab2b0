"""Alembic environment of xfer-server: runs on the connection `xfer.server.migrate` hands over.

There is no alembic.ini and no URL here: `xfer.server.migrate.upgrade`
opens the connection, takes the migration lock and passes the connection in
`config.attributes["connection"]`, so every entry point (the `xfer-server
migrate` command, a server starting up) migrates the same way.
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
# render_as_batch: SQLite cannot ALTER most things in place; batch mode copies the table instead.
context.configure(connection=connection, target_metadata=None, render_as_batch=True, transaction_per_migration=False)
with context.begin_transaction():
    context.run_migrations()
