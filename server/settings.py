"""Server-wide values that every replica must share, kept in the database (table xfer_settings)."""

from __future__ import annotations

import secrets

import sqlalchemy as sa

from xfer.server.db import insert_ignore, write_transaction
from xfer.server.schema import settings_table

PAGE_TOKEN_KEY = "page_token_key"


def shared_secret(engine: sa.Engine, name: str, *, nbytes: int = 32) -> bytes:
    """The secret stored under `name`, created on first use; replicas racing to create it all get the winner's."""
    with write_transaction(engine) as conn:
        conn.execute(insert_ignore(conn, settings_table).values(name=name, value=secrets.token_hex(nbytes)))
        value = conn.execute(sa.select(settings_table.c.value).where(settings_table.c.name == name)).scalar_one()
    return bytes.fromhex(value)


def page_token_key(engine: sa.Engine) -> bytes:
    """The key that signs page tokens."""
    return shared_secret(engine, PAGE_TOKEN_KEY)
