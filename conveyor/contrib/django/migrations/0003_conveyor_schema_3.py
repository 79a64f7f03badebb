"""conveyor's PostgreSQL schema, version 3: job headers (the trace context of the enqueue)."""

from __future__ import annotations

from django.db import migrations

from conveyor.contrib.django.operations import ConveyorSchema


class Migration(migrations.Migration):  # type: ignore[misc]
    dependencies = [("conveyor", "0002_conveyor_schema_2")]
    operations = [ConveyorSchema(3)]
