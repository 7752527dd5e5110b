"""LeNet-5 (LeCun et al. 1998) as used by DAFL / DFAD for MNIST at 32x32, and its half-width student.
No BatchNorm: BN-statistics synthesizers cannot use it (dfkd refuses with a clear error)."""
from __future__ import annotations

import torch.nn as nn

from dfkd.models.registry import MODELS


class LeNet5(nn.Module):
    def __init__(self, num_classes=10, in_chans=1, width: float = 1.0):
        super().__init__()
        c1, c3, c5, f6 = (max(1, int(round(c * width))) for c in (6, 16, 120, 84))
        self.conv1 = nn.Conv2d(in_chans, c1, 5)
        self.conv2 = nn.Conv2d(c1, c3, 5)
        self.conv3 = nn.Conv2d(c3, c5, 5)
        self.fc1 = nn.Linear(c5, f6)
        self.fc2 = nn.Linear(f6, num_classes)
        self.num_features = c5
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)

    def forward_features(self, x):
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.act(self.conv2(x)))
        return self.act(self.conv3(x)).flatten(1)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(self.forward_features(x))))


@MODELS.register
def lenet5(num_classes=10, in_chans=1):
    return LeNet5(num_classes, in_chans)


@MODELS.register
def lenet5_half(num_classes=10, in_chans=1):
    return LeNet5(num_classes, in_chans, width=0.5)
