"""One generic registry for every kind of plug-in (models, synthesizers, data sets).

    MODELS = Registry("model")

    @MODELS.register            # registered as "resnet8"
    def resnet8(**kw): ...

    @MODELS.register("lenet5")  # registered under an explicit name
    class LeNet5(nn.Module): ...

    MODELS.build("resnet8", num_classes=10)
"""
from __future__ import annotations

import difflib
from typing import Any, Callable

from dfkd.errors import DfkdError


class RegistryError(DfkdError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}

    def register(self, name_or_obj: str | Callable | None = None):
        """Decorator, bare (`@R.register`) or named (`@R.register("name")`)."""
        if callable(name_or_obj):
            return self._add(name_or_obj.__name__.lower(), name_or_obj)
        name = name_or_obj

        def deco(obj):
            return self._add(name or obj.__name__.lower(), obj)

        return deco

    def _add(self, name: str, obj):
        if name in self._items and self._items[name] is not obj:
            raise RegistryError(f"{self.kind} {name!r} is already registered ({self._items[name]!r})")
        self._items[name] = obj
        return obj

    def get(self, name: str):
        try:
            return self._items[name]
        except KeyError:
            near = difflib.get_close_matches(name, self._items, n=3)
            hint = f" Did you mean {', '.join(near)}?" if near else ""
            raise RegistryError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._items))}"
            ) from None

    def build(self, name: str, *args, **kwargs):
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
