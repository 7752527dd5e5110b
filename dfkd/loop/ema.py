"""Exponential moving average of the student's weights (Polyak & Juditsky 1992), the `distill.ema_decay` option,
on `torch.optim.swa_utils.AveragedModel` (its `n_averaged` counter and weights are part of the checkpoint, so a
resumed run continues the same average).

Adversarial and generative synthesizers keep moving the images the student learns from, so the student's
held-out accuracy oscillates from one epoch to the next; the average of its recent weights does not. With the
option on, the average is what validation scores and what the run exports. The decay is warmed up as
TensorFlow's `ExponentialMovingAverage(num_updates=...)` does, decay_n = min(decay, (1 + n) / (10 + n)) at
update n, so the first updates are not held back by the random initialization. Float buffers (BatchNorm running
statistics) are averaged the same way; integer buffers (batch counters) are copied.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel


def ema_decay_at(decay: float, n: int) -> float:
    return min(float(decay), (1.0 + n) / (10.0 + n))


def student_average(student: nn.Module, decay: float) -> AveragedModel:
    """An eval-mode, frozen running average of `student`; `update_parameters(student)` after each iteration."""

    def ema(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        # called once per (device, dtype) group: one host read of n per update, not one per tensor
        if not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
            return
        torch._foreach_lerp_(averaged, current, 1.0 - ema_decay_at(decay, int(n)))

    return AveragedModel(student, multi_avg_fn=ema, use_buffers=True).eval().requires_grad_(False)
