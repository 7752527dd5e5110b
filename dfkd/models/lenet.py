"""LeNet-5 (LeCun et al. 1998) as used by DAFL / DFAD / KegNet for MNIST at 32x32, and its half-width student
(DAFL's LeNet-5-half). No BatchNorm: BN-statistics synthesizers refuse it with a clear error.
Each activation is its own module so features can be tapped by path (DAFL's feature is `fc1`'s input: the
120-d relu(conv3) output)."""
from __future__ import annotations

import torch.nn as nn

from dfkd.models.registry import MODELS


class LeNet5(nn.Module):
    def __init__(self, num_classes=10, in_chans=1, width: float = 1.0):
        super().__init__()
        c1, c3, c5, f6 = (max(1, int(round(c * width))) for c in (6, 16, 120, 84))
        self.conv1, self.relu1, self.pool1 = nn.Conv2d(in_chans, c1, 5), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.relu2, self.pool2 = nn.Conv2d(c1, c3, 5), nn.ReLU(), nn.MaxPool2d(2)
        self.conv3, self.relu3 = nn.Conv2d(c3, c5, 5), nn.ReLU()
        self.fc1, self.relu4 = nn.Linear(c5, f6), nn.ReLU()
        self.fc2 = nn.Linear(f6, num_classes)
        self.num_features = c5

    def forward_features(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.relu3(self.conv3(x)).flatten(1)

    def forward(self, x):
        return self.fc2(self.relu4(self.fc1(self.forward_features(x))))


@MODELS.register
def lenet5(num_classes=10, in_chans=1):
    return LeNet5(num_classes, in_chans)


@MODELS.register
def lenet5_half(num_classes=10, in_chans=1):
    return LeNet5(num_classes, in_chans, width=0.5)
