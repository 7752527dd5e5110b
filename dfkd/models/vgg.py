"""VGG with BatchNorm for CIFAR (the `vgg8` / `vgg11` teachers of the CRD / Fast-Datafree line),
state_dict names `block{0..4}.{i}` and `classifier`. Each block is conv-bn-relu repeated, last relu
applied in forward; 2x2 max pools between blocks 0-3, global average pool after block 4 (the 4th pool
is used only for 64-pixel inputs, as in the reference definition)."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from dfkd.models.registry import MODELS

_CFG = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


def _block(widths, cin):
    layers = []
    for w in widths:
        layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        cin = w
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    def __init__(self, cfg, num_classes=10, in_chans=3):
        super().__init__()
        cin = in_chans
        for i, widths in enumerate(cfg):
            setattr(self, f"block{i}", _block(widths, cin))
            cin = widths[-1]
        self.classifier = nn.Linear(cin, num_classes)
        self.num_features = cin

    def forward_features(self, x):
        h = x.shape[2]
        for i in range(5):
            x = F.relu(getattr(self, f"block{i}")(x))
            if i < 3 or (i == 3 and h == 64):
                x = F.max_pool2d(x, 2)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, x):
        return self.classifier(self.forward_features(x))


def _vgg(name):
    def build(num_classes=10, in_chans=3):
        return VGG(_CFG[name], num_classes, in_chans)
    build.__name__ = name
    return build


for _n in _CFG:
    MODELS.register(_vgg(_n))
