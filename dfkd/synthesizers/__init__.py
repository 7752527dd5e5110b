"""Synthesizer plug-ins, one file per method, registered by short name. Every module of this package is imported
here (a new built-in method is one new file, nothing else to edit); methods from outside the package arrive
through a recipe's `plugins` list (dfkd/runs/plugins.py)."""
import importlib
import pkgutil

from dfkd.synthesizers.base import SYNTHESIZERS, SynthBatch, SynthContext, Synthesizer, require_batchnorm

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["SYNTHESIZERS", "SynthBatch", "SynthContext", "Synthesizer", "require_batchnorm"]
