"""Wide ResNets (Zagoruyko & Komodakis 2016), pre-activation blocks, with the state_dict names of the
WRN-40-2 / WRN-16-1 ... teacher checkpoints used by ZSKT, Fast-Datafree and CMI
(`block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2,convShortcut}`, final `bn1`, classifier `fc`)."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from dfkd.models.registry import MODELS


class _PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal_in_out = cin == cout and stride == 1
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        # the projection shortcut takes the pre-activated input; the identity shortcut the raw input
        shortcut = x if self.equal_in_out else self.convShortcut(o)
        o = self.conv2(F.relu(self.bn2(self.conv1(o))))
        return o + shortcut


class _Stage(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[_PreActBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                     for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: float, num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        w = [16] + [max(1, int(round(c * widen))) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_chans, w[0], 3, 1, 1, bias=False)
        self.block1 = _Stage(n, w[0], w[1], 1)
        self.block2 = _Stage(n, w[1], w[2], 2)
        self.block3 = _Stage(n, w[2], w[3], 2)
        self.bn1 = nn.BatchNorm2d(w[3])
        self.fc = nn.Linear(w[3], num_classes)
        self.num_features = w[3]

    def forward_features(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return F.adaptive_avg_pool2d(F.relu(self.bn1(x)), 1).flatten(1)

    def forward(self, x):
        return self.fc(self.forward_features(x))


def _wrn(depth, widen):
    def build(num_classes=10, in_chans=3):
        return WideResNet(depth, widen, num_classes, in_chans)
    build.__name__ = f"wrn{depth}_{widen}"
    return build


for _d, _k in [(16, 1), (16, 2), (40, 1), (40, 2), (28, 10)]:
    MODELS.register(_wrn(_d, _k))


@MODELS.register
def wrn(num_classes=10, in_chans=3, depth: int = 16, widen: float = 1):
    """Any WRN-depth-widen, e.g. `arch: wrn` with `arch_kwargs: {depth: 10, widen: 1}` for small inputs
    (a fractional widen, e.g. 0.5, makes a thinner student)."""
    return WideResNet(depth, widen, num_classes, in_chans)
