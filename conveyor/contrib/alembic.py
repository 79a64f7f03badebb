"""conveyor's PostgreSQL schema in your Alembic migrations.

In a revision's upgrade() and downgrade()::

    from conveyor.contrib.alembic import downgrade_schema, upgrade_schema

    def upgrade() -> None:
        upgrade_schema(op, to_version=3, schema="conveyor")

    def downgrade() -> None:
        downgrade_schema(op, from_version=3, schema="conveyor")

The versions are pinned in the revision: a revision applies conveyor's
migrations from `from_version` (default 0: none yet) up to `to_version`, so
the revision means the same thing whichever conveyor later runs it. Pin
LATEST_VERSION as it is when the revision is written (a backend with
migrate=false refuses a schema older than it needs). When a conveyor upgrade
brings a new schema version (`conveyor migrate --dry-run` prints what is
pending), add a revision with `upgrade_schema(op, from_version=3, to_version=4)`. Each migration is
recorded in the schema's own migrations table, as the backend records it,
so the app can run with `migrate=false` on its URL and find the schema ready.
Works offline too (`alembic upgrade --sql`): the statements are plain SQL.
"""

from __future__ import annotations

from typing import Any, Protocol

import sqlalchemy

from conveyor.backends.postgres.migrations import LATEST, migration_sql, removal_sql

LATEST_VERSION = LATEST
"""The newest schema version this conveyor knows."""


class Operations(Protocol):
    """What is used of Alembic's `op`."""

    def execute(self, sqltext: Any) -> Any: ...


def upgrade_schema(
    op: Operations, *, to_version: int, from_version: int = 0, schema: str = "conveyor"
) -> None:
    """Apply conveyor's migrations `from_version`+1 .. `to_version` to `schema`."""
    for _, _, statements in migration_sql(schema, from_version, to_version):
        for statement in statements:
            op.execute(_text(statement))


def downgrade_schema(
    op: Operations, *, from_version: int, to_version: int = 0, schema: str = "conveyor"
) -> None:
    """Undo conveyor's migrations back to `to_version` (0: drop conveyor's
    tables from `schema`, the jobs in them included; the schema itself stays)."""
    for statement in removal_sql(schema, from_version, to_version):
        op.execute(_text(statement))


def _text(statement: str) -> sqlalchemy.TextClause:
    # text() reads ":name" as a bound parameter; conveyor's SQL has none, and
    # its NOTIFY channel literal ('conveyor:<schema>') has a colon.
    return sqlalchemy.text(statement.replace(":", "\\:"))
