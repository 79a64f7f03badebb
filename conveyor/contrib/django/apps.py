"""The Django app of conveyor (label "conveyor")."""

from __future__ import annotations

from django.apps import AppConfig


class ConveyorConfig(AppConfig):  # type: ignore[misc]
    name = "conveyor.contrib.django"
    label = "conveyor"
    verbose_name = "conveyor"
