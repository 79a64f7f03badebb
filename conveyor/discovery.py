"""Auto-discovered handlers: `app.discover("myapp.jobs")` imports every module
of a package, subpackages included, so that the `@app.job` (and `@app.cron`,
`@app.every`) handlers in them register on the app they import.

Modules are imported in name order, a package before its modules; a
folder of modules without an `__init__.py` (a namespace package) counts as a
package. A module
that fails to import stops the discovery with a `DiscoveryError` naming it,
its cause chained: a worker must not start without some of its handlers.
`__main__` modules are left out (importing one runs a program).
"""

from __future__ import annotations

import importlib
import keyword
import pkgutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType

from conveyor.job import ConveyorError


class DiscoveryError(ConveyorError, ImportError):
    """A package to discover, or a module in it, could not be imported."""


class HandlerDiscovery:
    """`Conveyor`'s `discover()`."""

    def discover(self, *packages: str) -> list[str]:
        """Import each package and every module under it (recursively);
        return the names of the modules imported, in order. Importing is
        what registers their handlers: the modules must decorate with this
        app (`from myapp import app`). A module imported before is not run
        again. DiscoveryError when a package or a module fails to import."""
        return discover_modules(packages)


def discover_modules(packages: Iterable[str]) -> list[str]:
    names: list[str] = []
    for package in packages:
        if not isinstance(package, str) or not package.strip():
            raise DiscoveryError(f"a package to discover must be a dotted name, got {package!r}")
        names += _walk(_import(package.strip(), package.strip()), package.strip())
    return list(dict.fromkeys(names))  # a package named twice, or inside another, once


def _import(name: str, asked: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except Exception as exc:  # SyntaxError and the like included: the module's own fault
        found = "" if name == asked else f" (found by discover({asked!r}))"
        if isinstance(exc, ModuleNotFoundError) and exc.name == name:
            raise DiscoveryError(f"no module named {name!r}{found}") from exc
        raise DiscoveryError(f"cannot import {name}{found}: {type(exc).__name__}: {exc}") from exc


def _walk(module: ModuleType, asked: str) -> Iterator[str]:
    yield module.__name__
    path = getattr(module, "__path__", None)
    if path is None:  # a plain module: nothing under it
        return
    prefix = module.__name__ + "."
    children = {m.name for m in pkgutil.iter_modules(path, prefix)}
    children |= {prefix + folder for folder in _folders_of_modules(path)}
    for child in sorted(children):
        if child.rpartition(".")[2] == "__main__":
            continue
        yield from _walk(_import(child, asked), asked)


def _folders_of_modules(path: Iterable[str]) -> Iterator[str]:
    """Folders in a package's `path` without an __init__.py that Python
    imports as (namespace) packages, and that hold a module somewhere under
    them. pkgutil lists only folders with an __init__.py; leaving these out
    would leave their handlers unregistered without a word. A folder of
    templates or data (no .py under it), or named as no module can be, is
    left alone."""
    for entry in path:
        try:
            folders = [f for f in Path(entry).iterdir() if f.is_dir()]
        except OSError:  # a path entry that is not a folder (a zip file, gone)
            continue
        for folder in folders:
            if (
                folder.name.isidentifier()
                and not keyword.iskeyword(folder.name)
                and not (folder / "__init__.py").exists()
                and any(folder.rglob("*.py"))
            ):
                yield folder.name
