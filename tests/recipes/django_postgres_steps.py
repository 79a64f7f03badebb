"""Run by test_django_postgres_recipe.py in a process of its own (Django's
settings are per process, and the SQLite recipe test has this one's): the
project's own settings on PostgreSQL, a rolled-back signup and a committed
one through the test client. Prints what it saw as one JSON line."""

from __future__ import annotations

import json

import django

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import transaction  # noqa: E402
from django.test import Client  # noqa: E402
from shop.jobs import conveyor  # noqa: E402
from shop.models import Customer  # noqa: E402
from shop.views import sign_up  # noqa: E402


class RequestFailed(Exception):
    pass


def main() -> None:
    call_command("migrate", verbosity=0)
    seen: dict[str, object] = {}
    try:
        with transaction.atomic():  # the request's transaction
            customer = sign_up("rolled.back@example.com")
            key = f"welcome:{customer.pk}"
            # Stored by this transaction: conveyor's own connections do not
            # see it before the commit.
            seen["seen_before_commit"] = conveyor.get_job_by_key_sync(key) is not None
            raise RequestFailed
    except RequestFailed:
        pass
    seen["rolled_back_customer"] = Customer.objects.filter(email="rolled.back@example.com").exists()
    seen["rolled_back_job"] = conveyor.get_job_by_key_sync(key) is not None

    response = Client().post(
        "/signup", data={"email": "ada@example.com"}, content_type="application/json"
    )
    seen["status"] = response.status_code
    customer_id = response.json()["customer"]
    job = conveyor.get_job_by_key_sync(f"welcome:{customer_id}")
    seen["customer"] = customer_id
    seen["job"] = job.id if job is not None else None
    seen["job_state"] = job.state.value if job is not None else None
    conveyor.close_sync()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
