"""`python manage.py conveyor_worker`: a conveyor worker with Django set up, so
handlers use the ORM and settings (`conveyor worker shop.jobs:conveyor` would
import the handlers before `django.setup()`). Runs until SIGTERM/SIGINT, then
finishes (or hands back) the jobs it is running."""

import asyncio
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from shop.jobs import conveyor


class Command(BaseCommand):
    help = "Run a conveyor worker for this project's jobs until SIGTERM/SIGINT."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--concurrency", type=int, default=None, help="jobs run at once")
        parser.add_argument("--queues", default=None, help="queues to serve, comma-separated")

    def handle(
        self, *args: Any, concurrency: int | None, queues: str | None, **options: Any
    ) -> None:
        worker = conveyor.worker(
            concurrency=concurrency, queues=queues.split(",") if queues else None
        )

        async def serve() -> None:
            try:
                await worker.run()
            finally:
                await conveyor.close()

        asyncio.run(serve())
