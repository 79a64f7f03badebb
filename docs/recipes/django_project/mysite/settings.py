"""A minimal Django project that enqueues conveyor jobs (see shop/)."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "recipe-only-not-a-secret")
DEBUG = True
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["shop"]
ROOT_URLCONF = "mysite.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DATABASE", str(BASE_DIR / "db.sqlite3")),
    }
}

# conveyor keeps its jobs in a store of its own (a SQLite file here, Redis or
# PostgreSQL in production), not in Django's database: views enqueue once
# the transaction has committed (transaction.on_commit).
CONVEYOR_URL = os.environ.get("CONVEYOR_URL", f"sqlite:///{BASE_DIR / 'conveyor.db'}")
CONVEYOR_SHARES_DATABASE = False

# Or PostgreSQL for both (DJANGO_POSTGRES_DB=shop; host, user and password from
# libpq's PGHOST, PGUSER, PGPASSWORD...): conveyor's tables in a schema of
# Django's database, and views enqueue inside the transaction (connection=).
if os.environ.get("DJANGO_POSTGRES_DB"):
    POSTGRES_DB = os.environ["DJANGO_POSTGRES_DB"]
    DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": POSTGRES_DB}}
    schema = os.environ.get("CONVEYOR_SCHEMA", "conveyor")
    CONVEYOR_URL = f"postgresql:///{POSTGRES_DB}?schema={schema}"
    CONVEYOR_SHARES_DATABASE = True
