"""Exponential moving average of the student's weights (Polyak & Juditsky 1992), the `distill.ema_decay` option.

Adversarial and generative synthesizers keep moving the images the student learns from, so the student's
held-out accuracy oscillates from one epoch to the next; the average of its recent weights does not. With the
option on, the average is what validation scores and what the run exports. The decay is warmed up as in
timm's ModelEma, decay_n = min(decay, (1 + n) / (10 + n)) at update n, so the first updates are not held back
by the random initialization. Float buffers (BatchNorm running statistics) are averaged the same way; integer
buffers (batch counters) are copied.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def ema_decay_at(decay: float, n: int) -> float:
    return min(float(decay), (1.0 + n) / (10.0 + n))


@torch.no_grad()
def ema_update(average: nn.Module, model: nn.Module, decay: float, n: int) -> None:
    """average <- d * average + (1 - d) * model, with d = ema_decay_at(decay, n)."""
    d = ema_decay_at(decay, n)
    for a, m in zip(average.parameters(), model.parameters()):
        a.lerp_(m.detach(), 1.0 - d)
    for a, m in zip(average.buffers(), model.buffers()):
        if a.is_floating_point():
            a.lerp_(m, 1.0 - d)
        else:
            a.copy_(m)
