"""`python manage.py conveyor_worker [OPTIONS]`: `conveyor worker` for the
project's app (settings.CONVEYOR_APP, "module:attribute"), with Django set up
first so that handlers use the ORM and settings. Every option is `conveyor
worker`'s (--concurrency, --queues, --burst, ...; see --help)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):  # type: ignore[misc]
    help = "Run a conveyor worker for settings.CONVEYOR_APP (options: conveyor worker's)."

    def run_from_argv(self, argv: list[str]) -> None:
        # manage.py has set Django up by now; the options are all the worker's.
        self._run(argv[2:])

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("worker_args", nargs="*", help="arguments of `conveyor worker`")

    def handle(self, *args: Any, worker_args: list[str], **options: Any) -> None:
        self._run(worker_args)  # call_command("conveyor_worker", "--", "--burst")

    def _run(self, args: list[str]) -> None:
        app = getattr(settings, "CONVEYOR_APP", None)
        if not app:
            raise CommandError(
                "set CONVEYOR_APP in the Django settings to the project's Conveyor app, "
                'e.g. CONVEYOR_APP = "myproject.jobs:app"'
            )
        from conveyor.cli import cli

        cli.main(["worker", str(app), *args], prog_name="manage.py conveyor_worker")
