"""docs/recipes/django_project: real Django (its own SQLite database) with
conveyor on a SQLite file of its own. A signup enqueues its welcome job only
once the transaction commits (a rollback leaves no job), and
`python manage.py conveyor_worker` runs it, using the ORM."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from .helpers import RECIPES, WAIT, Child, python

PROJECT = RECIPES / "django_project"

# Minimal settings written by the test, for this process and the worker's.
SETTINGS = """
SECRET_KEY = "test-only"
INSTALLED_APPS = ["shop"]
ROOT_URLCONF = "mysite.urls"
ALLOWED_HOSTS = ["testserver"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": {database!r}}}}}
CONVEYOR_URL = {conveyor_url!r}
CONVEYOR_SHARES_DATABASE = False
"""


@pytest.fixture(scope="module")
def django_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    pytest.importorskip("django")
    import django
    from django.core.management import call_command

    where = tmp_path_factory.mktemp("django")
    (where / "recipe_test_settings.py").write_text(
        SETTINGS.format(
            database=str(where / "django.sqlite3"),
            conveyor_url=f"sqlite:///{where}/conveyor.db",
        )
    )
    # Django's settings are per process: this module is the only one to set them.
    sys.path[:0] = [str(where), str(PROJECT)]
    os.environ["DJANGO_SETTINGS_MODULE"] = "recipe_test_settings"
    django.setup()
    call_command("migrate", verbosity=0)
    import shop.jobs
    import shop.views

    try:
        yield {"dir": where, "jobs": shop.jobs, "views": shop.views}
    finally:
        shop.jobs.conveyor.close_sync()
        os.environ.pop("DJANGO_SETTINGS_MODULE", None)


def _jobs(django_site: dict[str, Any]) -> ModuleType:
    jobs: ModuleType = django_site["jobs"]
    return jobs


def test_a_rolled_back_signup_enqueues_nothing(django_site: dict[str, Any]) -> None:
    from django.db import transaction
    from shop.models import Customer

    conveyor = _jobs(django_site).conveyor
    before = len(conveyor.list_jobs_sync(name="shop.welcome"))
    with pytest.raises(RuntimeError), transaction.atomic():
        customer = django_site["views"].sign_up("rolled.back@example.com")
        raise RuntimeError("the request failed after the signup")
    assert not Customer.objects.filter(email="rolled.back@example.com").exists()
    assert conveyor.get_job_by_key_sync(f"welcome:{customer.pk}") is None
    assert len(conveyor.list_jobs_sync(name="shop.welcome")) == before


def test_signup_enqueues_on_commit_and_the_management_command_runs_it(
    django_site: dict[str, Any],
) -> None:
    from django.test import Client
    from shop.models import Customer

    conveyor = _jobs(django_site).conveyor
    response = Client().post(
        "/signup", data={"email": "ada@example.com"}, content_type="application/json"
    )
    assert response.status_code == 201, response.content
    customer_id = response.json()["customer"]
    job = conveyor.get_job_by_key_sync(f"welcome:{customer_id}")
    assert job is not None and job.state.value == "queued"  # no worker runs yet

    env = dict(os.environ, DJANGO_SETTINGS_MODULE="recipe_test_settings")
    env["PYTHONPATH"] = os.pathsep.join([str(django_site["dir"]), env.get("PYTHONPATH", "")])
    worker = Child(
        python("manage.py", "conveyor_worker", "--concurrency", "2"), cwd=PROJECT, env=env
    )
    try:
        worker.wait_for(" started: queues=")
        done = conveyor.wait_sync(job.id, timeout=WAIT)
        assert done.state.value == "completed", done
        assert done.result == {"email": "ada@example.com"}
        assert Customer.objects.get(pk=customer_id).welcomed_at is not None
        # ctx.log, shown on stderr
        assert "welcoming" in worker.wait_for("conveyor.job: shop.welcome")
    finally:
        code = worker.stop()
    assert code == 0, worker.output
    worker.wait_for(" stopped: ")
    assert "Traceback" not in worker.output, worker.output
