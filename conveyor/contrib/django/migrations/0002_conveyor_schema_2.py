"""conveyor's PostgreSQL schema, version 2: paused queues and richer worker presence."""

from __future__ import annotations

from django.db import migrations

from conveyor.contrib.django.operations import ConveyorSchema


class Migration(migrations.Migration):  # type: ignore[misc]
    dependencies = [("conveyor", "0001_initial")]
    operations = [ConveyorSchema(2)]
