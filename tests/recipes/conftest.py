"""The recipes in docs/recipes are imported from where they are documented."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path
from types import ModuleType

from tests.recipes.helpers import RECIPES

_loaded = itertools.count()


def load_recipe(file_name: str) -> ModuleType:
    """Import docs/recipes/<file_name> afresh (a new module, so a new Conveyor
    built from the environment of the test that loads it)."""
    path = RECIPES / file_name
    name = f"recipe_{path.stem}_{next(_loaded)}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pydantic resolves the module's annotations through it
    spec.loader.exec_module(module)
    return module


def recipe_path(*parts: str) -> Path:
    return RECIPES.joinpath(*parts)
