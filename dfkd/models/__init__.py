"""Model factory. `arch` is one of:

    resnet8, wrn40_2, lenet5, ...        dfkd's own CIFAR/MNIST definitions (their state-dict names match the
                                         teacher checkpoints the field shares)
    timm:NAME (or a bare timm name)      any timm model
    torchvision:NAME                     any torchvision classification model; with in_chans != 3 its first
                                         convolution takes in_chans channels (kernel, stride and padding kept)
    package.module:factory               your own: factory(**arch_kwargs) returns the model

Everything is built at random initialization: nothing is downloaded."""
from __future__ import annotations

import torch.nn as nn

from dfkd.models import cifar_resnet, lenet, tucker, vgg, wrn  # noqa: F401  (registration)
from dfkd.models.registry import MODELS

__all__ = ["MODELS", "build_model", "count_params"]


def build_model(arch: str, num_classes: int, in_chans: int, **kwargs) -> nn.Module:
    """Build `arch` (see the module docstring) at random initialization."""
    if arch in MODELS:
        return MODELS.build(arch, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if arch.startswith("timm:") or (":" not in arch and _is_timm(arch)):
        import timm

        name = arch.removeprefix("timm:")
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if arch.startswith("torchvision:"):
        return _torchvision(arch.removeprefix("torchvision:"), num_classes, in_chans, **kwargs)
    if ":" in arch:
        return _from_factory(arch, **kwargs)
    MODELS.get(arch)  # raises with the list of known names
    raise AssertionError


def _torchvision(name: str, num_classes: int, in_chans: int, **kwargs) -> nn.Module:
    import torchvision

    from dfkd.errors import DfkdError

    if name not in torchvision.models.list_models():
        raise DfkdError(f"torchvision has no model {name!r}; see torchvision.models.list_models()")
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if in_chans != 3:
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        parent = {id(c): (p, n) for p in model.modules() for n, c in p.named_children()}
        owner, attr = parent[id(first)]
        setattr(owner, attr, nn.Conv2d(in_chans, first.out_channels, first.kernel_size, first.stride, first.padding,
                                       first.dilation, first.groups, first.bias is not None))
    return model


def _from_factory(arch: str, **kwargs) -> nn.Module:
    """`package.module:factory`: import the module and call factory(**arch_kwargs)."""
    import importlib

    from dfkd.errors import DfkdError

    module_name, _, attr = arch.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise DfkdError(f"arch={arch!r}: cannot import {attr!r} from {module_name!r} ({e}). Give an importable "
                        f"`package.module:factory` (on PYTHONPATH), timm:NAME or torchvision:NAME.") from None
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise DfkdError(f"arch={arch!r}: {attr}(**arch_kwargs) returned {type(model).__name__}, not an nn.Module")
    return model


def _is_timm(name: str) -> bool:
    import timm

    return name in timm.list_models()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
