"""The model registry (kept apart from the factory so model files can import it without cycles)."""
from dfkd.registry import Registry

MODELS = Registry("model")
