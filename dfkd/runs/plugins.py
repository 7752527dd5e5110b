"""User plug-ins: modules that register synthesizers, models or data sets from outside the package.

A recipe lists them, as importable module names or paths to .py files (absolute, relative to the working
directory, or else relative to the dfkd repository root):

    plugins: [my_lab.synthesizers, ./my_synth.py]

They are imported before anything is built, in every process (DDP re-executes train.py per rank).
`recipe_plugins()` imports the plug-ins of every recipe found (with `DFKD_RECIPE_PATH`'s folders), which is how
the contract tests find a new method without any test file being edited."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from dfkd.errors import DfkdError


class PluginError(DfkdError, ImportError):
    """A plug-in named by a recipe cannot be found or imported."""


def load_plugins(items) -> list[str]:
    loaded = []
    for item in items or []:
        item = str(item)
        if item.endswith(".py"):
            path = Path(item).expanduser()
            if not path.is_absolute() and not path.is_file():
                from dfkd.resources import REPO_ROOT

                path = REPO_ROOT / path
            path = path.resolve()
            if not path.is_file():
                raise PluginError(f"plugin file {item} not found (relative paths are taken from {Path.cwd()}, then "
                                  f"from the dfkd repository); fix the recipe's `plugins:` list")
            name = f"dfkd_plugin_{path.stem}"
            if name not in sys.modules:
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
        else:
            try:
                importlib.import_module(item)
            except ModuleNotFoundError as e:
                raise PluginError(f"plugin module {item!r} cannot be imported ({e}); "
                                  "is it installed or on PYTHONPATH?") from None
        loaded.append(item)
    return loaded


def recipe_plugins() -> list[str]:
    """Import the plug-ins named by every recipe on the search path; the plug-ins imported."""
    from dfkd.runs.config import compose, list_recipes

    loaded = []
    for name in list_recipes():
        loaded += load_plugins(compose(name).plugins)
    return loaded
