"""CIFAR-style ResNets whose state_dict names match the teacher checkpoints shared by the
Fast-Datafree / CMI line of work (so users can load those files directly).

Two families, as in those checkpoints:
- `resnet18`, `resnet34` (He et al. 2016, CIFAR variant with a 3x3 stem): widths 64..512, four stages,
  projection shortcuts named `shortcut`, classifier `linear`.
- `resnet8/20/56` and the `x4` wide variants (the CRD-style CIFAR ResNets): three stages of widths 16/32/64
  (x4: 64/128/256 after a 32-wide stem), projection shortcuts named `downsample`, classifier `fc`.
Both end in a global average pool, so they also run at other input sizes (e.g. 28x28 MNIST).
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from dfkd.models.registry import MODELS


class _Block(nn.Module):
    """BasicBlock: conv-bn-relu-conv-bn + identity or 1x1 projection; `shortcut_name` keeps checkpoint names."""

    def __init__(self, cin: int, cout: int, stride: int, shortcut_name: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self._shortcut_name = shortcut_name
        proj = None
        if stride != 1 or cin != cout:
            proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        setattr(self, shortcut_name, proj if proj is not None else nn.Sequential())

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + getattr(self, self._shortcut_name)(x))


class CifarResNet(nn.Module):
    def __init__(self, blocks: list[int], widths: list[int], num_classes: int = 10, in_chans: int = 3,
                 shortcut_name: str = "shortcut", head_name: str = "fc"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths[1:]), start=1):
            stride = 1 if i == 1 else 2
            layers = [_Block(cin if j == 0 else w, w, stride if j == 0 else 1, shortcut_name) for j in range(n)]
            setattr(self, f"layer{i}", nn.Sequential(*layers))
            cin = w
        self.num_stages = len(blocks)
        self.num_features = cin
        self._head_name = head_name
        setattr(self, head_name, nn.Linear(cin, num_classes))

    def forward_features(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, x):
        return getattr(self, self._head_name)(self.forward_features(x))


def _scaled(widths, width: float):
    return [max(1, int(round(w * width))) for w in widths]


@MODELS.register
def resnet18(num_classes=10, in_chans=3, width: float = 1.0):
    return CifarResNet([2, 2, 2, 2], _scaled([64, 64, 128, 256, 512], width), num_classes, in_chans,
                       "shortcut", "linear")


@MODELS.register
def resnet34(num_classes=10, in_chans=3, width: float = 1.0):
    return CifarResNet([3, 4, 6, 3], _scaled([64, 64, 128, 256, 512], width), num_classes, in_chans,
                       "shortcut", "linear")


def _crd(depth: int, widths, num_classes, in_chans, width):
    n = (depth - 2) // 6
    return CifarResNet([n, n, n], _scaled(widths, width), num_classes, in_chans, "downsample", "fc")


@MODELS.register
def resnet8(num_classes=10, in_chans=3, width: float = 1.0):
    return _crd(8, [16, 16, 32, 64], num_classes, in_chans, width)


@MODELS.register
def resnet14(num_classes=10, in_chans=3, width: float = 1.0):
    """ResNet-14: KegNet's Fashion-MNIST / SVHN teacher."""
    return _crd(14, [16, 16, 32, 64], num_classes, in_chans, width)


@MODELS.register
def resnet20(num_classes=10, in_chans=3, width: float = 1.0):
    return _crd(20, [16, 16, 32, 64], num_classes, in_chans, width)


@MODELS.register
def resnet56(num_classes=10, in_chans=3, width: float = 1.0):
    return _crd(56, [16, 16, 32, 64], num_classes, in_chans, width)


@MODELS.register
def resnet8x4(num_classes=10, in_chans=3, width: float = 1.0):
    return _crd(8, [32, 64, 128, 256], num_classes, in_chans, width)


@MODELS.register
def resnet32x4(num_classes=10, in_chans=3, width: float = 1.0):
    return _crd(32, [32, 64, 128, 256], num_classes, in_chans, width)
