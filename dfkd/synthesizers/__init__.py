"""Synthesizer plug-ins, one file per method, registered by short name."""
from dfkd.synthesizers import dafl, deepinversion, dfad, fastdfkd, kegnet, zskt  # noqa: F401  (registration)
from dfkd.synthesizers.base import SYNTHESIZERS, SynthBatch, SynthContext, Synthesizer

__all__ = ["SYNTHESIZERS", "SynthBatch", "SynthContext", "Synthesizer"]
