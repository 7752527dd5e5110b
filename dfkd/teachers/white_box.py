"""The white-box teacher: a model the methods may see whole (its BatchNorm statistics, feature maps and the gradient
of its output with respect to its input), behind the same interface as a black box (`dfkd.teachers.black_box`):

    logits(x)          the teacher's logits (differentiable in x: white-box synthesis backpropagates through it)
    probabilities(x)   softmax of the logits, without gradient
    module             the nn.Module to hook into (None for a black box)
    params             its parameter count (None for a black box)
    queries (None), counting_as(purpose), split_budget(world_size)   query accounting: a no-op here

It is frozen by construction: its parameters take no gradient and `train()` leaves it in eval mode, so neither the
loop (Lightning switches every submodule to train mode at fit start) nor a method can move its BN running statistics.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from dfkd.models import count_params
from dfkd.models.classifier import Classifier


class WhiteBoxTeacher(Classifier):
    access = "white"
    max_queries = None
    queries = None  # not counted: a white box is not paid per query

    def __init__(self, classifier: nn.Module):
        if isinstance(classifier, Classifier):
            super().__init__(classifier.preprocess, classifier.model)
        else:  # a bare network that takes the [0,1] images as they come
            super().__init__(nn.Identity(), classifier)
        self.recorded_acc = getattr(classifier, "recorded_acc", None)  # the accuracy its file records, if any
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "WhiteBoxTeacher":
        return super().train(False)  # a teacher never leaves eval mode: its BN running statistics are the target

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(self(x), dim=1)

    @property
    def module(self) -> nn.Module:
        return self

    @property
    def params(self) -> int:
        return count_params(self.model)

    def counting_as(self, purpose: str):
        return contextlib.nullcontext(self)

    def split_budget(self, world_size: int) -> None:
        """Nothing to split: a white box is not paid per query."""
