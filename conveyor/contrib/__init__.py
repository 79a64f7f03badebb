"""Integrations with other tools: `conveyor.contrib.alembic` and
`conveyor.contrib.django` put conveyor's PostgreSQL schema into the
application's own migrations."""
