"""Finding the user's app: import MODULE, pick MODULE:APP, apply --url to it."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

from conveyor.app import Conveyor
from conveyor.backends import from_url
from conveyor.cli.core import CliError, describe
from conveyor.settings import CONVEYOR_URL

logger = logging.getLogger("conveyor.cli")


def load_app(path: str) -> Conveyor:
    """Import MODULE and return the Conveyor at MODULE:ATTR (dotted ATTR allowed)."""
    module_name, colon, attr = path.partition(":")
    if not module_name or (colon and not attr):
        raise CliError(f"expected MODULE:APP (e.g. myproject.jobs:app), got {path!r}")
    module = _import(module_name)
    if attr:
        found: Any = module
        for part in attr.split("."):
            try:
                found = getattr(found, part)
            except AttributeError:
                raise CliError(f"module {module_name!r} has no attribute {attr!r}") from None
    else:
        found = _find_app(module, module_name)
    if not isinstance(found, Conveyor):
        raise CliError(f"{path!r} is a {type(found).__name__}, not a conveyor.Conveyor app")
    return found


def _import(module_name: str) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise CliError(
                f"cannot import module {module_name!r}: no module named {missing!r} "
                f"(looked in {cwd} and on sys.path)"
            ) from exc
        raise CliError(f"importing {module_name!r} failed: {describe(exc)}") from exc
    except Exception as exc:
        # The module's own code raised: name it, keep the cause for --debug.
        raise CliError(f"importing {module_name!r} failed: {describe(exc)}") from exc


def _find_app(module: Any, module_name: str) -> Conveyor:
    app = getattr(module, "app", None)
    if isinstance(app, Conveyor):
        return app
    names = sorted(n for n, v in vars(module).items() if isinstance(v, Conveyor))
    if len(names) == 1:
        found: Conveyor = getattr(module, names[0])
        return found
    if not names:
        raise CliError(
            f"module {module_name!r} has no Conveyor app; point at it with {module_name}:ATTR"
        )
    raise CliError(
        f"module {module_name!r} has several Conveyor apps ({', '.join(names)}); "
        f"pick one with {module_name}:ATTR"
    )


def load_app_with_url(path: str, url: str | None) -> Conveyor:
    """`load_app`, with --url (when given) winning over the URL in the code."""
    if url is not None:
        # Conveyor() reads CONVEYOR_URL when the module builds the app.
        os.environ[CONVEYOR_URL] = url
    app = load_app(path)
    if url is not None and app.url != url:
        _use_url(app, url)
    return app


def _use_url(app: Conveyor, url: str) -> None:
    # The module built its app with an explicit URL, so CONVEYOR_URL did not
    # apply; --url still has to win. The backend is not opened yet at this
    # point (opening happens in worker.start), so swapping it is safe.
    logger.info("--url %s replaces the app's %s", url, app.url)
    app.url = url
    app.backend = from_url(url)
