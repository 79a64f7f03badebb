"""The Django migration operation that applies one conveyor schema migration."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import migrations

from conveyor.backends.postgres.migrations import migration_sql, removal_sql


def schema_name() -> str:
    """Where conveyor's tables go: settings.CONVEYOR_SCHEMA, default "conveyor"."""
    return str(getattr(settings, "CONVEYOR_SCHEMA", "conveyor"))


def forward_sql(version: int) -> list[str]:
    ((_, _, statements),) = migration_sql(schema_name(), version - 1, version)
    return statements


class ConveyorSchema(migrations.RunSQL):  # type: ignore[misc]
    """RunSQL of conveyor's migration `version` (from version - 1), with its
    removal as the reverse. The SQL is rendered for CONVEYOR_SCHEMA when the
    migration runs. On a database that is not PostgreSQL it does nothing:
    conveyor then keeps its jobs in a store of its own (a SQLite file, Redis)."""

    def __init__(self, version: int) -> None:
        self.version = version
        super().__init__(sql=forward_sql(version), reverse_sql=self._reverse_sql())

    def _reverse_sql(self) -> list[str]:
        return removal_sql(schema_name(), self.version, self.version - 1)

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__name__}", [self.version], {})

    def describe(self) -> str:
        return f"conveyor schema migration {self.version} in {schema_name()!r}"

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        if schema_editor.connection.vendor == "postgresql":
            self._run_sql(schema_editor, forward_sql(self.version))

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        if schema_editor.connection.vendor == "postgresql":
            self._run_sql(schema_editor, self._reverse_sql())
