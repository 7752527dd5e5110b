"""Model factory: dfkd's own CIFAR/MNIST definitions by name, falling back to any `timm` model."""
from __future__ import annotations

import torch.nn as nn

from dfkd.models import cifar_resnet, lenet, tucker, vgg, wrn  # noqa: F401  (registration)
from dfkd.models.registry import MODELS

__all__ = ["MODELS", "build_model", "count_params"]


def build_model(arch: str, num_classes: int, in_chans: int, **kwargs) -> nn.Module:
    """Build `arch` from dfkd's registry, else from timm (random init: nothing is downloaded)."""
    if arch in MODELS:
        return MODELS.build(arch, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if arch.startswith("timm:") or _is_timm(arch):
        import timm

        name = arch.removeprefix("timm:")
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    MODELS.get(arch)  # raises with the list of known names
    raise AssertionError


def _is_timm(name: str) -> bool:
    import timm

    return name in timm.list_models()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
