"""conveyor in a Django project: add "conveyor.contrib.django" to
INSTALLED_APPS.

* `python manage.py migrate` creates conveyor's PostgreSQL schema (the tables
  of `CONVEYOR_SCHEMA`, default "conveyor") in Django's database, one Django
  migration per conveyor migration (operations.py). On another database
  engine they do nothing: conveyor then keeps its own store.
* `python manage.py conveyor_worker [worker options]` runs `conveyor worker`
  for the app `CONVEYOR_APP` names ("myproject.jobs:app"), with Django set up
  first, so handlers use the ORM and settings.

Point the app's URL at the same schema with `migrate=false`, e.g.
`postgresql:///mydb?schema=conveyor&migrate=false`: the backend then checks
the schema is there and never changes it itself.
"""
