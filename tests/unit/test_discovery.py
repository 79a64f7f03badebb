"""Auto-discovered handlers (issue 14, point 2): `app.discover(PKG)` imports
every module of a real package tree written to tmp_path, subpackages
included, so their handlers register; a module that fails is named."""

from __future__ import annotations

import importlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from textwrap import dedent

import pytest

from conveyor import Conveyor, DiscoveryError, JobState


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A package of its own name (no clash with other tests' modules): its
    `app`, and `jobs` with modules two levels of subpackages deep."""
    name = f"shop_{uuid.uuid4().hex[:8]}"
    files = {
        "__init__.py": 'from conveyor import Conveyor\napp = Conveyor("memory://")\n',
        "jobs/__init__.py": "",
        "jobs/mail.py": """
            from {pkg} import app

            @app.job("mail.send", queue="mail", retries=5)
            def send(payload: dict) -> str:
                return "sent " + payload["to"]
        """,
        "jobs/billing/__init__.py": "",
        "jobs/billing/invoices.py": """
            from {pkg} import app

            @app.job("billing.invoice")
            async def invoice(payload: dict) -> int:
                return payload["amount"] * 2
        """,
        "jobs/billing/reports/__init__.py": "",
        "jobs/billing/reports/monthly.py": """
            from {pkg} import app

            @app.cron("0 6 1 * *", tz="Europe/Berlin")
            def monthly() -> None: ...
        """,
        # Importing a __main__ runs a program: discovery leaves it out.
        "jobs/__main__.py": "raise SystemExit('__main__ must not be imported')\n",
        "jobs/README.txt": "not a module\n",
    }
    for path, text in files.items():
        target = tmp_path / name / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(dedent(text).format(pkg=name))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


def app_of(package: str) -> Conveyor:
    app = importlib.import_module(package).app
    assert isinstance(app, Conveyor)
    return app


def write(tmp_path: Path, package: str, path: str, text: str) -> None:
    (tmp_path / package / path).write_text(dedent(text))


async def test_every_module_of_the_tree_is_imported_and_its_handlers_register(
    package: str,
) -> None:
    app = app_of(package)
    assert app.registry == {}
    imported = app.discover(f"{package}.jobs")
    assert imported == [
        f"{package}.jobs",
        f"{package}.jobs.billing",
        f"{package}.jobs.billing.invoices",
        f"{package}.jobs.billing.reports",
        f"{package}.jobs.billing.reports.monthly",
        f"{package}.jobs.mail",
    ]
    monthly = f"{package}.jobs.billing.reports.monthly.monthly"
    assert sorted(app.registry) == sorted(["mail.send", "billing.invoice", monthly])
    assert app.registry["mail.send"].defaults.queue == "mail"
    assert app.function_schedules[monthly].cron == "0 6 1 * *"
    # Discovering again imports nothing twice (no "already registered").
    assert app.discover(f"{package}.jobs", f"{package}.jobs.mail") == imported
    # The discovered handlers run.
    async with app:
        sent = await app.enqueue("mail.send", {"to": "a@b.c"}, queue="default")
        billed = await app.enqueue("billing.invoice", {"amount": 21})
        done = {job.id: job for job in await app.drain()}
    assert done[sent.id].result == "sent a@b.c"
    assert done[billed.id].state is JobState.COMPLETED and done[billed.id].result == 42


def test_a_module_that_fails_to_import_is_named_with_its_cause(
    tmp_path: Path, package: str
) -> None:
    write(tmp_path, package, "jobs/billing/broken.py", "raise ValueError('no tax table')\n")
    app = app_of(package)
    with pytest.raises(DiscoveryError) as caught:
        app.discover(f"{package}.jobs")
    message = str(caught.value)
    assert f"cannot import {package}.jobs.billing.broken" in message, message
    assert f"discover('{package}.jobs')" in message and "ValueError: no tax table" in message
    assert isinstance(caught.value.__cause__, ValueError)


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("import not_installed_anywhere_x\n", "No module named 'not_installed_anywhere_x'"),
        ("def broken(:\n", "SyntaxError"),
    ],
)
def test_a_missing_dependency_or_a_syntax_error_names_the_module(
    tmp_path: Path, package: str, source: str, says: str
) -> None:
    write(tmp_path, package, "jobs/billing/reports/bad.py", source)
    with pytest.raises(DiscoveryError, match=rf"{package}\.jobs\.billing\.reports\.bad.*{says}"):
        app_of(package).discover(f"{package}.jobs")


def test_an_unknown_package_is_a_clear_error(package: str) -> None:
    with pytest.raises(DiscoveryError, match=rf"no module named '{package}\.nope'"):
        app_of(package).discover(f"{package}.nope")
    with pytest.raises(DiscoveryError, match="dotted name"):
        app_of(package).discover("")


def test_a_plain_module_is_imported_alone(package: str) -> None:
    app = app_of(package)
    assert app.discover(f"{package}.jobs.mail") == [f"{package}.jobs.mail"]
    assert list(app.registry) == ["mail.send"]


def test_a_folder_without_init_is_discovered_and_other_folders_are_not(
    tmp_path: Path, package: str
) -> None:
    """Python imports a folder of modules without an __init__.py (a namespace
    package), so discovery goes into it too: skipping it silently left its
    handlers unregistered, and their jobs waiting for a worker that has them.
    Folders that hold no module, or whose name is not importable, are not
    packages and are left alone."""
    (tmp_path / package / "jobs" / "shipping" / "labels").mkdir(parents=True)
    write(
        tmp_path,
        package,
        "jobs/shipping/labels/print.py",
        f"""
        from {package} import app

        @app.job("shipping.label")
        def label(payload: dict) -> str:
            return "printed"
        """,
    )
    (tmp_path / package / "jobs" / "templates").mkdir()
    write(tmp_path, package, "jobs/templates/mail.html", "<p>hello</p>\n")
    (tmp_path / package / "jobs" / "not-a-name").mkdir()
    write(tmp_path, package, "jobs/not-a-name/stray.py", "raise SystemExit('imported')\n")
    app = app_of(package)
    imported = app.discover(f"{package}.jobs")
    assert f"{package}.jobs.shipping" in imported
    assert f"{package}.jobs.shipping.labels.print" in imported
    assert not [m for m in imported if "templates" in m or "stray" in m], imported
    assert "shipping.label" in app.registry
