"""conveyor's PostgreSQL schema, version 1 (a later conveyor migration comes
as a Django migration of its own)."""

from __future__ import annotations

from django.db import migrations

from conveyor.contrib.django.operations import ConveyorSchema


class Migration(migrations.Migration):  # type: ignore[misc]
    initial = True
    dependencies: list[tuple[str, str]] = []
    operations = [ConveyorSchema(1)]
